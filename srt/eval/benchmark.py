"""The benchmark protocol: what every benchmark plugin (entry-point group ``srt.benchmarks``) implements.

A benchmark declares its data, how the model answers (``plain``: the model's answer as is; ``srt``:
response -> feedback -> refinement, the refinement is the answer) and how answers are scored. It
returns per-sample results and metrics; the harness (:mod:`srt.eval.runner`) caches generations,
writes per-sample JSONL, the summary JSON, the side-by-side table and the plots.

A plugin class is built with ``Cls.from_config(settings)`` where ``settings`` is the benchmark's
mapping in the eval config (data files, shots, answer mode, judge...). Before that, and before any
model loads, ``srt-eval run`` and ``srt-eval validate`` check the settings
(:func:`srt.eval.plan.plan_eval`) through what the class declares:

* ``settings_model``: a pydantic model of its settings (``extra="forbid"``, a ``description`` per
  field); unknown keys and wrong types are one ``Error:`` line;
* ``check_settings(parsed)`` (classmethod): its own cheap checks, e.g. every data file it names
  exists and is readable (raise an :class:`srt.errors.SrtError` with one line, ``file:line``);
* ``uses_judge = True``: the run's ``judge`` critic (``{name: ..., <settings>}``) is passed as the
  ``judge`` setting unless the benchmark names its own, and that critic's settings are checked too.

``from_config`` should stay cheap (settings and data, never a model): the plan builds every
benchmark before the run starts, so a data set that cannot be read (or fetched, for hub data) stops
the run before any generation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

AnswerMode = Literal["plain", "srt", "gated"]
ANSWER_MODES: tuple[str, ...] = AnswerMode.__args__  # ("plain", "srt", "gated")
# The answer modes whose answers come from one SRT turn (response -> feedback -> refinement): ``srt``
# (the refinement is the answer) and ``gated`` (the refinement only when the model's separate self-score
# of it beats its response's; srt.inference). Their traces carry the response, the feedback, the
# model's self-score and the parse flags; ``gated`` adds ``gate`` and ``refinement_score``.
SRT_TURN_MODES = ("srt", "gated")


def writes_srt_turn(mode: str | None) -> bool:
    """Whether answers in ``mode`` come from an SRT turn (``srt``, ``gated``): what the benchmarks and the
    report special-case (response accuracy, inline self-scores, SRT parse rates, self-critique scoring)."""
    return mode in SRT_TURN_MODES


@dataclass
class BenchmarkResult:
    metrics: dict[str, float]  # e.g. {"win_rate": 61.2, "standard_error": 3.1}
    samples: list[dict[str, Any]]  # one JSON-able dict per item (id, prompt, answer, score/pref...)
    meta: dict[str, Any] = field(default_factory=dict)  # task config hash, data hash, notes, warnings
    # Optional histogram-like data for plots, e.g. {"self_scores": [7, 8, ...]}
    plots: dict[str, list[float]] = field(default_factory=dict)
    # Optional metric -> unit ("percent", "fraction", "count", "characters", "tokens", "score") where
    # the name does not tell (srt.eval.report.metric_unit); the report shows rates in percent.
    units: dict[str, str] = field(default_factory=dict)


@dataclass
class EvalContext:
    output_dir: Path  # per (model, benchmark) directory for this run
    cache_dir: Path  # generation cache (resumable)
    seed: int = 0
    # Builds a critic plugin by name for judging: make_critic(name, settings) -> srt.critic.Critic
    make_critic: Callable[[str, dict[str, Any]], Any] | None = None


@runtime_checkable
class Benchmark(Protocol):
    name: str

    @classmethod
    def from_config(cls, settings: dict[str, Any]) -> Benchmark: ...

    def describe(self) -> dict[str, Any]:
        """Task settings for the run record (hashed into the task config hash)."""
        ...

    def run(self, model: Any, ctx: EvalContext) -> BenchmarkResult:
        """Evaluate ``model`` (a :class:`srt.eval.model.EvalModel`)."""
        ...
