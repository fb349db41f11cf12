"""Word problems with gold answers: exact match of the final number (the demo's held-out evaluation).

Any JSONL/JSON file of ``{id, instruction, answer}`` rows works, where ``answer`` is a GSM8K-style
gold solution ending ``#### <number>`` (or just the number); ``fields`` maps other column names.
The shipped data is ``configs/data/word_problems_heldout.jsonl`` (generated for srt; see
``configs/data/README.md``). There are no few-shot exemplars: the model answers the question as
its user message, in its answer mode (``plain``; ``srt``: response -> feedback -> refinement,
the refinement is the answer, the response when there is none; or ``gated``: that pass, then the
refinement only when the model's own re-score of it beats its response's score, else the response).

Scoring: the final number of the answer (:mod:`srt_builtin.answers`, the extractor the
``reference`` critic grades with) equals the gold number exactly. Each sample records ``correct``;
in ``srt`` mode also ``response_correct`` (the first response scored alone), the model's own
``self_score`` (its ``Overall Score: [[n]]``), ``parsed`` and ``fallback``; in ``gated`` mode also
``gate`` (``refinement`` | ``response``: which one is the answer), ``refinement_score`` (the model's
re-score of its refinement) and ``refinement_correct`` (the refinement scored alone; None without
one). From these ``srt-eval`` derives accuracy ± standard error, response accuracy, fixed / broken
by refinement, the parse rate, for gated answers how often the gate kept the refinement / the
response and how often its choice was the right one, and paired comparisons between models
(:mod:`srt.eval.report`). ``rubric`` is the ``reference`` critic's 1-10 score of the same answer
(10: right with work shown, 4: wrong with work).

Settings::

    word_problems:
      data: configs/data/word_problems_heldout.jsonl   # required
      fields: {id: id, instruction: instruction, reference: answer}   # the defaults
      limit: 48                                        # first N rows (default: all)
      answer_mode: null                                # plain | srt | gated (default: the model's)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from srt.eval.benchmark import BenchmarkResult, EvalContext, writes_srt_turn
from srt.eval.data import DataRows
from srt_builtin.answers import final_answer, format_number, gold_answer, same_number
from srt_builtin.benchmarks._settings import BenchmarkSettings, parse_settings
from srt_builtin.benchmarks.alpaca_winrate import file_digest, mean
from srt_builtin.critics.reference_critic import grade


class WordProblemFields(BenchmarkSettings):
    """Which column of a row holds what."""

    id: str = Field("id", description="Column of the problem id (a row without it gets `row-<n>`)")
    instruction: str = Field("instruction", description="Column of the question the model answers")
    reference: str = Field("answer", description="Column of the gold solution (`... #### <number>` or a number)")


class WordProblemsSettings(BenchmarkSettings):
    """``benchmarks: {word_problems: {...}}`` (unknown keys are an error)."""

    data: str = Field(description="JSONL or JSON file of problems with gold solutions (required)")
    fields: WordProblemFields = Field(default_factory=WordProblemFields, description="Column names of the rows")
    limit: int | None = Field(None, ge=1, description="Evaluate the first N problems only (None: all)")
    answer_mode: Literal["plain", "srt", "gated"] | None = Field(
        None, description="plain | srt | gated; None: the model's answer_mode"
    )


def load_problems(settings: WordProblemsSettings | dict[str, Any]) -> list[dict[str, Any]]:
    """The problems ``{id, instruction, reference, gold}`` of the data file, checked row by row
    (``file:line`` errors: a missing or empty field, a gold solution without a number, a duplicate id)."""
    if isinstance(settings, dict):
        settings = WordProblemsSettings.model_validate(settings)
    f = settings.fields
    rows = DataRows(Path(settings.data).expanduser(), "word_problems data file")
    problems = []
    for n, raw, row in rows:
        for key in (f.instruction, f.reference):
            if not isinstance(row.get(key), str) or not row[key].strip():
                rows.bad(n, raw, f"needs a non-empty string {key!r}")
        gold = gold_answer(row[f.reference])
        if gold is None:
            rows.bad(n, raw, f"{f.reference!r} holds no numeric final answer (expected '... #### <number>')")
        pid = str(row.get(f.id, f"row-{n}"))
        rows.unique(n, raw, pid)
        problems.append({"id": pid, "instruction": row[f.instruction], "reference": row[f.reference], "gold": gold})
        if settings.limit is not None and len(problems) >= settings.limit:
            break
    if not problems:
        raise rows.empty_error()
    return problems


def score(text: str | None, gold) -> dict[str, Any]:
    """The extracted final number, its exact match with ``gold``, and the reference critic's rubric score."""
    got = final_answer(text)
    return {
        "extracted": None if got is None else format_number(got),
        "correct": same_number(got, gold),
        "rubric": grade(text or "", gold).score,
    }


class WordProblemsBenchmark:
    """Exact match of the final number on word problems (module docstring)."""

    name = "word_problems"
    uses_judge = False
    settings_model = WordProblemsSettings

    @staticmethod
    def check_answer(text: str, reference: str) -> bool | None:
        """Whether ``text``'s final number is the gold answer of ``reference`` (None: it has none); the
        stage-2 report's pair precision reads it (``stage2.answer_checker: word_problems``)."""
        gold = gold_answer(reference)
        return None if gold is None else same_number(final_answer(text), gold)

    @classmethod
    def check_settings(cls, settings: WordProblemsSettings) -> None:
        """Plan check, nothing loaded: the data file is readable and every row it uses has its fields."""
        load_problems(settings)

    def __init__(self, settings: dict[str, Any]):
        self.settings = parse_settings(self.name, self.settings_model, settings)
        self.problems = load_problems(self.settings)
        self.data_identity = f"{Path(self.settings['data']).name}:sha256:{file_digest(Path(self.settings['data']))}"

    @classmethod
    def from_config(cls, settings: dict[str, Any]) -> WordProblemsBenchmark:
        return cls(dict(settings))

    def describe(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            **self.settings,
            "data_identity": self.data_identity,
            "num_problems": len(self.problems),
        }

    def run(self, model: Any, ctx: EvalContext) -> BenchmarkResult:
        mode = self.settings["answer_mode"] or model.answer_mode
        items = [{"id": p["id"], "instruction": p["instruction"]} for p in self.problems]
        answers = model.answers(items, f"{self.name}-{mode}", mode=mode, cache_dir=ctx.cache_dir)
        samples = []
        for problem, result in zip(self.problems, answers):
            trace = result["trace"]
            sample = {
                "id": problem["id"],
                "instruction": problem["instruction"],
                "gold": format_number(problem["gold"]),
                "mode": mode,
                "answer": result["answer"],
                **score(result["answer"], problem["gold"]),
                "finish_reason": trace.get("finish_reason"),
            }
            if writes_srt_turn(mode):
                response = score(trace["response"], problem["gold"])
                sample.update(
                    response=trace["response"],
                    response_extracted=response["extracted"],
                    response_correct=response["correct"],
                    rubric_response=response["rubric"],
                    feedback=trace["feedback"],
                    self_score=trace["self_score"],
                    parsed=bool(trace["parsed"]),
                    fallback=bool(trace["fallback"]),
                )
            if mode == "gated":
                refinement = trace.get("refinement")
                sample.update(
                    gate=trace["gate"],
                    refinement_score=trace.get("refinement_score"),
                    refinement_correct=None if refinement is None else score(refinement, problem["gold"])["correct"],
                )
            samples.append(sample)

        metrics: dict[str, float | None] = {
            "rubric_mean": mean([s["rubric"] for s in samples]),
            "truncated": sum(s["finish_reason"] == "length" for s in samples),
        }
        plots: dict[str, list[float]] = {"rubric": [s["rubric"] for s in samples]}
        if writes_srt_turn(mode):
            self_scores = [s["self_score"] for s in samples if s["self_score"] is not None]
            metrics["rubric_response_mean"] = mean([s["rubric_response"] for s in samples])
            metrics["self_score_mean"] = mean(self_scores)
            plots["rubric_response"] = [s["rubric_response"] for s in samples]
            plots["self_score"] = self_scores
        if mode == "gated":
            refinement_scores = [s["refinement_score"] for s in samples if s["refinement_score"] is not None]
            metrics["refinement_score_mean"] = mean(refinement_scores)
            plots["refinement_score"] = refinement_scores
        meta = {"answer_mode": mode, "data": self.data_identity, "warnings": []}
        if metrics["truncated"]:
            meta["warnings"].append(
                f"{metrics['truncated']}/{len(samples)} answers hit max_new_tokens (scored as they are)"
            )
        return BenchmarkResult(metrics=metrics, samples=samples, meta=meta, plots=plots)
