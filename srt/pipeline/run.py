"""``srt-train run``: stage 1 then stage 2 (all rounds) in one output tree, resumable at any step."""

from __future__ import annotations

from pathlib import Path

from srt.config import RunConfig, config_to_dict
from srt.pipeline.manifest import write_manifest
from srt.pipeline.ranks import is_rank_zero
from srt.pipeline.stage1 import run_stage1
from srt.pipeline.stage2 import run_stage2


def run_all(cfg: RunConfig, config_path: str | None = None) -> Path:
    if is_rank_zero():
        write_manifest(Path(cfg.output_dir), config=config_to_dict(cfg), seed=cfg.seed, extra={"srt_command": "run", "config_file": config_path})
    stage1_model = run_stage1(cfg, config_path)
    return run_stage2(cfg, config_path, start_model=str(stage1_model))
