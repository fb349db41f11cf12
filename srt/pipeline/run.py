"""``srt-train stage1|stage2|run``: plan, lock, check for drift, then run the steps (resumable).

:func:`execute` is the one way in, for the CLI and for library callers alike:

1. :func:`srt.pipeline.plan.plan_run` checks every component the command needs (nothing loaded yet);
2. rank 0 takes the output directory's lock (:mod:`srt.pipeline.lock`): a second run there stops;
3. ``--restart STEP`` moves that step's outputs and every later step's aside (refused, before anything
   moves, when a step before STEP disagrees with the config); then
   :func:`srt.pipeline.steps.check_drift` refuses a config that disagrees with what already ran;
4. the stages run; finished steps are skipped, unfinished ones resume.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from srt.config import RunConfig, config_to_dict
from srt.pipeline.manifest import write_manifest
from srt.pipeline.plan import Command, plan_run
from srt.pipeline.ranks import is_rank_zero
from srt.pipeline.run_context import RunContext

log = logging.getLogger(__name__)


def execute(
    cfg: RunConfig,
    command: Command,
    *,
    config_path: str | None = None,
    start_model: str | None = None,
    restart: str | None = None,
) -> Path:
    from srt.pipeline.lock import RunLock
    from srt.pipeline.stage1 import stage1
    from srt.pipeline.stage2 import stage2
    from srt.pipeline.steps import StepRecord, check_drift
    from srt.pipeline.steps import restart as restart_step
    from srt.secrets import register_env_secrets

    register_env_secrets(config_to_dict(cfg))
    plan = plan_run(cfg, command, start_model=start_model)
    rank_zero = is_rank_zero()
    with RunLock(cfg.output_dir, f"srt-train {command}") if rank_zero else contextlib.nullcontext():
        record = StepRecord(cfg.output_dir) if rank_zero else None
        if record is not None:
            if restart:
                restart_step(plan.steps, record, restart)
            check_drift(plan.steps, record)
        ctx = RunContext(cfg, {s.name: s for s in plan.steps}, record, config_path)
        if rank_zero and command == "run":
            write_manifest(
                Path(cfg.output_dir),
                config=config_to_dict(cfg),
                seed=cfg.seed,
                extra={
                    "srt_command": "run",
                    "config_file": config_path,
                    "steps": {s.name: s.fingerprint for s in plan.steps},
                },
            )
        if command == "stage1":
            final = stage1(ctx)
        elif command == "stage2":
            final = stage2(ctx, start_model=start_model)
        else:
            final = stage2(ctx, start_model=str(stage1(ctx)))
        if rank_zero:
            from srt.pipeline.summary import write_summary

            write_summary(cfg.output_dir)
        return final


def run_all(cfg: RunConfig, config_path: str | None = None, restart: str | None = None) -> Path:
    """``srt-train run``: stage 1 then stage 2 (all rounds) in one output tree."""
    return execute(cfg, "run", config_path=config_path, restart=restart)
