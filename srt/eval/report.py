"""The evaluation report: a markdown table with models side by side (like Table 3 of the paper),
the run record, warnings, and PNG plots (win rates with standard-error bars, score histograms)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

# Win-rate-like metric -> the metric holding its standard error (alpaca_eval's names).
ERROR_BARS = {"win_rate": "standard_error", "length_controlled_winrate": "lc_standard_error"}


def write_report(summary: dict[str, Any], output_dir: str | Path) -> Path:
    """Write ``report.md`` and ``plots/*.png`` for a run summary (see :func:`srt.eval.runner.run_eval`)."""
    output_dir = Path(output_dir)
    plots = plot_win_rates(summary, output_dir / "plots") + plot_histograms(summary, output_dir / "plots")
    path = output_dir / "report.md"
    path.write_text(render_markdown(summary, [p.relative_to(output_dir) for p in plots]), encoding="utf-8")
    return path


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _metric_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(benchmark, metric) rows in first-seen order; standard errors are folded into their metric."""
    rows: list[tuple[str, str]] = []
    folded = set(ERROR_BARS.values())
    for per_bench in summary["results"].values():
        for bench, entry in per_bench.items():
            for metric in entry.get("metrics", {}):
                if metric not in folded and (bench, metric) not in rows:
                    rows.append((bench, metric))
    return rows


def render_markdown(summary: dict[str, Any], plots: list[Path] = ()) -> str:
    models = list(summary["results"])
    lines = ["# Evaluation report", ""]
    lines += [
        "| benchmark | metric | " + " | ".join(models) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in models) + " |",
    ]
    for bench, metric in _metric_rows(summary):
        cells = []
        for model in models:
            metrics = summary["results"][model].get(bench, {}).get("metrics", {})
            value = _fmt(metrics.get(metric))
            se = metrics.get(ERROR_BARS.get(metric, ""))
            if se is not None and value != "n/a":
                value += f" ± {_fmt(se)}"
            cells.append(value)
        lines.append(f"| {bench} | {metric} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Win rates are percentages ± one standard error (alpaca_eval's metrics).")

    warnings = [
        f"- {model} / {bench}: {w}"
        for model, per_bench in summary["results"].items()
        for bench, entry in per_bench.items()
        for w in entry.get("meta", {}).get("warnings", [])
    ]
    if warnings:
        lines += ["", "## Warnings", "", *warnings]

    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.as_posix()})" for p in plots]

    lines += [
        "",
        "## Run record",
        "",
        "| model | path | revision | chat template | answer mode | decoding |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, rec in summary.get("models", {}).items():
        sampling = rec.get("sampling", {})
        decoding = ", ".join(f"{k}={v}" for k, v in sampling.items() if v not in (None, [], ""))
        lines.append(
            f"| {name} | `{rec.get('path')}` | {rec.get('revision')} | {rec.get('chat_template_hash')} "
            f"| {rec.get('answer_mode')} | {decoding} |"
        )
    lines += ["", "| model | benchmark | task config hash | resumed | seconds |", "| --- | --- | --- | --- | ---: |"]
    for model, per_bench in summary["results"].items():
        for bench, entry in per_bench.items():
            lines.append(
                f"| {model} | {bench} | {entry.get('task_config_hash')} | {entry.get('resumed')} | {_fmt(entry.get('elapsed_s'))} |"
            )
    run = summary.get("run", {})
    versions = ", ".join(f"{k} {v}" for k, v in run.get("package_versions", {}).items() if v)
    lines += ["", f"Seed {run.get('seed')}; judge {run.get('judge')}; {versions}.", ""]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_win_rates(summary: dict[str, Any], plot_dir: Path) -> list[Path]:
    """One grouped bar chart: every win-rate metric (x) per model (bars), with standard-error bars."""
    models = list(summary["results"])
    series = [
        (bench, metric)
        for bench, metric in _metric_rows(summary)
        if metric in ERROR_BARS
        and any(summary["results"][m].get(bench, {}).get("metrics", {}).get(metric) is not None for m in models)
    ]
    if not series:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(series) * max(1, len(models)) ** 0.5), 3.6))
    width = 0.8 / len(models)
    for k, model in enumerate(models):
        values, errors = [], []
        for bench, metric in series:
            metrics = summary["results"][model].get(bench, {}).get("metrics", {})
            values.append(metrics.get(metric) if metrics.get(metric) is not None else math.nan)
            errors.append(metrics.get(ERROR_BARS[metric]) or 0.0)
        xs = [i + (k - (len(models) - 1) / 2) * width for i in range(len(series))]
        ax.bar(xs, values, width, yerr=errors, capsize=3, label=model)
    ax.set_xticks(range(len(series)))
    ax.set_xticklabels([f"{b}\n{m}" for b, m in series], fontsize=8)
    ax.set_ylabel("win rate (%)")
    ax.set_ylim(0, 100)
    ax.axhline(50, color="grey", linewidth=0.8, linestyle="--")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plot_dir.mkdir(parents=True, exist_ok=True)
    path = plot_dir / "win_rates.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def plot_histograms(summary: dict[str, Any], plot_dir: Path) -> list[Path]:
    """One histogram per (benchmark, plot series), models overlaid (e.g. self scores 1..10)."""
    found: dict[tuple[str, str], dict[str, list[float]]] = {}
    for model, per_bench in summary["results"].items():
        for bench, entry in per_bench.items():
            for key, values in (entry.get("plots") or {}).items():
                found.setdefault((bench, key), {})[model] = [v for v in values if v is not None]
    if not found:
        return []
    plt = _pyplot()
    paths = []
    plot_dir.mkdir(parents=True, exist_ok=True)
    for (bench, key), per_model in found.items():
        values = [v for vs in per_model.values() for v in vs]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        if values:
            lo, hi = math.floor(min(values)), math.ceil(max(values))
            if all(float(v).is_integer() and 1 <= v <= 10 for v in values):
                lo, hi = 1, 10  # critic scores: always show the whole 1..10 scale
            bins = [x - 0.5 for x in range(lo, hi + 2)] if hi - lo <= 20 else 20
            ax.hist(list(per_model.values()), bins=bins, label=list(per_model), alpha=0.8)
            if isinstance(bins, list):
                ax.set_xticks(range(lo, hi + 1))
            ax.legend(fontsize=8)
        ax.set_title(f"{bench}: {key}", fontsize=9)
        ax.set_ylabel("count")
        fig.tight_layout()
        path = plot_dir / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', bench)}__{re.sub(r'[^A-Za-z0-9._-]+', '_', key)}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
