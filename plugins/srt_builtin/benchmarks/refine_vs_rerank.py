"""Self-refinement vs best-of-n re-ranking by self-score (the paper's comparison, with n=16 there).

Both answers come from the same model on the same instructions:

* **refine**: one greedy pass response -> feedback -> refinement; the refinement is the answer
  (the response when the output cannot be parsed, counted);
* **rerank**: ``n`` responses sampled at T=0.7, each scored by the model itself (``scoring:
  srt``, the SRT self-critique; ``critic_prompt`` for plain chat models), the best-scored one kept.

A judge critic then compares them head to head, exactly like ``alpaca_eval`` (score-based, see
:mod:`srt_builtin.benchmarks.alpaca_winrate`), with rerank as the baseline: ``win_rate`` is the
win rate of refine over rerank (alpaca_eval's ``get_winrate``). Rerank costs about ``2n``
generations per instruction against one for refine; the token counts are reported.

Data: the alpaca_eval instruction sets (``data: fixture`` | JSON/JSONL path | ``hub``); only the
instructions are used. ``n`` defaults to 4 here for speed (the paper uses 16).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from srt.eval.benchmark import BenchmarkResult, EvalContext, writes_srt_turn
from srt_builtin.benchmarks._settings import BenchmarkSettings, parse_settings
from srt_builtin.benchmarks.alpaca_winrate import (
    DATA_HELP,
    JUDGE_HELP,
    answer_stats,
    check_data,
    judge_head_to_head,
    judge_spec,
    load_alpaca_items,
    mean,
    winrate_metrics,
)


class RefineVsRerankSettings(BenchmarkSettings):
    """``benchmarks: {refine_vs_rerank: {...}}`` (unknown keys are an error)."""

    data: str = Field("fixture", description=DATA_HELP + "; only the instructions are used")
    subset: str = Field("alpaca_eval_gpt4_baseline", description="With `data: hub`: the alpaca_eval subset")
    limit: int | None = Field(None, ge=1, description="Evaluate the first N instructions only (None: all)")
    judge: str | dict[str, Any] | None = Field(None, description=JUDGE_HELP)
    n: int = Field(4, ge=1, description="Candidates sampled for best-of-n re-ranking (the paper uses 16)")
    scoring: Literal["srt", "critic_prompt"] = Field(
        "srt",
        description="How rerank candidates are self-scored: `srt` (the SRT self-critique) or `critic_prompt` "
        "(the critic prompt as a user message, for plain chat models)",
    )


class RefineVsRerankBenchmark:
    """Win rate of self-refinement over best-of-n self-score re-ranking (module docstring)."""

    name = "refine_vs_rerank"
    uses_judge = True
    settings_model = RefineVsRerankSettings

    @classmethod
    def check_settings(cls, settings: RefineVsRerankSettings) -> None:
        """Plan check, nothing loaded: a judge is named and the data file is readable (``file:line`` errors)."""
        judge_spec(cls.name, settings.judge)
        check_data(settings.data)

    def __init__(self, settings: dict[str, Any]):
        self.settings = parse_settings(self.name, self.settings_model, settings)
        self.judge_name, self.judge_settings = judge_spec(self.name, self.settings["judge"])
        self.items, self.data_identity = load_alpaca_items(
            self.settings["data"], self.settings["subset"], self.settings["limit"]
        )

    @classmethod
    def from_config(cls, settings: dict[str, Any]) -> RefineVsRerankBenchmark:
        return cls(dict(settings))

    def describe(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            **self.settings,
            "data_identity": self.data_identity,
            "num_items": len(self.items),
        }

    def run(self, model: Any, ctx: EvalContext) -> BenchmarkResult:
        n = self.settings["n"]
        refine = model.answers(self.items, "answers", mode="srt", cache_dir=ctx.cache_dir)
        rerank = model.answers(
            self.items, "answers", mode="rerank", n=n, scoring=self.settings["scoring"], cache_dir=ctx.cache_dir
        )
        critic = ctx.make_critic(self.judge_name, self.judge_settings)
        judged = judge_head_to_head(
            critic,
            [it["instruction"] for it in self.items],
            [r["answer"] for r in rerank],  # baseline (output_1)
            [r["answer"] for r in refine],  # the method compared (output_2)
            [it["id"] for it in self.items],
        )
        samples = []
        for item, ref, rr, judgement in zip(self.items, refine, rerank, judged):
            samples.append(
                {
                    "id": item["id"],
                    "instruction": item["instruction"],
                    "refine": ref["answer"],
                    "rerank": rr["answer"],
                    **judgement,
                    "refine_trace": ref["trace"],
                    "rerank_trace": rr["trace"],
                }
            )
        metrics = winrate_metrics([{"preference": j["preference"]} for j in judged])
        stats = answer_stats(refine)
        picked_scores = [r["trace"]["self_score"] for r in rerank if r["trace"]["self_score"] is not None]
        candidate_scores = [c["score"] for r in rerank for c in r["trace"]["candidates"] if c["score"] is not None]
        count = len(self.items)
        metrics.update(
            judge_failures=sum(j["preference"] is None for j in judged),
            refine_parsed_rate=100 * stats["srt_parsed"] / count,
            refine_fallback_rate=100 * stats["srt_fallback_unparseable"] / count,
            rerank_scored_rate=100 * len(candidate_scores) / (count * n),
            rerank_mean_self_score=mean(picked_scores),
            avg_length_refine=mean([len(r["answer"]) for r in refine]),
            avg_length_rerank=mean([len(r["answer"]) for r in rerank]),
            new_tokens_refine=mean([r["trace"]["num_new_tokens"] for r in refine]),
            new_tokens_rerank=mean([r["trace"]["num_new_tokens"] for r in rerank]),  # candidates only
        )
        warnings_ = []
        if not writes_srt_turn(model.answer_mode):
            warnings_.append(
                "model is not marked answer_mode: srt (or gated); self-refinement needs an SRT-trained model "
                "(an untrained one falls back to its first response)"
            )
        if metrics["judge_failures"]:
            warnings_.append(f"{metrics['judge_failures']}/{count} pairs have no judge preference")
        if metrics["rerank_scored_rate"] < 100:
            warnings_.append(
                f"{100 - metrics['rerank_scored_rate']:.0f}% of rerank candidates got no self score "
                "(unscored candidates rank last; all unscored -> the first sample)"
            )
        meta = {
            "judge": critic.describe(),
            "baseline": f"best-of-{n} re-ranking by self-score ({self.settings['scoring']})",
            "refine_stats": stats,
            "data": self.data_identity,
            "warnings": warnings_,
        }
        plots = {
            "rerank_candidate_self_scores": candidate_scores,
            "refine_self_scores": [r["trace"]["self_score"] for r in refine if r["trace"]["self_score"] is not None],
        }
        return BenchmarkResult(metrics=metrics, samples=samples, meta=meta, plots=plots)
