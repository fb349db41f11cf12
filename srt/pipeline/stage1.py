"""Stage 1 recipe: base model answers -> critic feedback + refinement -> re-score -> filter -> SFT.

Read top to bottom; each step is resumable (see srt.pipeline.feedback and srt.pipeline.training)
and records what it ran with (srt.pipeline.steps). Output tree (``<output_dir>/stage1``):
responses.jsonl, critic_calls.jsonl, records.jsonl, rejects.jsonl, report.{json,md}, scores.png,
manifest.json, checkpoints/, logs/, model/.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

from srt.config import RunConfig, config_to_dict
from srt.pipeline import feedback as fb
from srt.pipeline.instructions import load_instructions
from srt.pipeline.manifest import write_manifest
from srt.pipeline.ranks import is_rank_zero, wait_for
from srt.pipeline.report import write_stage_report
from srt.pipeline.run_context import RunContext
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


def collect_feedback(
    ctx: RunContext,
    step_dir: Path,
    *,
    prefix: str,
    model_path: str,
    instructions,
    critic_spec: dict,
    rule: fb.FilterRule,
    stage: int,
    round: int,
):
    """Generate responses, run the critic, filter. Returns (outcome, critic usage)."""
    from srt.registry import CRITICS, create_critic, load_plugin

    cfg = ctx.cfg
    name = critic_spec["name"]
    settings = {k: v for k, v in critic_spec.items() if k != "name"}
    plugin = load_plugin(CRITICS, name)
    needs_policy = bool(getattr(plugin, "needs_policy", False))
    if needs_policy:  # it decodes with the policy: the run's critique settings are its defaults
        fields = getattr(getattr(plugin, "settings_model", None), "model_fields", {})
        for key in ("temperature", "max_new_tokens"):
            if key in fields:
                settings.setdefault(key, getattr(cfg.generation.critique, key))

    loaded: list = []  # the policy, loaded at most once, only if something needs it

    def policy():
        if not loaded:
            loaded.append(build_generator(cfg, model_path))
        return loaded[0]

    ctx.started(f"{prefix}.responses")
    records = fb.generate_responses(
        policy,
        instructions,
        step_dir / "responses.jsonl",
        sampling_kwargs=cfg.generation.response.model_dump(exclude={"num_samples"}),
        num_samples=cfg.generation.response.num_samples,
        seed=cfg.seed,
        stage=stage,
        round=round,
        system_prompt=cfg.model.system_prompt,
        chunk_size=cfg.generation.chunk_size,
    )
    ctx.finished(f"{prefix}.responses")
    ctx.started(f"{prefix}.critic")
    generator = policy() if needs_policy else None
    loaded.clear()  # a critic that does not need the policy does not keep it loaded
    gc.collect()
    critic = create_critic(name, settings, policy=generator)
    calls = fb.run_critic(critic, records, step_dir / "critic_calls.jsonl", chunk_size=cfg.generation.chunk_size)
    outcome = fb.build_records(records, calls, fb.critic_info(critic), rule)
    usage = fb.critic_usage(step_dir / "critic_calls.jsonl", since=ctx.started_at(f"{prefix}.critic"))
    del generator, critic
    gc.collect()
    return outcome, usage


def kept_scores(cfg: RunConfig, outcome) -> dict:
    """With several samples or a balancing filter: the response scores of the records kept for training
    (the report's histograms count every parsed critique)."""
    f = cfg.filter
    if cfg.generation.response.num_samples == 1 and f.balance_scores == "none" and f.max_score_share is None:
        return {}
    from srt.pipeline.report import histogram

    return {"kept_response_scores": histogram([r.feedback.score for r in outcome.kept])}


def run_stage1(cfg: RunConfig, config_path: str | None = None, restart: str | None = None) -> Path:
    """``srt-train stage1``: plan, lock the output directory, then run stage 1 (resumable)."""
    from srt.pipeline.run import execute

    return execute(cfg, "stage1", config_path=config_path, restart=restart)


def stage1(ctx: RunContext) -> Path:
    from srt.models import model_revision, resolve_model_path

    cfg = ctx.cfg
    step_dir = stage1_dir(cfg)
    model_dir = step_dir / "model"
    if is_done(model_dir):
        log.info("stage 1 already finished: %s", model_dir)
        return model_dir
    base = resolve_model_path(cfg.model.path)
    if is_rank_zero():
        step_dir.mkdir(parents=True, exist_ok=True)
        write_manifest(
            step_dir,
            config=config_to_dict(cfg),
            seed=cfg.seed,
            data_files={"instructions": cfg.data.stage1.path},
            model={"path": cfg.model.path, "resolved": base, "revision": model_revision(base)},
            extra={"stage": 1, "config_file": ctx.config_path, "steps": ctx.fingerprints("stage1.")},
        )

    records_path = step_dir / "records.jsonl"
    if not is_rank_zero():
        wait_for(step_dir / "report.json", "stage-1 data")
    elif not (step_dir / "report.json").exists():
        title = "Stage 1: critic feedback"
        outcome, usage = collect_feedback(
            ctx,
            step_dir,
            prefix="stage1",
            model_path=base,
            instructions=load_instructions(cfg.data.stage1),
            critic_spec=cfg.critic,
            stage=1,
            round=0,
            rule=fb.FilterRule(
                cfg.filter.refinement_vs_response,
                cfg.filter.min_refinement_score,
                balance_scores=cfg.filter.balance_scores,
                max_score_share=cfg.filter.max_score_share,
                seed=cfg.seed,
            ),
        )
        fb.save_outcome(step_dir, outcome)
        report = write_stage_report(
            step_dir,
            title=title,
            counters=outcome.counters,
            response_scores=outcome.response_scores,
            refinement_scores=outcome.refinement_scores,
            usage=usage,
            extra=kept_scores(cfg, outcome),
        )
        ctx.finished("stage1.critic")
        log.info("stage 1 data: %s", report["counters"])
    from srt.pipeline.train_sft import train_sft

    ctx.started("stage1.sft")
    model = train_sft(cfg, base_model=base, records_path=records_path, step_dir=step_dir)
    ctx.finished("stage1.sft")
    return model
