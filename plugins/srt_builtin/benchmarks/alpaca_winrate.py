"""AlpacaEval-style judged win rate: the model's answers against reference answers.

Protocol. The model answers every instruction (``plain``, ``srt`` -> the refinement, or
``rerank`` best-of-n). A **judge**, which is any critic plugin (``judge: {name: openai, ...}``,
``hf``, ``reference``, a third-party critic...), scores each output separately in score mode
(``Overall Score: [[n]]``); the output with the higher score wins, equal scores are a tie (1.5),
and a pair where either score is missing is not a preference (alpaca_eval drops it; counted as
``judge_failures``). The preferences are then turned into numbers by alpaca_eval itself:
``alpaca_eval.metrics.get_winrate`` (win rate, standard error, wins/draws) and
``get_length_controlled_winrate`` (length-controlled win rate).

Why score-based: our critics speak the critic format (one response at a time), not a pairwise
prompt. Each output is scored on its own, so there is no "first/second position" and the
position bias of pairwise judges does not arise; ``both_orders`` (swap-and-average for pairwise
judges) therefore has nothing to swap, and is recorded as not applicable.

Length-controlled win rate, offline. alpaca_eval fits a GLM on the annotations; its
``length_controlled_v1`` needs per-instruction difficulties of the official 805-prompt set and
downloads ``df_gamed.csv``. We use ``glm_name="length_controlled_minimal"`` (length term + model
term only) and hand alpaca_eval a local stand-in for ``df_gamed.csv`` (the minimal formula does not
read the difficulties it holds), so it runs offline on any instruction set. It is reported as
None with a warning when it does not apply: fewer than ``lc_min_items`` judged pairs, one side
never winning, a failed fit, or a fit that shrank every weight to zero (exactly 50% by
construction). Its standard error is not reported: the minimal GLM predicts one probability for
all instructions, so alpaca_eval's per-item standard error is 0 by construction. On custom sets
it is a within-run length correction, not a leaderboard number.

Data (``data:``): ``fixture`` (default; 16 hand-written items shipped with srt), a local
``.json``/``.jsonl`` with ``instruction`` and ``output`` (the reference; optional ``id``,
``generator``, ``dataset``), or ``hub`` for ``tatsu-lab/alpaca_eval`` through alpaca_eval's loader
(``subset: alpaca_eval_gpt4_baseline`` = AlpacaEval 2.0 references, ``alpaca_eval`` = 1.0,
text-davinci-003; needs the network).
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from srt.critic import CritiqueRequest
from srt.critic_template import ParseFailure, parse_score
from srt.errors import ConfigError, SrtError
from srt.eval.benchmark import BenchmarkResult, EvalContext, writes_srt_turn
from srt.eval.data import DataRows
from srt.io import file_sha256
from srt_builtin.benchmarks._settings import BenchmarkSettings, parse_settings

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).parent / "data"
FIXTURE = DATA_DIR / "alpaca_eval.jsonl"
HUB_ID = "tatsu-lab/alpaca_eval"
DATA_HELP = (
    "`fixture` (16 hand-written items shipped with srt), a local .json/.jsonl file with `instruction` and `output` "
    "(the reference answer; optional `id`, `generator`, `dataset`), or `hub` (tatsu-lab/alpaca_eval; needs the network)"
)
JUDGE_HELP = "The judge critic, `{name: <critic plugin>, <its settings>}` or a plugin name; default: the run's `judge`"


# -- settings ----------------------------------------------------------------------------------


class AlpacaEvalSettings(BenchmarkSettings):
    """``benchmarks: {alpaca_eval: {...}}`` (unknown keys are an error)."""

    data: str = Field("fixture", description=DATA_HELP)
    subset: str = Field(
        "alpaca_eval_gpt4_baseline",
        description="With `data: hub`: `alpaca_eval_gpt4_baseline` (AlpacaEval 2.0 references) or `alpaca_eval` (1.0)",
    )
    limit: int | None = Field(None, ge=1, description="Evaluate the first N items only (None: all)")
    judge: str | dict[str, Any] | None = Field(None, description=JUDGE_HELP)
    answer_mode: Literal["plain", "srt", "gated", "rerank"] | None = Field(
        None, description="How the model answers; None: the model's own answer_mode"
    )
    n: int = Field(16, ge=1, description="Candidates per instruction for `answer_mode: rerank`")
    both_orders: bool = Field(
        False, description="Swap-and-average against position bias; recorded as not applicable to score-based judging"
    )
    lc_min_items: int = Field(
        10, ge=1, description="Fewest judged pairs for the length-controlled win rate (below: None, with a warning)"
    )
    glm_name: str = Field(
        "length_controlled_minimal",
        description="alpaca_eval's GLM for the length-controlled win rate; only length_controlled_minimal runs offline",
    )


def check_data(data: str) -> None:
    """Plan check: a local data file exists and every row is usable (hub data is loaded when the run starts)."""
    if data != "hub":
        load_alpaca_items(data)


# -- settings helpers shared by the judged benchmarks -----------------------------------------


def judge_spec(benchmark: str, judge: Any) -> tuple[str, dict[str, Any]]:
    """``{name: critic, <critic settings>}`` (or just a name) -> (name, settings)."""
    if isinstance(judge, str):
        return judge, {}
    if not isinstance(judge, dict) or not isinstance(judge.get("name"), str):
        raise ConfigError(
            f"benchmark {benchmark!r} needs a judge critic: set `judge: {{name: <critic>, ...}}` in its settings "
            "or the run's `judge:` (e.g. --judge openai; see `srt-eval plugins` for installed critics)"
        )
    settings = {k: v for k, v in judge.items() if k != "name"}
    return judge["name"], settings


def file_digest(path: Path) -> str:
    return file_sha256(path)[:16]


# -- data ------------------------------------------------------------------------------------


def load_alpaca_items(
    data: str, subset: str = "alpaca_eval_gpt4_baseline", limit: int | None = None
) -> tuple[list[dict[str, Any]], str]:
    """(items with id/instruction/output/generator, a data identity for the run record)."""
    if data == "hub":
        items, identity = _load_hub(subset), f"hub:{HUB_ID}/{subset}"
    else:
        path = FIXTURE if data == "fixture" else Path(data).expanduser()
        items, identity = _load_file(path), f"{path.name}:sha256:{file_digest(path)}"
    if limit is not None:
        items = items[:limit]
    if not items:
        raise SrtError(f"alpaca_eval data {data!r} holds no items")
    return items, identity


def _load_hub(subset: str) -> list[dict[str, Any]]:
    try:
        from alpaca_eval.constants import get_alpaca_eval_data

        rows = get_alpaca_eval_data(dataset=subset)
    except Exception as err:  # offline, or the hub set moved
        raise SrtError(
            f"cannot load {HUB_ID} ({subset}) from the hub: {type(err).__name__}: {err}. Offline, use the "
            "shipped fixture (data: fixture) or a local JSONL with instruction/output"
        ) from err
    return [
        {
            "id": f"alpaca_eval-{i}",
            "instruction": r["instruction"],
            "output": r["output"],
            "generator": r.get("generator", subset),
            "dataset": r.get("dataset"),
        }
        for i, r in enumerate(rows)
    ]


def _load_file(path: Path) -> list[dict[str, Any]]:
    rows = DataRows(path, "alpaca_eval data file")
    items = []
    for n, raw, row in rows:
        for key in ("instruction", "output"):
            if not isinstance(row.get(key), str):
                rows.bad(n, raw, f"needs a string {key!r} (the reference answer is 'output')")
        item_id = str(row.get("id", f"{path.stem}-{n}"))
        rows.unique(n, raw, item_id)
        items.append(
            {
                "id": item_id,
                "instruction": row["instruction"],
                "output": row["output"],
                "generator": row.get("generator", "reference"),
                "dataset": row.get("dataset"),
            }
        )
    return items


# -- judging ---------------------------------------------------------------------------------


def judge_scores(critic: Any, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Score each ``{id, instruction, response}`` with the judge critic (score mode).

    Returns ``{score, failure}`` per item: ``score`` None when the call failed (``failure`` =
    the critic's error) or the output had no valid score (``failure`` = the parse reason).
    """
    requests = [
        CritiqueRequest(id=str(it["id"]), instruction=it["instruction"], response=it["response"], mode="score")
        for it in items
    ]
    replies = critic.critique(requests)
    if len(replies) != len(requests):
        raise SrtError(
            f"judge {getattr(critic, 'name', critic)!r} returned {len(replies)} replies for {len(requests)} requests"
        )
    scores = []
    for reply in replies:
        if reply.text is None:
            scores.append({"score": None, "failure": f"judge error: {reply.error}", "judge_output": None})
            continue
        parsed = parse_score(reply.text)
        if isinstance(parsed, ParseFailure):
            scores.append({"score": None, "failure": parsed.reason, "judge_output": reply.text})
        else:
            scores.append({"score": parsed, "failure": None, "judge_output": reply.text})
    return scores


def preference(score_baseline: int | None, score_model: int | None) -> float | None:
    """alpaca_eval's encoding: 1 = baseline (output_1) wins, 2 = model (output_2) wins, 1.5 = tie."""
    if score_baseline is None or score_model is None:
        return None
    if score_model > score_baseline:
        return 2.0
    if score_model < score_baseline:
        return 1.0
    return 1.5


def judge_head_to_head(
    critic: Any,
    instructions: Sequence[str],
    baseline_outputs: Sequence[str],
    model_outputs: Sequence[str],
    ids: Sequence[str],
) -> list[dict[str, Any]]:
    """Score both sides with the judge and derive the preference of each pair."""
    n = len(instructions)
    scored = judge_scores(
        critic,
        [
            {"id": f"{i}:baseline", "instruction": ins, "response": out}
            for i, ins, out in zip(ids, instructions, baseline_outputs)
        ]
        + [
            {"id": f"{i}:model", "instruction": ins, "response": out}
            for i, ins, out in zip(ids, instructions, model_outputs)
        ],
    )
    judged = []
    for k in range(n):
        base, model = scored[k], scored[n + k]
        judged.append(
            {
                "score_baseline": base["score"],
                "score_model": model["score"],
                "preference": preference(base["score"], model["score"]),
                "judge_failure": base["failure"] or model["failure"],
                "judge_output_baseline": base["judge_output"],
                "judge_output_model": model["judge_output"],
            }
        )
    return judged


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value


def winrate_metrics(annotations: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """alpaca_eval's ``get_winrate`` on ``[{preference}]`` (None = no preference, dropped by alpaca_eval)."""
    from alpaca_eval.metrics import get_winrate

    prefs = [{"preference": math.nan if a["preference"] is None else a["preference"]} for a in annotations]
    if not any(p["preference"] == p["preference"] for p in prefs):  # nothing judged: alpaca_eval has no rate
        return {
            "win_rate": None,
            "standard_error": None,
            "n_wins": 0,
            "n_wins_base": 0,
            "n_draws": 0,
            "n_total": 0,
            "discrete_win_rate": None,
        }
    return {k: _plain(v) for k, v in get_winrate(prefs).items()}


@contextlib.contextmanager
def _offline_df_gamed(num_items: int) -> Iterator[None]:
    """Serve alpaca_eval a local stand-in for ``df_gamed.csv`` instead of downloading it.

    ``length_controlled_minimal`` never reads the instruction difficulties it holds; the file only
    needs one row per annotation index, which it gets (difficulty 0).
    """
    import pandas as pd
    from alpaca_eval.metrics import glm_winrate

    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp) / "df_gamed.csv"
        pd.DataFrame({"model": "srt-offline-stub", "index": range(num_items), "instruction_difficulty": 0.0}).to_csv(
            stub, index=False
        )
        original = glm_winrate.hf_hub_download
        glm_winrate.hf_hub_download = lambda *args, **kwargs: str(stub)
        try:
            yield
        finally:
            glm_winrate.hf_hub_download = original


def length_controlled(
    annotations: Sequence[dict[str, Any]], min_items: int, glm_name: str = "length_controlled_minimal"
) -> tuple[dict[str, Any], str | None]:
    """({length_controlled_winrate, lc_standard_error}, warning or None) from alpaca_eval's GLM.

    ``annotations``: ``{instruction, output_1 (baseline), output_2 (model), generator_1,
    generator_2, preference}`` dicts; pairs without a preference are left out.
    """
    import pandas as pd
    from alpaca_eval.metrics import get_length_controlled_winrate

    none = {"length_controlled_winrate": None, "lc_standard_error": None}
    if glm_name != "length_controlled_minimal":
        return (
            none,
            f"glm {glm_name!r} needs alpaca_eval's hub files for the 805-prompt set; only length_controlled_minimal runs offline",
        )
    rows = [a for a in annotations if a["preference"] is not None]
    if len(rows) < min_items:
        return none, f"length-controlled win rate not computed: {len(rows)} judged pairs < lc_min_items={min_items}"
    prefs = {a["preference"] for a in rows}
    if prefs <= {1.0, 1.5} or prefs <= {1.5, 2.0}:
        # One side never wins: the GLM has no outcome to contrast (liblinear would fit noise).
        return none, "length-controlled win rate not computed: one side won no judged pair"
    df = pd.DataFrame(rows).reset_index(drop=True)
    df["index"] = range(len(df))
    df["annotator"] = "srt-judge"
    try:
        with _offline_df_gamed(len(df)), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn deprecation chatter
            out = get_length_controlled_winrate(
                df, glm_name=glm_name, save_weights_dir=None, is_warn_extreme_changes=False
            )
    except Exception as err:  # e.g. all lengths equal (no length signal), a single class
        return none, f"length-controlled win rate not computed: alpaca_eval's GLM failed ({type(err).__name__}: {err})"
    rate = _plain(out["length_controlled_winrate"])
    if rate is None:
        return none, "length-controlled win rate not computed: alpaca_eval's GLM returned NaN"
    if rate == 50.0:
        # The L1-regularized fit zeroed every weight (too little data): 50% by construction, not a measurement.
        return (
            none,
            "length-controlled win rate not computed: alpaca_eval's GLM shrank all weights to zero (too few items)",
        )
    # With the minimal formula every prediction is the same number, so alpaca_eval's per-item
    # standard error is 0 by construction; it says nothing about uncertainty: not reported.
    result = {"length_controlled_winrate": rate, "lc_standard_error": None}
    return result, None


def answer_stats(answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Parse/fallback rates of SRT answers (``srt`` or ``gated``; gated: the gate's counts too) and
    truncation, from the traces."""
    traces = [a["trace"] for a in answers]
    stats: dict[str, Any] = {"truncated": sum(t.get("finish_reason") == "length" for t in traces)}
    if traces and writes_srt_turn(traces[0].get("mode")):
        stats["srt_parsed"] = sum(bool(t.get("parsed")) for t in traces)
        stats["srt_fallback_unparseable"] = sum(bool(t.get("fallback")) for t in traces)
    if traces and traces[0].get("mode") == "gated":
        stats["gate_kept_refinement"] = sum(t.get("gate") == "refinement" for t in traces)
        stats["gate_kept_response"] = sum(t.get("gate") == "response" for t in traces)
    return stats


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


# -- the benchmark ---------------------------------------------------------------------------


class AlpacaEvalBenchmark:
    """Judged win rate against reference outputs (see the module docstring for the protocol)."""

    name = "alpaca_eval"
    uses_judge = True  # the runner passes the run's judge when the settings name none
    settings_model = AlpacaEvalSettings

    @classmethod
    def check_settings(cls, settings: AlpacaEvalSettings) -> None:
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
    def from_config(cls, settings: dict[str, Any]) -> AlpacaEvalBenchmark:
        return cls(dict(settings))

    def describe(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            **self.settings,
            "data_identity": self.data_identity,
            "num_items": len(self.items),
        }

    def run(self, model: Any, ctx: EvalContext) -> BenchmarkResult:
        mode = self.settings["answer_mode"] or model.answer_mode
        answers = model.answers(self.items, "answers", mode=mode, n=self.settings["n"], cache_dir=ctx.cache_dir)
        critic = ctx.make_critic(self.judge_name, self.judge_settings)
        judged = judge_head_to_head(
            critic,
            [it["instruction"] for it in self.items],
            [it["output"] for it in self.items],
            [a["answer"] for a in answers],
            [it["id"] for it in self.items],
        )

        samples, annotations = [], []
        for item, answer, judgement in zip(self.items, answers, judged):
            annotation = {
                "instruction": item["instruction"],
                "output_1": item["output"],
                "output_2": answer["answer"],
                "generator_1": item["generator"],
                "generator_2": model.name,
                "preference": judgement["preference"],
            }
            annotations.append(annotation)
            samples.append({"id": item["id"], **annotation, **judgement, "trace": answer["trace"]})

        metrics = winrate_metrics(annotations)
        lc, lc_warning = length_controlled(annotations, self.settings["lc_min_items"], self.settings["glm_name"])
        metrics.update(lc)
        judge_failures = sum(j["preference"] is None for j in judged)
        metrics.update(
            judge_failures=judge_failures,
            avg_length=mean([len(a["answer"]) for a in answers]),
            reference_avg_length=mean([len(it["output"]) for it in self.items]),
        )
        stats = answer_stats(answers)
        if "srt_parsed" in stats:
            metrics["srt_parsed_rate"] = 100 * stats["srt_parsed"] / len(answers)
            metrics["srt_fallback_rate"] = 100 * stats["srt_fallback_unparseable"] / len(answers)

        warnings_: list[str] = []
        if lc_warning:
            warnings_.append(lc_warning)
        if self.settings["data"] != "hub":
            warnings_.append(
                f"custom instruction set ({len(self.items)} items, {self.data_identity}): "
                "numbers are not comparable with the AlpacaEval leaderboard"
            )
        if judge_failures:
            warnings_.append(
                f"{judge_failures}/{len(judged)} pairs have no judge preference (left out of the win rate)"
            )
        if self.settings["both_orders"]:
            warnings_.append(
                "both_orders does not apply: score-based judging scores each output on its own (no positions)"
            )
        meta = {
            "judge": critic.describe(),
            "judging": "score-based: each output scored alone by the judge critic; higher score wins, equal = tie",
            "answer_mode": mode,
            "answer_stats": stats,
            "data": self.data_identity,
            "warnings": warnings_,
        }
        plots = {
            "judge_scores_model": [j["score_model"] for j in judged if j["score_model"] is not None],
            "judge_scores_reference": [j["score_baseline"] for j in judged if j["score_baseline"] is not None],
        }
        return BenchmarkResult(metrics=metrics, samples=samples, meta=meta, plots=plots)
