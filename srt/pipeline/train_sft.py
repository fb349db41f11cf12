"""Stage-1 training step: SFTDataModule + SFTModule + Trainer, resumable."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

from srt.config import RunConfig
from srt.model_card import original_model_id
from srt.pipeline.training import (
    build_trainer,
    check_divisible,
    export_model,
    fit_resumable,
    world_size,
    write_model_cards,
)

log = logging.getLogger(__name__)


def train_sft(cfg: RunConfig, *, base_model: str, records_path: Path, step_dir: Path) -> Path:
    from srt.data import SFTDataModule
    from srt.models import load_tokenizer
    from srt.tokenizer_check import check_tokenizer
    from srt.training.sft import SFTModule

    s = cfg.sft
    L.seed_everything(cfg.seed, workers=True)
    tokenizer = load_tokenizer(base_model, revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code)
    for warning in check_tokenizer(tokenizer, for_training=True):
        log.warning("tokenizer: %s", warning)
    datamodule = SFTDataModule(
        tokenizer,
        s,
        system_prompt=cfg.model.system_prompt,
        train_files=[records_path],
        val_fraction=cfg.trainer.val_fraction,
        seed=cfg.seed,
    )
    module = SFTModule(base_model, tokenizer, config=s, model_config=cfg.model)
    accumulate = check_divisible(s.global_batch_size, s.micro_batch_size, world_size(cfg.trainer))
    trainer = build_trainer(
        cfg.trainer,
        step_dir,
        max_epochs=s.epochs,
        max_steps=s.max_steps,
        accumulate=accumulate,
        where="stage-1 SFT",
        run_name=cfg.name,
    )
    fit_resumable(trainer, module, datamodule, step_dir, where="stage-1 SFT")
    info = {
        "stage": 1,
        "base_model": base_model,
        "records": str(records_path),
        "data_stats": {k: v.as_dict() for k, v in datamodule.stats.items()},
        "global_step": trainer.global_step,
    }
    if s.lora is not None:
        module.save_hf(step_dir / "adapter", merge_lora=False)
    model_dir = export_model(module, trainer, step_dir / "model", merge_lora=module.merges_lora, info=info)
    write_model_cards(
        step_dir,
        trainer,
        stage=1,
        base_model=original_model_id(cfg.model.path, base_model),
        run_name=cfg.name,
        data={"records": f"{datamodule.stats['train'].examples} critic-feedback examples ({records_path.name})"},
        critic=_critic_of(records_path),
        settings={
            f"sft.{k}": v
            for k, v in s.model_dump(mode="json").items()
            if k in ("epochs", "global_batch_size", "max_length", "optim", "lora", "ablation", "mask_response")
        },
    )
    return model_dir


def _critic_of(records_path: Path) -> dict | None:
    from srt.records import FeedbackRecord, read_jsonl

    for record in read_jsonl(records_path, FeedbackRecord):
        return record.critic.model_dump() if record.critic else None
    return None
