"""srt-eval with 1 worker against 2 workers (``srt-eval run --workers N``), side by side, with a roofline.

    python benchmarks/eval_workers.py                       # two copies of SmolLM2-135M-Instruct, plain answers
    python benchmarks/eval_workers.py --model stage1=runs/demo/stage1/model:srt \\
        --model refinement_only=runs/demo/baselines/refinement_only/stage1/model:plain   # the demo's models
    python benchmarks/eval_workers.py --from-json benchmarks/RESULTS-eval-workers.json  # re-render only

Writes benchmarks/RESULTS-eval-workers.md and .json. Each arm is one ``srt-eval run`` process on the
demo's word-problem benchmarks (``--sets``: held-out, out-of-template; ``--limit`` problems each, greedy,
one batch per benchmark, float32), in a fresh output folder with a cold generation cache; the arms
alternate (1 then 2 workers, reversed every other repeat). The parent process has torch's default
thread count (one per core), so 1 worker decodes on all cores and 2 workers on half of them each.

Roofline: the machine's FP32 matmul peak (``[2048, 2048] @ [2048, 2048]``; the median of
``benchmarks/run.py``'s ``run_roofline``, 7 tries; the committed results files were measured before it
was shared, as the median of 9 tries in a process per thread count) with 1 thread and with all
threads, measured at the start and the end. The work of an arm is
``2 * linear weights * (prompt tokens + generated tokens)`` FLOPs summed over every answer (the
tokenizer counts both; attention and the prefill's shared system prompt are left out, so it is a
lower bound); achieved GFLOP/s is that over the arm's wall time, and its fraction of the all-thread
peak is the MFU. Answers are compared between the arms sample by sample. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT / "configs" / "data"
BASE = "smollm2-135m-instruct"


def peaks() -> dict:
    """FP32 matmul GFLOP/s with 1 thread and with all threads (the medians of ``benchmarks/run.py``'s
    roofline, the project's one measurement of it), in a fresh process so that this driver stays light."""
    code = f"import json, sys; sys.path.insert(0, {str(HERE)!r}); from run import run_roofline; "
    code += "print(json.dumps(run_roofline(quick=False)))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    roofline = json.loads(run.stdout.strip().splitlines()[-1])
    cores = roofline["threads_all"]
    return {str(t): round(roofline[f"matmul_gflops_{t}t_median"], 1) for t in sorted({1, cores})}


def eval_config(
    models: list[tuple[str, str, str]], limit: int, max_new_tokens: dict[str, int], sets: list[str]
) -> dict:
    benchmarks = {
        "heldout": ("word_problems", {"data": str(DATA / "word_problems_heldout.jsonl"), "limit": limit}),
        "out_of_template": (
            "out_of_template",
            {"plugin": "word_problems", "data": str(DATA / "word_problems_out_of_template.jsonl"), "limit": limit},
        ),
    }
    return {
        "seed": 0,
        "models": [
            {
                "name": name,
                "path": path,
                "answer_mode": mode,
                "dtype": "float32",
                "batch_size": limit,
                "sampling": {"temperature": 0.0, "max_new_tokens": max_new_tokens[mode]},
            }
            for name, path, mode in models
        ],
        "benchmarks": dict(benchmarks[s] for s in sets),
    }


def run_arm(config: dict, workers: int, work: Path) -> dict:
    out = work / f"workers{workers}"
    shutil.rmtree(out, ignore_errors=True)
    path = work / f"eval{workers}.json"
    path.write_text(json.dumps({**config, "output_dir": str(out)}))  # YAML reads JSON
    srt_eval = Path(sys.executable).with_name("srt-eval")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "SRT_LOG_LEVEL": "WARNING"}
    start = time.perf_counter()
    subprocess.run(
        [str(srt_eval), "run", "--config", str(path), "--workers", str(workers)],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    samples = {
        f"{model}/{bench}": [
            json.loads(line) for line in (out / model / bench / "samples.jsonl").read_text().splitlines()
        ]
        for model, per in summary["results"].items()
        for bench in per
    }
    elapsed = {f"{m}/{b}": e["elapsed_s"] for m, per in summary["results"].items() for b, e in per.items()}
    return {"workers": workers, "wall_s": round(wall, 1), "elapsed_s": elapsed, "samples": samples}


def work_flops(samples: dict, models: list[tuple[str, str, str]]) -> tuple[float, int]:
    """2 x linear weights x (prompt + generated tokens) over every answer; returns (FLOPs, generated tokens)."""
    import torch

    from srt.generation import Generator
    from srt.models import load_model_and_tokenizer, resolve_model_path

    model, tokenizer = load_model_and_tokenizer(resolve_model_path(models[0][1]), dtype="float32", device="cpu")
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    chat = Generator.__new__(Generator)
    chat.tokenizer = tokenizer
    flops, generated = 0.0, 0
    for rows in samples.values():
        prompts = chat.render_chat([r["instruction"] for r in rows])
        for prompt, row in zip(prompts, rows):
            # what the model wrote: the answer, after the response and the feedback in srt mode
            parts = ("answer",) if row.get("mode") == "plain" else ("response", "feedback", "answer")
            text = "\n".join(str(row.get(k) or "") for k in parts)
            new = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            generated += new
            flops += 2 * linear * (len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) + new)
    return flops, generated


def run_all(args) -> dict:
    models = args.model or [("a", BASE, "plain"), ("b", BASE, "plain")]
    tokens = {"plain": args.plain_tokens, "srt": args.srt_tokens, "gated": args.srt_tokens}
    config = eval_config(models, args.limit, tokens, args.sets.split(","))
    result = {
        "load_start": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "peaks_start": peaks(),
        "models": [{"name": n, "path": p, "mode": m} for n, p, m in models],
        "limit": args.limit,
        "sets": args.sets.split(","),
        "max_new_tokens": {"plain": args.plain_tokens, "srt": args.srt_tokens},
        "repeats": [],
    }
    with tempfile.TemporaryDirectory(prefix="srt-eval-workers-") as tmp:
        for k in range(args.repeats):
            order = (1, 2) if k % 2 == 0 else (2, 1)
            arms = {w: run_arm(config, w, Path(tmp)) for w in order}
            identical = sum(
                a == b for key in arms[1]["samples"] for a, b in zip(arms[1]["samples"][key], arms[2]["samples"][key])
            )
            total = sum(len(v) for v in arms[1]["samples"].values())
            flops, generated = work_flops(arms[1]["samples"], models)
            result["repeats"].append(
                {
                    "order": list(order),
                    "wall_s": {str(w): arms[w]["wall_s"] for w in (1, 2)},
                    "elapsed_s": {str(w): arms[w]["elapsed_s"] for w in (1, 2)},
                    "identical_samples": identical,
                    "samples": total,
                    "work_gflop": round(flops / 1e9, 1),
                    "generated_tokens": generated,
                }
            )
            print(json.dumps(result["repeats"][-1]), flush=True)
    result["peaks_end"] = peaks()
    result["load_end"] = list(os.getloadavg())
    return result


def render(r: dict) -> str:
    cores = str(r["cpu_count"])
    peak = min(r["peaks_start"][cores], r["peaks_end"][cores])
    lines = [
        "# srt-eval: 1 worker vs 2 workers (`srt-eval run --workers N`)",
        "",
        "Written by `benchmarks/eval_workers.py` (method and FLOP formula in its docstring).",
        "",
        f"- Load average at start: {', '.join(f'{x:.1f}' for x in r['load_start'])}; at end: "
        f"{', '.join(f'{x:.1f}' for x in r['load_end'])}",
        f"- FP32 matmul peak, start / end: 1 thread {r['peaks_start']['1']} / {r['peaks_end']['1']} GFLOP/s; "
        f"{cores} threads {r['peaks_start'][cores]} / {r['peaks_end'][cores]} GFLOP/s",
        "- Models: "
        + ", ".join(f"`{m['name']}` = {m['path']} ({m['mode']})" for m in r["models"])
        + f"; word problems ({' and '.join(r['sets'])}), {r['limit']} each, one batch per benchmark, greedy, "
        f"max_new_tokens {r['max_new_tokens']['plain']} plain / {r['max_new_tokens']['srt']} srt",
        "",
        "| repeat (order) | 1 worker s | 2 workers s | speed-up | work GFLOP | GFLOP/s 1 / 2 workers | MFU 1 / 2 "
        f"workers (of {peak} GFLOP/s) | identical answers |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k, rep in enumerate(r["repeats"]):
        one, two = rep["wall_s"]["1"], rep["wall_s"]["2"]
        g1, g2 = rep["work_gflop"] / one, rep["work_gflop"] / two
        lines.append(
            f"| {k + 1} ({' then '.join(str(w) for w in rep['order'])}) | {one} | {two} | **{one / two:.2f}x** | "
            f"{rep['work_gflop']} | {g1:.1f} / {g2:.1f} | {100 * g1 / peak:.0f}% / {100 * g2 / peak:.0f}% | "
            f"{rep['identical_samples']}/{rep['samples']} |"
        )
    lines += ["", "Per model and benchmark (seconds inside srt-eval, load and scoring included):", ""]
    lines += ["| pair | " + " | ".join(f"repeat {k + 1}: 1 / 2 workers" for k in range(len(r["repeats"]))) + " |"]
    lines += ["| --- |" + " --- |" * len(r["repeats"])]
    for pair in r["repeats"][0]["elapsed_s"]["1"]:
        cells = [f"{rep['elapsed_s']['1'][pair]} / {rep['elapsed_s']['2'][pair]}" for rep in r["repeats"]]
        lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "With 2 workers each model decodes on one thread, so its own pairs take longer than with 1 worker on",
        "both threads; the two models overlap, and the run ends sooner when one thread's decoding step is more",
        "than half as fast as two threads' (small matrices: the threads' split and sync cost is a large share).",
        "",
    ]
    return "\n".join(lines)


def _model(value: str) -> tuple[str, str, str]:
    name, _, rest = value.partition("=")
    path, _, mode = rest.rpartition(":") if ":" in rest else (rest, "", "plain")
    return name, path, mode or "plain"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        action="append",
        type=_model,
        metavar="NAME=PATH[:MODE]",
        help="a model (repeatable; default two copies of SmolLM2-135M-Instruct, plain)",
    )
    parser.add_argument("--limit", type=int, default=48, help="problems per benchmark (the demo's 48)")
    parser.add_argument("--plain-tokens", type=int, default=160, help="max_new_tokens of plain answers (the demo's)")
    parser.add_argument("--srt-tokens", type=int, default=320, help="max_new_tokens of SRT turns (the demo's)")
    parser.add_argument("--sets", default="heldout,out_of_template", help="heldout, out_of_template or both")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS-eval-workers.md")
    parser.add_argument("--from-json", type=Path, help="re-render the markdown from an earlier run's JSON")
    args = parser.parse_args()
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        results = run_all(args)
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    args.out.write_text(render(results))
    print(render(results))


if __name__ == "__main__":
    main()
