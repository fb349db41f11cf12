"""Critic for data with gold answers (math word problems): offline, deterministic, no model.

Each request carries ``reference``: a gold solution in GSM8K style (``...worked steps...\\n#### 42``)
or just the final number. The critic extracts the response's final numeric answer, compares it
with the gold answer, and writes feedback in the critic output format of
:mod:`srt.critic_template`, with the gold solution (cleaned into a worked solution ending
``The answer is N.``) as the improved response.

The final answer of a text and the gold answer are read by :mod:`srt_builtin.answers`, the
extractor the ``word_problems`` benchmark scores with, so the critic's verdict and the benchmark's
exact match agree.

Rubric (``Overall Score``):

====  =======================================================================
10    correct final answer, reasoning shown, final answer stated explicitly
 9    correct final answer, reasoning shown, but the answer is only implicit
 7    correct final answer without reasoning (a bare number)
 4    wrong final answer, with reasoning shown
 3    wrong final answer, no reasoning
 2    no numeric final answer, but some attempt (5+ words)
 1    no numeric final answer and (almost) nothing else
====  =======================================================================

"Reasoning shown" means the text outside the final-answer statement holds at least one number and
at least three words (or a calculation such as ``48 + 24``). The cleaned gold solution of a GSM8K
item therefore scores 10, so as a refinement it beats any wrong response and ties a correct,
worked one. A bare-number gold becomes ``The answer is N.``, which scores 7: it beats wrong
answers, ties bare correct ones, and loses to a correct worked response (the pair is then
rightly filtered out).

``mode="score"`` scores the given text by the same rubric and writes only the feedback part.
A request without a reference, or with a reference that holds no number, is a reply with
``error`` set (counted as a critic error by the pipeline), never an exception.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from srt.critic import CritiqueReply, CritiqueRequest
from srt.critic_template import TEMPLATE_HASH, TEMPLATE_VERSION, render_critique
from srt.errors import CriticError
from srt_builtin.answers import GOLD_ANSWER_LINE_RE, NUMBER_RE, analyze_answer, format_number, gold_answer, same_number

NO_REFERENCE_ERROR = "reference critic needs a gold answer"

_GSM8K_CALCULATOR_RE = re.compile(r"<<[^<>]*>>")  # GSM8K's "<<48/2=24>>" calculator annotations


def clean_gold_solution(reference: str, answer: Fraction) -> str:
    """The gold solution as a clean worked solution ending ``The answer is N.``."""
    text = _GSM8K_CALCULATOR_RE.sub("", reference)
    text = GOLD_ANSWER_LINE_RE.sub("", text).strip()
    final = f"The answer is {format_number(answer)}."
    if not text or NUMBER_RE.fullmatch(text.rstrip(".").strip().lstrip("$")):
        return final  # a bare-number reference ("42")
    last_line = text.splitlines()[-1]
    last = analyze_answer(last_line)
    if last.explicit and last.answer == answer:
        return text  # already ends with its own answer statement
    return f"{text}\n{final}"


class ReferenceCriticSettings(BaseModel):
    """The ``critic:`` section for ``name: reference`` (unknown keys are an error)."""

    model_config = ConfigDict(extra="forbid")

    rel_tolerance: float = Field(
        1e-6, ge=0, description="Answers within this relative tolerance count as equal (1e-6: only rounding noise)"
    )
    # For SRT training data: the model later writes this feedback itself, without the gold answer,
    # and a model trained on "the correct answer is N" learns to invent an N and copy it.
    reveal_answer: bool = Field(
        True,
        description="Name the gold answer in the feedback of a wrong response; false for SRT training data",
    )


@dataclass
class RubricResult:
    score: int
    weaknesses: list[str]
    suggestions: list[str]


def grade(text: str, gold: Fraction, rel_tolerance: float = 1e-6, reveal_answer: bool = True) -> RubricResult:
    """Score ``text`` against the gold answer by the rubric of the module doc, with feedback."""
    a = analyze_answer(text)
    gold_s = format_number(gold)
    if a.answer is None:
        weak = ["The response gives no numeric final answer, so the question is left unanswered."]
        sugg = [
            "Work through the problem step by step, computing each intermediate quantity.",
            "End with the final answer as a number, in the form 'The answer is N.'.",
        ]
        return RubricResult(2 if a.words >= 5 else 1, weak, sugg)
    got_s = format_number(a.answer)
    correct = same_number(a.answer, gold, rel_tolerance)
    if correct:
        if a.shows_work and a.explicit:
            return RubricResult(
                10,
                [f"No significant weaknesses: the final answer {got_s} is correct and the reasoning is shown."],
                ["Keep the worked steps; briefly double-check each calculation before stating the answer."],
            )
        if a.shows_work:
            return RubricResult(
                9,
                [
                    f"The final answer {got_s} is correct, but it is never stated explicitly; the reader must "
                    "guess which number is the answer."
                ],
                [f"Finish with an explicit statement of the result: 'The answer is {got_s}.'."],
            )
        return RubricResult(
            7,
            [f"The final answer {got_s} is correct, but no reasoning is shown, so it cannot be checked."],
            [
                "Show the intermediate steps: name each quantity, the operation used, and its result.",
                f"Then state the result: 'The answer is {got_s}.'.",
            ],
        )
    # reveal_answer=False (SRT training data): the same feedback without the gold answer.
    weak = [f"The final answer {got_s} is wrong" + (f": the correct answer is {gold_s}." if reveal_answer else ".")]
    stated = gold_s if reveal_answer else "N"
    if a.shows_work:
        weak.append("The reasoning contains an error: re-check which quantities are combined and each calculation.")
        recompute = (
            f"Recompute the result, which should be {gold_s}," if reveal_answer else "Recompute the result step by step"
        )
        sugg = [
            "Re-read the question and list the given quantities before computing.",
            "Verify each step's arithmetic and that it answers what is asked.",
            f"{recompute} and state it as 'The answer is {stated}.'.",
        ]
        return RubricResult(4, weak, sugg)
    weak.append("No reasoning is shown, so the error cannot be located.")
    check = f"Check the result (it should be {gold_s})" if reveal_answer else "Check the result"
    sugg = [
        "Solve the problem step by step, showing each intermediate calculation.",
        f"{check} and state it as 'The answer is {stated}.'.",
    ]
    return RubricResult(3, weak, sugg)


def _bullets(items: list[str]) -> str:
    return "\n".join(f"- {item}" for item in items)


class ReferenceCritic:
    name = "reference"
    settings_model = ReferenceCriticSettings
    needs_reference = True  # every instruction needs its gold answer (data.*.fields.reference)

    def __init__(self, settings: ReferenceCriticSettings):
        self.settings = settings

    @classmethod
    def from_config(cls, settings: dict[str, Any], policy: Any | None = None) -> ReferenceCritic:
        try:
            parsed = ReferenceCriticSettings.model_validate(dict(settings or {}))
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<settings>'}: {e['msg']}" for e in err.errors()
            )
            raise CriticError(f"critic 'reference': invalid settings: {problems}") from None
        return cls(parsed)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": None,  # rule-based: no model
            "rubric": "reference-v1",
            "rel_tolerance": self.settings.rel_tolerance,
            "reveal_answer": self.settings.reveal_answer,
            "template_version": TEMPLATE_VERSION,
            "template_hash": TEMPLATE_HASH,
        }

    def critique(self, requests: Sequence[CritiqueRequest]) -> list[CritiqueReply]:
        return [self._one(r) for r in requests]

    def _one(self, request: CritiqueRequest) -> CritiqueReply:
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}  # no model is called
        if not request.reference or not request.reference.strip():
            return CritiqueReply(text=None, error=NO_REFERENCE_ERROR, usage=usage)
        gold = gold_answer(request.reference)
        if gold is None:
            return CritiqueReply(
                text=None, error=f"reference of {request.id!r} holds no numeric final answer", usage=usage
            )
        result = grade(request.response or "", gold, self.settings.rel_tolerance, self.settings.reveal_answer)
        improved = None if request.mode == "score" else clean_gold_solution(request.reference, gold)
        text = render_critique(_bullets(result.weaknesses), _bullets(result.suggestions), result.score, improved)
        return CritiqueReply(text=text, usage=usage)
