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

SRT answers, for any benchmark: :func:`srt_answer_metrics` adds ``srt_parse_rate`` and
``srt_fallback_rate`` (percent of the benchmark's SRT answers whose output parsed / fell back to the
first response) from whatever the samples record: ``parsed`` / ``fallback`` flags, ``srt_parsed`` /
``srt_fallback`` (the lm-eval bridge), or an answer trace (a nested mapping with ``mode: srt`` or
``gated``).

Gated answers (answer mode ``gated``: the refinement only when the model's own re-score of it beats
its response's), for any benchmark: :func:`gate_metrics` adds ``gate_kept_refinement`` /
``gate_kept_response`` (how often the gate kept each; ``gate_unscored``: of the latter, those where
a score was missing or there was no refinement) from a sample's ``gate`` (or lm-eval's ``srt_gate``,
or a trace's); samples that also carry ``response_correct`` and ``refinement_correct`` add
``gate_right`` / ``gate_wrong``: of the answers whose response and refinement differ in correctness,
those where the gate kept the right one / the wrong one. Their ``fixed_by_refinement`` /
``broken_by_refinement`` compare the gate's answer with the response, so they count kept refinements.

Units: every metric has one (:func:`metric_unit`: what the plugin declares in
:attr:`srt.eval.benchmark.BenchmarkResult.units`, else by its name); ``summary.json`` keeps the
values as the plugins give them (lm-eval's are fractions, win rates and accuracies percentages) and
names each one's unit under ``units``. The report gives each benchmark a section whose table has
one row per model and one unit per column, rates and accuracies in percent, a standard error as
``56.2 ± 7.2`` next to its value (lm-eval's way), and the SRT parse / fallback rates last.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from srt.eval.benchmark import writes_srt_turn

# Metric -> the metric holding its standard error (alpaca_eval's names for win rates).
WIN_RATE_ERROR_BARS = {"win_rate": "standard_error", "length_controlled_winrate": "lc_standard_error"}
ACCURACY_ERROR_BARS = {"accuracy": "accuracy_stderr", "response_accuracy": "response_accuracy_stderr"}
ERROR_BARS = {**WIN_RATE_ERROR_BARS, **ACCURACY_ERROR_BARS}

# The SRT parse / fallback rates under their harness names, and the plugins' own names for them.
SRT_RATES = ("srt_parse_rate", "srt_fallback_rate")
SRT_ALIASES = {
    "srt_parse_rate": ("srt_parsed_rate", "refine_parsed_rate"),
    "srt_fallback_rate": ("refine_fallback_rate",),
}
_SRT_HIDDEN = {alias for names in SRT_ALIASES.values() for alias in names} | {"srt_fallbacks", "srt_answers"}

PERCENT, FRACTION = "percent", "fraction"
UNITS = (PERCENT, FRACTION, "count", "characters", "tokens", "score")
_HEADER_UNIT = {PERCENT: " (%)", FRACTION: " (%)", "characters": " (chars)", "tokens": " (tokens)"}
_PERCENT_NAMES = {"win_rate", "length_controlled_winrate", "discrete_win_rate", "accuracy", "agreement"}
# lm-eval's exact match and F1 (0..1), for results that declare no units (runs before units were recorded).
_FRACTION_NAMES = {"exact_match", "f1", "strict_match", "flexible_extract", "acc", "acc_norm"}
GATE_COUNTS = ("gate_kept_refinement", "gate_kept_response", "gate_unscored", "gate_right", "gate_wrong")
_COUNT_NAMES = {
    "ties",
    "parse_failures",
    "judge_failures",
    "truncated",
    "fixed_by_refinement",
    "broken_by_refinement",
    *GATE_COUNTS,
}


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


def _srt_flags(sample: Mapping[str, Any]) -> tuple[bool | None, bool] | None:
    """(parsed, fallback) of one sample's SRT answer, or None when it records none."""
    parsed, fallback = sample.get("parsed"), sample.get("fallback")
    if isinstance(parsed, bool) and isinstance(fallback, bool):
        return parsed, fallback
    parsed, fallback = sample.get("srt_parsed"), sample.get("srt_fallback")
    if isinstance(fallback, bool):
        return (parsed if isinstance(parsed, bool) else None), fallback
    for value in sample.values():  # an answer trace, e.g. {"mode": "srt", "parsed": ..., "fallback": ...}
        if (
            isinstance(value, Mapping)
            and writes_srt_turn(value.get("mode"))
            and isinstance(value.get("fallback"), bool)
        ):
            parsed = value.get("parsed")
            return (parsed if isinstance(parsed, bool) else None), value["fallback"]
    return None


def srt_answer_metrics(samples: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``srt_parse_rate`` and ``srt_fallback_rate`` (percent) over the samples' SRT answers (module doc),
    with their number ``srt_answers``; empty when no sample records an SRT answer."""
    flags = [f for f in (_srt_flags(s) for s in samples) if f is not None]
    if not flags:
        return {}
    n = len(flags)
    out: dict[str, float] = {"srt_answers": n}
    if all(parsed is not None for parsed, _ in flags):
        out["srt_parse_rate"] = 100 * sum(bool(parsed) for parsed, _ in flags) / n
    out["srt_fallback_rate"] = 100 * sum(fallback for _, fallback in flags) / n
    return out


def _gate_record(sample: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """``{gate, self_score, refinement_score}`` of one sample's gated answer, or None when it records none:
    the sample's own keys, lm-eval's ``srt_*`` ones, or a nested answer trace with ``mode: gated``."""
    if sample.get("gate") in ("refinement", "response"):
        return sample
    if sample.get("srt_gate") in ("refinement", "response"):
        return {
            "gate": sample["srt_gate"],
            "self_score": sample.get("srt_self_score"),
            "refinement_score": sample.get("srt_refinement_score"),
        }
    for value in sample.values():
        if (
            isinstance(value, Mapping)
            and value.get("mode") == "gated"
            and value.get("gate") in ("refinement", "response")
        ):
            return value
    return None


def gate_metrics(samples: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """How often the gate of ``gated`` answers kept the refinement / the response, and with per-sample
    correctness how often its choice was the right one (module doc); empty without gated answers."""
    gates = [_gate_record(s) for s in samples]
    if not any(gates):
        return {}
    kept = [g["gate"] for g in gates if g]
    out: dict[str, float] = {
        "gate_kept_refinement": kept.count("refinement"),
        "gate_kept_response": kept.count("response"),
        "gate_unscored": sum(
            1
            for g in gates
            if g and g["gate"] == "response" and (g.get("self_score") is None or g.get("refinement_score") is None)
        ),
    }
    if all("refinement_correct" in s and isinstance(s.get("response_correct"), bool) for s in samples):
        # Only where the choice mattered: exactly one of response and refinement is right.
        decisive = [
            s
            for s, g in zip(samples, gates)
            if g and isinstance(s["refinement_correct"], bool) and s["refinement_correct"] != s["response_correct"]
        ]
        right = sum(1 for s in decisive if s.get("correct") is True)
        out.update(gate_right=right, gate_wrong=len(decisive) - right)
    return out


def metric_unit(metric: str, declared: Mapping[str, str] | None = None) -> str | None:
    """A metric's unit: ``declared`` (the plugin's) first, then by name (``<lang>/`` prefixes ignored):
    lm-eval's exact match / F1 names are fractions; rates, accuracies, win rates and agreement are
    percent; ``n_*`` and known tallies counts; lengths characters; ``new_tokens*`` tokens; scores and
    rubrics scores; standard errors their metric's. None: unknown (shown as given)."""
    if declared and metric in declared:
        return declared[metric]
    of = error_bar_of(metric)
    if of is not None:
        return metric_unit(of, declared)
    base = metric.rsplit("/", 1)[-1]
    if base in _FRACTION_NAMES:
        return FRACTION
    if base in _PERCENT_NAMES or base.endswith(("_rate", "_winrate", "_accuracy", "_agreement")):
        return PERCENT
    if base.startswith("n_") or base in _COUNT_NAMES or base in ("srt_fallbacks", "srt_answers"):
        return "count"
    if "length" in base:
        return "characters"
    if base.startswith("new_tokens"):
        return "tokens"
    if "score" in base or "rubric" in base:
        return "score"
    return None


def error_bar_of(metric: str) -> str | None:
    """The metric a standard-error name belongs to (``standard_error`` -> ``win_rate``,
    ``<name>_stderr`` -> ``<name>``), else None."""
    for value, error in ERROR_BARS.items():
        if metric == error:
            return value
    if metric.endswith("_stderr"):
        return metric[: -len("_stderr")]
    return None


def metric_units(metrics: Mapping[str, Any], declared: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """Every metric's unit (:func:`metric_unit`), for ``summary.json``."""
    return {name: metric_unit(name, declared) for name in metrics}


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
    """Write ``report.md`` and ``plots/*.png`` for a run summary (see :func:`srt.eval.runner.run_eval`):
    every benchmark gets its own plot (accuracies, or its percent metrics, with standard-error bars)
    and its histograms; the win rates of all benchmarks share one chart."""
    output_dir = Path(output_dir)
    plot_dir = output_dir / "plots"
    per_bench: dict[str, list[Path]] = {}
    for bench in benchmarks_of(summary):
        paths = plot_accuracy(summary, plot_dir, only=bench) or plot_metrics(summary, bench, plot_dir)
        per_bench[bench] = paths + plot_histograms(summary, plot_dir, only=bench)
    shared = plot_win_rates(summary, plot_dir)
    relative = {b: [p.relative_to(output_dir) for p in ps] for b, ps in per_bench.items()}
    path = output_dir / "report.md"
    text = render_markdown(summary, [p.relative_to(output_dir) for p in shared], per_benchmark_plots=relative)
    path.write_text(text, encoding="utf-8")
    return path


def benchmarks_of(summary: Mapping[str, Any]) -> list[str]:
    """The run's benchmarks in first-seen order."""
    return list(dict.fromkeys(bench for per_bench in summary["results"].values() for bench in per_bench))


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


def format_value(value: Any, unit: str | None, stderr: Any = None) -> str:
    """One cell: percent with one decimal (fractions times 100), counts whole, ``value ± stderr``."""
    if value is None or isinstance(value, (bool, str)) or (isinstance(value, float) and math.isnan(value)):
        return _fmt(value)

    def one(v: float) -> str:
        if unit == FRACTION:
            return f"{100 * v:.1f}"
        if unit == PERCENT or unit in ("characters", "tokens"):
            return f"{v:.1f}"
        if unit == "count" and float(v).is_integer():
            return str(int(v))
        return _fmt(v)

    text = one(value)
    if isinstance(stderr, (int, float)) and not isinstance(stderr, bool) and math.isfinite(stderr):
        text += f" ± {one(stderr)}"
    return text


def as_percent(value: Any, unit: str | None) -> float | None:
    """A rate in percent (a fraction times 100), or None for other units and missing values."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or unit not in (PERCENT, FRACTION):
        return None
    return 100 * value if unit == FRACTION else float(value)


def _units(entry: Mapping[str, Any]) -> dict[str, str | None]:
    return {**metric_units(entry.get("metrics", {})), **(entry.get("units") or {})}


def _error_key(metric: str, metrics: Mapping[str, Any]) -> str | None:
    for key in (ERROR_BARS.get(metric), f"{metric}_stderr"):
        if key and key in metrics:
            return key
    return None


def srt_rate(metrics: Mapping[str, Any], name: str) -> float | None:
    """``srt_parse_rate`` / ``srt_fallback_rate`` (percent), or the plugin's own name for it."""
    for key in (name, *SRT_ALIASES[name]):
        if isinstance(metrics.get(key), (int, float)):
            return float(metrics[key])
    return None


def benchmark_columns(summary: Mapping[str, Any], bench: str, parts: bool = False) -> list[str]:
    """A benchmark's metric columns in first-seen order: standard errors folded into their metric, the
    SRT rates (and the plugins' names for them) left to the last two columns. ``parts``: the
    ``<part>/<metric>`` ones instead (per language), which get a table of their own."""
    columns: list[str] = []
    for per_bench in summary["results"].values():
        metrics = per_bench.get(bench, {}).get("metrics", {})
        folded = {_error_key(m, metrics) for m in metrics}
        for metric in metrics:
            if metric in folded or metric in SRT_RATES or metric in _SRT_HIDDEN or metric in columns:
                continue
            if ("/" in metric) == parts:
                columns.append(metric)
    return columns


def _metric_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(benchmark, metric) pairs in first-seen order (standard errors folded into their metric)."""
    return [(bench, metric) for bench in benchmarks_of(summary) for metric in benchmark_columns(summary, bench)]


def _answer_mode(summary: Mapping[str, Any], model: str, entry: Mapping[str, Any]) -> str:
    mode = (entry.get("meta") or {}).get("answer_mode") or summary.get("models", {}).get(model, {}).get("answer_mode")
    return str(mode or "n/a")


def benchmark_table(summary: Mapping[str, Any], bench: str) -> list[str]:
    """The markdown table of one benchmark: a row per model, a column per metric (its unit in the header)."""
    models = [m for m, per_bench in summary["results"].items() if bench in per_bench]
    columns = benchmark_columns(summary, bench)
    units: dict[str, str | None] = {}
    for model in models:
        for metric, unit in _units(summary["results"][model][bench]).items():
            units.setdefault(metric, unit)
    headers = [f"{c}{_HEADER_UNIT.get(units.get(c) or '', '')}" for c in columns]
    headers += [f"{name} (%)" for name in SRT_RATES]
    lines = [
        "| model | answer mode | " + " | ".join(headers) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in headers) + " |",
    ]
    for model in models:
        entry = summary["results"][model][bench]
        metrics = entry.get("metrics", {})
        entry_units = _units(entry)
        cells = []
        for metric in columns:
            if metric not in metrics:
                cells.append("")
                continue
            error = _error_key(metric, metrics)
            cells.append(format_value(metrics[metric], entry_units.get(metric), metrics.get(error) if error else None))
        for name in SRT_RATES:
            rate = srt_rate(metrics, name)
            cells.append("–" if rate is None else f"{rate:.1f}")
        lines.append(f"| {model} | {_answer_mode(summary, model, entry)} | " + " | ".join(cells) + " |")
    return lines


def parts_table(summary: Mapping[str, Any], bench: str) -> list[str]:
    """``<part>/<metric>`` metrics (e.g. ``en/f1``) as a table of (model, part) rows; empty without any."""
    columns = benchmark_columns(summary, bench, parts=True)
    if not columns:
        return []
    parts = list(dict.fromkeys(c.split("/", 1)[0] for c in columns))
    names = list(dict.fromkeys(c.split("/", 1)[1] for c in columns))
    models = [m for m, per_bench in summary["results"].items() if bench in per_bench]
    units = _units(summary["results"][models[0]][bench])
    headers = [f"{n}{_HEADER_UNIT.get(units.get(f'{parts[0]}/{n}') or metric_unit(n) or '', '')}" for n in names]
    lines = [
        "| model | part | " + " | ".join(headers) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in names) + " |",
    ]
    for model in models:
        entry = summary["results"][model][bench]
        metrics, entry_units = entry.get("metrics", {}), _units(entry)
        for part in parts:
            cells = []
            for name in names:
                key = f"{part}/{name}"
                error = _error_key(key, metrics)
                value = metrics.get(key)
                cells.append(
                    ""
                    if key not in metrics
                    else format_value(value, entry_units.get(key), metrics.get(error) if error else None)
                )
            lines.append(f"| {model} | {part} | " + " | ".join(cells) + " |")
    return lines


GATE_NOTE = (
    "Gated answers (answer mode `gated`): `gate_kept_refinement` / `gate_kept_response`: how often the model's own "
    "re-score of its refinement beat / did not beat its response's score (`gate_unscored`: of the latter, a score "
    "missing or no refinement); `gate_right` / `gate_wrong`: of the problems where exactly one of response and "
    "refinement is right, the gate kept the right one / the wrong one; fixed / broken by refinement count the "
    "kept refinements."
)


def render_markdown(
    summary: dict[str, Any], plots: Sequence[Path] = (), per_benchmark_plots: Mapping[str, Sequence[Path]] | None = None
) -> str:
    lines = [
        "# Evaluation report",
        "",
        "One section per benchmark: a row per model, one unit per column (rates, accuracies and win rates in "
        "percent, lm-eval's fractions too), `value ± s.e.` where the benchmark gives a standard error (win rates: "
        "alpaca_eval's; accuracies: binomial over the samples; lm-eval's own). `srt_parse_rate` / "
        "`srt_fallback_rate`: the share of SRT answers whose output parsed / fell back to the first response "
        "(– : no SRT answers, e.g. plain mode). Exact values: summary.json (its `units` name each one's unit).",
    ]
    for bench in benchmarks_of(summary):
        lines += ["", f"## {bench}", "", *benchmark_table(summary, bench)]
        if any("gate_kept_refinement" in per.get(bench, {}).get("metrics", {}) for per in summary["results"].values()):
            lines += ["", GATE_NOTE]
        by_part = parts_table(summary, bench)
        if by_part:
            lines += ["", f"Per part (language) of {bench}:", "", *by_part]
        bench_plots = (per_benchmark_plots or {}).get(bench) or []
        if bench_plots:
            lines += ["", *(f"![{p.stem}]({p.as_posix()})" for p in bench_plots)]

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


def plot_accuracy(summary: dict[str, Any], plot_dir: Path, only: str | None = None) -> list[Path]:
    """Per benchmark with per-sample correctness (``only``: that one): each model's accuracy (and its
    first SRT response's) with standard-error bars."""
    paths = []
    benchmarks = list(
        dict.fromkeys(
            bench
            for per_bench in summary["results"].values()
            for bench, entry in per_bench.items()
            if "accuracy" in entry.get("metrics", {}) and only in (None, bench)
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


def plot_metrics(summary: dict[str, Any], bench: str, plot_dir: Path) -> list[Path]:
    """One benchmark's percent metrics (lm-eval's fractions as percent) per model, grouped bars with
    standard-error bars, as ``plots/<bench>__metrics.png``; nothing when it has no percent metric."""
    models = [m for m, per_bench in summary["results"].items() if bench in per_bench]
    series = []
    for metric in benchmark_columns(summary, bench):
        values, errors = [], []
        for model in models:
            entry = summary["results"][model][bench]
            metrics, unit = entry.get("metrics", {}), _units(entry).get(metric)
            error = _error_key(metric, metrics)
            values.append(as_percent(metrics.get(metric), unit))
            errors.append(as_percent(metrics.get(error), unit) if error else None)
        if any(v is not None for v in values) and all(
            metric_unit(metric, summary["results"][m][bench].get("units")) in (PERCENT, FRACTION) for m in models
        ):
            series.append((metric, values, errors))
    if not series:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(series) * max(1, len(models)) ** 0.5 + 2), 3.6))
    width = 0.8 / len(models)
    for k, model in enumerate(models):
        xs = [i + (k - (len(models) - 1) / 2) * width for i in range(len(series))]
        values = [v[k] if v[k] is not None else math.nan for _, v, _ in series]
        errors = [e[k] or 0.0 for _, _, e in series]
        ax.bar(xs, values, width, yerr=errors, capsize=3, label=model)
    ax.set_xticks(range(len(series)))
    ax.set_xticklabels([m for m, _, _ in series], fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.set_title(f"{bench} (± s.e. where given)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plot_dir.mkdir(parents=True, exist_ok=True)
    path = plot_dir / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', bench)}__metrics.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def plot_histograms(summary: dict[str, Any], plot_dir: Path, only: str | None = None) -> list[Path]:
    """One histogram per (benchmark, plot series), models overlaid (e.g. self scores 1..10);
    ``only``: that benchmark's."""
    found: dict[tuple[str, str], dict[str, list[float]]] = {}
    for model, per_bench in summary["results"].items():
        for bench, entry in per_bench.items():
            if only not in (None, bench):
                continue
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
