"""``srt-train preprocess``: tokenize a run's training data exactly as training will, and show it."""

from __future__ import annotations

from pathlib import Path

from srt.config import RunConfig
from srt.errors import ConfigError


def preview_from_config(cfg: RunConfig, *, records_path: str | None, n: int, view: str = "sft") -> str:
    from srt.models import load_tokenizer, resolve_model_path
    from srt.preview import preview_records
    from srt.records import FeedbackRecord, PreferencePair, read_jsonl

    if records_path is None:
        default = Path(cfg.output_dir) / ("stage1/records.jsonl" if view == "sft" else "stage2/round1/pairs.jsonl")
        if not default.exists():
            raise ConfigError(f"no records at {default}: run the stage first, or pass --records FILE")
        records_path = str(default)
    tokenizer = load_tokenizer(resolve_model_path(cfg.model.path))
    if view == "sft":
        section, records = cfg.sft, read_jsonl(records_path, FeedbackRecord)
    else:
        section, records = cfg.dpo, read_jsonl(records_path, PreferencePair)
    return preview_records(tokenizer, records, n, section, system_prompt=cfg.model.system_prompt)
