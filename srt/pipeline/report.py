"""Stage report: filter counters and the score histograms of initial vs refined responses
(numbers and a PNG, like Figure 3 of the paper)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from srt.io import atomic_write_json, atomic_write_text


def histogram(scores: list[int]) -> dict[int, int]:
    c = Counter(scores)
    return {s: c.get(s, 0) for s in range(1, 11)}


def _mean(xs: list[int]) -> float | None:
    return round(sum(xs) / len(xs), 3) if xs else None


def write_stage_report(
    step_dir: Path,
    *,
    title: str,
    counters: Counter,
    response_scores: list[int],
    refinement_scores: list[int],
    usage: Counter | dict | None = None,
    extra: dict[str, Any] | None = None,
) -> dict:
    report = {
        "title": title,
        "counters": dict(counters),
        "scores": {
            "response": {"mean": _mean(response_scores), "histogram": histogram(response_scores)},
            "refinement": {"mean": _mean(refinement_scores), "histogram": histogram(refinement_scores)},
        },
        "usage": dict(usage or {}),
        **(extra or {}),
    }
    atomic_write_json(step_dir / "report.json", report)
    atomic_write_text(step_dir / "report.md", _markdown(report))
    plot_score_histograms(step_dir / "scores.png", response_scores, refinement_scores, title)
    return report


def rewrite_stage_report(step_dir: Path, report: dict) -> None:
    """Write an updated ``report`` (as :func:`write_stage_report` returned it, or as read back from its
    report.json, whose histogram keys JSON made strings) again: json and markdown."""
    for part in report["scores"].values():
        part["histogram"] = {int(score): n for score, n in part["histogram"].items()}
    atomic_write_json(step_dir / "report.json", report)
    atomic_write_text(step_dir / "report.md", _markdown(report))


def _markdown(report: dict) -> str:
    lines = [f"# {report['title']}", "", "| outcome | count |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in sorted(report["counters"].items())]
    lines += ["", "| score | responses | refinements |", "| --- | --- | --- |"]
    h0, h1 = report["scores"]["response"]["histogram"], report["scores"]["refinement"]["histogram"]
    lines += [f"| {s} | {h0[s]} | {h1[s]} |" for s in range(1, 11)]
    lines += [
        "",
        f"mean score: responses {report['scores']['response']['mean']}, "
        f"refinements {report['scores']['refinement']['mean']}",
        "",
    ]
    kept = report.get("kept_response_scores")
    if kept:
        shown = ", ".join(f"{s}: {n}" for s, n in kept.items() if n)
        lines += [f"response scores of the records kept for training (after balancing): {shown}", ""]
    precision = report.get("pair_precision")
    if precision:
        from srt.pipeline.pair_precision import OUTCOMES

        lines += [
            f"## Pair precision against gold answers ({precision['checker']}; reported, not used to choose pairs)",
            "",
            "| | n | " + " | ".join(k.replace("_", " ") for k in OUTCOMES) + " | precision |",
            "| --- | --- | " + " | ".join("---" for _ in OUTCOMES) + " | --- |",
        ]
        for what in ("pairs", "candidates"):
            row = precision[what]
            lines.append(
                f"| {what} | {row['n']} | " + " | ".join(str(row[k]) for k in OUTCOMES) + f" | {row['precision']} |"
            )
        lines += [
            "",
            "precision: share of the checked ones whose refinement (chosen) is right and response (rejected) wrong; "
            "candidates: every record whose refinement the critic re-scored (kept or not).",
            "",
        ]
    usage = report.get("usage") or {}
    if usage:
        lines += ["## Critic calls and cost", "", "| | |", "| --- | --- |"]
        lines += [f"| {k.replace('_', ' ')} | {v} |" for k, v in usage.items()]
        lines.append("")
    return "\n".join(lines)


def plot_score_histograms(path: Path, response_scores: list[int], refinement_scores: list[int], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = list(range(1, 11))
    h0, h1 = histogram(response_scores), histogram(refinement_scores)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.bar([x - 0.2 for x in xs], [h0[x] for x in xs], width=0.4, label=f"initial response (n={len(response_scores)})")
    ax.bar([x + 0.2 for x in xs], [h1[x] for x in xs], width=0.4, label=f"refinement (n={len(refinement_scores)})")
    ax.set_xticks(xs)
    ax.set_xlabel("critic score")
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
