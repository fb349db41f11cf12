"""Stage-2 training step: DPODataModule + DPOModule + Trainer, resumable.

With ``dpo.reference: precomputed`` (default) the reference log-probs of the starting model are
computed once, on the trainer's device and under its precision's autocast, and cached on disk
(keyed by data, model, chat template, max length, dtype, data settings and autocast), so training
holds a single model.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import lightning as L
import torch

from srt.config import RunConfig, TrainerConfig
from srt.pipeline.ranks import is_rank_zero, wait_for
from srt.pipeline.training import (
    build_trainer,
    check_divisible,
    export_model,
    fit_resumable,
    world_size,
    write_model_cards,
)
from srt.records import PreferencePair, read_jsonl

log = logging.getLogger(__name__)


def reference_device(tcfg: TrainerConfig) -> torch.device:
    """Where training runs on this machine, for the reference pass (computed by rank 0): the first
    GPU the trainer uses when the accelerator and the machine give one (the first of ``devices``
    when it lists them), else the CPU."""
    accelerator = tcfg.accelerator
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        devices = tcfg.devices
        first = devices.split(",")[0].strip() if isinstance(devices, str) and "," in devices else "0"
        return torch.device("cuda", int(first or 0))
    if accelerator in ("auto", "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def precompute_reference(cfg: RunConfig, datamodule, module, start_model: str, pairs_path: Path, step_dir: Path):
    """Reference log-probs of the model DPO starts from, loaded the way the policy is
    (``module.load_base_model``), on the trainer's device and under its precision's autocast (the
    step-0 check then compares like with like); cached in ``step_dir/reference_logps``."""
    from srt.io import file_sha256
    from srt.models import model_revision
    from srt.pipeline.training import resolve_precision
    from srt.training.reference import ReferenceLogpsCache, autocast_dtype, precompute_reference_logps

    device = reference_device(cfg.trainer)
    autocast = autocast_dtype(resolve_precision(cfg.trainer))

    def compute():
        model = module.load_base_model()
        try:
            return precompute_reference_logps(model, datamodule, device=device, autocast=autocast)
        finally:
            del model
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    cache = ReferenceLogpsCache(step_dir / "reference_logps")
    key = dict(
        data_hash=file_sha256(pairs_path),
        model=f"{start_model}@{model_revision(start_model)}",
        chat_template=datamodule.tokenizer.chat_template,
        max_length=cfg.dpo.max_length,
        dtype=cfg.model.dtype,
        data_config=datamodule.data_settings(),
        autocast=autocast,  # None (32-true): not part of the key, so earlier caches keep theirs
    )
    if not is_rank_zero():  # computed once, by rank 0 (torchrun/SLURM start every rank at once)
        wait_for(cache.path(cache.key(**key)), "reference log-probs")
    return cache.get_or_compute(compute, **key)


def train_dpo(cfg: RunConfig, *, start_model: str, pairs_path: Path, step_dir: Path) -> Path:
    from srt.data import DPODataModule
    from srt.models import load_tokenizer
    from srt.tokenizer_check import check_tokenizer
    from srt.training.dpo import DPOModule

    d = cfg.dpo
    L.seed_everything(cfg.seed, workers=True)
    tokenizer = load_tokenizer(start_model)
    for warning in check_tokenizer(tokenizer, for_training=True):
        log.warning("tokenizer: %s", warning)
    datamodule = DPODataModule(
        tokenizer,
        d,
        system_prompt=cfg.model.system_prompt,
        train_files=[pairs_path],
        val_fraction=cfg.trainer.val_fraction,
        seed=cfg.seed,
    )
    datamodule.setup("fit")
    # The revision in cfg.model belongs to model.path; DPO starts from another model (stage 1's, or --start-model).
    module = DPOModule(start_model, tokenizer, config=d, model_config=cfg.model.model_copy(update={"revision": None}))
    if d.reference == "precomputed":
        reference = precompute_reference(cfg, datamodule, module, start_model, pairs_path, step_dir)
        datamodule.set_reference_logps(reference)
    accumulate = check_divisible(d.global_batch_size, d.micro_batch_size, world_size(cfg.trainer))
    where = f"stage-2 DPO ({step_dir.name})"
    trainer = build_trainer(
        cfg.trainer,
        step_dir,
        max_epochs=d.epochs,
        max_steps=d.max_steps,
        accumulate=accumulate,
        where=where,
        run_name=cfg.name,
    )
    fit_resumable(trainer, module, datamodule, step_dir, where=where)
    info = {
        "stage": 2,
        "start_model": start_model,
        "pairs": str(pairs_path),
        "reference": d.reference,
        "data_stats": {k: v.as_dict() for k, v in datamodule.stats.items()},
        "global_step": trainer.global_step,
    }
    if module.merges_lora:
        module.save_hf(step_dir / "adapter", merge_lora=False)
    model_dir = export_model(module, trainer, step_dir / "model", merge_lora=module.merges_lora, info=info)
    pairs = datamodule.stats["train"].examples
    critic = next((p.critic.model_dump() for p in read_jsonl(pairs_path, PreferencePair) if p.critic), None)
    write_model_cards(
        step_dir,
        trainer,
        stage=2,
        base_model=start_model,
        run_name=cfg.name,
        data={"pairs": f"{pairs} self-feedback preference pairs ({pairs_path.parent.name})"},
        critic=critic,
        settings={
            f"dpo.{k}": v
            for k, v in d.model_dump(mode="json").items()
            if k in ("beta", "loss_type", "rpo_alpha", "reference", "completion_end", "epochs", "optim", "lora")
        },
    )
    return model_dir
