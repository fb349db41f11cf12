"""The end-of-run summary: where the models are, what was kept and why not, how training ended, how
long each step took and what the critic cost. Printed when ``srt-train`` finishes and written to
``<output_dir>/summary.md``; built only from the run's own files, so it is the same after a resume.
"""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path
from typing import Any

from srt.io import atomic_write_text, read_json

_LOSS_KEYS = ("train/loss", "rewards/margins", "rewards/accuracies", "logps/chosen")


def _final_metrics(metrics_csv: Path) -> dict[str, str]:
    """The last logged value of each of a few metrics (the CSV has one column per metric)."""
    if not metrics_csv.is_file():
        return {}
    last: dict[str, str] = {}
    with metrics_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            for key in _LOSS_KEYS:
                if row.get(key):
                    last[key] = row[key]
    return {k: f"{float(v):.4g}" for k, v in last.items()}


def _duration(entry: dict[str, Any]) -> str:
    start, end = entry.get("started_ts"), entry.get("finished_ts")
    if entry.get("status") != "done":
        return "not finished"
    if not isinstance(start, (int, float)) or not isinstance(end, (int, float)):
        return "done"
    seconds = max(0.0, end - start)
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _stage_dirs(out: Path) -> list[tuple[str, Path]]:
    dirs = [("stage 1", out / "stage1")] if (out / "stage1").is_dir() else []
    rounds = sorted((out / "stage2").glob("round*"), key=lambda p: int(p.name[5:]) if p.name[5:].isdigit() else 0)
    return dirs + [(f"stage 2 {p.name}", p) for p in rounds]


def render_summary(output_dir: str | Path) -> str:
    out = Path(output_dir)
    lines = [f"# srt run summary: {out}", ""]
    models = []
    for label, d in _stage_dirs(out):
        for name in ("model", "adapter"):
            if (d / name / "config.json").is_file() or (d / name / "adapter_config.json").is_file():
                models.append(f"| {label} | {name} | `{d / name}` |")
    if models:
        lines += ["## Models", "", "| stage | kind | folder |", "| --- | --- | --- |", *models, ""]

    data, training, cost = [], [], []
    for label, d in _stage_dirs(out):
        report = read_json(d / "report.json", default=None)
        if report:
            counters = dict(report.get("counters", {}))
            total, kept = counters.pop("total", 0), counters.pop("kept", 0)
            rejected = ", ".join(f"{k} {v}" for k, v in sorted(counters.items())) or "none"
            pairs = f" -> {report['pairs']} pairs" if "pairs" in report else ""
            data.append(f"| {label} | {total} | {kept}{pairs} | {rejected} |")
            usage = report.get("usage") or {}
            if usage:
                cost.append(
                    f"| {label} | {usage.get('calls', 0)} | {usage.get('prompt_tokens', 0)} | "
                    f"{usage.get('completion_tokens', 0)} | {usage.get('cost_usd', 0.0):.4f} |"
                )
        done = read_json(d / "model" / "srt_done.json", default=None)
        if done:
            final = _final_metrics(d / "logs" / "metrics.csv")
            shown = ", ".join(f"{k} {v}" for k, v in final.items()) or "-"
            training.append(f"| {label} | {done.get('global_step', '?')} | {shown} |")
        elif (d / "no_pairs.json").is_file():
            training.append(f"| {label} | 0 | no pairs: DPO skipped, the model stays as it was |")
    if data:
        lines += [
            "## Data",
            "",
            "| stage | instructions | kept | set aside (reason count) |",
            "| --- | --- | --- | --- |",
            *data,
            "",
        ]
    if training:
        lines += [
            "## Training",
            "",
            "| stage | optimizer steps | final metrics |",
            "| --- | --- | --- |",
            *training,
            "",
        ]
    steps = read_json(out / "steps.json", default={}).get("steps", {})
    if steps:
        lines += ["## Time", "", "| step | status | time |", "| --- | --- | --- |"]
        lines += [f"| {name} | {e.get('status')} | {_duration(e)} |" for name, e in steps.items()]
        lines.append("")
    if cost:
        lines += [
            "## Critic",
            "",
            "| stage | calls | prompt tokens | completion tokens | cost (USD) |",
            "| --- | --- | --- | --- | --- |",
            *cost,
            "",
        ]
    lines.append(f"written {datetime.now().strftime('%Y-%m-%d %H:%M:%S')}")
    return "\n".join(lines) + "\n"


def write_summary(output_dir: str | Path) -> str:
    text = render_summary(output_dir)
    atomic_write_text(Path(output_dir) / "summary.md", text)
    return text
