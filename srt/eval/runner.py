"""Run benchmark plugins on models; write per-sample logs, metrics, a summary, a report and plots.

Layout of an evaluation run (``output_dir``)::

    <model>/<benchmark>/samples.jsonl   one JSON object per item (prompt, answer, judgement...)
    <model>/<benchmark>/metrics.json    metrics, meta (warnings, stats), plot data, config hash
    cache/<model>/<key>.jsonl           generation cache (see srt.eval.model)
    summary.json                        metrics per model/benchmark + the run record
    report.md, plots/*.png              the side-by-side table and the plots (srt.eval.report)

Resuming: a (model, benchmark) pair whose ``metrics.json`` exists with the same config hash (the
benchmark's settings, the model's identity and decoding, the seed) is not run again; an
interrupted pair re-runs, but its generations come from the cache.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from srt.errors import ConfigError, SrtError
from srt.eval.benchmark import BenchmarkResult, EvalContext
from srt.eval.model import EvalModel, _hash
from srt.records import write_jsonl_atomic
from srt.registry import BENCHMARKS, create_critic, load_plugin

logger = logging.getLogger(__name__)

_VERSIONED_PACKAGES = ("srt", "torch", "transformers", "peft", "lm_eval", "alpaca_eval", "datasets")


# -- configuration ---------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    name: str | None = None  # default: the folder name
    path: str
    answer_mode: str = "plain"  # plain | srt
    dtype: str = "auto"
    batch_size: int = Field(8, ge=1)
    sampling: dict[str, Any] = Field(default_factory=dict)  # temperature, top_p, max_new_tokens, seed, stop
    candidate_sampling: dict[str, Any] = Field(default_factory=dict)  # rerank candidates (default T=0.7)
    score_sampling: dict[str, Any] = Field(default_factory=dict)  # self-scores (default greedy, 512 tokens)
    system_prompt: str | None = None
    revision: str | None = None
    device: str = "cpu"


class EvalConfig(_Strict):
    """``srt-eval run --config FILE``: the YAML layout."""

    output_dir: str = "runs/eval"
    cache_dir: str | None = None  # default: <output_dir>/cache
    seed: int = 0
    judge: dict[str, Any] | None = None  # default judge critic for judged benchmarks: {name: ..., <settings>}
    models: list[ModelSpec] = Field(default_factory=list)
    # benchmark name -> settings; a settings mapping may name the plugin to use (`plugin: alpaca_eval`)
    # so one plugin can run twice under two names with different settings.
    benchmarks: dict[str, dict[str, Any] | None] = Field(default_factory=dict)


def load_eval_config(path: str | Path | None) -> EvalConfig:
    if path is None:
        return EvalConfig()
    from srt.config import load_yaml

    data = load_yaml(path)
    try:
        return EvalConfig.model_validate(data or {})
    except ValidationError as exc:
        from srt.config import format_validation_error

        raise ConfigError(format_validation_error(exc, str(path))) from None


def model_from_spec(spec: ModelSpec | dict[str, Any] | str) -> EvalModel:
    """An :class:`EvalModel` from a config entry, or from ``PATH`` / ``NAME=PATH`` (the CLI form)."""
    if isinstance(spec, str):
        name, sep, path = spec.partition("=")
        spec = ModelSpec(name=name, path=path) if sep else ModelSpec(path=spec)
    elif isinstance(spec, dict):
        spec = ModelSpec.model_validate(spec)
    name = spec.name or Path(spec.path.rstrip("/")).name or spec.path
    return EvalModel(
        name=name,
        path=spec.path,
        answer_mode=spec.answer_mode,
        dtype=spec.dtype,
        batch_size=spec.batch_size,
        sampling=spec.sampling,
        candidate_sampling=spec.candidate_sampling,
        score_sampling=spec.score_sampling,
        system_prompt=spec.system_prompt,
        revision=spec.revision,
        device=spec.device,
    )


# -- running ---------------------------------------------------------------------------------


@dataclass
class _Bench:
    name: str
    plugin: str
    settings: dict[str, Any]
    instance: Any = field(default=None)


def _load_benchmarks(benchmarks: dict[str, dict[str, Any] | None], judge: dict[str, Any] | None) -> list[_Bench]:
    loaded = []
    for name, settings in benchmarks.items():
        settings = dict(settings or {})
        plugin = settings.pop("plugin", name)
        cls = load_plugin(BENCHMARKS, plugin)  # unknown name -> PluginError listing the installed ones
        # The run's judge applies to every benchmark that uses one, unless the benchmark names its own.
        if getattr(cls, "uses_judge", False) and judge and "judge" not in settings:
            settings["judge"] = dict(judge)
        loaded.append(_Bench(name, plugin, settings, cls.from_config(settings)))
    return loaded


def package_versions(extra: Sequence[str] = ()) -> dict[str, str | None]:
    from srt.pipeline.manifest import package_versions as core_versions

    return core_versions((*_VERSIONED_PACKAGES, *extra))


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(json_safe(data), f, indent=2, ensure_ascii=False, allow_nan=False)
    os.replace(tmp, path)


def json_safe(obj: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python numbers, so the files are strict JSON."""
    import math

    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:  # numpy scalar
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


class _Judges:
    """Judge critics built once per run and shared by models and benchmarks (an HF judge loads once).

    The ``self`` critic judges with the model under evaluation, so it is built per model, with the
    model's generator as its policy.
    """

    def __init__(self):
        self._built: dict[str, Any] = {}

    def factory(self, model: EvalModel):
        def make_critic(name: str, settings: dict[str, Any]) -> Any:
            if name == "self":
                return create_critic(name, settings, policy=model.generator)
            key = _hash([name, settings])
            if key not in self._built:
                self._built[key] = create_critic(name, settings)
            return self._built[key]

        return make_critic


def run_eval(
    models: Sequence[EvalModel],
    benchmarks: dict[str, dict[str, Any] | None],
    output_dir: str | Path,
    seed: int = 0,
    judge: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Evaluate every model on every benchmark (resumable); return the summary (also in summary.json).

    ``benchmarks``: benchmark name -> settings (see each plugin; ``plugin:`` picks the plugin when
    the name differs). ``judge``: the default judge critic ``{name: ..., <critic settings>}`` for
    benchmarks that need one.
    """
    if not models:
        raise ConfigError("no models to evaluate: give at least one --model (or `models:` in the config)")
    if not benchmarks:
        raise ConfigError("no benchmarks selected: give --benchmarks a,b (or `benchmarks:` in the config)")
    names = [m.name for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"two models share the name(s) {duplicates}; give each a distinct name (NAME=PATH)")

    output_dir = Path(output_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else output_dir / "cache"
    loaded = _load_benchmarks(benchmarks, judge)
    judges = _Judges()
    results: dict[str, dict[str, Any]] = {}
    model_records: dict[str, Any] = {}

    for model in models:
        model.cache_dir = model.cache_dir or cache_dir
        record = model.describe()
        model_records[model.name] = record
        results[model.name] = {}
        for bench in loaded:
            bench_dir = output_dir / _safe(model.name) / _safe(bench.name)
            task_hash = _hash(bench.instance.describe())
            config_hash = _hash({"task": task_hash, "model": record, "seed": seed})
            metrics_path = bench_dir / "metrics.json"
            previous = _read_json(metrics_path)
            if previous is not None and previous.get("config_hash") == config_hash:
                logger.info("%s / %s: finished earlier with the same config, skipped", model.name, bench.name)
                results[model.name][bench.name] = {**previous, "resumed": True}
                continue

            logger.info("%s / %s: running", model.name, bench.name)
            _seed_everything(seed)
            ctx = EvalContext(
                output_dir=bench_dir, cache_dir=cache_dir, seed=seed, make_critic=judges.factory(model)
            )
            bench_dir.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            result = bench.instance.run(model, ctx)
            if not isinstance(result, BenchmarkResult):
                raise SrtError(f"benchmark {bench.name!r} returned {type(result).__name__}, not a BenchmarkResult")
            entry = {
                "model": model.name,
                "benchmark": bench.name,
                "plugin": bench.plugin,
                "config_hash": config_hash,
                "task_config_hash": task_hash,
                "task": bench.instance.describe(),
                "metrics": result.metrics,
                "meta": result.meta,
                "plots": result.plots,
                "elapsed_s": round(time.perf_counter() - start, 2),
            }
            write_jsonl_atomic(bench_dir / "samples.jsonl", (json_safe(s) for s in result.samples))
            _write_json_atomic(metrics_path, entry)  # written last: its presence marks the pair finished
            results[model.name][bench.name] = json_safe({**entry, "resumed": False})
        model.unload()  # free the weights before the next model

    summary = {
        "run": {
            "seed": seed,
            "output_dir": str(output_dir),
            "cache_dir": str(cache_dir),
            "judge": judge,
            "benchmarks": {b.name: {"plugin": b.plugin, "settings": b.settings} for b in loaded},
            "package_versions": package_versions(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "models": model_records,
        "results": results,
    }
    _write_json_atomic(output_dir / "summary.json", summary)
    if report:
        from srt.eval.report import write_report

        write_report(json_safe(summary), output_dir)
    return json_safe(summary)


def _seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _safe(name: str) -> str:
    from srt.eval.model import _safe_name

    return _safe_name(name)


# -- CLI-facing functions ----------------------------------------------------------------------


def cli_run(
    models: Sequence[str] = (),
    benchmarks: str | Sequence[str] | None = None,
    config_path: str | Path | None = None,
    output_dir: str | Path | None = None,
    seed: int | None = None,
    judge: str | None = None,
    answer_mode: str | None = None,
) -> dict[str, Any]:
    """``srt-eval run``: merge the YAML config with the command line, then :func:`run_eval`.

    ``models``: ``PATH`` or ``NAME=PATH`` entries; they replace the config's ``models`` (taking
    ``answer_mode`` when given). ``benchmarks``: ``"a,b"`` or a list; selects benchmarks (with the
    config's settings for them when present). ``judge``: a critic name overriding the config's judge.
    """
    cfg = load_eval_config(config_path)
    if models:
        specs = []
        for m in models:
            name, sep, path = m.partition("=")
            specs.append(ModelSpec(name=name if sep else None, path=path if sep else m, answer_mode=answer_mode or "plain"))
        model_objs = [model_from_spec(s) for s in specs]
    else:
        model_objs = [model_from_spec(s) for s in cfg.models]
        if answer_mode:
            for m in model_objs:
                m.answer_mode = answer_mode
    if isinstance(benchmarks, str):
        benchmarks = [b.strip() for b in benchmarks.split(",") if b.strip()]
    selected = {b: cfg.benchmarks.get(b) or {} for b in benchmarks} if benchmarks else dict(cfg.benchmarks)
    judge_settings = cfg.judge
    if judge and (cfg.judge or {}).get("name") != judge:
        judge_settings = {"name": judge}  # another critic: the config's judge settings do not apply
    return run_eval(
        model_objs,
        selected,
        output_dir=output_dir or cfg.output_dir,
        seed=cfg.seed if seed is None else seed,
        judge=judge_settings,
        cache_dir=cfg.cache_dir,
    )


def generate_file(
    model_path: str,
    input_path: str | Path,
    output_path: str | Path,
    mode: str = "srt",
    n: int = 16,
    sampling: dict[str, Any] | None = None,
    batch_size: int = 8,
    dtype: str = "auto",
    system_prompt: str | None = None,
    scoring: str | None = None,
    candidate_sampling: dict[str, Any] | None = None,
    score_sampling: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``srt-eval generate``: answer a JSONL of ``{id?, instruction}`` (resumable).

    Each output line: ``id``, ``instruction``, ``answer``, ``mode`` and ``trace`` (raw text, parsed
    response/feedback/refinement, self score; rerank candidates). Items whose id is already in the
    output are skipped. ``rerank`` self-scores with the SRT self-critique unless ``scoring`` is
    ``critic_prompt`` (for plain chat models). Returns the stats (also in ``<output>.stats.json``).
    """
    from srt.inference import MODES
    from srt.records import JsonlWriter, existing_ids

    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    items = read_instructions(input_path)
    output_path = Path(output_path)
    done = existing_ids(output_path)
    todo = [it for it in items if it["id"] not in done]
    model = EvalModel(
        name=Path(str(model_path).rstrip("/")).name or str(model_path),
        path=model_path,
        answer_mode="srt" if mode == "srt" else "plain",
        dtype=dtype,
        batch_size=batch_size,
        sampling=sampling,
        candidate_sampling=candidate_sampling,
        score_sampling=score_sampling,
        system_prompt=system_prompt,
    )
    stats = {"items": len(items), "already_done": len(items) - len(todo), "generated": 0}
    chunk = batch_size * 4  # append every few batches: an interruption loses little
    from tqdm.auto import tqdm

    with JsonlWriter(output_path) as writer:
        for start in tqdm(range(0, len(todo), chunk), desc="generate", unit="chunk"):
            batch = todo[start : start + chunk]
            results = model.answers(batch, "generate", mode=mode, n=n, scoring=scoring or "srt", cache_dir=None)
            for item, result in zip(batch, results):
                writer.write(
                    {"id": item["id"], "instruction": item["instruction"], "answer": result["answer"], "mode": mode,
                     "trace": result["trace"]}
                )
                stats["generated"] += 1
    stats.update(_trace_stats(output_path, mode))
    stats["model"] = model.describe()
    _write_json_atomic(Path(f"{output_path}.stats.json"), stats)
    return stats


def _trace_stats(path: Path, mode: str) -> dict[str, Any]:
    """Counts over the whole output file (earlier runs included)."""
    counts = {"answered": 0, "parsed": 0, "fallback_unparseable": 0, "truncated": 0}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            trace = json.loads(line)["trace"]
            counts["answered"] += 1
            counts["truncated"] += trace.get("finish_reason") == "length"
            if mode == "srt":
                counts["parsed"] += bool(trace.get("parsed"))
                counts["fallback_unparseable"] += bool(trace.get("fallback"))
    if mode != "srt":
        del counts["parsed"], counts["fallback_unparseable"]
    return counts


def read_instructions(path: str | Path) -> list[dict[str, Any]]:
    """``{id?, instruction}`` per line; a missing id becomes ``line-<n>``. Errors name file and line."""
    from srt.errors import RecordError

    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: file not found")
    items, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise RecordError(f"{path}:{lineno}: invalid JSON: {err.msg}") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("instruction"), str) or not obj["instruction"].strip():
                raise RecordError(f"{path}:{lineno}: expected an object with a non-empty string 'instruction'")
            item_id = str(obj.get("id", f"line-{lineno}"))
            if item_id in seen:
                raise RecordError(f"{path}:{lineno}: duplicate id {item_id!r}")
            seen.add(item_id)
            items.append({**obj, "id": item_id})
    return items
