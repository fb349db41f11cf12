"""Plan, then execute: every part of a run is built and checked before any model is loaded.

:func:`plan_run` checks, in this order, and raises a :class:`~srt.errors.SrtError` (one ``Error:``
line, exit status 2) at the first problem:

1. the output directory can be created and written;
2. the model can be found (a folder with ``config.json``, a built-in name, a hub id in the cache
   when offline), and for ``stage2`` the stage-1 model it starts from;
3. each instruction source exists and every mapped field is in its first row;
4. each critic (stage 1 and stage 2): the plugin is installed, its settings validate against the
   model it declares, its own checks pass (an API key variable that is set), and a critic that needs
   gold answers has a ``reference`` field mapped;
5. the generation back-end (``generation.server`` for ``backend: openai``);
6. the trainer: accelerator and devices available, strategy and precision known, FSDP options;
7. the batch arithmetic of SFT and DPO (global batch = micro batch x devices x accumulation);
8. the steps of the run and their fingerprints (:mod:`srt.pipeline.steps`).

``srt-train validate`` runs exactly this (and checks drift against an existing output directory);
``srt-train stage1|stage2|run`` run it before they do anything else.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from srt.config import RunConfig
from srt.errors import ConfigError

log = logging.getLogger(__name__)
Command = Literal["stage1", "stage2", "run"]

_ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


@dataclass
class RunPlan:
    cfg: RunConfig
    command: Command
    steps: list = field(default_factory=list)  # srt.pipeline.steps.Step, in run order
    start_model: str | None = None

    def describe(self) -> str:
        lines = [f"plan for srt-train {self.command}: output_dir {self.cfg.output_dir}"]
        lines += [f"  {s.name:<26} {s.fingerprint}  ({s.dir})" for s in self.steps]
        return "\n".join(lines)


def check_output_dir(path: str | os.PathLike, what: str = "output_dir") -> None:
    """The directory exists and is writable, or can be created (nothing is created here)."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what} {p} is a file, not a directory")
    existing = p if p.exists() else next((a for a in p.absolute().parents if a.exists()), None)
    if existing is None or not existing.is_dir():
        raise ConfigError(f"cannot create {what} {p}: {existing} is a file, not a directory")
    try:  # a probe file, not os.access: root passes os.access on read-only filesystems too
        probe = Path(tempfile.mkdtemp(dir=existing, prefix=".srt-write-check-"))
    except OSError as exc:
        where = f"{existing} is not writable" if existing != p else "it is not writable"
        raise ConfigError(
            f"cannot {'write to' if existing == p else 'create'} {what} {p}: {where} ({exc.strerror or exc})"
        ) from None
    probe.rmdir()


def check_critic(critic: dict, where: str, *, sources: list[tuple[str, object]]) -> None:
    """The critic plugin exists, its settings validate and its needs are met by the data."""
    from srt.registry import CRITICS, check_plugin_settings, load_plugin

    name = critic["name"]
    settings = {k: v for k, v in critic.items() if k != "name"}
    check_plugin_settings(CRITICS, name, settings, where)
    if getattr(load_plugin(CRITICS, name), "needs_reference", False):
        for what, src in sources:
            if src is not None and "reference" not in src.fields:
                raise ConfigError(
                    f"{where}: critic {name!r} needs gold answers, but {what}.fields maps no "
                    f"'reference' (e.g. fields: {{instruction: question, reference: answer}})"
                )


def check_generation(cfg: RunConfig) -> None:
    gen = cfg.generation
    if gen.backend == "openai":
        from pydantic import ValidationError

        from srt.errors import validation_problems
        from srt.remote_generation import ServerSettings
        from srt.secrets import find_secrets

        try:
            server = ServerSettings.model_validate(gen.server)
        except ValidationError as exc:
            raise ConfigError(f"generation.server: {validation_problems(exc)}") from None
        if server.api_key_env and not os.environ.get(server.api_key_env):
            raise ConfigError(f"generation.server.api_key_env: environment variable {server.api_key_env} is not set")
        if find_secrets({"base_url": server.base_url}):
            raise ConfigError("generation.server.base_url holds credentials; use generation.server.api_key_env")
    elif gen.server:
        log.warning("generation.server is set but generation.backend is 'hf' (in-process): the server is not used")


def _precisions() -> set[str]:
    from typing import get_args

    from lightning.pytorch.trainer.connectors.accelerator_connector import _PRECISION_INPUT

    values: set[str] = set()
    for arg in get_args(_PRECISION_INPUT):
        values |= {str(v) for v in get_args(arg)} or {str(arg)}
    return values | {"auto"}


def check_trainer(cfg: RunConfig) -> None:
    """Accelerator, devices, strategy, precision and FSDP options, as one-line errors."""
    import torch
    from lightning.pytorch.strategies import StrategyRegistry

    t = cfg.trainer
    if t.accelerator not in _ACCELERATORS:
        raise ConfigError(f"trainer.accelerator: {t.accelerator!r} is not one of {', '.join(_ACCELERATORS)}")
    precisions = _precisions()
    if str(t.precision) not in precisions:
        raise ConfigError(
            f"trainer.precision: {t.precision!r} is not a Lightning precision; use one of "
            f"{', '.join(sorted(p for p in precisions if not p.isdigit()))}"
        )
    from srt.pipeline.training import resolve_precision
    from srt.training.policy import check_training_precision

    check_training_precision(resolve_precision(t), t.strategy)  # bf16-true would not train (fp32 masters)
    gpu_wanted = t.accelerator in ("gpu", "cuda")
    if gpu_wanted and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator is {t.accelerator!r} but no CUDA GPU is available here")
    on_gpu = torch.cuda.is_available() and t.accelerator in ("auto", "gpu", "cuda")
    devices = t.devices
    if isinstance(devices, str) and devices not in ("auto", "-1"):
        try:
            devices = len([d for d in devices.split(",") if d.strip()]) if "," in devices else int(devices)
        except ValueError:
            raise ConfigError(f"trainer.devices: {t.devices!r} is not a number, a list like '0,1', or 'auto'") from None
    if isinstance(devices, int):
        if devices < 1:
            raise ConfigError(f"trainer.devices must be >= 1, got {devices}")
        if on_gpu and devices > torch.cuda.device_count():
            raise ConfigError(f"trainer.devices is {devices} but only {torch.cuda.device_count()} GPU(s) are visible")
    if t.num_nodes < 1:
        raise ConfigError(f"trainer.num_nodes must be >= 1, got {t.num_nodes}")
    known = {"auto", "ddp", "ddp_spawn", "fsdp", "fsdp2", "deepspeed", *StrategyRegistry.available_strategies()}
    if t.strategy not in known:
        raise ConfigError(f"trainer.strategy: unknown strategy {t.strategy!r}; use auto, ddp, ddp_spawn, fsdp or fsdp2")
    if t.strategy == "fsdp" and not on_gpu:
        raise ConfigError("trainer.strategy 'fsdp' (FSDP1) needs GPUs; on CPU use 'fsdp2' (it runs there too)")
    from srt.pipeline.training import check_loggers

    check_loggers(t)
    if t.strategy in ("fsdp", "fsdp2"):
        from srt.training.distributed import FSDPOptions

        FSDPOptions.parse(t.fsdp)
        for section in ("sft", "dpo"):
            if getattr(cfg, section).lm_head_chunk_size is not None:
                # The chunked head calls the decoder and the LM head apart, outside the root FSDP unit's forward.
                raise ConfigError(
                    f"{section}.lm_head_chunk_size does not work with trainer.strategy {t.strategy!r}; unset it"
                )
    elif t.fsdp:
        raise ConfigError(
            f"trainer.fsdp is set but trainer.strategy is {t.strategy!r} (fsdp options apply to fsdp/fsdp2)"
        )


def check_batches(cfg: RunConfig, command: Command) -> None:
    from srt.pipeline.training import check_divisible, world_size

    world = world_size(cfg.trainer)
    if command in ("stage1", "run"):
        try:
            check_divisible(cfg.sft.global_batch_size, cfg.sft.micro_batch_size, world)
        except ConfigError as exc:
            raise ConfigError(f"sft: {exc}") from None
    if command in ("stage2", "run"):
        try:
            check_divisible(cfg.dpo.global_batch_size, cfg.dpo.micro_batch_size, world)
        except ConfigError as exc:
            raise ConfigError(f"dpo: {exc}") from None


def plan_run(cfg: RunConfig, command: Command, *, start_model: str | None = None) -> RunPlan:
    """Check everything the command will need (module docstring); return the steps it will run."""
    from srt.models import check_model_reference
    from srt.pipeline.instructions import check_source
    from srt.pipeline.steps import plan_steps

    check_output_dir(cfg.output_dir)
    stage1 = command in ("stage1", "run")
    stage2 = command in ("stage2", "run")
    if stage1:  # stage 2 starts from the stage-1 model (or --model), not from model.path
        check_model_reference(cfg.model.path, revision=cfg.model.revision)
    if stage1 and cfg.data.stage1 is None:
        raise ConfigError("data.stage1 is not set: stage 1 needs instructions (path + field mapping)")
    if stage2 and cfg.data.stage2 is None:
        raise ConfigError("data.stage2 is not set: stage 2 needs new instructions (path + field mapping)")
    if command == "stage2":
        from srt.pipeline.training import is_done

        start = start_model or str(Path(cfg.output_dir) / "stage1" / "model")
        if start_model is None and not is_done(Path(start)):
            raise ConfigError(f"no finished stage-1 model at {start}: run `srt-train stage1` first, or pass --model")
        check_model_reference(start, what="--model" if start_model else "the stage-1 model")
    if stage1:
        check_source(cfg.data.stage1, "data.stage1")
        check_critic(cfg.critic, "critic", sources=[("data.stage1", cfg.data.stage1)])
    if stage2:
        check_source(cfg.data.stage2, "data.stage2")
        check_critic(cfg.stage2.critic, "stage2.critic", sources=[("data.stage2", cfg.data.stage2)])
        if cfg.stage2.answer_checker is not None:
            from srt.pipeline.pair_precision import answer_checker

            answer_checker(cfg.stage2.answer_checker)
            if "reference" not in cfg.data.stage2.fields:
                raise ConfigError(
                    f"stage2.answer_checker {cfg.stage2.answer_checker!r} checks answers against gold ones, but "
                    "data.stage2.fields maps no 'reference' (e.g. fields: {instruction: question, reference: answer})"
                )
    check_generation(cfg)
    check_trainer(cfg)
    check_batches(cfg, command)
    steps = plan_steps(cfg, start_model=start_model if command == "stage2" else None)
    if command == "stage1":
        steps = [s for s in steps if s.name.startswith("stage1.")]
    return RunPlan(cfg, command, steps, start_model)
