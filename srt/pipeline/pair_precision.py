"""How often the self-critic's preference pairs are right, where gold answers exist (reported only).

Stage 2 chooses pairs with the model's own scores (the paper's strict ``>``); nothing here changes
that. With ``stage2.answer_checker`` naming an ``srt.benchmarks`` plugin that declares
``check_answer(text, reference) -> bool | None`` (``word_problems`` does, with the built-in plugins'
one answer extractor), the round's report gives, for the pairs and for every candidate the critic
ranked (the kept pairs plus the records whose refinement did not win), how many have the chosen
(refinement) right and the rejected (response) wrong: the pair's *precision*; both right; both
wrong; inverted (chosen wrong, rejected right); unchecked (no reference, or the checker returns
None). The core never imports a plugin: the checker comes through the registry.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from srt.errors import ConfigError
from srt.records import FeedbackRecord

Checker = Callable[[str, str], "bool | None"]
OUTCOMES = ("chosen_right_rejected_wrong", "both_right", "both_wrong", "inverted", "unchecked")


def answer_checker(name: str) -> Checker:
    """The ``check_answer`` of benchmark plugin ``name``; ConfigError when it has none."""
    from srt.registry import BENCHMARKS, load_plugin

    check = getattr(load_plugin(BENCHMARKS, name), "check_answer", None)
    if not callable(check):
        raise ConfigError(
            f"stage2.answer_checker: benchmark {name!r} declares no check_answer(text, reference) (word_problems does)"
        )
    return check


def _outcome(check: Checker, chosen: str, rejected: str, reference: str | None) -> str:
    if reference is None:
        return "unchecked"
    good, bad = check(chosen, reference), check(rejected, reference)
    if good is None or bad is None:
        return "unchecked"
    return {
        (True, False): "chosen_right_rejected_wrong",
        (True, True): "both_right",
        (False, False): "both_wrong",
        (False, True): "inverted",
    }[(bool(good), bool(bad))]


def breakdown(check: Checker, records: Iterable[FeedbackRecord]) -> dict[str, Any]:
    """Counts of :data:`OUTCOMES` over (refinement, response) of ``records``, and the precision: the
    share of checked ones with the refinement right and the response wrong (None when none is checked)."""
    counts = Counter({k: 0 for k in OUTCOMES})
    for rec in records:
        counts[_outcome(check, rec.refinement or "", rec.response, rec.reference)] += 1
    checked = sum(counts.values()) - counts["unchecked"]
    return {
        "n": sum(counts.values()),
        **counts,
        "precision": round(counts["chosen_right_rejected_wrong"] / checked, 4) if checked else None,
        "inverted_share": round(counts["inverted"] / checked, 4) if checked else None,
    }


def pair_precision(name: str, kept: list[FeedbackRecord], rejects: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's ``pair_precision``: ``pairs`` (the kept records, chosen = refinement), and
    ``candidates`` (those plus every record whose refinement the critic re-scored but did not prefer)."""
    check = answer_checker(name)
    ranked = [FeedbackRecord.model_validate(r["kept"]) for r in rejects if r.get("kept")]
    return {
        "checker": name,
        "pairs": breakdown(check, kept),
        "candidates": breakdown(check, [*kept, *ranked]),
    }
