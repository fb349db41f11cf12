"""The evaluation report: a markdown table with models side by side (like Table 3 of the paper),
paired comparisons, the run record, warnings, and PNG plots (win rates and accuracies with
standard-error bars, score histograms).

Per-sample correctness, for any benchmark: when every sample of a (model, benchmark) carries a
boolean ``correct``, :func:`correctness_metrics` adds ``accuracy`` ± ``accuracy_stderr`` (percent,
one binomial standard error); samples of ``srt`` answers that also carry ``response_correct`` (the
first response scored alone) add ``response_accuracy`` and ``fixed_by_refinement`` /
``broken_by_refinement`` (wrong response -> right answer, and the reverse); ``parsed`` / ``fallback``
add ``srt_parse_rate`` and ``srt_fallbacks``. The eval config's ``compare: [[model, baseline], ...]``
pairs models on the same sample ids (:func:`comparisons`): problems gained and lost, and an exact
two-sided sign test on them (:func:`sign_test`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

# Metric -> the metric holding its standard error (alpaca_eval's names for win rates).
WIN_RATE_ERROR_BARS = {"win_rate": "standard_error", "length_controlled_winrate": "lc_standard_error"}
ACCURACY_ERROR_BARS = {"accuracy": "accuracy_stderr", "response_accuracy": "response_accuracy_stderr"}
ERROR_BARS = {**WIN_RATE_ERROR_BARS, **ACCURACY_ERROR_BARS}


# -- per-sample correctness ------------------------------------------------------------------


def _flags(samples: Sequence[Mapping[str, Any]], key: str) -> list[bool] | None:
    values = [s.get(key) for s in samples]
    return values if values and all(isinstance(v, bool) for v in values) else None


def binomial_stderr(k: int, n: int) -> float:
    """Standard error of the proportion k/n: sqrt(p (1 - p) / n)."""
    return math.sqrt((k / n) * (1 - k / n) / n) if n else 0.0


def correctness_metrics(samples: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Accuracy ± standard error and the SRT counts of samples with a boolean ``correct`` (module doc);
    empty for samples without one."""
    correct = _flags(samples, "correct")
    if correct is None:
        return {}
    n, k = len(correct), sum(correct)
    out: dict[str, float] = {
        "accuracy": 100 * k / n,
        "accuracy_stderr": 100 * binomial_stderr(k, n),
        "n_correct": k,
        "n_samples": n,
    }
    response = _flags(samples, "response_correct")
    if response is not None:
        r = sum(response)
        out.update(
            response_accuracy=100 * r / n,
            response_accuracy_stderr=100 * binomial_stderr(r, n),
            n_response_correct=r,
            fixed_by_refinement=sum(1 for a, b in zip(response, correct) if b and not a),
            broken_by_refinement=sum(1 for a, b in zip(response, correct) if a and not b),
        )
    parsed = _flags(samples, "parsed")
    if parsed is not None:
        out["srt_parse_rate"] = 100 * sum(parsed) / n
    fallback = _flags(samples, "fallback")
    if fallback is not None:
        out["srt_fallbacks"] = sum(fallback)
    return out


def sign_test(gained: int, lost: int) -> float:
    """Exact two-sided sign test: the chance of a split of the changed items at least this uneven if
    each change were a fair coin flip (the binomial test of ``gained`` out of ``gained + lost`` at 1/2)."""
    n = gained + lost
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(gained, lost) + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_changes(baseline: Mapping[str, bool], model: Mapping[str, bool]) -> dict[str, Any]:
    """Per sample id present in both: ``gained`` = right now and wrong in the baseline, ``lost`` the
    reverse; with the sign test on the two."""
    ids = [i for i in model if i in baseline]
    gained = sum(1 for i in ids if model[i] and not baseline[i])
    lost = sum(1 for i in ids if baseline[i] and not model[i])
    return {"n_paired": len(ids), "gained": gained, "lost": lost, "sign_test_p": sign_test(gained, lost)}


def _by_id(samples: Sequence[Mapping[str, Any]], key: str) -> dict[str, bool] | None:
    if _flags(samples, key) is None:
        return None
    return {str(s.get("id", i)): s[key] for i, s in enumerate(samples)}


def comparisons(
    compare: Iterable[Sequence[str]], samples: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]]
) -> list[dict[str, Any]]:
    """Paired comparisons for every ``[model, baseline]`` of ``compare`` on every benchmark both ran
    with per-sample correctness. ``samples``: (model, benchmark) -> its samples.

    A model's answer is compared with the baseline's answer; with ``srt`` answers its first response
    too, with the baseline's response when it has one, else with its answer (a plain baseline).
    """
    benchmarks = list(dict.fromkeys(bench for _, bench in samples))
    rows = []
    for model, baseline in compare:
        for bench in benchmarks:
            if (model, bench) not in samples or (baseline, bench) not in samples:
                continue
            mine, theirs = samples[(model, bench)], samples[(baseline, bench)]
            answer, base_answer = _by_id(mine, "correct"), _by_id(theirs, "correct")
            if answer is None or base_answer is None:
                continue
            pairs = [("answer", answer, "answer", base_answer)]
            response, base_response = _by_id(mine, "response_correct"), _by_id(theirs, "response_correct")
            if response is not None:
                if base_response is not None:
                    pairs.append(("response", response, "response", base_response))
                else:
                    pairs.append(("response", response, "answer", base_answer))
            for kind, values, base_kind, base_values in pairs:
                rows.append(
                    {
                        "benchmark": bench,
                        "model": model,
                        "answer": kind,
                        "baseline": baseline,
                        "baseline_answer": base_kind,
                        **paired_changes(base_values, values),
                    }
                )
    return rows


# -- the report ------------------------------------------------------------------------------


def write_report(summary: dict[str, Any], output_dir: str | Path) -> Path:
    """Write ``report.md`` and ``plots/*.png`` for a run summary (see :func:`srt.eval.runner.run_eval`)."""
    output_dir = Path(output_dir)
    plot_dir = output_dir / "plots"
    plots = plot_win_rates(summary, plot_dir) + plot_accuracy(summary, plot_dir) + plot_histograms(summary, plot_dir)
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
    lines.append(
        "Win rates are percentages ± one standard error (alpaca_eval's metrics); accuracies are percentages ± one "
        "binomial standard error over the samples."
    )
    paired = summary.get("comparisons") or []
    if paired:
        lines += [
            "",
            "## Paired comparisons",
            "",
            "Same samples, model against baseline: gained = right now and wrong in the baseline, lost = the reverse; "
            "p = exact two-sided sign test on gained vs lost.",
            "",
            "| benchmark | model | baseline | gained | lost | sign test p |",
            "| --- | --- | --- | ---: | ---: | ---: |",
        ]
        for row in paired:
            lines.append(
                f"| {row['benchmark']} | {answer_label(row['model'], row['answer'])} | "
                f"{answer_label(row['baseline'], row['baseline_answer'])} | {row['gained']} | {row['lost']} | "
                f"{format_p(row['sign_test_p'])} |"
            )

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


def answer_label(model: str, answer: str) -> str:
    """``stage1`` for a model's answer, ``stage1 (response)`` for its first SRT response."""
    return model if answer == "answer" else f"{model} ({answer})"


def format_p(p: float) -> str:
    """Two significant digits (``6.1e-05``, ``0.15``, ``1``)."""
    return f"{p:.2g}"


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
        if metric in WIN_RATE_ERROR_BARS
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
            errors.append(metrics.get(WIN_RATE_ERROR_BARS[metric]) or 0.0)
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


def plot_accuracy(summary: dict[str, Any], plot_dir: Path) -> list[Path]:
    """Per benchmark with per-sample correctness: each model's accuracy (and its first SRT response's)
    with standard-error bars."""
    paths = []
    benchmarks = list(
        dict.fromkeys(
            bench
            for per_bench in summary["results"].values()
            for bench, entry in per_bench.items()
            if "accuracy" in entry.get("metrics", {})
        )
    )
    for bench in benchmarks:
        bars = []  # (label, value, error, answer kind, "k/n")
        for model, per_bench in summary["results"].items():
            metrics = per_bench.get(bench, {}).get("metrics", {})
            for metric, kind, count in (
                ("accuracy", "answer", "n_correct"),
                ("response_accuracy", "response", "n_response_correct"),
            ):
                if metrics.get(metric) is not None:
                    error = metrics.get(ERROR_BARS[metric]) or 0.0
                    fraction = f"{metrics.get(count)}/{metrics.get('n_samples')}"
                    bars.append((answer_label(model, kind), metrics[metric], error, kind, fraction))
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(bars) + 1.5), 3.6))
        colors = ["#1f77b4" if b[3] == "answer" else "#9ecae1" for b in bars]
        ax.bar(range(len(bars)), [b[1] for b in bars], yerr=[b[2] for b in bars], capsize=4, color=colors)
        for x, b in enumerate(bars):
            ax.text(x, 1, b[4], ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(bars)))
        ax.set_xticklabels([b[0].replace(" (", "\n(") for b in bars], fontsize=8)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{bench}: accuracy ± s.e.", fontsize=9)
        fig.tight_layout()
        plot_dir.mkdir(parents=True, exist_ok=True)
        path = plot_dir / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', bench)}__accuracy.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


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
