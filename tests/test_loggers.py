"""trainer.logger: csv (always), tensorboard, wandb (offline), mlflow (file store), checked by the files
each writes, with TRL's metric names; a resumed step continues the same wandb / MLflow run."""

from __future__ import annotations

from pathlib import Path

import pytest

from srt.config import TrainerConfig
from srt.errors import ConfigError

pytestmark = pytest.mark.slow


def _fit(tmp_path: Path, tiny_model_dir, tiny_tokenizer, tcfg: TrainerConfig, max_steps: int):
    import lightning as L

    from srt.config import OptimConfig, SFTConfig
    from srt.data import SFTDataModule
    from srt.pipeline.training import build_trainer, fit_resumable
    from srt.records import Feedback, FeedbackRecord
    from srt.training.sft import SFTModule

    records = [
        FeedbackRecord(
            id=str(i),
            instruction=f"question {i}",
            response=f"answer {i}",
            stage=1,
            feedback=Feedback(weaknesses="w", suggestions="s", score=3, raw="r"),
            refinement=f"better {i}",
            refinement_score=5,
        )
        for i in range(4)
    ]
    L.seed_everything(0)
    sft = SFTConfig(micro_batch_size=2, global_batch_size=2, max_length=256, epochs=2, optim=OptimConfig(lr=1e-3))
    datamodule = SFTDataModule(tiny_tokenizer, sft, train_records=records)
    module = SFTModule(str(tiny_model_dir), tiny_tokenizer, config=sft)
    trainer = build_trainer(tcfg, tmp_path, max_epochs=2, max_steps=max_steps, accumulate=1, run_name="loggers-test")
    fit_resumable(trainer, module, datamodule, tmp_path)
    return trainer


def test_each_logger_writes_its_files_and_resume_continues_the_run(
    tmp_path, tiny_model_dir, tiny_tokenizer, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tcfg = TrainerConfig(
        accelerator="cpu",
        precision="32-true",
        log_every_n_steps=1,
        checkpoint_every_n_steps=1,
        logger=["tensorboard", "wandb", "mlflow"],
    )
    _fit(tmp_path, tiny_model_dir, tiny_tokenizer, tcfg, max_steps=2)
    wandb_id = (tmp_path / "logs" / "wandb_run_id").read_text()
    mlflow_id = (tmp_path / "logs" / "mlflow_run_id").read_text()
    _fit(tmp_path, tiny_model_dir, tiny_tokenizer, tcfg, max_steps=4)  # resumes at step 2

    assert "train/loss" in (tmp_path / "logs" / "metrics.csv").read_text().splitlines()[0]  # csv: always
    events = list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and any(b"train/loss" in e.read_bytes() for e in events)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs and all(r.name.endswith(f"-{wandb_id}") for r in runs)  # both attempts: one wandb run id
    assert any(b"train/loss" in f.read_bytes() for r in runs for f in r.glob("*.wandb"))
    assert (tmp_path / "logs" / "mlflow_run_id").read_text() == mlflow_id
    loss = next((tmp_path / "mlruns").rglob(f"{mlflow_id}/metrics/train/loss"))
    steps = [int(line.split()[2]) for line in loss.read_text().splitlines()]
    assert steps == [0, 1, 2, 3]  # both attempts' steps in the one MLflow run


def test_unknown_or_missing_logger_is_a_plan_error(monkeypatch):
    from srt.pipeline.training import check_loggers

    with pytest.raises(ConfigError, match="unknown logger 'neptune'"):
        check_loggers(TrainerConfig(logger=["csv", "neptune"]))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="trainer.logger 'wandb' needs the wandb package: pip install wandb"):
        check_loggers(TrainerConfig(logger="wandb"))
