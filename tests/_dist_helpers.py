"""Multi-process training helpers for tests/test_distributed.py.

They live in an importable module (not the test file) because ``ddp_spawn`` workers unpickle the
LightningModule and callbacks by module name, and because FSDP2 (``ModelParallelStrategy``)
launches its ranks by re-running a script: ``python tests/_dist_helpers.py fsdp2 ...`` is that
script. Workers report back through files in an output folder.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from srt.config import ModelConfig, OptimConfig, SFTConfig
from srt.data import SFTDataModule
from srt.records import Feedback, FeedbackRecord
from srt.training.sft import SFTModule

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "up_proj"]}
LR = 1e-2
CLIP = 0.5  # small enough to clip: the gradient-norm path (sharded under FSDP2) is part of the comparison

_WORDS = [
    "apples",
    "rivers",
    "clouds",
    "stones",
    "forests",
    "engines",
    "letters",
    "gardens",
    "bridges",
    "candles",
    "islands",
    "mirrors",
    "planets",
    "shadows",
    "towers",
    "violins",
]


def equal_count_records(tokenizer, n: int = 8) -> list[FeedbackRecord]:
    """``n`` different records with the same number of trained tokens each.

    The SFT loss is a token mean per micro-batch and data parallelism averages the ranks' means,
    which equals the one-process mean over the global batch only when every rank trains on as many
    tokens; equal counts per record make that exact, so the comparison can be tight.
    """
    pool = []
    for i, (word, other) in enumerate((w, o) for shift in (5, 3, 7) for w, o in zip(_WORDS, _WORDS[shift:] + _WORDS)):
        pool.append(
            FeedbackRecord(
                id=f"r{i}",
                stage=1,
                instruction=f"Write one line about {word} and {other}.",
                response=f"The {word} are near the {other}.",
                feedback=Feedback(
                    weaknesses=f"Says little about {word}.", suggestions=f"Describe the {other}.", score=4, raw="raw"
                ),
                refinement=f"The {word} are near the {other}, which look calm today.",
            )
        )
    dm = SFTDataModule(tokenizer, SFTConfig(max_length=512), train_records=pool)
    dm.setup()
    counts = [int((item["labels"] != -100).sum()) for item in dm.datasets["train"]]
    common, how_many = Counter(counts).most_common(1)[0]
    if how_many < n:
        raise RuntimeError(f"only {how_many} records share a trained-token count ({Counter(counts)})")
    return [rec for rec, c in zip(pool, counts) if c == common][:n]


class SeededSFTModule(SFTModule):
    """SFTModule whose policy (LoRA init included) is built from a fixed seed in every process."""

    def configure_model(self) -> None:
        if self.model is None:
            torch.manual_seed(1234)
        super().configure_model()


def seeded_sft_module(model_dir, tokenizer, *, lora=None, lr: float = LR) -> SeededSFTModule:
    """A SeededSFTModule on ``model_dir`` loaded in fp32: ``lora`` (a mapping) or full fine-tuning, AdamW at
    ``lr`` with no warmup."""
    config = SFTConfig(lora=lora, optim=OptimConfig(lr=lr, warmup_ratio=0.0))
    return SeededSFTModule(str(model_dir), tokenizer, config=config, model_config=ModelConfig(dtype="float32"))


class LossRecorder(Callback):
    """Writes this rank's per-step training losses to ``<out_dir>/losses_rank<r>.json``."""

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = str(out_dir)
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"].detach()))

    def on_train_end(self, trainer, pl_module):
        path = Path(self.out_dir) / f"losses_rank{trainer.global_rank}.json"
        path.write_text(json.dumps({"losses": self.losses, "world_size": trainer.world_size}))


def read_losses(out_dir: str | os.PathLike) -> list[float]:
    """Per-step loss over the global batch: the mean of the ranks' losses (equal token counts)."""
    files = sorted(Path(out_dir).glob("losses_rank*.json"))
    per_rank = [json.loads(f.read_text())["losses"] for f in files]
    assert files and all(len(r) == len(per_rank[0]) for r in per_rank), per_rank
    return [sum(step) / len(step) for step in zip(*per_rank)]


def train(
    model_dir,
    tokenizer,
    records,
    out_dir,
    *,
    strategy="auto",
    devices=1,
    micro_batch=4,
    steps=3,
    lora=None,
    callbacks=(),
    ckpt_path=None,
    export=True,
) -> SFTModule:
    """A few SFT steps from ``model_dir``; every rank records its losses; exports to ``out_dir/model``."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    datamodule = SFTDataModule(
        tokenizer,
        SFTConfig(micro_batch_size=micro_batch, max_length=512, group_by_length=False),
        train_records=records,
        seed=7,
    )
    module = seeded_sft_module(model_dir, tokenizer, lora=lora, lr=LR)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_steps=steps,
        gradient_clip_val=CLIP,
        logger=False,
        enable_checkpointing=bool(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[LossRecorder(out_dir), *callbacks],
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if export:
        module.save_hf(Path(out_dir) / "model")  # a collective under FSDP: every rank calls it
    return module


def _sharding_report(module, path: Path) -> None:
    from torch.distributed.tensor import DTensor

    params = list(module.model.parameters())
    path.write_text(
        json.dumps(
            {
                "all_dtensor": all(isinstance(p, DTensor) for p in params),
                "fsdp_units": sum(type(m).__name__.startswith("FSDP") for m in module.model.modules()),
                "local_numel": sum(p.to_local().numel() for p in params if isinstance(p, DTensor)),
                "full_numel": sum(p.numel() for p in params),
            }
        )
    )


def _fsdp2_main(model_dir: str, records_path: str, out_dir: str) -> None:
    """On 2 CPU processes with FSDP2, in one process group: full fine-tuning (checkpointing at step 2),
    a resume from that checkpoint, and LoRA (adapter and merged exports)."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from transformers import AutoTokenizer

    from srt.records import read_jsonl
    from srt.training.distributed import fsdp2_strategy

    torch.set_num_threads(1)
    out = Path(out_dir)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records = list(read_jsonl(records_path, FeedbackRecord))
    run = dict(strategy=None, devices=2, micro_batch=2)

    ckpt = ModelCheckpoint(
        dirpath=out / "ckpt", filename="step{step}", auto_insert_metric_name=False, every_n_train_steps=2, save_top_k=-1
    )
    module = train(
        model_dir, tokenizer, records, out / "full", **{**run, "strategy": fsdp2_strategy({})}, callbacks=[ckpt]
    )
    _sharding_report(module, out / "full" / f"sharding_rank{rank}.json")

    train(
        model_dir,
        tokenizer,
        records,
        out / "resumed",
        **{**run, "strategy": fsdp2_strategy({})},
        ckpt_path=str(out / "ckpt" / "step2.ckpt"),
    )

    module = train(model_dir, tokenizer, records, out / "lora", **{**run, "strategy": fsdp2_strategy({})}, lora=LORA)
    _sharding_report(module, out / "lora" / f"sharding_rank{rank}.json")
    module.save_hf(out / "lora" / "merged", merge_lora=True)


if __name__ == "__main__":
    # python tests/_dist_helpers.py fsdp2 MODEL_DIR RECORDS_JSONL OUT_DIR   (Lightning starts rank 1 itself)
    if len(sys.argv) != 5 or sys.argv[1] != "fsdp2":
        raise SystemExit("usage: _dist_helpers.py fsdp2 MODEL_DIR RECORDS_JSONL OUT_DIR")
    _fsdp2_main(*sys.argv[2:])
