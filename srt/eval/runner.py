"""Run benchmark plugins on models; write per-sample logs, metrics, a summary, a report and plots.

Layout of an evaluation run (``output_dir``)::

    <model>/<benchmark>/samples.jsonl   one JSON object per item (prompt, answer, judgement...)
    <model>/<benchmark>/metrics.json    metrics, meta (warnings, stats), plot data, config hash
    cache/<model>/<key>.jsonl           generation cache (see srt.eval.model)
    summary.json                        metrics per model/benchmark, paired comparisons, the run record
    report.md, plots/*.png              the side-by-side table and the plots (srt.eval.report)

A benchmark whose samples carry a boolean ``correct`` gets accuracy ± standard error (and, for
``srt`` and ``gated`` answers, response accuracy, fixed / broken by refinement, the parse rate) added
to its metrics, and ``compare: [[model, baseline], ...]`` pairs models on it; any benchmark whose samples
record SRT answers gets ``srt_parse_rate`` / ``srt_fallback_rate``, and gated answers the gate's counts
(``gate_kept_refinement`` / ``gate_kept_response``...); every metric's unit is under
``units`` (:mod:`srt.eval.report`).

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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from srt.errors import ConfigError, SrtError
from srt.eval.benchmark import BenchmarkResult, EvalContext, writes_srt_turn
from srt.eval.model import EvalModel, _hash
from srt.records import JsonLines, write_jsonl_atomic
from srt.registry import CRITICS, create_critic, load_plugin

if TYPE_CHECKING:
    from srt.eval.plan import EvalPlan

logger = logging.getLogger(__name__)

_VERSIONED_PACKAGES = ("srt", "torch", "transformers", "peft", "lm_eval", "alpaca_eval", "datasets")


# -- configuration ---------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """One model of ``models:`` (``--model [NAME=]PATH`` on the command line)."""

    name: str | None = Field(None, description="Name in the report and the output folders; default: the folder name")
    path: str = Field(description="Model folder, hub id, or `tiny` (a built-in test model)")
    answer_mode: Literal["plain", "srt", "gated"] = Field(
        "plain",
        description="plain: the model's answer; srt: response -> feedback -> refinement, the refinement is the answer; "
        "gated: that pass, then the refinement only when the model's own re-score of it beats its response's score, "
        "else the response",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Load dtype (auto: the checkpoint's; bf16/fp16 on the CPU logs a warning: float32 is faster)",
    )
    batch_size: int = Field(8, ge=1, description="Prompts per generate call")
    sampling: dict[str, Any] = Field(
        default_factory=dict,
        description="Answer decoding (temperature, top_p, max_new_tokens, seed, stop); default greedy, 1024 tokens",
    )
    candidate_sampling: dict[str, Any] = Field(
        default_factory=dict, description="Rerank candidates' decoding; default T=0.7, the answer's length and seed"
    )
    score_sampling: dict[str, Any] = Field(
        default_factory=dict, description="Self-scores' decoding; default greedy, 512 new tokens"
    )
    system_prompt: str | None = Field(None, description="System message for every prompt")
    revision: str | None = Field(None, description="Hub revision")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:N, or auto (cuda when a GPU is visible)")


class EvalConfig(_Strict):
    """``srt-eval run --config FILE``: the YAML layout."""

    output_dir: str = Field("runs/eval", description="Where results go; one run at a time per folder")
    cache_dir: str | None = Field(None, description="Generation cache; default: <output_dir>/cache")
    seed: int = Field(0, description="Seed of every benchmark run")
    judge: dict[str, Any] | None = Field(
        None,
        description="Default judge critic of the judged benchmarks: {name: <critic plugin>, <its settings>}",
    )
    models: list[ModelSpec] = Field(default_factory=list, description="The models, side by side in the report")
    benchmarks: dict[str, dict[str, Any] | None] = Field(
        default_factory=dict,
        description="Benchmark name -> its settings; `plugin: <name>` in the settings runs one plugin under "
        "another name (so one plugin can run twice with different settings)",
    )
    compare: list[tuple[str, str]] = Field(
        default_factory=list,
        description="[model, baseline] name pairs: on every benchmark with per-sample correctness, the problems "
        "the model gained and lost against the baseline, with an exact sign test",
    )
    workers: int = Field(
        1,
        ge=1,
        description="Models evaluated at once, each in its own process with an equal share of the CPU threads "
        "(CPU models only; on a small CPU two 1-thread decoders beat one 2-thread one)",
    )


def load_eval_config(path: str | Path | None, overrides: Sequence[str] = (), judge: str | None = None) -> EvalConfig:
    """The eval config from ``path`` (or the defaults), ``--judge`` applied, then ``--set KEY=VALUE`` overrides.

    ``judge``: a critic name; when it differs from the config judge's name, the config's judge
    settings are dropped (they belong to another critic). Credentials in the config are refused.
    """
    return eval_config_from_data(eval_config_data(path, overrides, judge), str(path or "config"))


def eval_config_data(path: str | Path | None, overrides: Sequence[str] = (), judge: str | None = None) -> dict:
    """:func:`load_eval_config`'s mapping before validation (the command line's flags apply to it)."""
    from srt.config import apply_overrides, load_yaml

    data = load_yaml(path) if path is not None else {}
    if judge is not None:
        current = data.get("judge")
        if not (isinstance(current, dict) and current.get("name") == judge):
            data["judge"] = {"name": judge}
    return apply_overrides(data, list(overrides))


def eval_config_from_data(data: dict[str, Any], source: str = "config") -> EvalConfig:
    """Validate an eval config mapping (``source`` names it in errors); credentials are refused."""
    from srt.config import format_validation_error
    from srt.secrets import find_secrets

    secrets = find_secrets(data)
    if secrets:
        raise ConfigError(
            f"{source}: {', '.join(secrets)} looks like a credential; results record the settings, so put "
            "the key in an environment variable and name it (e.g. judge.api_key_env: OPENAI_API_KEY)"
        )
    try:
        return EvalConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def model_from_spec(spec: ModelSpec | dict[str, Any] | str) -> EvalModel:
    """An :class:`EvalModel` from a config entry, or from ``PATH`` / ``NAME=PATH`` (the CLI form)."""
    if isinstance(spec, str):
        name, sep, path = spec.partition("=")
        spec = ModelSpec(name=name, path=path) if sep else ModelSpec(path=spec)
    elif isinstance(spec, dict):
        spec = ModelSpec.model_validate(spec)
    name = model_name(spec.name, spec.path)
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


def model_name(name: str | None, path: str) -> str:
    """A model's name in the report and its output folder: the given name, else the folder's name."""
    return name or Path(str(path).rstrip("/")).name or str(path)


# -- running ---------------------------------------------------------------------------------


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

    A critic that declares ``needs_policy`` (the built-in ``self`` critic) judges with the model under
    evaluation, so it is built per model, with the model's generator as its policy.
    """

    def __init__(self):
        self._built: dict[str, Any] = {}

    def factory(self, model: EvalModel):
        def make_critic(name: str, settings: dict[str, Any]) -> Any:
            if getattr(load_plugin(CRITICS, name), "needs_policy", False):
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
    compare: Sequence[Sequence[str]] = (),
    workers: int = 1,
) -> dict[str, Any]:
    """Evaluate every model on every benchmark (resumable); return the summary (also in summary.json).

    ``benchmarks``: benchmark name -> settings (see each plugin; ``plugin:`` picks the plugin when
    the name differs). ``judge``: the default judge critic ``{name: ..., <critic settings>}`` for
    benchmarks that need one. ``compare``: ``(model, baseline)`` name pairs for paired comparisons
    (:func:`srt.eval.report.comparisons`). ``workers``: models evaluated at once, each in its own
    process (:func:`_evaluate_in_workers`). First :func:`srt.eval.plan.plan_eval` checks everything
    (nothing is loaded or written when it fails); then the output directory is locked for the run's
    life, so a second run there stops at once.
    """
    from srt.eval.plan import plan_eval
    from srt.pipeline.lock import RunLock
    from srt.secrets import register_env_secrets

    register_env_secrets({"judge": judge, "benchmarks": benchmarks})  # key values never reach a log or a file
    plan = plan_eval(
        models, benchmarks, output_dir, seed=seed, judge=judge, cache_dir=cache_dir, compare=compare, workers=workers
    )
    with RunLock(plan.output_dir, "srt-eval run"):
        return execute_plan(plan, report=report)


def execute_plan(plan: EvalPlan, report: bool = True) -> dict[str, Any]:
    """Run a checked plan (:func:`run_eval` plans and locks first; call that)."""
    from srt.eval.report import comparisons

    output_dir, cache_dir, seed = plan.output_dir, plan.cache_dir, plan.seed
    results: dict[str, dict[str, Any]] = {}
    model_records: dict[str, Any] = {}
    evaluated = _evaluate_in_workers(plan) if plan.workers > 1 and len(plan.models) > 1 else {}
    judges = _Judges()
    for model in plan.models:
        if model.name in evaluated:
            model_records[model.name], results[model.name] = evaluated[model.name]
        else:
            model_records[model.name], results[model.name] = _evaluate_model(plan, model, judges)

    scored = {
        (model, bench): _read_samples(output_dir / _safe(model) / _safe(bench) / "samples.jsonl")
        for model, per_bench in results.items()
        for bench, entry in per_bench.items()
        if "accuracy" in entry.get("metrics", {})
    }
    summary = {
        "run": {
            "seed": seed,
            "output_dir": str(output_dir),
            "cache_dir": str(cache_dir),
            "workers": plan.workers,
            "judge": plan.judge,
            "benchmarks": {b.name: {"plugin": b.plugin, "settings": b.settings} for b in plan.benchmarks},
            "package_versions": package_versions(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "models": model_records,
        "results": results,
        "comparisons": comparisons(plan.compare, scored),
    }
    _write_json_atomic(output_dir / "summary.json", summary)
    if report:
        from srt.eval.report import write_report

        write_report(json_safe(summary), output_dir)
    return json_safe(summary)


def _evaluate_model(plan: EvalPlan, model: EvalModel, judges: _Judges) -> tuple[dict[str, Any], dict[str, Any]]:
    """One model on every benchmark of the plan, pair by pair (a finished pair with the same config
    hash is skipped); returns the model's record and its entries by benchmark, and frees its weights."""
    from srt.eval.report import correctness_metrics, gate_metrics, metric_units, srt_answer_metrics

    output_dir, cache_dir, seed = plan.output_dir, plan.cache_dir, plan.seed
    model.cache_dir = model.cache_dir or cache_dir
    record = model.describe()
    results: dict[str, Any] = {}
    for bench in plan.benchmarks:
        bench_dir = output_dir / _safe(model.name) / _safe(bench.name)
        task_hash = _hash(bench.instance.describe())
        config_hash = _hash({"task": task_hash, "model": record, "seed": seed})
        metrics_path = bench_dir / "metrics.json"
        previous = _read_json(metrics_path)
        if previous is not None and previous.get("config_hash") == config_hash:
            logger.info("%s / %s: finished earlier with the same config, skipped", model.name, bench.name)
            results[bench.name] = {**previous, "resumed": True}
            continue

        logger.info("%s / %s: running", model.name, bench.name)
        _seed_everything(seed)
        ctx = EvalContext(output_dir=bench_dir, cache_dir=cache_dir, seed=seed, make_critic=judges.factory(model))
        bench_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        result = bench.instance.run(model, ctx)
        if not isinstance(result, BenchmarkResult):
            raise SrtError(f"benchmark {bench.name!r} returned {type(result).__name__}, not a BenchmarkResult")
        # The plugin's own metrics win over the derived ones of the same name.
        metrics = {
            **correctness_metrics(result.samples),
            **srt_answer_metrics(result.samples),
            **gate_metrics(result.samples),
            **result.metrics,
        }
        entry = {
            "model": model.name,
            "benchmark": bench.name,
            "plugin": bench.plugin,
            "config_hash": config_hash,
            "task_config_hash": task_hash,
            "task": bench.instance.describe(),
            "metrics": metrics,
            "units": metric_units(metrics, getattr(result, "units", None)),
            "meta": result.meta,
            "plots": result.plots,
            "elapsed_s": round(time.perf_counter() - start, 2),
        }
        write_jsonl_atomic(bench_dir / "samples.jsonl", (json_safe(s) for s in result.samples))
        _write_json_atomic(metrics_path, entry)  # written last: its presence marks the pair finished
        results[bench.name] = json_safe({**entry, "resumed": False})
    model.unload()  # free the weights before the next model
    return record, results


# -- models in parallel processes --------------------------------------------------------------


def _evaluate_in_workers(plan: EvalPlan) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Every model of the plan in a pool of ``plan.workers`` processes (``spawn``), each with
    ``torch.get_num_threads() // workers`` threads (at least one): on a CPU, decoding steps are too
    small for threads to share well, so two 1-thread decoders finish sooner than one 2-thread one.

    A model is one job (its benchmarks run in order in one process): it is loaded once, and no two
    processes write its output folder (its generation cache, ``<cache_dir>/<model>/``, would be safe
    to share: another run with the same ``cache_dir`` may append to it at once); jobs start longest first
    (by ``max_new_tokens``, a proxy for the decoding work: every model runs the same benchmarks), and
    a model alone longer than the rest together sets the time. Each worker re-plans its model
    with :func:`srt.eval.plan.plan_eval`, so it runs exactly the code of a 1-worker run, and leaves
    its results on disk as that would; the caller assembles the summary. The first error in a worker
    is raised here and the other workers are stopped (finished pairs stay finished); a signal to this
    process stops them too, and a worker whose parent dies (SIGKILL) exits within a second.
    """
    import multiprocessing

    import torch

    workers = min(plan.workers, len(plan.models))
    threads = max(1, torch.get_num_threads() // workers)
    benchmarks = {b.name: {"plugin": b.plugin, **b.settings} for b in plan.benchmarks}  # the run's judge merged in
    order = sorted(plan.models, key=lambda m: m.sampling.max_new_tokens, reverse=True)
    jobs = [(model, benchmarks, str(plan.output_dir), plan.seed, str(plan.cache_dir)) for model in order]
    logger.info("evaluating %d models in %d worker processes, %d thread(s) each", len(jobs), workers, threads)
    level = logging.getLogger("srt").getEffectiveLevel()
    done: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(workers, initializer=_init_worker, initargs=(threads, os.getpid(), level))
    try:
        for name, record, results in pool.imap_unordered(_evaluate_model_in_worker, jobs):
            done[name] = (record, results)
        pool.close()  # all done: let the workers exit on their own
    except BaseException:
        pool.terminate()  # an error or a signal: stop the other workers now (finished pairs stay on disk)
        raise
    finally:
        pool.join()
    return done


def _init_worker(threads: int, parent_pid: int, log_level: int) -> None:
    """A worker process: its share of the threads, srt's log handler and secret filter, SIGINT left to
    the parent (which stops the pool), and an exit as soon as the parent is gone."""
    import signal
    import threading

    import torch

    from srt.quiet import setup_console_logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    setup_console_logging(log_level, f"%(levelname)s %(name)s [worker {os.getpid()}]: %(message)s")

    def exit_with_parent() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=exit_with_parent, name="exit-with-parent", daemon=True).start()


def _evaluate_model_in_worker(job: tuple) -> tuple[str, dict[str, Any], dict[str, Any]]:
    from srt.eval.plan import plan_eval
    from srt.secrets import register_env_secrets

    model, benchmarks, output_dir, seed, cache_dir = job
    register_env_secrets({"benchmarks": benchmarks})  # this process's log filter knows the key values too
    plan = plan_eval([model], benchmarks, output_dir, seed=seed, cache_dir=cache_dir)
    record, results = _evaluate_model(plan, plan.models[0], _Judges())
    return model.name, record, results


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


def _read_samples(path: Path) -> list[dict[str, Any]]:
    return [row for _, _, row in JsonLines(path)]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _safe(name: str) -> str:
    from srt.eval.model import _safe_name

    return _safe_name(name)


# -- CLI-facing functions ----------------------------------------------------------------------


def cli_inputs(
    models: Sequence[str] = (),
    benchmarks: str | Sequence[str] | None = None,
    config_path: str | Path | None = None,
    output_dir: str | Path | None = None,
    seed: int | None = None,
    judge: str | None = None,
    answer_mode: str | None = None,
    overrides: Sequence[str] = (),
    *,
    modes: Sequence[str] = (),
    limit: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """The command line merged with the YAML config: the keyword arguments of :func:`run_eval`.

    Every flag is a shorthand for config fields (each setting is defined once, in the config), applied
    after ``--set`` and before the config is validated:

    * ``models``: ``PATH`` or ``NAME=PATH`` entries; they replace the config's ``models``;
    * ``answer_mode``: every model's ``answer_mode``; ``modes``: ``NAME=MODE`` for one model each
      (after ``answer_mode``); a name that is no model of the run, or an unknown mode, is an error;
    * ``device``, ``dtype``, ``batch_size``: every model's ``device`` / ``dtype`` / ``batch_size``;
    * ``max_new_tokens``: every model's ``sampling``, ``candidate_sampling`` and ``score_sampling``
      ``max_new_tokens`` (the budget of every generation), and ``max_gen_toks`` of the benchmarks
      that take one (lm-eval's plain-mode budget);
    * ``limit``: every selected benchmark's ``limit`` (replacing its own; a benchmark whose settings
      have no ``limit`` is an error);
    * ``workers``: the config's ``workers`` (models evaluated at once, one process each);
    * ``benchmarks``: ``"a,b"`` or a list; selects benchmarks (with the config's settings for them);
    * ``judge``: a critic name replacing the config's judge; ``overrides``: ``--set KEY=VALUE`` on
      the config (``judge.model=gpt-4o``, ``benchmarks.gsm8k.limit=4``).
    """
    data = eval_config_data(config_path, overrides, judge=judge)
    if models:
        data["models"] = [_cli_model(m) for m in models]
    if isinstance(benchmarks, str):
        benchmarks = [b.strip() for b in benchmarks.split(",") if b.strip()]
    if benchmarks:
        configured = data.get("benchmarks") if isinstance(data.get("benchmarks"), dict) else {}
        data["benchmarks"] = {b: configured.get(b) or {} for b in benchmarks}
    _apply_model_flags(data, answer_mode, modes, {"device": device, "dtype": dtype, "batch_size": batch_size})
    _apply_max_new_tokens(data, max_new_tokens)
    _apply_benchmark_flags(data, limit, max_new_tokens)
    if workers is not None:
        data["workers"] = workers
    cfg = eval_config_from_data(data, str(config_path or "config"))
    inputs = run_inputs(cfg)
    inputs["output_dir"] = output_dir or cfg.output_dir
    inputs["seed"] = cfg.seed if seed is None else seed
    return inputs


def _cli_model(value: str) -> dict[str, Any]:
    name, sep, path = value.partition("=")
    if not sep:
        name, path = None, value
    if not path.strip() or (sep and not name.strip()):
        raise ConfigError(f"--model {value}: give PATH or NAME=PATH (a model folder, a hub id or 'tiny')")
    return {"name": name, "path": path}


def _model_entries(data: dict[str, Any]) -> list[dict[str, Any]]:
    models = data.get("models")
    return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []


def _apply_max_new_tokens(data: dict[str, Any], max_new_tokens: int | None) -> None:
    if max_new_tokens is None:
        return
    for entry in _model_entries(data):
        for key in ("sampling", "candidate_sampling", "score_sampling"):
            current = entry.get(key) if isinstance(entry.get(key), dict) else {}
            entry[key] = {**current, "max_new_tokens": max_new_tokens}


def _apply_model_flags(
    data: dict[str, Any], answer_mode: str | None, modes: Sequence[str], every_model: dict[str, Any]
) -> None:
    """``answer_mode`` and the ``every_model`` settings (``device``, ``dtype``, ``batch_size``: None = not
    given) on every model, then ``modes`` (``NAME=MODE``) on one model each."""
    entries = _model_entries(data)
    names = [model_name(m.get("name"), str(m.get("path", ""))) for m in entries]
    given = {key: value for key, value in every_model.items() if value is not None}
    for entry in entries:
        if answer_mode is not None:
            entry["answer_mode"] = answer_mode
        entry.update(given)
    choices = ModelSpec.model_fields["answer_mode"].annotation.__args__  # ("plain", "srt", "gated")
    for value in modes:
        name, sep, mode = value.partition("=")
        if not sep:
            raise ConfigError(
                f"--mode {value}: give NAME=MODE for one model (e.g. --mode srt=srt); --answer-mode MODE sets every model"
            )
        if mode not in choices:
            raise ConfigError(f"--mode {value}: {mode!r} is not an answer mode; use one of {', '.join(choices)}")
        if name not in names:
            known = ", ".join(names) or "none"
            raise ConfigError(f"--mode {value}: no model named {name!r} in this run (models: {known})")
        for entry, entry_name in zip(entries, names):
            if entry_name == name:
                entry["answer_mode"] = mode


def _apply_benchmark_flags(data: dict[str, Any], limit: int | None, max_new_tokens: int | None) -> None:
    from srt.registry import BENCHMARKS, load_plugin

    if (limit is None and max_new_tokens is None) or not isinstance(data.get("benchmarks"), dict):
        return
    for name, given in list(data["benchmarks"].items()):
        settings = dict(given) if isinstance(given, dict) else {} if given is None else None
        if settings is None:
            continue  # not a mapping: the plan names the mistake
        plugin = settings.get("plugin", name)
        cls = load_plugin(BENCHMARKS, plugin) if isinstance(plugin, str) else None
        declared = getattr(cls, "settings_model", None)
        fields = set(declared.model_fields) if declared is not None else None  # None: the plugin declares nothing
        if limit is not None:
            if fields is not None and "limit" not in fields:
                via = f" (plugin {plugin!r})" if plugin != name else ""
                raise ConfigError(
                    f"--limit: benchmark {name!r}{via} has no `limit` setting; leave it out of --benchmarks"
                )
            settings["limit"] = limit
        if max_new_tokens is not None and fields is not None and "max_gen_toks" in fields:
            settings["max_gen_toks"] = max_new_tokens
        data["benchmarks"][name] = settings


def run_inputs(cfg: EvalConfig) -> dict[str, Any]:
    """An eval config as the keyword arguments of :func:`run_eval`: ``run_eval(**run_inputs(cfg))``."""
    return {
        "models": [model_from_spec(s) for s in cfg.models],
        "benchmarks": dict(cfg.benchmarks),
        "output_dir": cfg.output_dir,
        "seed": cfg.seed,
        "judge": cfg.judge,
        "cache_dir": cfg.cache_dir,
        "compare": [list(pair) for pair in cfg.compare],
        "workers": cfg.workers,
    }


def cli_run(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """``srt-eval run``: :func:`cli_inputs`, then :func:`run_eval` (plan, lock, evaluate)."""
    return run_eval(**cli_inputs(*args, **kwargs))


def cli_plan(*args: Any, **kwargs: Any) -> EvalPlan:
    """``srt-eval validate``: :func:`cli_inputs`, then :func:`run_eval`'s plan alone (nothing loaded or written)."""
    from srt.eval.plan import plan_eval

    inputs = cli_inputs(*args, **kwargs)
    return plan_eval(inputs.pop("models"), inputs.pop("benchmarks"), inputs.pop("output_dir"), **inputs)


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
    from srt.pipeline.lock import RunLock
    from srt.records import JsonlWriter, existing_ids

    items = plan_generate(model_path, input_path, output_path, mode)
    output_path = Path(output_path)
    # One run per output file: a second one would append the same answers again.
    with RunLock.for_file(output_path, "srt-eval generate"):
        done = existing_ids(output_path)
        todo = [it for it in items if it["id"] not in done]
        model = EvalModel(
            name=Path(str(model_path).rstrip("/")).name or str(model_path),
            path=model_path,
            answer_mode=mode if writes_srt_turn(mode) else "plain",
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
                        {
                            "id": item["id"],
                            "instruction": item["instruction"],
                            "answer": result["answer"],
                            "mode": mode,
                            "trace": result["trace"],
                        }
                    )
                    stats["generated"] += 1
        stats.update(_trace_stats(output_path, mode))
        stats["model"] = model.describe()
        _write_json_atomic(Path(f"{output_path}.stats.json"), stats)
        return stats


def plan_generate(model_path: str, input_path: str | Path, output_path: str | Path, mode: str) -> list[dict[str, Any]]:
    """``srt-eval generate``'s checks, before any model loads: the mode, the input (every line, with
    ``file:line`` errors), the output file (a file whose folder can be written; an existing output is
    readable), the model (found without loading it). Returns the input's items."""
    from srt.inference import MODES
    from srt.models import check_model_reference
    from srt.pipeline.plan import check_output_dir
    from srt.records import existing_ids

    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    items = read_instructions(input_path)
    output = Path(output_path)
    if output.is_dir():
        raise ConfigError(f"--output {output} is a directory; give a file path (e.g. {output}/answers.jsonl)")
    if output.resolve() == Path(input_path).resolve():
        raise ConfigError(f"--output {output} is the input file; answers go to another file")
    check_output_dir(output.parent, "the --output folder")
    existing_ids(output)  # an earlier output this run appends to must be readable
    check_model_reference(model_path, what="--model")
    return items


def _trace_stats(path: Path, mode: str) -> dict[str, Any]:
    """Counts over the whole output file (earlier runs included)."""
    counts = {"answered": 0, "parsed": 0, "fallback_unparseable": 0, "truncated": 0}
    if mode == "gated":
        counts.update(gate_kept_refinement=0, gate_kept_response=0)
    lines = JsonLines(path)
    for lineno, raw, row in lines:
        trace = row.get("trace")
        if not isinstance(trace, dict):
            lines.bad(lineno, raw, "expected an answer with a 'trace' object (is this an srt-eval generate output?)")
        counts["answered"] += 1
        counts["truncated"] += trace.get("finish_reason") == "length"
        if writes_srt_turn(mode):
            counts["parsed"] += bool(trace.get("parsed"))
            counts["fallback_unparseable"] += bool(trace.get("fallback"))
        if mode == "gated":
            counts["gate_kept_refinement"] += trace.get("gate") == "refinement"
            counts["gate_kept_response"] += trace.get("gate") == "response"
    if not writes_srt_turn(mode):
        del counts["parsed"], counts["fallback_unparseable"]
    return counts


def read_instructions(path: str | Path) -> list[dict[str, Any]]:
    """``{id?, instruction}`` per line; a missing id becomes ``line-<n>``. Read with the project's one JSONL
    line loop (:class:`srt.records.JsonLines`): every problem is ``<file>:<line>: <reason>``."""
    lines = JsonLines(path)
    items = []
    for lineno, raw, obj in lines:
        if not isinstance(obj.get("instruction"), str) or not obj["instruction"].strip():
            lines.bad(lineno, raw, "expected an object with a non-empty string 'instruction'")
        item_id = str(obj.get("id", f"line-{lineno}"))
        lines.unique(lineno, raw, item_id)
        items.append({**obj, "id": item_id})
    if not items:
        raise lines.no_records_error()
    return items
