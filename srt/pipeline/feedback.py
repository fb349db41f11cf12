"""The feedback chain shared by both stages: generate -> critique -> re-score -> filter.

Stage 1 runs it with an external critic (API, local model, reference answers); stage 2 with the
``self`` critic. Every step appends to a JSONL file as it goes, so a killed run resumes where it
stopped: finished generations and critic calls are never redone (nor re-paid).

Files in a step directory:
  responses.jsonl   one FeedbackRecord per instruction, feedback still empty
  critic_calls.jsonl  one row per critic call (mode "critique" or "score"), raw text or error
  records.jsonl     kept records (passed the filters)           <- training data
  rejects.jsonl     everything kept aside, with the reason     <- nothing is dropped silently
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from srt import critic_template as ct
from srt.critic import CritiqueReply, CritiqueRequest
from srt.errors import PluginError, RecordError
from srt.records import (
    CriticInfo,
    Feedback,
    FeedbackRecord,
    InstructionRecord,
    JsonlWriter,
    read_jsonl,
    write_jsonl_atomic,
)
from srt.secrets import scrub_known, scrub_text

log = logging.getLogger(__name__)


class CriticCall(BaseModel):
    """One critic call, as made: kept so a restart never repeats (or re-pays) it."""

    model_config = ConfigDict(extra="forbid")
    id: str
    mode: Literal["critique", "score"]
    text: str | None = None
    error: str | None = None
    usage: dict[str, Any] = {}


def _chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def generate_responses(
    generator,
    instructions: list[InstructionRecord],
    path: Path,
    *,
    sampling_kwargs: dict[str, Any],
    seed: int,
    stage: int,
    round: int = 0,
    system_prompt: str | None = None,
    chunk_size: int = 64,
    num_samples: int = 1,
) -> list[FeedbackRecord]:
    """Answer each instruction ``num_samples`` times (resumable): returns records with ``response`` set.

    ``generator``: a :class:`srt.generation.Generator` (or anything with its ``chat``), or a function
    returning one, called only when something is left to generate (a finished step loads no model).
    With ``num_samples`` > 1 the k-th answer is record ``<id>#s<k>`` (:func:`sample_id`) with
    ``meta.instruction_id`` and ``meta.sample``, sampled from its own stream (keyed by that id)."""
    from srt.generation import SamplingConfig

    samples = expand_samples(instructions, num_samples)
    done = {r.id: r for r in read_jsonl(path, FeedbackRecord)} if path.exists() else {}
    todo = [(rid, ins, k) for rid, ins, k in samples if rid not in done]
    if done:
        log.info("responses: %d already generated, %d to go (%s)", len(done), len(todo), path)
    if todo and not hasattr(generator, "chat"):
        generator = generator()
    with JsonlWriter(path) as writer:
        for chunk in _chunks(todo, chunk_size):
            # Each instruction samples from its own random stream, keyed by its id: a resumed run
            # (whatever was left to do, however it is chunked) draws what a fresh run would have.
            # An SRT model writes response -> feedback -> refinement in one turn: the initial
            # response is what comes before its feedback header (stage 2 critiques it separately).
            sampling = SamplingConfig(**sampling_kwargs, seed=seed, stop=[ct.FEEDBACK_SEPARATOR.rstrip("\n")])
            outs = generator.chat(
                [conversation_of(ins) for _, ins, _ in chunk],
                sampling,
                system_prompt=system_prompt,
                keys=[f"response\x00{rid}" for rid, _, _ in chunk],
                desc=f"responses ({path.parent.relative_to(path.parent.parent.parent) if stage == 2 else 'stage1'})",
            )
            for (rid, ins, k), out in zip(chunk, outs):
                text = ct.strip_partial_separator(out.text) if out.finish_reason == "length" else out.text
                sample = {} if num_samples == 1 else {"instruction_id": ins.id, "sample": k}
                rec = FeedbackRecord(
                    id=rid,
                    instruction=ins.instruction,
                    context=ins.context,
                    reference=ins.reference,
                    response=text.strip(),
                    stage=stage,
                    round=round,
                    meta={
                        **ins.meta,
                        **sample,
                        "response_tokens": out.num_new_tokens,
                        "response_finish": out.finish_reason,
                    },
                )
                writer.write(rec)
                done[rid] = rec
    return [done[rid] for rid, _, _ in samples]


def sample_id(instruction_id: str, k: int) -> str:
    """The record id of an instruction's k-th sampled response (``generation.response.num_samples`` > 1)."""
    return f"{instruction_id}#s{k}"


def expand_samples(instructions: list[InstructionRecord], num_samples: int) -> list[tuple[str, InstructionRecord, int]]:
    """(record id, instruction, sample index) for every response to generate; the ids are unique."""
    if num_samples == 1:
        return [(ins.id, ins, 0) for ins in instructions]
    out = [(sample_id(ins.id, k), ins, k) for ins in instructions for k in range(num_samples)]
    taken = {ins.id for ins in instructions}
    clash = next((rid for rid, _, _ in out if rid in taken), None)
    if clash is not None:
        raise RecordError(
            f"instruction id {clash!r} is also the id of a sampled response (<id>#s<k>); rename it or set "
            "generation.response.num_samples: 1"
        )
    return out


def instruction_of(record: FeedbackRecord) -> str:
    """The instruction a record answers (its own id when there was one response per instruction)."""
    return str(record.meta.get("instruction_id", record.id))


def conversation_of(record) -> str | list[dict[str, str]]:
    """What the policy is asked: the instruction, or the conversation ending with it."""
    if not record.context:
        return record.instruction
    return [*(m.model_dump() for m in record.context), {"role": "user", "content": record.instruction}]


def check_replies(critic, replies: Any, expected: int) -> list[CritiqueReply]:
    """The critic protocol's contract: a list of ``expected`` replies, each with ``text`` (str or None),
    ``error`` (str or None) and ``usage`` (a dict). A plugin that breaks it is one PluginError naming it."""
    name = getattr(critic, "name", type(critic).__name__)
    where = f"critic plugin {name!r} ({type(critic).__module__}.{type(critic).__qualname__})"
    if not isinstance(replies, (list, tuple)):
        raise PluginError(
            f"{where} broke the critic protocol: critique() returned {type(replies).__name__}, "
            "expected a list of srt.critic.CritiqueReply"
        )
    if len(replies) != expected:
        raise PluginError(
            f"{where} broke the critic protocol: {len(replies)} replies for {expected} requests "
            "(one reply per request, in order)"
        )
    for k, rep in enumerate(replies):
        text, error, usage = (getattr(rep, a, _MISSING) for a in ("text", "error", "usage"))
        if (
            _MISSING in (text, error)
            or not (text is None or isinstance(text, str))
            or not (error is None or isinstance(error, str))
            or not (usage is None or isinstance(usage, dict))
        ):
            raise PluginError(
                f"{where} broke the critic protocol: reply {k} is {type(rep).__name__} "
                f"{str(rep)[:80]!r}, expected CritiqueReply(text: str | None, error: str | None, usage: dict)"
            )
        if text is None and error is None:
            raise PluginError(f"{where} broke the critic protocol: reply {k} has neither text nor error")
    return list(replies)


_MISSING = object()


def _load_calls(path: Path) -> dict[tuple[str, str], CriticCall]:
    if not path.exists():
        return {}
    # A call that failed (error set) is retried on the next run; the latest row for a key wins.
    return {(c.id, c.mode): c for c in read_jsonl(path, CriticCall)}


def run_critic(
    critic, records: list[FeedbackRecord], path: Path, chunk_size: int = 64
) -> dict[tuple[str, str], CriticCall]:
    """Critique each response, then re-score each parsed refinement in a separate call (resumable)."""
    calls = _load_calls(path)

    def missing(mode: str, ids: Iterable[str]) -> list[str]:
        return [i for i in ids if (i, mode) not in calls or calls[(i, mode)].error is not None]

    by_id = {r.id: r for r in records}
    with JsonlWriter(path) as writer:

        def call(mode: str, ids: list[str], text_of) -> None:
            for chunk in _chunks(ids, chunk_size):
                reqs = [
                    CritiqueRequest(
                        id=i,
                        instruction=by_id[i].instruction,
                        response=text_of(i),
                        reference=by_id[i].reference,
                        context=[m.model_dump() for m in by_id[i].context],
                        mode=mode,
                    )
                    for i in chunk
                ]
                replies = check_replies(critic, critic.critique(reqs), len(reqs))
                for i, rep in zip(chunk, replies):
                    # An API key echoed back by a server must not reach the files.
                    row = CriticCall(
                        id=i,
                        mode=mode,
                        text=scrub_known(rep.text),
                        error=scrub_text(rep.error),
                        usage=dict(rep.usage or {}),
                    )
                    writer.write(row)
                    calls[(i, mode)] = row

        todo = missing("critique", by_id)
        if todo:
            log.info("critic %s: %d critiques to request", critic.name, len(todo))
            call("critique", todo, lambda i: by_id[i].response)
        # Re-score only refinements that parsed: the separate call the paper uses against inflation.
        parsed = {}
        for i in by_id:
            c = calls.get((i, "critique"))
            if c is not None and c.text is not None:
                p = ct.parse_critique(c.text)
                if isinstance(p, ct.ParsedCritique):
                    parsed[i] = p
        todo = missing("score", parsed)
        if todo:
            log.info("critic %s: %d refinements to re-score", critic.name, len(todo))
            call("score", todo, lambda i: parsed[i].improved_response)
    return calls


@dataclass
class FilterRule:
    refinement_vs_response: Literal[">=", ">"] = ">="
    min_refinement_score: int | None = None
    balance_scores: Literal["none", "min_max"] = "none"  # filter.balance_scores
    max_score_share: float | None = None  # filter.max_score_share
    seed: int = 0  # which records a score cap leaves out


@dataclass
class FilterOutcome:
    kept: list[FeedbackRecord] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    counters: Counter = field(default_factory=Counter)
    response_scores: list[int] = field(default_factory=list)  # every parsed critique
    refinement_scores: list[int] = field(default_factory=list)  # every parsed re-score


def build_records(
    records: list[FeedbackRecord], calls: dict[tuple[str, str], CriticCall], critic_info: CriticInfo, rule: FilterRule
) -> FilterOutcome:
    """Parse critic output, apply the paper's filters, and count every outcome."""
    out = FilterOutcome()
    for rec in records:
        out.counters["total"] += 1
        crit, score_call = calls.get((rec.id, "critique")), calls.get((rec.id, "score"))

        def reject(reason: str, detail: str = "", rec: FeedbackRecord = rec, **extra: Any) -> None:
            out.counters[reason.split(":")[0]] += 1
            out.rejects.append(
                {"id": rec.id, "reason": reason, "detail": detail, "record": rec.model_dump(mode="json"), **extra}
            )

        if crit is None or crit.error is not None:
            reject("critic_error", crit.error if crit else "no critic call recorded")
            continue
        parsed = ct.parse_critique(crit.text, require_improved_response=True)
        if isinstance(parsed, ct.ParseFailure):  # paper filter 1: weaknesses, suggestions, score, refinement
            reject(f"parse_failure:{parsed.reason}", parsed.message, raw=crit.text)
            continue
        out.response_scores.append(parsed.score)
        if score_call is None or score_call.error is not None:
            reject("critic_error", score_call.error if score_call else "refinement was not re-scored", raw=crit.text)
            continue
        ref_score = ct.parse_score(score_call.text)
        if isinstance(ref_score, ct.ParseFailure):
            reject(f"rescore_parse_failure:{ref_score.reason}", ref_score.message, raw=score_call.text)
            continue
        out.refinement_scores.append(ref_score)
        kept = FeedbackRecord(
            **{**rec.model_dump(exclude={"feedback", "refinement", "refinement_score", "critic"})},
            feedback=Feedback(
                weaknesses=parsed.weaknesses, suggestions=parsed.suggestions, score=parsed.score, raw=crit.text
            ),
            refinement=parsed.improved_response,
            refinement_score=ref_score,
            critic=critic_info,
        )
        better = ref_score > parsed.score if rule.refinement_vs_response == ">" else ref_score >= parsed.score
        if not better:
            reject(
                "refinement_not_better",
                f"refinement {ref_score} vs response {parsed.score}",
                kept=kept.model_dump(mode="json"),
            )
            continue
        if rule.min_refinement_score is not None and ref_score < rule.min_refinement_score:
            reject("refinement_below_min", f"refinement {ref_score} < {rule.min_refinement_score}")
            continue
        out.counters["kept"] += 1
        out.kept.append(kept)
    balance(out, rule)
    return out


def _sample_of(record: FeedbackRecord) -> int:
    return int(record.meta.get("sample", 0))


def balance(out: FilterOutcome, rule: FilterRule) -> None:
    """``filter.balance_scores`` then ``filter.max_score_share`` on the kept records (in place): what
    they leave out moves to the rejects (``balanced_out``, ``score_capped``) and out of ``kept``."""
    if rule.balance_scores == "none" and rule.max_score_share is None:
        return

    def leave_out(records: list[FeedbackRecord], reason: str, detail) -> None:
        for rec in records:
            out.counters["kept"] -= 1
            out.counters[reason] += 1
            out.rejects.append(
                {"id": rec.id, "reason": reason, "detail": detail(rec), "record": rec.model_dump(mode="json")}
            )

    kept = out.kept
    if rule.balance_scores == "min_max":
        groups: dict[str, list[FeedbackRecord]] = {}
        for rec in kept:
            groups.setdefault(instruction_of(rec), []).append(rec)
        chosen: set[str] = set()
        for recs in groups.values():
            order = sorted(recs, key=lambda r: (r.feedback.score, _sample_of(r)))
            low = order[0]
            high = min((r for r in recs if r.feedback.score == order[-1].feedback.score), key=_sample_of)
            chosen.update({low.id, high.id})
        leave_out(
            [r for r in kept if r.id not in chosen],
            "balanced_out",
            lambda r: f"response score {r.feedback.score}: neither the lowest nor the highest of its instruction",
        )
        kept = [r for r in kept if r.id in chosen]
    if rule.max_score_share is not None and kept:
        from srt.io import json_sha256

        buckets: dict[int, list[FeedbackRecord]] = {}
        for rec in kept:
            buckets.setdefault(rec.feedback.score, []).append(rec)
        cap = score_cap([len(b) for b in buckets.values()], rule.max_score_share)
        capped: set[str] = set()
        for recs in buckets.values():
            order = sorted(recs, key=lambda r: json_sha256({"seed": rule.seed, "id": r.id}))
            capped.update(r.id for r in order[cap:])
        leave_out(
            [r for r in kept if r.id in capped],
            "score_capped",
            lambda r: f"response score {r.feedback.score}: over the cap of {cap} records per score",
        )
        kept = [r for r in kept if r.id not in capped]
    out.kept = kept


def score_cap(counts: list[int], share: float) -> int:
    """The largest c for which no bucket's min(count, c) is more than ``share`` of sum(min(counts, c));
    when none is (fewer than 1 / share buckets), the smallest count."""
    for c in range(max(counts), 0, -1):
        clipped = [min(n, c) for n in counts]
        if max(clipped) <= share * sum(clipped) + 1e-9:
            return c
    return min(counts)


def critic_usage(path: Path, since: float | None = None) -> dict[str, Any]:
    """Tokens and cost of every critic call this step paid for, from ``critic_calls.jsonl``.

    Every row counts (a failed call that was retried later too). A reply served from the critic's
    cache was paid when the cache entry was made (``usage.paid_at``): by an earlier, interrupted
    attempt of this step when that is after the step first started (``since``; its row was lost with
    the interruption, its cost is counted here), else by another run (not counted, only reported).
    """
    totals: Counter = Counter()
    if not path.exists():
        return {}
    for call in read_jsonl(path, CriticCall):
        u = call.usage or {}
        totals["calls"] += 1
        totals["failed"] += call.error is not None
        tokens = {k: u.get(k, 0) or 0 for k in ("prompt_tokens", "completion_tokens")}
        if u.get("cached"):
            paid_at = u.get("paid_at")
            if (
                since is not None
                and isinstance(paid_at, (int, float))
                and paid_at >= since
                and not u.get("deduplicated")
            ):
                totals["paid_by_an_interrupted_attempt"] += 1
                totals.update({**tokens, "cost_usd": u.get("paid_cost_usd", 0) or 0})
            else:
                totals["served_from_cache"] += 1
            continue
        totals.update({**tokens, "cost_usd": u.get("cost_usd", 0) or 0})
    out = dict(totals)
    out["cost_usd"] = round(float(out.get("cost_usd", 0.0)), 6)
    return out


def critic_info(critic) -> CriticInfo:
    desc = dict(critic.describe())
    return CriticInfo(
        name=str(desc.pop("name", getattr(critic, "name", "?"))),
        model=None if desc.get("model") is None else str(desc.pop("model")),
        template_version=ct.TEMPLATE_VERSION,
        template_hash=ct.TEMPLATE_HASH,
        settings={k: v for k, v in desc.items() if k != "model"},
    )


def save_outcome(step_dir: Path, outcome: FilterOutcome, records_name: str = "records.jsonl") -> None:
    write_jsonl_atomic(step_dir / records_name, outcome.kept)
    write_jsonl_atomic(step_dir / "rejects.jsonl", outcome.rejects)
