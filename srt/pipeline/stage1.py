"""Stage 1 recipe: base model answers -> critic feedback + refinement -> re-score -> filter -> SFT.

Read top to bottom; each step is resumable (see srt.pipeline.feedback and srt.pipeline.training).
Output tree (``<output_dir>/stage1``): responses.jsonl, critic_calls.jsonl, records.jsonl,
rejects.jsonl, report.{json,md}, scores.png, manifest.json, checkpoints/, logs/, model/.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

from srt.config import RunConfig, config_to_dict
from srt.errors import ConfigError
from srt.pipeline import feedback as fb
from srt.pipeline.instructions import load_instructions
from srt.pipeline.manifest import write_manifest
from srt.pipeline.ranks import is_rank_zero, wait_for
from srt.pipeline.report import write_stage_report
from srt.pipeline.training import is_done

log = logging.getLogger(__name__)


def stage1_dir(cfg: RunConfig) -> Path:
    return Path(cfg.output_dir) / "stage1"


def build_generator(cfg: RunConfig, model_path: str):
    """In-process transformers generation, or an OpenAI-compatible server (vLLM/TGI) at scale."""
    if cfg.generation.backend == "openai":
        from srt.remote_generation import RemoteGenerator

        return RemoteGenerator.from_config(cfg.generation.server, model_path=model_path)
    from srt.generation import Generator

    return Generator.from_pretrained(model_path, dtype=cfg.model.dtype, batch_size=cfg.generation.batch_size)


def collect_feedback(cfg: RunConfig, step_dir: Path, *, model_path: str, instructions, critic_name: str,
                     critic_settings: dict, rule: fb.FilterRule, stage: int, round: int, title: str):
    """Generate responses, run the critic, filter; writes records/rejects/report. Returns the outcome."""
    from srt.registry import create_critic

    generator = build_generator(cfg, model_path)
    records = fb.generate_responses(
        generator, instructions, step_dir / "responses.jsonl", sampling_kwargs=cfg.generation.response.model_dump(),
        seed=cfg.seed, stage=stage, round=round, system_prompt=cfg.model.system_prompt,
        chunk_size=cfg.generation.chunk_size,
    )
    # The self critic reuses the generator (the model being trained); others load their own.
    critic = create_critic(critic_name, critic_settings, policy=generator)
    calls = fb.run_critic(critic, records, step_dir / "critic_calls.jsonl", chunk_size=cfg.generation.chunk_size)
    outcome = fb.build_records(records, calls, fb.critic_info(critic), rule)
    del generator, critic
    gc.collect()
    return outcome


def run_stage1(cfg: RunConfig, config_path: str | None = None) -> Path:
    from srt.models import model_revision, resolve_model_path

    step_dir = stage1_dir(cfg)
    model_dir = step_dir / "model"
    step_dir.mkdir(parents=True, exist_ok=True)
    if cfg.data.stage1 is None:
        raise ConfigError("data.stage1 is not set: stage 1 needs instructions (path + field mapping)")
    base = resolve_model_path(cfg.model.path)
    if is_rank_zero():
        write_manifest(step_dir, config=config_to_dict(cfg), seed=cfg.seed,
                       data_files={"instructions": cfg.data.stage1.path},
                       model={"path": cfg.model.path, "resolved": base, "revision": model_revision(base)},
                       extra={"stage": 1, "config_file": config_path})
    if is_done(model_dir):
        log.info("stage 1 already finished: %s", model_dir)
        return model_dir

    records_path = step_dir / "records.jsonl"
    if not is_rank_zero():
        wait_for(step_dir / "report.json", "stage-1 data")
    elif not (step_dir / "report.json").exists():
        instructions = load_instructions(cfg.data.stage1)
        critic_settings = {k: v for k, v in cfg.critic.items() if k != "name"}
        outcome = collect_feedback(
            cfg, step_dir, model_path=base, instructions=instructions, critic_name=cfg.critic["name"],
            critic_settings=critic_settings, stage=1, round=0, title="Stage 1: critic feedback",
            rule=fb.FilterRule(cfg.filter.refinement_vs_response, cfg.filter.min_refinement_score),
        )
        fb.save_outcome(step_dir, outcome)
        report = write_stage_report(step_dir, title="Stage 1: critic feedback", counters=outcome.counters,
                                    response_scores=outcome.response_scores, refinement_scores=outcome.refinement_scores,
                                    usage=outcome.usage)
        log.info("stage 1 data: %s", report["counters"])
    from srt.pipeline.train_sft import train_sft

    return train_sft(cfg, base_model=base, records_path=records_path, step_dir=step_dir)
