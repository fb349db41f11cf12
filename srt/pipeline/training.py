"""Trainer plumbing shared by SFT and DPO: strategy from config, checkpoints, resume, export.

A step directory holds ``checkpoints/`` (Lightning, ``last.ckpt`` for resume), ``logs/`` (CSV
metrics) and, once training finished, ``model/`` (a standard Hugging Face folder) with
``model/srt_done.json``. Re-running resumes from ``last.ckpt``; a finished step is skipped.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L

from srt.config import TrainerConfig
from srt.errors import ConfigError

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


def build_trainer(tcfg: TrainerConfig, step_dir: Path, *, max_epochs: int, max_steps: int, accumulate: int,
                  extra_callbacks: list | None = None) -> L.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    ckpt = ModelCheckpoint(
        dirpath=step_dir / "checkpoints", save_last=True, save_top_k=0,
        every_n_train_steps=max(1, tcfg.checkpoint_every_n_steps),
    )
    return L.Trainer(
        accelerator=tcfg.accelerator,
        devices=tcfg.devices,
        num_nodes=tcfg.num_nodes,
        strategy=build_strategy(tcfg),
        precision=resolve_precision(tcfg),
        max_epochs=max_epochs,
        max_steps=max_steps,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=tcfg.gradient_clip_val,
        log_every_n_steps=tcfg.log_every_n_steps,
        logger=CSVLogger(str(step_dir), name="logs", version=""),
        callbacks=[ckpt, *(extra_callbacks or [])],
        default_root_dir=str(step_dir),
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def fit_resumable(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule, step_dir: Path) -> None:
    last = step_dir / "checkpoints" / "last.ckpt"
    if last.exists():
        log.info("resuming training from %s", last)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.exists() else None)


def export_model(module, trainer: L.Trainer, model_dir: Path, *, merge_lora: bool, info: dict[str, Any]) -> Path:
    """HF folder (merged weights when LoRA and merge_lora) + the done marker, written by rank 0."""
    module.save_hf(model_dir, merge_lora=merge_lora)
    if trainer.is_global_zero:
        tmp = model_dir / (DONE_FILE + ".tmp")
        tmp.write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
        os.replace(tmp, model_dir / DONE_FILE)
    return model_dir


def check_divisible(global_batch: int, micro: int, world: int) -> int:
    from srt.sft_module import accumulation_for_global_batch

    try:
        return accumulation_for_global_batch(global_batch, micro, world)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (set sft/dpo.global_batch_size or micro_batch_size)") from None
