"""Stage 2 recipe: the stage-1 model critiques and refines its own answers -> preference pairs -> DPO.

For each round r (``stage2.rounds``), in ``<output_dir>/stage2/round<r>``: the newest model answers
fresh instructions (T=0.7), writes its own feedback and refinement (T=0) with the ``self`` critic,
re-scores the refinement itself in a separate call; pairs where the refinement wins (strictly, by
default) become DPO pairs: prompt = instruction, chosen = refinement, rejected = response.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from srt.config import InstructionSource, RunConfig, config_to_dict
from srt.errors import ConfigError
from srt.pipeline import feedback as fb
from srt.pipeline.instructions import load_instructions
from srt.pipeline.manifest import write_manifest
from srt.pipeline.ranks import is_rank_zero, wait_for
from srt.pipeline.report import write_stage_report
from srt.pipeline.stage1 import collect_feedback, stage1_dir
from srt.pipeline.training import is_done
from srt.records import PreferencePair, read_jsonl, write_jsonl_atomic

log = logging.getLogger(__name__)
NO_PAIRS_FILE = "no_pairs.json"


def round_dir(cfg: RunConfig, r: int) -> Path:
    return Path(cfg.output_dir) / "stage2" / f"round{r}"


def round_instructions(cfg: RunConfig, r: int) -> InstructionSource:
    """Round r takes the r-th slice of the stage-2 instructions when instructions_per_round is set."""
    src = cfg.data.stage2
    if src is None:
        raise ConfigError("data.stage2 is not set: stage 2 needs new instructions (path + field mapping)")
    n = cfg.stage2.instructions_per_round
    if n is None:
        return src
    return src.model_copy(update={"offset": src.offset + (r - 1) * n, "limit": n})


def pairs_from(records, r: int) -> list[PreferencePair]:
    return [
        PreferencePair(
            id=f"{rec.id}-r{r}", prompt=rec.instruction, chosen=rec.refinement, rejected=rec.response,
            chosen_score=rec.refinement_score, rejected_score=rec.feedback.score, source_id=rec.id,
            critic=rec.critic, stage=2, round=r, meta={**rec.meta, "source_stage": rec.stage},
        )
        for rec in records
    ]


def run_stage2_round(cfg: RunConfig, r: int, start_model: str, config_path: str | None = None) -> Path:
    from srt.models import model_revision

    step_dir = round_dir(cfg, r)
    model_dir = step_dir / "model"
    step_dir.mkdir(parents=True, exist_ok=True)
    src = round_instructions(cfg, r)
    if is_rank_zero():
        write_manifest(step_dir, config=config_to_dict(cfg), seed=cfg.seed, data_files={"instructions": src.path},
                       model={"start": start_model, "revision": model_revision(start_model)},
                       extra={"stage": 2, "round": r, "config_file": config_path, "instructions": src.model_dump()})
    if is_done(model_dir):
        log.info("stage 2 round %d already finished: %s", r, model_dir)
        return model_dir
    if (step_dir / NO_PAIRS_FILE).exists():
        return Path(start_model)
    pairs_path = step_dir / "pairs.jsonl"
    if not is_rank_zero():
        wait_for(step_dir / "report.json", f"stage-2 round {r} data")
    elif not (step_dir / "report.json").exists():
        critic_name = cfg.stage2.critic.get("name", "self")
        critic_settings = {k: v for k, v in cfg.stage2.critic.items() if k != "name"}
        if critic_name == "self":  # decoding of the model's own feedback follows generation.critique
            critic_settings.setdefault("temperature", cfg.generation.critique.temperature)
            critic_settings.setdefault("max_new_tokens", cfg.generation.critique.max_new_tokens)
        title = f"Stage 2 round {r}: {'self-feedback' if critic_name == 'self' else critic_name + ' critic'}"
        outcome = collect_feedback(
            cfg, step_dir, model_path=start_model, instructions=load_instructions(src), critic_name=critic_name, critic_settings=critic_settings, stage=2, round=r, title=title,
            rule=fb.FilterRule(cfg.stage2.refinement_vs_response, cfg.stage2.min_refinement_score),
        )
        fb.save_outcome(step_dir, outcome)  # records.jsonl = the self-feedback records that won
        pairs = pairs_from(outcome.kept, r)
        write_jsonl_atomic(pairs_path, pairs)
        report = write_stage_report(step_dir, title=title, counters=outcome.counters, response_scores=outcome.response_scores,
                                    refinement_scores=outcome.refinement_scores, extra={"pairs": len(pairs)})
        log.info("stage 2 round %d data: %s", r, report["counters"])
    if not any(True for _ in read_jsonl(pairs_path, PreferencePair)):
        # A legitimate outcome (e.g. a later round where refinements no longer beat responses):
        # said loudly, recorded, and the model stays what it was.
        log.warning("stage 2 round %d: no preference pairs (the model's refinements never out-scored its responses; "
                    "see %s); skipping DPO, the model stays %s", r, step_dir / "report.md", start_model)
        (step_dir / NO_PAIRS_FILE).write_text(json.dumps({"round": r, "model": start_model}), encoding="utf-8")
        return Path(start_model)
    from srt.pipeline.train_dpo import train_dpo

    return train_dpo(cfg, start_model=start_model, pairs_path=pairs_path, step_dir=step_dir)


def run_stage2(cfg: RunConfig, config_path: str | None = None, start_model: str | None = None) -> Path:
    """All rounds; round 1 starts from the stage-1 model, each later round from the previous one."""
    model = start_model or str(stage1_dir(cfg) / "model")
    if not is_done(Path(model)) and start_model is None:
        raise ConfigError(f"no finished stage-1 model at {model}: run `srt-train stage1` first, or pass --model")
    for r in range(1, cfg.stage2.rounds + 1):
        model = str(run_stage2_round(cfg, r, model, config_path))
        if (round_dir(cfg, r) / NO_PAIRS_FILE).exists():
            log.warning("stopping after round %d: no pairs to learn from; final model: %s", r, model)
            break
    return Path(model)
