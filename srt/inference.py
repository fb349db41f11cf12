"""Self-refinement inference: the SRT model answers, criticizes itself and refines, in one pass.

Three ways to answer an instruction with a :class:`srt.generation.Generator`:

* :meth:`SelfRefiner.answer` (``srt``): one generation of the whole SRT assistant turn
  ``response -> ### Feedback -> ### Improved Response -> refinement`` (greedy by default, as in
  evaluation). The answer is the refinement; when the output has no refinement the initial
  response is used instead and counted in ``stats["fallback_unparseable"]``.
* :meth:`SelfRefiner.rerank` (``rerank``): the paper's comparison. Sample ``n`` responses
  (T=0.7), let the model score each one itself (the response is placed in the assistant turn,
  followed by ``### Feedback``; the model writes its feedback with ``Overall Score: [[n]]`` and
  stops at ``### Improved Response``), answer with the best-scored one (ties: the first sampled).
* :meth:`SelfRefiner.gated` (``gated``): the ``srt`` pass, then the model re-scores its refinement
  in a separate call (as stage 2 does: the refinement in the response slot, its own feedback, its
  score). The refinement is the answer only when that score is strictly higher than the score the
  model gave its response in the ``srt`` pass; otherwise (lower, equal, either unscored, or no
  refinement) the answer is the initial response. ``stats`` counts ``gate_kept_refinement``,
  ``gate_kept_response`` and, of the latter, ``gate_unscored``; each answer records ``gate``
  (``refinement`` | ``response``) and ``refinement_score``.
* :meth:`SelfRefiner.plain` (``plain``): the model's answer as is. If the model goes on to write
  an SRT tail (an SRT model does), everything from the first line that is only a
  ``### Feedback`` header is cut; generation also stops there, so no time is spent on the tail.

Every answer keeps its full trace (raw text, parsed parts, self score) in :class:`SrtAnswer`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from srt.critic_template import (
    FEEDBACK_HEADER,
    REFINEMENT_HEADER,
    ParseFailure,
    parse_score,
    parse_srt_output,
    render_critic_prompt,
    self_critique_prefix,
)
from srt.errors import ConfigError
from srt.generation import Generator, SamplingConfig

Mode = Literal["plain", "srt", "rerank", "gated"]
ScoringVia = Literal["srt", "critic_prompt"]
MODES = ("plain", "srt", "rerank", "gated")

# A line holding only the feedback header (any number of '#', any case): where an SRT tail starts.
_FEEDBACK_LINE = re.compile(r"^[ \t]*#{1,6}[ \t]*feedback[ \t]*:?[ \t]*$", re.IGNORECASE | re.MULTILINE)


def strip_srt_tail(text: str) -> str:
    """The answer part of ``text``: everything before the first ``### Feedback`` header line."""
    match = _FEEDBACK_LINE.search(text)
    return (text[: match.start()] if match else text).strip()


@dataclass
class SelfScore:
    score: int | None  # 1..10, None when the feedback had no parseable score
    feedback: str  # what the model wrote after "### Feedback" (up to "### Improved Response")
    failure: str | None = None  # ParseFailure.reason when score is None


@dataclass
class SrtAnswer:
    instruction: str
    answer: str  # what gets evaluated
    mode: str  # "srt" | "plain" | "rerank"
    response: str  # the initial response (srt), the plain answer, or the picked candidate (rerank)
    raw: str  # the generated text, untouched
    feedback: str | None = None  # srt: the feedback part as the model wrote it
    refinement: str | None = None  # srt: the refinement, None when there is none
    self_score: int | None = None  # srt: score in its own feedback; rerank: score of the picked candidate
    parsed: bool | None = None  # srt: feedback and refinement both parsed (None in other modes)
    fallback: bool | None = None  # srt: no refinement found, the response is the answer
    failure: str | None = None  # srt: why the output did not fully parse (ParseFailure.reason)
    finish_reason: str | None = None  # "eos" | "stop" | "length" (length = truncated)
    num_new_tokens: int = 0
    candidates: list[dict[str, Any]] = field(default_factory=list)  # rerank: every sampled response and its score
    refinement_score: int | None = None  # gated: the model's own score of its refinement (separate call)
    gate: str | None = None  # gated: which part is the answer, "refinement" or "response"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SelfRefiner:
    """Answer instructions with a :class:`~srt.generation.Generator` in ``srt``, ``rerank`` or ``plain`` mode.

    ``sampling``: decoding of the answer (``srt`` and ``plain``); greedy by default.
    ``candidate_sampling``: decoding of the ``n`` re-ranking candidates (T=0.7, as in the paper).
    ``score_sampling``: decoding of a self-score (greedy; stops at ``### Improved Response``).
    ``stats`` counts what happened since construction (answered, parsed, fallback_unparseable...).
    """

    def __init__(
        self,
        generator: Generator,
        sampling: SamplingConfig | None = None,
        candidate_sampling: SamplingConfig | None = None,
        score_sampling: SamplingConfig | None = None,
        system_prompt: str | None = None,
    ):
        self.generator = generator
        self.sampling = sampling or SamplingConfig(temperature=0.0, max_new_tokens=2048)
        self.candidate_sampling = candidate_sampling or SamplingConfig(
            temperature=0.7, max_new_tokens=self.sampling.max_new_tokens, seed=self.sampling.seed
        )
        self.score_sampling = score_sampling or SamplingConfig(temperature=0.0, max_new_tokens=512)
        self.system_prompt = system_prompt
        self.stats: Counter[str] = Counter()

    # -- srt ---------------------------------------------------------------------------------

    def answer(self, instructions: Sequence[str]) -> list[SrtAnswer]:
        """One pass of response -> feedback -> refinement; the refinement is the answer."""
        outputs = self.generator.chat(
            list(instructions), self.sampling, system_prompt=self.system_prompt, desc="srt answer"
        )
        answers = []
        for instruction, out in zip(instructions, outputs):
            parsed = parse_srt_output(out.text)
            feedback = parsed.feedback.feedback_text() if parsed.feedback is not None else _feedback_part(out.text)
            answer = SrtAnswer(
                instruction=instruction,
                answer=parsed.answer,
                mode="srt",
                response=parsed.response,
                raw=out.text,
                feedback=feedback,
                refinement=parsed.refinement,
                self_score=parsed.feedback.score if parsed.feedback is not None else None,
                parsed=parsed.failure is None,
                fallback=parsed.used_fallback,
                failure=parsed.failure.reason if parsed.failure is not None else None,
                finish_reason=out.finish_reason,
                num_new_tokens=out.num_new_tokens,
            )
            self.stats["answered"] += 1
            self.stats["parsed" if answer.parsed else "unparsed"] += 1
            if answer.fallback:
                self.stats["fallback_unparseable"] += 1
            elif not answer.parsed:
                self.stats["refinement_without_feedback"] += 1  # refinement used, feedback malformed
            if out.finish_reason == "length":
                self.stats["truncated"] += 1
            answers.append(answer)
        return answers

    # -- gated: the refinement only when the model's own re-score says it beats the response ----

    def gated(self, instructions: Sequence[str]) -> list[SrtAnswer]:
        """The ``srt`` pass, then a separate self-score of each refinement: the refinement is the
        answer only when it scores strictly higher than the response did (module docstring)."""
        answers = self.answer(instructions)
        todo = [k for k, a in enumerate(answers) if a.refinement is not None and not a.fallback]
        scores = self.score([answers[k].instruction for k in todo], [answers[k].refinement for k in todo], via="srt")
        rescored = dict(zip(todo, scores))
        out = []
        for k, a in enumerate(answers):
            score = rescored[k].score if k in rescored else None
            wins = score is not None and a.self_score is not None and score > a.self_score
            if not wins and (score is None or a.self_score is None):
                self.stats["gate_unscored"] += 1
            self.stats["gate_kept_refinement" if wins else "gate_kept_response"] += 1
            out.append(
                replace(
                    a,
                    mode="gated",
                    answer=a.refinement if wins else a.response,
                    refinement_score=score,
                    gate="refinement" if wins else "response",
                )
            )
        return out

    # -- plain -------------------------------------------------------------------------------

    def plain(self, instructions: Sequence[str]) -> list[SrtAnswer]:
        """The model's own answer; an SRT tail (from ``### Feedback`` on) is not generated/kept."""
        sampling = replace(self.sampling, stop=[*self.sampling.stop, FEEDBACK_HEADER])
        outputs = self.generator.chat(list(instructions), sampling, system_prompt=self.system_prompt, desc="answer")
        answers = []
        for instruction, out in zip(instructions, outputs):
            text = strip_srt_tail(out.text)
            answers.append(
                SrtAnswer(
                    instruction=instruction,
                    answer=text,
                    mode="plain",
                    response=text,
                    raw=out.text,
                    finish_reason=out.finish_reason,
                    num_new_tokens=out.num_new_tokens,
                )
            )
            self.stats["answered"] += 1
            if out.finish_reason == "length":
                self.stats["truncated"] += 1
        return answers

    # -- self-scoring and best-of-n re-ranking -----------------------------------------------

    def score(self, instructions: Sequence[str], responses: Sequence[str], via: ScoringVia = "srt") -> list[SelfScore]:
        """The model's own score (1..10) of each response.

        ``via="srt"``: an SRT model continues ``response + "### Feedback"`` in its assistant turn.
        ``via="critic_prompt"``: any chat model gets the critic prompt as the user message.
        Both stop at ``### Improved Response``: only the score is needed.
        """
        if len(instructions) != len(responses):
            raise ConfigError(f"got {len(responses)} responses for {len(instructions)} instructions")
        sampling = replace(self.score_sampling, stop=[*self.score_sampling.stop, REFINEMENT_HEADER])
        if via == "srt":
            outputs = self.generator.chat(
                list(instructions),
                sampling,
                assistant_prefixes=[self_critique_prefix(r) for r in responses],
                system_prompt=self.system_prompt,
                desc="self-score",
            )
        elif via == "critic_prompt":
            prompts = [render_critic_prompt(i, r) for i, r in zip(instructions, responses)]
            outputs = self.generator.chat(prompts, sampling, system_prompt=self.system_prompt, desc="self-score")
        else:
            raise ConfigError(f"unknown scoring method {via!r}; use 'srt' or 'critic_prompt'")
        scores = []
        for out in outputs:
            parsed = parse_score(out.text)
            if isinstance(parsed, ParseFailure):
                scores.append(SelfScore(None, out.text, parsed.reason))
                self.stats["score_parse_failures"] += 1
            else:
                scores.append(SelfScore(parsed, out.text))
            self.stats["scored"] += 1
        return scores

    def rerank(self, instructions: Sequence[str], n: int = 16, via: ScoringVia = "srt") -> list[SrtAnswer]:
        """Best-of-``n`` by self-score: sample ``n`` responses, score each, keep the best (ties: first)."""
        if n < 1:
            raise ConfigError(f"rerank n must be >= 1, got {n}")
        instructions = list(instructions)
        # Each instruction repeated n times: the generator gives every repeat its own random stream
        # (keyed by prompt and occurrence), so candidates differ and do not depend on batching.
        repeated = [ins for ins in instructions for _ in range(n)]
        sampling = replace(self.candidate_sampling, stop=[*self.candidate_sampling.stop, FEEDBACK_HEADER])
        outputs = self.generator.chat(repeated, sampling, system_prompt=self.system_prompt, desc=f"best-of-{n} samples")
        candidates = [strip_srt_tail(out.text) for out in outputs]
        scores = self.score(repeated, candidates, via=via)

        answers = []
        for i, instruction in enumerate(instructions):
            group = range(i * n, (i + 1) * n)
            best = max(group, key=lambda k: (scores[k].score or 0, -k))  # unscored ranks last; ties: first
            answers.append(
                SrtAnswer(
                    instruction=instruction,
                    answer=candidates[best],
                    mode="rerank",
                    response=candidates[best],
                    raw=outputs[best].text,
                    self_score=scores[best].score,
                    finish_reason=outputs[best].finish_reason,
                    num_new_tokens=sum(outputs[k].num_new_tokens for k in group),
                    candidates=[
                        {
                            "response": candidates[k],
                            "score": scores[k].score,
                            "feedback": scores[k].feedback,
                            "failure": scores[k].failure,
                        }
                        for k in group
                    ],
                )
            )
            self.stats["answered"] += 1
            if all(scores[k].score is None for k in group):
                self.stats["rerank_all_unscored"] += 1  # the first sample is used
        return answers

    def run(self, instructions: Sequence[str], mode: Mode, n: int = 16, via: ScoringVia = "srt") -> list[SrtAnswer]:
        if mode == "srt":
            return self.answer(instructions)
        if mode == "plain":
            return self.plain(instructions)
        if mode == "rerank":
            return self.rerank(instructions, n=n, via=via)
        if mode == "gated":
            return self.gated(instructions)
        raise ConfigError(f"unknown answer mode {mode!r}; use one of {', '.join(MODES)}")


def _feedback_part(text: str) -> str | None:
    """The raw text between ``### Feedback`` and ``### Improved Response`` (for traces of unparsed outputs)."""
    match = _FEEDBACK_LINE.search(text)
    if match is None:
        return None
    rest = text[match.end() :]
    end = rest.find(REFINEMENT_HEADER)
    return (rest if end < 0 else rest[:end]).strip()
