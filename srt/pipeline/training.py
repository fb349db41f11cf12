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
import signal
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
        from srt.distributed import fsdp_strategy

        return fsdp_strategy(tcfg.fsdp)
    if name == "fsdp2":
        from srt.distributed import fsdp2_strategy

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


def build_trainer(
    tcfg: TrainerConfig,
    step_dir: Path,
    *,
    max_epochs: int,
    max_steps: int,
    accumulate: int,
    where: str = "training",
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
        logger=_appending_csv_logger(step_dir, flush_every=min(every, 100)),
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
    if trainer.interrupted:
        raise interrupt.Interrupted(interrupt.requested() or signal.SIGTERM, where)


def export_model(module, trainer: L.Trainer, model_dir: Path, *, merge_lora: bool, info: dict[str, Any]) -> Path:
    """HF folder (merged weights when LoRA and merge_lora) + the done marker, written by rank 0."""
    module.save_hf(model_dir, merge_lora=merge_lora)
    if trainer.is_global_zero:
        atomic_write_json(model_dir / DONE_FILE, info)
    return model_dir


def check_divisible(global_batch: int, micro: int, world: int) -> int:
    from srt.sft_module import accumulation_for_global_batch

    try:
        return accumulation_for_global_batch(global_batch, micro, world)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (set sft/dpo.global_batch_size or micro_batch_size)") from None
