"""AlpacaEval-style judged win rate: the model's answers against reference answers.

Protocol. The model answers every instruction (``plain``, ``srt`` -> the refinement, or
``rerank`` best-of-n). The answers are then judged against the references in one of two ways
(``judging:``), and the preferences are turned into numbers by alpaca_eval itself:
``alpaca_eval.metrics.get_winrate`` (win rate, standard error, wins/draws) and
``get_length_controlled_winrate`` (length-controlled win rate). Preferences use alpaca_eval's
encoding throughout: 1 = the reference (``output_1``) wins, 2 = the model (``output_2``) wins,
1.5 = tie; a pair without a preference is dropped by alpaca_eval (counted as ``judge_failures``).

``judging: score`` (the default, so existing configs and caches keep their meaning). A **judge**,
which is any critic plugin (``judge: {name: openai, ...}``, ``hf``, ``reference``, a third-party
critic...), scores each output separately in score mode (``Overall Score: [[n]]``); the output with
the higher score wins, equal scores are a tie. Each output is scored on its own, so there is no
"first/second position" and ``both_orders`` has nothing to swap: it is recorded as not applicable.

``judging: pairwise`` (the paper's protocol: AlpacaEval's own pairwise judge). alpaca_eval's
``PairwiseAnnotator`` with one of the annotator configs shipped in its wheel (``annotator:``;
default ``weighted_alpaca_eval_gpt4_turbo``, AlpacaEval 2.0's logprob-weighted GPT-4 Turbo judge,
or ``alpaca_eval_gpt4`` with ``subset: alpaca_eval``, AlpacaEval 1.0's) builds the prompt holding
both outputs, calls the judge through its ``openai_completions`` and reads the preference with the
config's own parser; alpaca_eval shuffles which output is shown first (seeded per instruction).
srt critics speak the critique format only (one response per :class:`srt.critic.CritiqueRequest`),
so they cannot answer alpaca_eval's prompt: the pairwise judge is an OpenAI-compatible endpoint,
given as ``judge: {name: openai, model: ..., base_url: ..., api_key_env: ...}`` (``base_url`` null:
``OPENAI_BASE_URL`` or the OpenAI API; the key is read from the environment variable
``api_key_env`` names and never written). Decoding settings (max tokens, temperature, logprobs)
are the annotator config's; ``judge.model`` replaces its model name and ``judge.max_concurrency``
is its number of parallel requests. Any other judge is a plan error. With ``both_orders: true``
every pair is judged twice, once with each output in the first position (alpaca_eval's shuffle
applies to both rows of an instruction alike, so the two presentations are always opposite), and
the pair's preference is the mean of the two (a position-biased judge that always picks the first
output gives 1.5); a pair where either presentation got no preference has none. Every sample records
each presentation (``orders``: which output was shown first, its preference in the encoding above,
the judge's raw output). Judgements are cached in ``<cache>/alpaca_eval_pairwise/`` (alpaca_eval's
annotation JSON, one file per annotator, judge model and endpoint), so a re-run asks nothing twice.

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
import hashlib
import json
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
# alpaca_eval's own pairing of annotators and reference sets (alpaca_eval.constants, not imported
# here: the plan stays cheap for score judging).
ANNOTATOR_AE1 = "alpaca_eval_gpt4"
ANNOTATOR_AE2 = "weighted_alpaca_eval_gpt4_turbo"
# The judges that can answer alpaca_eval's pairwise prompt: the OpenAI-compatible endpoint critic.
PAIRWISE_JUDGES = ("openai",)


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
    judging: Literal["score", "pairwise"] = Field(
        "score",
        description=(
            "`score`: the judge critic scores each output alone (higher score wins); `pairwise`: alpaca_eval's own "
            "pairwise annotator (the paper's protocol) with an OpenAI-compatible judge (`judge: {name: openai, ...}`)"
        ),
    )
    annotator: str | None = Field(
        None,
        description=(
            "With `judging: pairwise`: an alpaca_eval annotator config (a name shipped with alpaca_eval, e.g. "
            "`alpaca_eval_gpt4`, or a path to a configs.yaml) using `openai_completions`; None: "
            f"`{ANNOTATOR_AE2}` (AlpacaEval 2.0), `{ANNOTATOR_AE1}` with `subset: alpaca_eval`"
        ),
    )
    both_orders: bool = Field(
        False,
        description=(
            "With `judging: pairwise`: judge each pair twice, each output once in the first position, and average "
            "the two preferences (against position bias); not applicable to `score` judging (recorded so)"
        ),
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


# -- pairwise judging (alpaca_eval's annotator) -------------------------------------------------


def resolve_annotator(annotator: str | None, subset: str) -> str:
    """The annotator config: the one given, else alpaca_eval's own for the reference set."""
    if annotator is not None:
        return annotator
    return ANNOTATOR_AE1 if subset == "alpaca_eval" else ANNOTATOR_AE2


def annotator_config_path(annotator: str) -> Path:
    """``configs.yaml`` of an annotator: a name shipped in alpaca_eval's ``evaluators_configs``, or a path."""
    import importlib.util

    given = Path(annotator).expanduser()
    if given.suffix in (".yaml", ".yml") or given.is_dir():
        path = given
    else:
        spec = importlib.util.find_spec("alpaca_eval")
        if spec is None or spec.origin is None:
            raise ConfigError("judging: pairwise needs the alpaca_eval package (pip install alpaca-eval)")
        path = Path(spec.origin).parent / "evaluators_configs" / annotator
    if path.is_dir():
        path = path / "configs.yaml"
    if not path.is_file():
        raise ConfigError(
            f"benchmark 'alpaca_eval': annotator {annotator!r} is not an alpaca_eval annotator config "
            f"({path} not found); use a name from alpaca_eval/evaluators_configs (e.g. {ANNOTATOR_AE1}, "
            f"{ANNOTATOR_AE2}) or a path to a configs.yaml"
        )
    return path


def load_annotator_configs(annotator: str) -> tuple[Path, dict[str, Any]]:
    """(configs.yaml, {annotator name: config}), checked to call the judge through ``openai_completions``."""
    import yaml

    path = annotator_config_path(annotator)
    try:
        configs = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"benchmark 'alpaca_eval': annotator config {path}: {err}") from None
    if not isinstance(configs, dict) or not configs or not all(isinstance(c, dict) for c in configs.values()):
        raise ConfigError(f"benchmark 'alpaca_eval': annotator config {path} holds no annotator mapping")
    for name, config in configs.items():
        fn = config.get("fn_completions", "openai_completions")
        if fn != "openai_completions":
            raise ConfigError(
                f"benchmark 'alpaca_eval': annotator {name!r} ({path}) calls its judge with {fn!r}; pairwise judging "
                "serves the judge from an OpenAI-compatible endpoint, so it needs an annotator using openai_completions"
            )
    return path, configs


def check_judging(judging: str, judge_name: str, annotator: str | None, subset: str) -> None:
    """Plan check of the judging protocol against the judge and the annotator (nothing loaded)."""
    if judging == "score":
        if annotator is not None:
            raise ConfigError(
                "benchmark 'alpaca_eval': `annotator` applies to `judging: pairwise` only (score judging uses the "
                "judge critic's own prompt)"
            )
        return
    if judge_name not in PAIRWISE_JUDGES:
        raise ConfigError(
            f"benchmark 'alpaca_eval': judging: pairwise cannot use judge {judge_name!r}: critic plugins speak the "
            "critique format only (one response per request), not alpaca_eval's pairwise prompt. Serve the judge "
            "from an OpenAI-compatible endpoint (judge: {name: openai, model: ..., base_url: ...}) or use "
            "judging: score"
        )
    load_annotator_configs(resolve_annotator(annotator, subset))


# alpaca_eval's notes on the root logger that say nothing about this run: the client is built from
# arguments (not a client config file), a local judge model has no price, and the cache file name
# already holds everything that changes a judgement.
_ALPACA_EVAL_NOISE = (
    "wasn't found. We are using environment variables",
    "for computing price per token",
    "Saving_path is given but not 'auto'",
)


def _not_noise(record: logging.LogRecord) -> bool:
    return not any(note in str(record.msg) for note in _ALPACA_EVAL_NOISE)


@contextlib.contextmanager
def _root_log_level_kept() -> Iterator[None]:
    """alpaca_eval's annotators module sets the root logger to INFO when imported: undo that; and
    drop its per-request noise (:data:`_ALPACA_EVAL_NOISE`, logged on the root logger itself)."""
    root = logging.getLogger()
    level = root.level
    root.addFilter(_not_noise)
    try:
        yield
    finally:
        root.removeFilter(_not_noise)
        root.setLevel(level)


def _preference(value: Any) -> float | None:
    value = _plain(value)
    return None if value is None else float(value)


class PairwiseJudge:
    """alpaca_eval's ``PairwiseAnnotator`` with its judge served by an OpenAI-compatible endpoint.

    ``judge_settings``: the ``openai`` critic's settings (``model``, ``base_url``, ``api_key_env``,
    ``max_concurrency``); the annotator config's decoding settings apply, its model name is replaced.
    """

    # openai critic settings that alpaca_eval's annotator does not use (the config decides them).
    UNUSED = ("temperature", "max_tokens", "system_prompt", "extra_body", "max_retries", "timeout_s")

    def __init__(self, annotator: str, judge_settings: dict[str, Any], cache_dir: Path | None):
        from srt_builtin.critics.openai_critic import (
            OpenAICritic,
            OpenAICriticSettings,
            api_key_from_env,
            endpoint_url,
        )

        settings = OpenAICriticSettings.model_validate(dict(judge_settings))
        OpenAICritic.check_settings(settings)  # the key variable is set, no credential in the URL
        self.config_path, configs = load_annotator_configs(annotator)
        self.annotator = annotator
        self.settings = settings
        self.base_url = endpoint_url(settings.base_url)  # None: OPENAI_BASE_URL, else the OpenAI API
        self.warnings = [
            f"judge.{k} is not used by alpaca_eval's annotator (its config sets the decoding)"
            for k in self.UNUSED
            if k in settings.model_fields_set
        ]
        api_key = api_key_from_env(settings)  # registered: never in a log line, record or error message

        with _root_log_level_kept():
            from alpaca_eval.annotators import PairwiseAnnotator

        caching_path = None
        if cache_dir is not None:
            # alpaca_eval keys its cache by instruction, outputs and annotator name only: the file name
            # holds everything else that changes a judgement (config, judge model, endpoint).
            identity = {
                "config": file_digest(self.config_path),
                "model": settings.model,
                "base_url": self.base_url,
            }
            digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
            folder = Path(cache_dir) / "alpaca_eval_pairwise"
            folder.mkdir(parents=True, exist_ok=True)
            caching_path = folder / f"{self.config_path.parent.name}-{digest}.json"
        with _root_log_level_kept():
            self._annotator = PairwiseAnnotator(annotators_config=str(self.config_path), caching_path=caching_path)
        cached = self._annotator.df_annotations
        if cached is not None and "preference" in cached.columns:
            # alpaca_eval stores failed judgements as -1 and never asks again: forget them, so they are retried.
            self._annotator.df_annotations = cached[cached["preference"] != self._annotator.TMP_MISSING_ANNOTATION]
        self.caching_path = caching_path
        for single in self._annotator.annotators.values():
            single.completions_kwargs = {
                **single.completions_kwargs,
                "model_name": settings.model,
                "num_procs": settings.max_concurrency,
                # alpaca_eval's client arguments (used unless OPENAI_CLIENT_CONFIG_PATH names a file): the key
                # from the environment, the endpoint (None: OPENAI_BASE_URL, else the OpenAI API).
                "openai_api_keys": [api_key],
                "openai_api_base": settings.base_url,
            }

    def describe(self) -> dict[str, Any]:
        import importlib.metadata

        return {
            "name": "openai",
            "protocol": "alpaca_eval PairwiseAnnotator",
            "annotator": self.annotator,
            "annotator_config": str(self.config_path),
            "annotator_config_sha256": file_digest(self.config_path),
            "model": self.settings.model,
            "base_url": self.base_url,
            "alpaca_eval": importlib.metadata.version("alpaca_eval"),
        }

    def _shown_switched(self, row: dict[str, Any]) -> bool:
        """Whether alpaca_eval showed ``output_2`` first for this row: its own seeded switch processor."""
        import pandas as pd
        from alpaca_eval.processors import RandomSwitchTwoColumnsProcessor

        single = self._annotator.annotators.get(row.get("annotator"))
        for processor in getattr(single, "processors", []):
            if isinstance(processor, RandomSwitchTwoColumnsProcessor):
                frame = pd.DataFrame([{k: row[k] for k in ("instruction", "output_1", "output_2")}])
                return bool(processor.preprocess(frame)[processor._switch_column].iloc[0])
        return False

    def annotate(self, rows: list[dict[str, str]]) -> list[dict[str, Any]]:
        """alpaca_eval's annotations of ``{instruction, output_1, output_2}`` rows, in order."""
        with _root_log_level_kept():
            annotated = self._annotator.annotate_pairs(rows)
        by_key = {(a["instruction"], a["output_1"], a["output_2"]): a for a in annotated}
        out = []
        for row in rows:
            got = by_key.get((row["instruction"], row["output_1"], row["output_2"]), {})
            judged = row["output_1"] != row["output_2"]  # alpaca_eval ties identical outputs without asking
            out.append(
                {
                    "preference": _preference(got.get("preference")),
                    "switched": self._shown_switched({**row, "annotator": got.get("annotator")}) if judged else None,
                    "judge_output": _plain(got.get("preference_raw_completion")) if judged else None,
                }
            )
        return out

    def judge(
        self,
        instructions: Sequence[str],
        references: Sequence[str],
        outputs: Sequence[str],
        both_orders: bool,
    ) -> list[dict[str, Any]]:
        """Per pair: ``preference`` (1 = reference wins, 2 = model wins; the mean of both orders with
        ``both_orders``), ``orders`` (each presentation: what was shown first, its preference in the same
        encoding, the judge's raw output) and ``judge_failure``."""
        n = len(instructions)
        rows = [{"instruction": i, "output_1": r, "output_2": o} for i, r, o in zip(instructions, references, outputs)]
        if both_orders:
            rows += [
                {"instruction": i, "output_1": o, "output_2": r} for i, r, o in zip(instructions, references, outputs)
            ]
        annotated = self.annotate(rows)
        judged = []
        for k in range(n):
            orders = []
            for model_is_output_1, got in ((False, annotated[k]), (True, annotated[n + k] if both_orders else None)):
                if got is None:
                    continue
                pref = got["preference"]
                if pref is not None and model_is_output_1:
                    pref = 3.0 - pref  # alpaca_eval's own flip: 1 <-> 2, in-between values mirrored
                if got["switched"] is None:
                    shown_first = None  # identical outputs: a tie, the judge was not asked
                else:
                    shown_first = "model" if model_is_output_1 != got["switched"] else "reference"
                orders.append({"shown_first": shown_first, "preference": pref, "judge_output": got["judge_output"]})
            prefs = [o["preference"] for o in orders]
            failed = [o["shown_first"] for o in orders if o["preference"] is None]
            judged.append(
                {
                    "preference": None if failed else sum(prefs) / len(prefs),
                    "orders": orders,
                    "judge_failure": (
                        f"alpaca_eval's parser found no preference (shown first: {', '.join(map(str, failed))})"
                        if failed
                        else None
                    ),
                }
            )
        return judged


# -- the benchmark ---------------------------------------------------------------------------


class AlpacaEvalBenchmark:
    """Judged win rate against reference outputs (see the module docstring for the protocol)."""

    name = "alpaca_eval"
    uses_judge = True  # the runner passes the run's judge when the settings name none
    settings_model = AlpacaEvalSettings

    @classmethod
    def check_settings(cls, settings: AlpacaEvalSettings) -> None:
        """Plan check, nothing loaded: a judge is named and the data file is readable (``file:line`` errors);
        for pairwise judging, the judge can answer alpaca_eval's prompt and the annotator config exists."""
        name, _ = judge_spec(cls.name, settings.judge)
        check_judging(settings.judging, name, settings.annotator, settings.subset)
        check_data(settings.data)

    def __init__(self, settings: dict[str, Any]):
        self.settings = parse_settings(self.name, self.settings_model, settings)
        self.judge_name, self.judge_settings = judge_spec(self.name, self.settings["judge"])
        check_judging(self.settings["judging"], self.judge_name, self.settings["annotator"], self.settings["subset"])
        self.items, self.data_identity = load_alpaca_items(
            self.settings["data"], self.settings["subset"], self.settings["limit"]
        )

    @classmethod
    def from_config(cls, settings: dict[str, Any]) -> AlpacaEvalBenchmark:
        return cls(dict(settings))

    def describe(self) -> dict[str, Any]:
        settings = dict(self.settings)
        if settings["judging"] == "score":
            # Score judging is described (and hashed) exactly as before these settings existed, so its
            # finished runs and caches keep their meaning.
            del settings["judging"], settings["annotator"]
        return {
            "benchmark": self.name,
            **settings,
            "data_identity": self.data_identity,
            "num_items": len(self.items),
        }

    def run(self, model: Any, ctx: EvalContext) -> BenchmarkResult:
        mode = self.settings["answer_mode"] or model.answer_mode
        answers = model.answers(self.items, "answers", mode=mode, n=self.settings["n"], cache_dir=ctx.cache_dir)
        instructions = [it["instruction"] for it in self.items]
        references = [it["output"] for it in self.items]
        outputs = [a["answer"] for a in answers]
        if self.settings["judging"] == "pairwise":
            judge = PairwiseJudge(
                resolve_annotator(self.settings["annotator"], self.settings["subset"]),
                self.judge_settings,
                ctx.cache_dir,
            )
            judged = judge.judge(instructions, references, outputs, both_orders=self.settings["both_orders"])
            judge_description = judge.describe()
        else:
            critic = ctx.make_critic(self.judge_name, self.judge_settings)
            judged = judge_head_to_head(critic, instructions, references, outputs, [it["id"] for it in self.items])
            judge_description = critic.describe()

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
        pairwise = self.settings["judging"] == "pairwise"
        if self.settings["both_orders"] and not pairwise:
            warnings_.append(
                "both_orders does not apply: score-based judging scores each output on its own (no positions)"
            )
        if pairwise:
            warnings_.extend(judge.warnings)
            how = "pairwise (alpaca_eval's annotator): each pair judged " + (
                "twice, each output once shown first; the preference is the mean of the two"
                if self.settings["both_orders"]
                else "once, in alpaca_eval's seeded random order"
            )
        else:
            how = "score-based: each output scored alone by the judge critic; higher score wins, equal = tie"
        meta = {
            "judge": judge_description,
            "judging": how,
            "answer_mode": mode,
            "answer_stats": stats,
            "data": self.data_identity,
            "warnings": warnings_,
        }
        if pairwise:
            plots = {"preferences": [j["preference"] for j in judged if j["preference"] is not None]}
        else:
            plots = {
                "judge_scores_model": [j["score_model"] for j in judged if j["score_model"] is not None],
                "judge_scores_reference": [j["score_baseline"] for j in judged if j["score_baseline"] is not None],
            }
        return BenchmarkResult(metrics=metrics, samples=samples, meta=meta, plots=plots)
