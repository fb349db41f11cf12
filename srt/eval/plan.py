"""Plan, then execute, for ``srt-eval``: every part of an evaluation is checked before any model loads.

:func:`plan_eval` checks, in this order, and raises a :class:`~srt.errors.SrtError` (one ``Error:``
line, exit status 2) at the first problem; it writes nothing:

1. there are models and benchmarks, no two models share a name (their output folders), and each
   ``compare`` pair names two different models of the run;
2. the output directory (and a separate ``cache_dir``) can be created and written;
3. each model: its settings (answer mode, dtype, batch size, decoding keys) were accepted when it
   was built; it can be found without loading it (:func:`srt.models.check_model_reference`: a
   folder with ``config.json``, a built-in name, a hub id in the local cache when offline); its
   device exists here (``cuda`` needs a GPU); with ``workers`` > 1, every model runs on the CPU;
4. each benchmark: the plugin is installed; its settings validate against the ``settings_model``
   it declares and its own ``check_settings`` passes (for the built-ins: every data file it names
   exists and is readable JSONL/JSON with the fields it needs, ``file:line`` errors; a judged
   benchmark has a judge) (:func:`srt.registry.check_plugin_settings`);
5. each judge a benchmark will use (the run's ``judge`` for plugins that declare ``uses_judge``,
   unless the benchmark names its own): the critic plugin is installed, its settings validate, and
   its checks pass (the API key variable is set, the judge model can be found);
6. each benchmark is built (``from_config``: cheap, it holds its settings and small data sets).

``srt-eval validate`` runs exactly this; ``srt-eval run`` runs it, then takes the output
directory's lock (:class:`srt.pipeline.lock.RunLock`) for the life of the run, then evaluates.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srt.errors import ConfigError, PluginError, SrtError
from srt.eval.model import EvalModel, _safe_name

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class PlannedBenchmark:
    name: str  # the benchmark's name in this run (its output folder)
    plugin: str  # the plugin that runs it
    settings: dict[str, Any]  # as given, plus the run's judge where the plugin uses one
    instance: Any = field(default=None, repr=False)
    judge: str | None = None  # the judge critic's name, for the plan's description


@dataclass
class EvalPlan:
    models: list[EvalModel]
    benchmarks: list[PlannedBenchmark]
    output_dir: Path
    cache_dir: Path
    seed: int = 0
    judge: dict[str, Any] | None = None
    compare: list[tuple[str, str]] = field(default_factory=list)  # (model, baseline) for paired comparisons
    workers: int = 1  # models evaluated at once, each in its own process

    def describe(self) -> str:
        lines = [f"plan for srt-eval run: output_dir {self.output_dir} (cache {self.cache_dir}), seed {self.seed}"]
        if self.workers > 1:
            lines.append(f"  {min(self.workers, len(self.models))} models at once, each in its own worker process")
        for m in self.models:
            # gated: the refinement's re-score is a second generation, with the self-score budget.
            rescore = f", re-score max_new_tokens {m.score_sampling.max_new_tokens}" if m.answer_mode == "gated" else ""
            lines.append(
                f"  model {m.name:<20} {m.path}  (answer_mode {m.answer_mode}, dtype {m.dtype}, {m.device}, "
                f"batch_size {m.batch_size}, max_new_tokens {m.sampling.max_new_tokens}{rescore})"
            )
        for b in self.benchmarks:
            plugin = f" (plugin {b.plugin})" if b.plugin != b.name else ""
            judge = f", judge {b.judge}" if b.judge else ""
            limit = f", limit {b.settings['limit']}" if b.settings.get("limit") is not None else ""
            lines.append(f"  benchmark {b.name}{plugin}{judge}{limit}")
        for model, baseline in self.compare:
            lines.append(f"  compare {model} with {baseline}")
        return "\n".join(lines)


def check_device(device: str, what: str) -> None:
    """``device`` names a torch device that exists here (``cuda`` needs a visible GPU)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{what}: device {device!r} is not a torch device (use cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{what}: device {device!r} needs a CUDA GPU, and none is available here (use cpu, or auto)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{what}: device {device!r}, but only {torch.cuda.device_count()} GPU(s) are visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{what}: device 'mps' is not available here")


def check_model(model: EvalModel) -> None:
    from srt.models import check_model_reference

    what = f"model {model.name!r}"
    if model.dtype not in DTYPES:
        raise ConfigError(f"{what}: dtype {model.dtype!r} is not one of {', '.join(DTYPES)}")
    check_model_reference(model.path, revision=model.revision, what=what)
    check_device(model.device, what)


def judge_parts(judge: Any, where: str) -> tuple[str, dict[str, Any]]:
    """``{name: <critic>, <settings>}`` or a critic name -> (name, settings)."""
    if isinstance(judge, str):
        return judge, {}
    if isinstance(judge, dict) and isinstance(judge.get("name"), str):
        return judge["name"], {k: v for k, v in judge.items() if k != "name"}
    raise ConfigError(f"{where}: a judge is {{name: <critic plugin>, <its settings>}} or a critic name, got {judge!r}")


def check_judge(judge: Any, where: str) -> str:
    """The judge critic is installed, its settings validate and its own checks pass; returns its name."""
    from srt.registry import CRITICS, check_plugin_settings

    name, settings = judge_parts(judge, where)
    try:
        check_plugin_settings(CRITICS, name, settings, where)
    except PluginError as exc:
        message = str(exc)
        raise PluginError(message if message.startswith(f"{where}:") else f"{where}: {message}") from None
    return name


def plan_eval(
    models: Sequence[EvalModel],
    benchmarks: dict[str, dict[str, Any] | None],
    output_dir: str | os.PathLike,
    *,
    seed: int = 0,
    judge: dict[str, Any] | None = None,
    cache_dir: str | os.PathLike | None = None,
    compare: Sequence[Sequence[str]] = (),
    workers: int = 1,
) -> EvalPlan:
    """Check everything the evaluation needs (module docstring) and build its benchmarks."""
    from srt.pipeline.plan import check_output_dir
    from srt.registry import BENCHMARKS, check_plugin_settings, load_plugin

    models = list(models)
    if not models:
        raise ConfigError("no models to evaluate: give at least one --model (or `models:` in the config)")
    if not benchmarks:
        raise ConfigError("no benchmarks selected: give --benchmarks a,b (or `benchmarks:` in the config)")
    names = [m.name for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"two models share the name(s) {duplicates}; give each a distinct name (NAME=PATH)")
    folders = [_safe_name(n) for n in names]
    clashes = sorted({n for n, f in zip(names, folders) if folders.count(f) > 1})
    if clashes:
        raise ConfigError(
            f"models {clashes} would share an output folder; give them names that differ in letters or digits"
        )

    pairs = check_compare(compare, names)

    output = Path(output_dir)
    check_output_dir(output, "output_dir")
    cache = Path(cache_dir) if cache_dir is not None else output / "cache"
    if cache_dir is not None:
        check_output_dir(cache, "cache_dir")

    for model in models:
        check_model(model)
    check_workers(workers, models)

    planned: list[PlannedBenchmark] = []
    judges_checked: dict[str, str] = {}
    used_run_judge = False
    for name, given in benchmarks.items():
        where = f"benchmarks.{name}"
        if given is not None and not isinstance(given, dict):
            raise ConfigError(f"{where}: settings must be a mapping, got {type(given).__name__}")
        settings = dict(given or {})
        plugin = settings.pop("plugin", name)
        if not isinstance(plugin, str):
            raise ConfigError(f"{where}.plugin: a benchmark plugin name, got {plugin!r}")
        cls = load_plugin(BENCHMARKS, plugin)  # unknown name -> PluginError listing the installed ones
        uses_judge = bool(getattr(cls, "uses_judge", False))
        judge_where = f"{where}.judge"
        # The run's judge applies to every benchmark that uses one, unless the benchmark names its own.
        if uses_judge and judge and "judge" not in settings:
            settings["judge"] = dict(judge)
            judge_where = "judge"
            used_run_judge = True
        check_plugin_settings(BENCHMARKS, plugin, settings, where)
        judge_name = None
        if uses_judge and settings.get("judge") is not None:
            if judge_where not in judges_checked:
                judges_checked[judge_where] = check_judge(settings["judge"], judge_where)
            judge_name = judges_checked[judge_where]
        try:
            instance = cls.from_config(dict(settings))
        except SrtError as exc:
            raise PluginError(f"{where}: {exc}") from None
        planned.append(PlannedBenchmark(name, plugin, settings, instance, judge_name))
    if judge and not used_run_judge:
        log.warning(
            "the run's judge %r is not used: no selected benchmark needs a judge (or each names its own)",
            judge.get("name"),
        )
    return EvalPlan(models, planned, output, cache, seed, judge, pairs, workers)


def check_workers(workers: int, models: Sequence[EvalModel]) -> None:
    """``workers`` > 1 splits the CPU threads between processes: every model must run on the CPU."""
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers: a whole number >= 1, got {workers!r}")
    if workers > 1:
        elsewhere = [f"{m.name!r} on {m.device}" for m in models if not m.device.startswith("cpu")]
        if elsewhere:
            raise ConfigError(
                f"workers: {workers} evaluates models in parallel CPU processes, but model {elsewhere[0]} is not "
                "on the CPU; set workers: 1 (a GPU decodes a model's whole batch at once)"
            )


def check_compare(compare: Sequence[Sequence[str]], names: Sequence[str]) -> list[tuple[str, str]]:
    """Each ``[model, baseline]`` pair names two different models of the run."""
    pairs = []
    for k, pair in enumerate(compare or ()):
        where = f"compare[{k}]"
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise ConfigError(f"{where}: a [model, baseline] pair of model names, got {pair!r}")
        unknown = [p for p in pair if p not in names]
        if unknown:
            raise ConfigError(
                f"{where}: no model named {unknown[0]!r} in this run (models: {', '.join(names)}); "
                "--model replaces the config's models, so give matching names or --set compare=[]"
            )
        if pair[0] == pair[1]:
            raise ConfigError(f"{where}: compares {pair[0]!r} with itself")
        pairs.append((pair[0], pair[1]))
    return pairs
