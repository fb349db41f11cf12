"""The steps of a run, the settings that shape each one, and what stops a run from silently drifting.

A run is a chain of steps::

    stage1.responses -> stage1.critic -> stage1.sft
      -> stage2.round1.responses -> stage2.round1.critic -> stage2.round1.dpo -> stage2.round2.responses ...

Each step's *fingerprint* hashes the settings that change its outputs (listed by :func:`plan_steps`:
e.g. ``sft.*`` for SFT, not ``trainer.log_every_n_steps``) and the fingerprint of the step before it,
so a change upstream reaches everything downstream. ``<output_dir>/steps.json`` records, per step,
its fingerprint, its settings and whether it started or finished.

Before a run does anything, :func:`check_drift` compares the config with that record. A step that
already ran (or started) with other settings is never skipped or resumed as if nothing changed:
the run stops with one line naming the changed keys and the two ways out, another ``output_dir`` or
``--restart STEP``, which moves that step's outputs and everything after it to
``<output_dir>/superseded/<time>/`` (kept, not deleted) and runs them again.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srt.config import RunConfig, config_to_dict
from srt.errors import ConfigError
from srt.io import atomic_write_json, file_sha256, json_sha256, read_json

log = logging.getLogger(__name__)
STEPS_FILE = "steps.json"

# What each kind of step writes into its directory (glob patterns), for --restart.
_OUTPUTS = {
    "responses": ("responses.jsonl", "responses.jsonl.rejects.jsonl"),
    "critic": (
        "critic_calls.jsonl",
        "records.jsonl",
        "rejects.jsonl",
        "report.json",
        "report.md",
        "scores.png",
        "pairs.jsonl",
        "no_pairs.json",
    ),
    "train": (
        "checkpoints",
        "logs",
        "model",
        "adapter",
        "reference_logps",
        "hpc_ckpt_*.ckpt",
        "summary.md",
        "turn_pairs.jsonl",
    ),
    "start": (),
}
# Options added after runs were recorded: at these values a step computes what it did before they
# existed, so they stay out of its settings (and fingerprint) and earlier runs resume without drift.
_ADDED_DEFAULTS = {
    "generation.response.num_samples": 1,
    "filter.balance_scores": "none",
    "filter.max_score_share": None,
    "dpo.pair_format": "refinement",
    "sft.lm_head_chunk_size": None,
    "dpo.lm_head_chunk_size": None,
    **{f"sft.segment_weights.{k}": 1.0 for k in ("response", "feedback", "refinement", "eos")},
}
# Renamed options, recorded under the name they had (fingerprints of earlier runs hold).
_RENAMED = {"dpo.rpo_alpha": "dpo.nll_weight"}


def _compatible(settings: dict[str, Any]) -> dict[str, Any]:
    return {
        _RENAMED.get(k, k): v
        for k, v in settings.items()
        if not (k in _ADDED_DEFAULTS and v == _ADDED_DEFAULTS[k] and type(v) is type(_ADDED_DEFAULTS[k]))
    }


# Settings that change how a trainer runs, not what it computes.
_TRAINER_SHAPING = ("trainer.precision", "trainer.gradient_clip_val", "trainer.val_fraction", "trainer.fsdp.precision")


class DriftError(ConfigError):
    """The config disagrees with what an earlier attempt of a step ran with."""


@dataclass
class Step:
    name: str
    kind: str  # responses | critic | train
    dir: Path
    settings: dict[str, Any]
    parent: str | None = None  # the previous step's fingerprint
    fingerprint: str = field(init=False)

    def __post_init__(self):
        self.fingerprint = json_sha256({"settings": self.settings, "parent": self.parent}, 16)

    def outputs(self) -> list[Path]:
        return [p for pattern in _OUTPUTS[self.kind] for p in sorted(self.dir.glob(pattern))]


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def _pick(flat: dict[str, Any], prefixes: tuple[str, ...], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    def under(key: str, p: str) -> bool:
        return key == p or key.startswith(p + ".")

    return {
        k: v for k, v in flat.items() if any(under(k, p) for p in prefixes) and not any(under(k, e) for e in exclude)
    }


def data_identity(path: str) -> str | None:
    """sha256 of a local instructions file (or of a dataset folder's file names, sizes and small files);
    None for a hub dataset id (its name, split and config are in the settings)."""
    p = Path(path)
    if p.is_file():
        return file_sha256(p)
    if p.is_dir():
        files = [f for f in sorted(p.rglob("*")) if f.is_file()]
        small_json = [
            f.read_text(encoding="utf-8", errors="replace")
            for f in files
            if f.suffix == ".json" and f.stat().st_size < 1 << 20
        ]
        return json_sha256({"files": [f"{f.relative_to(p)}:{f.stat().st_size}" for f in files], "json": small_json})
    return None


def _critic_settings(prefix: str, flat: dict[str, Any], critic: dict[str, Any]) -> dict[str, Any]:
    """The critic's settings minus those its plugin declares operational (concurrency, retries...)."""
    from srt.errors import PluginError
    from srt.registry import CRITICS, load_plugin

    try:
        operational = tuple(getattr(load_plugin(CRITICS, critic["name"]), "operational_settings", ()))
    except PluginError:
        operational = ()
    return _pick(flat, (prefix,), tuple(f"{prefix}.{k}" for k in operational))


def plan_steps(cfg: RunConfig, *, start_model: str | None = None) -> list[Step]:
    """Every step of the run in order, with its shaping settings and fingerprint."""
    from srt.pipeline.stage2 import round_dir, round_instructions

    flat = flatten(config_to_dict(cfg))
    out_dir = Path(cfg.output_dir)
    model = ("model.path", "model.revision", "model.dtype", "model.system_prompt", "model.trust_remote_code")
    sampling = ("seed", "generation.backend", "generation.server.model", "generation.response")
    steps: list[Step] = []

    def add(name: str, kind: str, directory: Path, settings: dict[str, Any]) -> None:
        steps.append(Step(name, kind, directory, _compatible(settings), steps[-1].fingerprint if steps else None))

    s1 = out_dir / "stage1"
    if start_model is None and cfg.data.stage1 is not None:
        add(
            "stage1.responses",
            "responses",
            s1,
            {
                **_pick(flat, (*model, *sampling, "data.stage1")),
                "data.stage1.sha256": data_identity(cfg.data.stage1.path),
            },
        )
        add("stage1.critic", "critic", s1, {**_critic_settings("critic", flat, cfg.critic), **_pick(flat, ("filter",))})
        add("stage1.sft", "train", s1, _pick(flat, (*model, "seed", "sft", *_TRAINER_SHAPING)))
    else:  # stage 2 from a given model (or from a stage-1 model this config does not describe)
        from srt.models import model_revision

        start = start_model or str(s1 / "model")
        revision = model_revision(start) if Path(start).is_dir() else None
        add("stage2.start", "start", out_dir / "stage2", {"start_model": start, "revision": revision})
    if cfg.data.stage2 is not None:
        for r in range(1, cfg.stage2.rounds + 1):
            rd = round_dir(cfg, r)
            src = round_instructions(cfg, r)
            add(
                f"stage2.round{r}.responses",
                "responses",
                rd,
                {
                    **_pick(flat, ("model.system_prompt", "model.dtype", *sampling)),
                    **{f"data.stage2.{k}": v for k, v in flatten(src.model_dump()).items()},
                    "data.stage2.sha256": data_identity(src.path),
                },
            )
            add(
                f"stage2.round{r}.critic",
                "critic",
                rd,
                {
                    **_critic_settings("stage2.critic", flat, cfg.stage2.critic),
                    **_pick(
                        flat, ("stage2.refinement_vs_response", "stage2.min_refinement_score", "generation.critique")
                    ),
                },
            )
            add(f"stage2.round{r}.dpo", "train", rd, _pick(flat, ("model.dtype", "seed", "dpo", *_TRAINER_SHAPING)))
    return [s for s in steps if s.kind != "start"]


class StepRecord:
    """``<output_dir>/steps.json``: what each step ran with (rank 0 writes it)."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / STEPS_FILE
        self.steps: dict[str, dict[str, Any]] = read_json(self.path, default={}).get("steps", {})

    def save(self) -> None:
        from srt.secrets import scrub

        atomic_write_json(self.path, scrub({"version": 1, "steps": self.steps}))

    def started(self, step: Step) -> None:
        entry = self.steps.get(step.name)
        if entry is None or entry["fingerprint"] != step.fingerprint:
            self.steps[step.name] = {
                "fingerprint": step.fingerprint,
                "settings": step.settings,
                "status": "started",
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "started_ts": time.time(),
            }
            self.save()

    def finished(self, step: Step) -> None:
        self.started(step)
        entry = self.steps[step.name]
        if entry["status"] != "done":
            entry.update(status="done", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), finished_ts=time.time())
            self.save()

    def status(self, name: str) -> str | None:
        entry = self.steps.get(name)
        return entry["status"] if entry else None


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    from srt.secrets import redact_value

    missing = object()

    def show(key: str, value: Any) -> str:
        return "(unset)" if value is missing else json.dumps(redact_value(key, value), default=str)

    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, missing), new.get(k, missing)
        if a != b:
            out.append(f"{k}: {show(k, a)} -> {show(k, b)}")
    return out


def check_drift(steps: list[Step], record: StepRecord) -> None:
    """Raise DriftError for the first step whose recorded fingerprint differs from the config's; warn
    about outputs without a record."""
    _refuse_drift(steps, record)
    unrecorded = [s for s in steps if s.name not in record.steps and any(p.exists() for p in s.outputs())]
    if unrecorded:
        log.warning(
            "%s has outputs of %s but no record of their settings (%s missing: made by an older srt?); "
            "they are assumed to match this config",
            steps[0].dir.parent,
            ", ".join(s.name for s in unrecorded),
            STEPS_FILE,
        )


def _refuse_drift(steps: list[Step], record: StepRecord) -> None:
    for step in steps:
        entry = record.steps.get(step.name)
        if entry is None or entry["fingerprint"] == step.fingerprint:
            continue
        changed = _changes(entry.get("settings", {}), step.settings)
        what = (
            "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
            if changed
            else "an earlier step changed"
        )
        state = "finished" if entry.get("status") == "done" else "started"
        raise DriftError(
            f"{step.name} {state} earlier with other settings ({what}); its outputs in {step.dir} would no longer "
            f"match this config. To keep them, use another output_dir; to redo {step.name} and every step after it, "
            f"run again with --restart {step.name}"
        )


def restart(steps: list[Step], record: StepRecord, name: str) -> Path | None:
    """Move the outputs of step ``name`` and every later step aside; forget their records. A step before
    ``name`` (kept in place) that no longer matches the config is refused first, before anything moves."""
    names = [s.name for s in steps]
    if name not in names:
        raise ConfigError(f"--restart {name}: no such step in this run; steps: {', '.join(names)}")
    _refuse_drift(steps[: names.index(name)], record)
    later = steps[names.index(name) :]
    out_dir = Path(record.path).parent
    aside = out_dir / "superseded" / time.strftime("%Y%m%d-%H%M%S")
    moved = 0
    for step in later:
        for path in step.outputs():
            target = aside / path.relative_to(out_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(target))
            moved += 1
        record.steps.pop(step.name, None)
    record.save()
    if moved:
        log.warning(
            "--restart %s: moved %d earlier output(s) of %s to %s", name, moved, ", ".join(s.name for s in later), aside
        )
        return aside
    return None
