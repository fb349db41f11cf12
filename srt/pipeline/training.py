"""Trainer plumbing shared by SFT and DPO: strategy from config, checkpoints, resume, export.

A step directory holds ``checkpoints/`` (``last.ckpt`` and the one before it, ``last.prev.ckpt``,
written atomically: :mod:`srt.pipeline.checkpoints`), ``logs/metrics.csv`` (appended across
resumes, never rewritten) and, once training finished, ``model/`` (a standard Hugging Face folder)
with ``model/srt_done.json``. Re-running resumes from the newest whole checkpoint, at the same
batch and with the same RNG streams; a finished step is skipped. SIGTERM/SIGINT during training
saves a checkpoint at the next optimizer-step boundary and exits non-zero.
"""

from __future__ import annotations

import csv
import logging
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import lightning as L

from srt.config import TrainerConfig
from srt.errors import ConfigError
from srt.io import atomic_write_json

log = logging.getLogger(__name__)
DONE_FILE = "srt_done.json"


def is_done(model_dir: Path) -> bool:
    return (model_dir / DONE_FILE).is_file()


def world_size(tcfg: TrainerConfig) -> int:
    devices = tcfg.devices
    if isinstance(devices, str):
        if devices in ("auto", "-1"):
            import torch

            n = torch.cuda.device_count() if tcfg.accelerator in ("auto", "gpu", "cuda") else 1
            devices = max(n, 1)
        elif "," in devices:
            devices = len([d for d in devices.split(",") if d.strip()])
        else:
            devices = int(devices)
    return int(devices) * int(tcfg.num_nodes)


def build_strategy(tcfg: TrainerConfig):
    """'auto' | 'ddp' | 'ddp_spawn' | 'fsdp' (FSDP1, decoder-layer auto-wrap) | 'fsdp2' (ModelParallelStrategy)."""
    name = tcfg.strategy
    if name == "fsdp":
        from srt.training.distributed import fsdp_strategy

        return fsdp_strategy(tcfg.fsdp)
    if name == "fsdp2":
        from srt.training.distributed import fsdp2_strategy

        return fsdp2_strategy(tcfg.fsdp)
    if name in ("ddp", "ddp_spawn") and tcfg.accelerator in ("cpu",):
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(process_group_backend="gloo", start_method="spawn" if name == "ddp_spawn" else "popen")
    return name


def resolve_precision(tcfg: TrainerConfig) -> str:
    if tcfg.precision != "auto":
        return tcfg.precision
    import torch

    gpu = tcfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"


def _appending_csv_logger(step_dir: Path, flush_every: int):
    """Lightning's CSVLogger, except that a resumed run appends to ``logs/metrics.csv`` (Lightning
    deletes an existing file when its logger starts), so the metrics history survives resumes."""
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class AppendingWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            if self._fs.isfile(self.metrics_file_path):  # keep it, and its columns
                with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                    header = next(csv.reader(f), [])
                self.metrics_keys = sorted(set(header))

    class AppendingCSVLogger(CSVLogger):
        @property
        def experiment(self):
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = AppendingWriter(log_dir=self.log_dir)
            return self._experiment

    return AppendingCSVLogger(str(step_dir), name="logs", version="", flush_logs_every_n_steps=flush_every)


LOGGERS = ("csv", "tensorboard", "wandb", "mlflow")
_LOGGER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}


def check_loggers(tcfg: TrainerConfig) -> list[str]:
    """The configured loggers, known and importable (plan check): one line naming what to install."""
    import importlib.util

    names = [tcfg.logger] if isinstance(tcfg.logger, str) else list(tcfg.logger)
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"trainer.logger: unknown logger {name!r}; use one or a list of {', '.join(LOGGERS)}")
        packages = _LOGGER_PACKAGES.get(name, ())
        if packages and not any(importlib.util.find_spec(p) for p in packages):
            raise ConfigError(f"trainer.logger {name!r} needs the {packages[0]} package: pip install {packages[-1]}")
    unknown = set(tcfg.logger_options) - set(LOGGERS)
    if unknown:
        raise ConfigError(f"trainer.logger_options: unknown logger(s) {sorted(unknown)}; use {', '.join(LOGGERS)}")
    return names


def build_loggers(tcfg: TrainerConfig, step_dir: Path, run_name: str, flush_every: int) -> list:
    """CSV always (srt's own record, appended across resumes), plus each configured one. A resumed
    step continues the same wandb / MLflow run: its id is kept in ``logs/<logger>_run_id``."""
    loggers = [_appending_csv_logger(step_dir, flush_every)]
    run_ids = step_dir / "logs"
    for name in check_loggers(tcfg):
        options = dict(tcfg.logger_options.get(name, {}))
        if name == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(str(step_dir), name="tensorboard", version="", **options))
        elif name == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            run_id = _run_id(run_ids / "wandb_run_id", lambda: uuid.uuid4().hex[:8])
            options.setdefault("project", "srt")
            loggers.append(
                WandbLogger(
                    name=f"{run_name}/{step_dir.name}", id=run_id, resume="allow", save_dir=str(step_dir), **options
                )
            )
        elif name == "mlflow":
            from lightning.pytorch.loggers import MLFlowLogger

            if "tracking_uri" not in options:  # a local store next to the step (MLflow 3 wants an opt-in for it)
                options["tracking_uri"] = (step_dir / "mlruns").resolve().as_uri()
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            options.setdefault("experiment_name", run_name)
            path = run_ids / "mlflow_run_id"
            logger = MLFlowLogger(
                run_name=step_dir.name, run_id=path.read_text().strip() if path.is_file() else None, **options
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(logger.run_id)
            loggers.append(logger)
    return loggers


def _run_id(path: Path, new) -> str:
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    run_id = str(new())
    path.write_text(run_id)
    return run_id


def build_trainer(
    tcfg: TrainerConfig,
    step_dir: Path,
    *,
    max_epochs: int,
    max_steps: int,
    accumulate: int,
    where: str = "training",
    run_name: str = "srt",
    extra_callbacks: list | None = None,
) -> L.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from srt.pipeline.checkpoints import AtomicCheckpointIO, ResumeRNG, StopOnSignal

    every = max(1, tcfg.checkpoint_every_n_steps)
    ckpt = ModelCheckpoint(dirpath=step_dir / "checkpoints", save_last=True, save_top_k=0, every_n_train_steps=every)
    return L.Trainer(
        accelerator=tcfg.accelerator,
        devices=tcfg.devices,
        num_nodes=tcfg.num_nodes,
        strategy=build_strategy(tcfg),
        precision=resolve_precision(tcfg),
        plugins=[AtomicCheckpointIO()],
        max_epochs=max_epochs,
        max_steps=max_steps,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=tcfg.gradient_clip_val,
        log_every_n_steps=tcfg.log_every_n_steps,
        # Metrics reach the disk at least as often as checkpoints, so a resume neither loses nor repeats rows.
        logger=build_loggers(tcfg, step_dir, run_name, flush_every=min(every, 100)),
        callbacks=[ckpt, ResumeRNG(), StopOnSignal(step_dir, where), *(extra_callbacks or [])],
        default_root_dir=str(step_dir),
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def fit_resumable(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    step_dir: Path,
    where: str = "training",
) -> None:
    """``trainer.fit``, resumed from the newest whole checkpoint; SIGTERM/SIGINT -> checkpoint + Interrupted."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from srt import interrupt
    from srt.pipeline.checkpoints import resume_checkpoint

    ckpt = resume_checkpoint(step_dir)
    if ckpt is not None:
        log.info("resuming training from %s", ckpt)
    try:
        with interrupt.deferred():
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt is not None else None)
    except SIGTERMException:  # Lightning's own stop outside the batch loop; StopOnSignal saved a checkpoint
        raise interrupt.Interrupted(signal.SIGTERM, where, f"checkpoint saved: {step_dir / 'checkpoints'}") from None
    finally:
        _finish_runs(trainer)
    if trainer.interrupted:
        raise interrupt.Interrupted(interrupt.requested() or signal.SIGTERM, where)


def _finish_runs(trainer: L.Trainer) -> None:
    """End each step's wandb run (flushed to disk); the next step (stage 2) must not log into it."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()


def export_model(module, trainer: L.Trainer, model_dir: Path, *, merge_lora: bool, info: dict[str, Any]) -> Path:
    """HF folder (merged weights when LoRA and merge_lora) + the done marker, written by rank 0."""
    module.save_hf(model_dir, merge_lora=merge_lora)
    if trainer.is_global_zero:
        atomic_write_json(model_dir / DONE_FILE, info)
    return model_dir


def write_model_cards(
    step_dir: Path,
    trainer: L.Trainer,
    *,
    stage: int,
    base_model: str,
    run_name: str,
    data: dict[str, Any],
    critic: dict[str, Any] | None,
    settings: dict[str, Any],
) -> None:
    """A README.md model card in ``model/`` and ``adapter/`` (rank 0); an adapter's
    ``base_model_name_or_path`` names ``base_model``, not the cache folder it was loaded from."""
    from srt.model_card import set_adapter_base, write_model_card

    if not trainer.is_global_zero:
        return
    model_dir, adapter_dir = step_dir / "model", step_dir / "adapter"
    merged = (model_dir / "config.json").is_file()
    for folder, kind in ((model_dir, "model" if merged else "adapter"), (adapter_dir, "adapter")):
        if not folder.is_dir():
            continue
        if kind == "adapter":
            set_adapter_base(folder, base_model)
        weights = {
            "model": "full weights (LoRA merged in)" if adapter_dir.is_dir() else "full weights",
            "adapter": "a LoRA adapter (load it on the base model with peft)",
        }[kind]
        write_model_card(
            folder,
            kind=kind,
            stage=stage,
            base_model=base_model,
            run_name=run_name,
            data=data,
            critic=critic,
            settings=settings,
            weights=weights,
        )


def check_divisible(global_batch: int, micro: int, world: int) -> int:
    from srt.training.policy import accumulation_for_global_batch

    try:
        return accumulation_for_global_batch(global_batch, micro, world)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (set sft/dpo.global_batch_size or micro_batch_size)") from None
