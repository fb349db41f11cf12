"""Self-judgement: does the model's own ``Overall Score: [[n]]`` tell its right answers from its wrong ones?

The paper's Table 5 analogue, on problems with gold answers. The model answers each held-out problem
(by default in ``srt`` mode: response -> feedback -> refinement); its own score of its *response* is
read, and the response is graded by exact match of its final number with the gold one (the
extractor of :mod:`srt_builtin.answers`, the one ``word_problems`` and the ``reference`` critic use).

Metrics:

* ``auroc``: the area under the ROC curve of the self-score as a classifier of right vs. wrong
  responses, i.e. the probability that a random right response scores higher than a random wrong
  one, ties counting one half (Mann-Whitney); over the responses with a parsed score. 50 is chance,
  100 perfect, 0 inverted; ``None`` when the scored responses are all right or all wrong.
* ``agreement``: as the paper counts it: over every pair of one right and one wrong response, the
  fraction where the right one is scored *strictly* higher. A tie or a pair with an unparsed score is
  no agreement; ``pairs``, ``pairs_agree``, ``pairs_tie``, ``pairs_disagree`` and ``pairs_unscored``
  give the counts. Every right response meets every wrong one (with greedy answers there is one
  response per problem, so the pairs are across problems).
* ``score_parse_rate`` (percent of responses with a parsed score), ``n_right`` / ``n_wrong``,
  ``mean_score_right`` / ``mean_score_wrong``, and per score the number of right and wrong
  responses (``meta.score_table``).

How the score is read (``scoring:``): ``inline`` takes the score the model wrote in its own SRT
feedback (the answer mode is then ``srt``, or the model's ``gated``: the same SRT pass, whose answers
``word_problems`` of a gated model already generated); ``srt`` / ``critic_prompt`` score the response
in a separate call (:meth:`srt.eval.model.EvalModel.self_scores`: self-critique in the assistant turn,
or the critic prompt as a user message, for plain chat models); ``auto`` (default) is ``inline``
for models evaluated with ``answer_mode: srt`` or ``gated``, else ``critic_prompt``.

Settings::

    self_judgement:
      data: configs/data/word_problems_heldout.jsonl   # the default
      fields: {id: id, instruction: instruction, reference: answer}
      limit: 48                  # first N problems (default: all)
      scoring: auto              # auto | inline | srt | critic_prompt
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from srt.eval.benchmark import BenchmarkResult, EvalContext, writes_srt_turn
from srt_builtin.answers import final_answer, format_number, same_number
from srt_builtin.benchmarks._settings import BenchmarkSettings, parse_settings
from srt_builtin.benchmarks.alpaca_winrate import file_digest, mean
from srt_builtin.benchmarks.word_problems import WordProblemFields, load_problems

DEFAULT_DATA = "configs/data/word_problems_heldout.jsonl"


def auroc(right: list[float], wrong: list[float]) -> float | None:
    """P(score of a right response > score of a wrong one) + P(tie) / 2, in percent (Mann-Whitney U
    over all right x wrong pairs); ``None`` when either list is empty."""
    if not right or not wrong:
        return None
    wins = sum((r > w) + 0.5 * (r == w) for r in right for w in wrong)
    return 100.0 * wins / (len(right) * len(wrong))


def pair_agreement(right: list[float | None], wrong: list[float | None]) -> dict[str, Any]:
    """The paper's agreement over every (right, wrong) pair: the right one scored strictly higher.
    ``None`` scores (unparsed) make the pair ``unscored``, which is no agreement."""
    counts = {"pairs": len(right) * len(wrong), "pairs_agree": 0, "pairs_tie": 0, "pairs_disagree": 0}
    counts["pairs_unscored"] = 0
    for r in right:
        for w in wrong:
            if r is None or w is None:
                counts["pairs_unscored"] += 1
            elif r > w:
                counts["pairs_agree"] += 1
            elif r == w:
                counts["pairs_tie"] += 1
            else:
                counts["pairs_disagree"] += 1
    counts["agreement"] = 100.0 * counts["pairs_agree"] / counts["pairs"] if counts["pairs"] else None
    return counts


def self_judgement_metrics(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Metrics of samples carrying ``response_correct`` (bool) and ``self_score`` (int or None)."""
    n = len(samples)
    scored = [s for s in samples if s["self_score"] is not None]
    right = [s["self_score"] for s in scored if s["response_correct"]]
    wrong = [s["self_score"] for s in scored if not s["response_correct"]]
    pairs = pair_agreement(
        [s["self_score"] for s in samples if s["response_correct"]],
        [s["self_score"] for s in samples if not s["response_correct"]],
    )
    return {
        "auroc": auroc(right, wrong),
        **pairs,
        "n_responses": n,
        "n_right": sum(bool(s["response_correct"]) for s in samples),
        "n_wrong": sum(not s["response_correct"] for s in samples),
        "score_parse_rate": 100.0 * len(scored) / n if n else None,
        "mean_score_right": mean(right),
        "mean_score_wrong": mean(wrong),
    }


def _load(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The problems of the data file, checked as ``word_problems`` checks them (``file:line`` errors)."""
    return load_problems({k: settings[k] for k in ("data", "fields", "limit")})


class SelfJudgementSettings(BenchmarkSettings):
    """``benchmarks: {self_judgement: {...}}`` (unknown keys are an error)."""

    data: str = Field(DEFAULT_DATA, description="JSONL or JSON file of problems with gold solutions")
    fields: WordProblemFields = Field(default_factory=WordProblemFields, description="Column names of the rows")
    limit: int | None = Field(None, ge=1, description="Use the first N problems only (None: all)")
    scoring: Literal["auto", "inline", "srt", "critic_prompt"] = Field(
        "auto",
        description="Where the self-score comes from: `inline` (the score in the model's own SRT feedback of its "
        "response), `srt` / `critic_prompt` (a separate self-scoring call of the response), `auto` (inline for "
        "models with answer_mode srt or gated, else critic_prompt)",
    )


class SelfJudgementBenchmark:
    """AUROC and pairwise agreement of the model's self-score with right/wrong (module docstring)."""

    name = "self_judgement"
    uses_judge = False  # the model judges itself
    settings_model = SelfJudgementSettings

    @classmethod
    def check_settings(cls, settings: SelfJudgementSettings) -> None:
        """Plan check, nothing loaded: the data file is readable and every row it uses has its fields."""
        _load(settings.model_dump())

    def __init__(self, settings: dict[str, Any]):
        self.settings = parse_settings(self.name, self.settings_model, settings)
        self.problems = _load(self.settings)
        path = Path(self.settings["data"]).expanduser()
        self.data_identity = f"{path.name}:sha256:{file_digest(path)}"

    @classmethod
    def from_config(cls, settings: dict[str, Any]) -> SelfJudgementBenchmark:
        return cls(dict(settings))

    def describe(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            **self.settings,
            "data_identity": self.data_identity,
            "num_problems": len(self.problems),
        }

    def run(self, model: Any, ctx: EvalContext) -> BenchmarkResult:
        scoring = self.settings["scoring"]
        if scoring == "auto":
            scoring = "inline" if writes_srt_turn(model.answer_mode) else "critic_prompt"
        mode = model.answer_mode
        if scoring == "inline" and not writes_srt_turn(mode):
            # Inline scores need an SRT turn. A gated model keeps its mode: the same response and self-score
            # as srt, and the answers its word_problems run generated (the same cache key).
            mode = "srt"
        items = [{"id": p["id"], "instruction": p["instruction"]} for p in self.problems]
        # The same cache key as word_problems: a run with both benchmarks generates the answers once.
        answers = model.answers(items, f"word_problems-{mode}", mode=mode, cache_dir=ctx.cache_dir)
        responses = [r["trace"]["response"] for r in answers]
        if scoring == "inline":
            scores = [
                {
                    "score": r["trace"]["self_score"],
                    "feedback": r["trace"]["feedback"],
                    "parsed": r["trace"].get("parsed"),
                    "fallback": r["trace"].get("fallback"),
                }
                for r in answers
            ]
        else:
            scored = [
                {"id": p["id"], "instruction": p["instruction"], "response": text}
                for p, text in zip(self.problems, responses)
            ]
            scores = model.self_scores(scored, "self_judgement_scores", via=scoring, cache_dir=ctx.cache_dir)
        samples = []
        for problem, response, score in zip(self.problems, responses, scores):
            got = final_answer(response)
            samples.append(
                {
                    "id": problem["id"],
                    "instruction": problem["instruction"],
                    "gold": format_number(problem["gold"]),
                    "response": response,
                    "response_extracted": None if got is None else format_number(got),
                    "response_correct": same_number(got, problem["gold"]),
                    "self_score": score["score"],
                    "feedback": score["feedback"],
                }
            )
            if score.get("parsed") is not None:  # inline SRT answers: srt-eval adds the SRT parse rates
                samples[-1].update(parsed=bool(score["parsed"]), fallback=bool(score["fallback"]))
        metrics = self_judgement_metrics(samples)
        table = Counter((s["self_score"], bool(s["response_correct"])) for s in samples)
        score_table = {
            str(k): {"right": table[(k, True)], "wrong": table[(k, False)]}
            for k in sorted({s["self_score"] for s in samples}, key=lambda v: (v is None, v or 0))
        }
        warnings_ = []
        if metrics["auroc"] is None:
            right = sum(s["response_correct"] for s in samples if s["self_score"] is not None)
            wrong = sum(not s["response_correct"] for s in samples if s["self_score"] is not None)
            warnings_.append(
                f"AUROC undefined: it needs scored right and wrong responses ({right} right, {wrong} wrong)"
            )
        if metrics["score_parse_rate"] is not None and metrics["score_parse_rate"] < 100:
            unparsed = metrics["n_responses"] - round(metrics["score_parse_rate"] * metrics["n_responses"] / 100)
            warnings_.append(f"{unparsed}/{metrics['n_responses']} responses have no parsed self-score")
        meta = {
            "scoring": scoring,
            "answer_mode": mode,
            "data": self.data_identity,
            "score_table": score_table,
            "warnings": warnings_,
        }
        plots = {
            "self_scores_right": [
                s["self_score"] for s in samples if s["self_score"] is not None and s["response_correct"]
            ],
            "self_scores_wrong": [
                s["self_score"] for s in samples if s["self_score"] is not None and not s["response_correct"]
            ],
        }
        units = {"auroc": "percent", "score_parse_rate": "percent", "mean_score_right": "score"}
        units.update(mean_score_wrong="score")
        return BenchmarkResult(metrics=metrics, samples=samples, meta=meta, plots=plots, units=units)
