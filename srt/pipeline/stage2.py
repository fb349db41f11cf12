"""Stage 2 recipe: the stage-1 model critiques and refines its own answers -> preference pairs -> DPO.

For each round r (``stage2.rounds``), in ``<output_dir>/stage2/round<r>``: the newest model answers
fresh instructions (T=0.7), writes its own feedback and refinement (T=0) with the stage-2 critic
(``self`` by default: the model critiques itself), re-scores the refinement in a separate call;
pairs where the refinement wins (strictly, by default) become DPO pairs: prompt = instruction,
chosen = refinement, rejected = response.
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
from srt.pipeline.run_context import RunContext
from srt.pipeline.stage1 import collect_feedback, stage1_dir
from srt.pipeline.training import is_done
from srt.records import FeedbackRecord, PreferencePair, read_jsonl, write_jsonl_atomic

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
            id=f"{rec.id}-r{r}",
            prompt=rec.instruction,
            context=rec.context,
            chosen=rec.refinement,
            rejected=rec.response,
            chosen_score=rec.refinement_score,
            rejected_score=rec.feedback.score,
            source_id=rec.id,
            critic=rec.critic,
            stage=2,
            round=r,
            meta={**rec.meta, "source_stage": rec.stage},
        )
        for rec in records
    ]


def turn_pairs(records: list[FeedbackRecord], rejects: list[dict], r: int) -> tuple[list[PreferencePair], dict]:
    """``dpo.pair_format: turn``: per instruction, chosen = the whole SRT turn (response -> feedback ->
    refinement) whose refinement won by the widest self-score margin, rejected = the turn whose refinement
    did worst against its response (the rejects that were ranked and lost); ties: the lower sample index.
    Returns the pairs and counts (instructions with a winner, with a loser, paired)."""
    from srt.critic_template import render_feedback, render_srt_turn
    from srt.pipeline.feedback import instruction_of

    losers = [FeedbackRecord.model_validate(x["kept"]) for x in rejects if x.get("reason") == "refinement_not_better"]

    def margin(rec: FeedbackRecord) -> int:
        return rec.refinement_score - rec.feedback.score

    def sample(rec: FeedbackRecord) -> int:
        return int(rec.meta.get("sample", 0))

    def turn(rec: FeedbackRecord) -> str:
        fb = rec.feedback
        return render_srt_turn(rec.response, render_feedback(fb.weaknesses, fb.suggestions, fb.score), rec.refinement)

    won: dict[str, list[FeedbackRecord]] = {}
    lost: dict[str, list[FeedbackRecord]] = {}
    for rec in records:
        won.setdefault(instruction_of(rec), []).append(rec)
    for rec in losers:
        lost.setdefault(instruction_of(rec), []).append(rec)
    pairs = []
    for key, winners in won.items():
        if key not in lost:
            continue
        best = min(winners, key=lambda x: (-margin(x), sample(x)))
        worst = min(lost[key], key=lambda x: (margin(x), sample(x)))
        pairs.append(
            PreferencePair(
                id=f"{key}-r{r}-turn",
                prompt=best.instruction,
                context=best.context,
                chosen=turn(best),
                rejected=turn(worst),
                chosen_score=best.refinement_score,
                rejected_score=worst.refinement_score,
                source_id=best.id,
                critic=best.critic,
                stage=2,
                round=r,
                meta={"pair_format": "turn", "rejected_id": worst.id, "source_stage": best.stage},
            )
        )
    counts = {"instructions_won": len(won), "instructions_lost": len(lost), "turn_pairs": len(pairs)}
    return pairs, counts


def stage2_round(ctx: RunContext, r: int, start_model: str) -> Path:
    from srt.models import model_revision

    cfg = ctx.cfg
    prefix = f"stage2.round{r}"
    step_dir = round_dir(cfg, r)
    model_dir = step_dir / "model"
    finished = is_done(model_dir) or (step_dir / NO_PAIRS_FILE).exists()
    if finished and is_rank_zero():
        _report_pair_precision(cfg, step_dir)
    if is_done(model_dir):
        log.info("stage 2 round %d already finished: %s", r, model_dir)
        return model_dir
    if (step_dir / NO_PAIRS_FILE).exists():
        return Path(start_model)
    src = round_instructions(cfg, r)
    if is_rank_zero():
        step_dir.mkdir(parents=True, exist_ok=True)
        write_manifest(
            step_dir,
            config=config_to_dict(cfg),
            seed=cfg.seed,
            data_files={"instructions": src.path},
            model={"start": start_model, "revision": model_revision(start_model)},
            extra={
                "stage": 2,
                "round": r,
                "config_file": ctx.config_path,
                "instructions": src.model_dump(),
                "steps": ctx.fingerprints(prefix + "."),
            },
        )
    pairs_path = step_dir / "pairs.jsonl"
    if not is_rank_zero():
        wait_for(step_dir / "report.json", f"stage-2 round {r} data")
    elif not (step_dir / "report.json").exists():
        critic = cfg.stage2.critic
        title = f"Stage 2 round {r}: {critic['name']} critic"
        outcome, usage = collect_feedback(
            ctx,
            step_dir,
            prefix=prefix,
            model_path=start_model,
            instructions=load_instructions(src),
            critic_spec=critic,
            stage=2,
            round=r,
            rule=fb.FilterRule(cfg.stage2.refinement_vs_response, cfg.stage2.min_refinement_score),
        )
        fb.save_outcome(step_dir, outcome)  # records.jsonl = the self-feedback records that won
        pairs = pairs_from(outcome.kept, r)
        write_jsonl_atomic(pairs_path, pairs)
        report = write_stage_report(
            step_dir,
            title=title,
            counters=outcome.counters,
            response_scores=outcome.response_scores,
            refinement_scores=outcome.refinement_scores,
            usage=usage,
            extra={"pairs": len(pairs)},
        )
        ctx.finished(f"{prefix}.critic")
        log.info("stage 2 round %d data: %s", r, report["counters"])
    if is_rank_zero():
        _report_pair_precision(cfg, step_dir)
    if cfg.dpo.pair_format == "turn":  # built from the critic step's outputs, each time (cheap, deterministic)
        records = list(read_jsonl(step_dir / "records.jsonl", FeedbackRecord))
        rejects = _read_rejects(step_dir)
        turns, counts = turn_pairs(records, rejects, r)
        pairs_path = step_dir / "turn_pairs.jsonl"
        if is_rank_zero():
            write_jsonl_atomic(pairs_path, turns)
        else:
            wait_for(pairs_path, f"stage-2 round {r} turn pairs")
        log.info("stage 2 round %d: whole-turn pairs (dpo.pair_format=turn): %s", r, counts)
    if not any(True for _ in read_jsonl(pairs_path, PreferencePair)):
        # A legitimate outcome (e.g. a later round where refinements no longer beat responses):
        # said loudly, recorded, and the model stays what it was.
        log.warning(
            "stage 2 round %d: no preference pairs (the model's refinements never out-scored its responses; "
            "see %s); skipping DPO, the model stays %s",
            r,
            step_dir / "report.md",
            start_model,
        )
        if is_rank_zero():
            (step_dir / NO_PAIRS_FILE).write_text(json.dumps({"round": r, "model": start_model}), encoding="utf-8")
        return Path(start_model)
    from srt.pipeline.train_dpo import train_dpo

    ctx.started(f"{prefix}.dpo")
    model = train_dpo(cfg, start_model=start_model, pairs_path=pairs_path, step_dir=step_dir)
    ctx.finished(f"{prefix}.dpo")
    return model


def _read_rejects(step_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (step_dir / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]


def _report_pair_precision(cfg: RunConfig, step_dir: Path) -> None:
    """The round report's ``pair_precision`` as ``stage2.answer_checker`` asks now (reported only: gold
    never chooses a pair, so the setting is not part of the round's fingerprint and changing it re-runs
    nothing). Computed from the round's records and rejects on disk (cheap, deterministic) whenever the
    report holds another checker's figures or none; removed when the setting is unset."""
    from srt.pipeline.report import rewrite_stage_report

    report_path = step_dir / "report.json"
    if not report_path.is_file():  # a round finished by hand or by an older srt: nothing to bring up to date
        return
    report = json.loads(report_path.read_text(encoding="utf-8"))
    name = cfg.stage2.answer_checker
    if (report.get("pair_precision") or {}).get("checker") == name:
        return
    if name is None:
        report.pop("pair_precision")
    else:
        from srt.pipeline.pair_precision import pair_precision

        kept = list(read_jsonl(step_dir / "records.jsonl", FeedbackRecord))
        rejects = _read_rejects(step_dir)
        report["pair_precision"] = pair_precision(name, kept, rejects)
        log.info("stage 2: pair precision against gold answers (%s): %s", name, report["pair_precision"]["pairs"])
    rewrite_stage_report(step_dir, report)


def run_stage2(
    cfg: RunConfig, config_path: str | None = None, start_model: str | None = None, restart: str | None = None
) -> Path:
    """``srt-train stage2``: plan, lock the output directory, then run every round (resumable)."""
    from srt.pipeline.run import execute

    return execute(cfg, "stage2", config_path=config_path, start_model=start_model, restart=restart)


def stage2(ctx: RunContext, start_model: str | None = None) -> Path:
    """All rounds; round 1 starts from the stage-1 model, each later round from the previous one."""
    model = start_model or str(stage1_dir(ctx.cfg) / "model")
    if not is_done(Path(model)) and start_model is None:
        raise ConfigError(f"no finished stage-1 model at {model}: run `srt-train stage1` first, or pass --model")
    for r in range(1, ctx.cfg.stage2.rounds + 1):
        model = str(stage2_round(ctx, r, model))
        if (round_dir(ctx.cfg, r) / NO_PAIRS_FILE).exists():
            log.warning("stopping after round %d: no pairs to learn from; final model: %s", r, model)
            break
    return Path(model)
