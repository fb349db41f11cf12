"""Generation: srt's Generator (srt.decode) against plain transformers ``generate``, with a roofline.

    python benchmarks/generation.py            # full run (25 minutes on the 2-core VM at load 5-8)
    python benchmarks/generation.py --quick    # batch 1, 16, 48, 32 new tokens, three thread runs
    python benchmarks/generation.py --from-json benchmarks/RESULTS-generation.json   # re-render only

Writes benchmarks/RESULTS-generation.md and .json (--quick: RESULTS-generation-quick.*, not committed).

What runs, each part in a fresh worker process (``--worker``), so that thread count and
``OMP_WAIT_POLICY`` (read by OpenMP once, at start) are set before torch starts:

1. **Machine peaks**: FP32 matmul GFLOP/s (``[n, n] @ [n, n]``, median of repeats) and memory read
   bandwidth (sum of a 256 MiB tensor) with 1 thread and with all threads.
2. **srt vs generate** on SmolLM2-135M-Instruct (float32, the demo's model), greedy, the demo's
   stage-1 word problems rendered with the chat template, one batch of ``batch`` prompts at batch
   1, 16, 48, 96 (batch 1: a few prompts one after another). Both sides run in the same process,
   alternating (srt first, then generate; reversed every other batch size). A forward hook on the
   model times every forward call: the calls with one new position per row are the decoding
   steps, the others prefill.
3. **Threads and wait policy**: srt at one batch size with 1 and 2 threads, OpenMP ACTIVE (spin
   waiting, the default of the OpenMP that torch ships) and PASSIVE.

The decode roofline (the same for both sides: the work that produces the tokens they both
produce): for each step k of a batch, with r_k rows still generating and c_k the sum of their
context lengths,
``t_k = max((weight bytes + KV bytes per context token * c_k) / bandwidth,
            (r_k * 2 * linear weights + attention FLOPs per context token * c_k) / matmul peak)``
with linear weights counting the LM head, KV bytes per token ``2 * layers * kv_heads * head_dim *
4`` and attention FLOPs per token ``4 * layers * heads * head_dim``. The fraction of the roofline
is ``sum(t_k) / measured decoding time`` (peak and bandwidth measured at the run's thread count).
Not a test: timings never go in ``tests/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODEL = "smollm2-135m-instruct"
DATA = ROOT / "configs" / "data" / "word_problems_stage1.jsonl"


def settings(quick: bool) -> dict:
    return {
        "batches": [1, 16, 48] if quick else [1, 16, 48, 96],
        "batch1_prompts": 2 if quick else 4,
        "max_new_tokens": 32 if quick else 96,  # the demo samples responses with up to 96 new tokens
        "threads": 1,
        "policy_batch": 8 if quick else 16,
        "policy_new_tokens": 16 if quick else 48,
        "policy_runs": [(1, "ACTIVE"), (2, "ACTIVE"), (2, "PASSIVE")]
        if quick
        else [(1, "ACTIVE"), (1, "PASSIVE"), (2, "ACTIVE"), (2, "PASSIVE")],
    }


# ---------------------------------------------------------------------------------------------
# Workers


def measure_peaks(spec: dict) -> dict:
    import torch

    def median_time(fn, reps):
        fn()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2]

    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    matmul = 2 * n**3 / median_time(lambda: a @ b, 15) / 1e9
    x = torch.randn(64 * 2**20)  # 256 MiB of float32: far beyond the caches
    read = x.numel() * 4 / median_time(lambda: x.sum(), 7) / 1e9
    return {"threads": torch.get_num_threads(), "matmul_gflops": matmul, "read_gbs": read}


def load_model():
    from srt.models import load_model_and_tokenizer, resolve_model_path

    return load_model_and_tokenizer(resolve_model_path(MODEL), dtype="float32", device="cpu")


def prompts_for(tokenizer, n: int) -> list[str]:
    from srt.generation import Generator

    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    chat = Generator.__new__(Generator)  # render_chat only needs the tokenizer
    chat.tokenizer = tokenizer
    return chat.render_chat([r["instruction"] for r in rows[:n]])


class ForwardTimer:
    """Times every forward call of the model: (rows, new positions, seconds)."""

    def __init__(self, model):
        self.calls: list[tuple[int, int, float]] = []
        self._t0 = 0.0
        model.register_forward_pre_hook(self._pre, with_kwargs=True)
        model.register_forward_hook(self._post, with_kwargs=True)

    def _pre(self, module, args, kwargs):
        self._shape = tuple((kwargs.get("input_ids") if "input_ids" in kwargs else args[0]).shape)
        self._t0 = time.perf_counter()

    def _post(self, module, args, kwargs, output):
        self.calls.append((self._shape[0], self._shape[1], time.perf_counter() - self._t0))

    def take(self) -> dict:
        decode = [c for c in self.calls if c[1] == 1]
        prefill = [c for c in self.calls if c[1] > 1]
        self.calls = []
        return {
            "decode_steps": len(decode),
            "decode_s": sum(c[2] for c in decode),
            "decode_row_steps": sum(c[0] for c in decode),
            "prefill_calls": len(prefill),
            "prefill_s": sum(c[2] for c in prefill),
        }


def model_shape(model) -> dict:
    import torch

    text = model.config.get_text_config(decoder=True)
    params = {id(p): p for p in model.parameters()}.values()  # tied embedding counted once
    linear = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)}
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return {
        "weight_bytes": sum(p.numel() * p.element_size() for p in params),
        "linear_weights": sum(linear.values()),
        "kv_bytes_per_token": 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * 4,
        "attn_flops_per_token": 4 * text.num_hidden_layers * text.num_attention_heads * head_dim,
        "params": sum(p.numel() for p in params),
    }


def decode_roofline(shape: dict, groups: list[list[tuple[int, int]]], peak: dict) -> float:
    """Seconds the decoding steps need at the roofline; groups: batches of (prompt tokens, new tokens)."""
    total = 0.0
    bandwidth, flops = peak["read_gbs"] * 1e9, peak["matmul_gflops"] * 1e9
    for rows in groups:
        for k in range(1, max(n for _, n in rows)):  # the first token of each row comes from prefill
            live = [(p, n) for p, n in rows if n > k]
            context = sum(p + k for p, _ in live)
            memory = (shape["weight_bytes"] + shape["kv_bytes_per_token"] * context) / bandwidth
            compute = (len(live) * 2 * shape["linear_weights"] + shape["attn_flops_per_token"] * context) / flops
            total += max(memory, compute)
    return total


def run_compare(spec: dict) -> dict:
    import torch

    from srt.generation import Generator, SamplingConfig

    model, tokenizer = load_model()
    timer = ForwardTimer(model)
    shape = model_shape(model)
    batch = spec["batch"]
    prompts = prompts_for(tokenizer, spec["prompts"])
    sampling = SamplingConfig(max_new_tokens=spec["max_new_tokens"])
    sides = ["srt", "generate"] if spec["srt_first"] else ["generate", "srt"]
    out: dict = {"batch": batch, "prompts": len(prompts), "threads": torch.get_num_threads(), "shape": shape}
    texts = {}
    for side in sides:
        generator = Generator(model, tokenizer, batch_size=batch, decode_loop=side == "srt")
        start = time.perf_counter()
        outputs = generator.generate(prompts, sampling, desc=side)
        wall = time.perf_counter() - start
        texts[side] = [(o.text, o.num_new_tokens, o.finish_reason) for o in outputs]
        lengths = [(o.num_prompt_tokens, o.num_new_tokens) for o in outputs]
        # The Generator's batches: longest prompt first, batch_size at a time.
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i][0])
        groups = [[lengths[i] for i in order[a : a + batch]] for a in range(0, len(order), batch)]
        new = sum(n for _, n in lengths)
        out[side] = {
            "wall_s": wall,
            "new_tokens": new,
            "tok_s": new / wall,
            **timer.take(),
            "useful_row_steps": sum(n - 1 for _, n in lengths),
            "roofline_groups": groups,
        }
        if side == "srt":
            out[side]["stats"] = dict(vars(generator.stats))
    out["identical"] = sum(a == b for a, b in zip(texts["srt"], texts["generate"]))
    return out


def run_policy(spec: dict) -> dict:
    import torch

    from srt.generation import Generator, SamplingConfig

    model, tokenizer = load_model()
    prompts = prompts_for(tokenizer, spec["batch"])
    generator = Generator(model, tokenizer, batch_size=spec["batch"])
    sampling = SamplingConfig(max_new_tokens=spec["max_new_tokens"])
    generator.generate(prompts[:2], SamplingConfig(max_new_tokens=2), desc="warm-up")
    start = time.perf_counter()
    outputs = generator.generate(prompts, sampling, desc="policy")
    wall = time.perf_counter() - start
    new = sum(o.num_new_tokens for o in outputs)
    return {"threads": torch.get_num_threads(), "policy": os.environ.get("OMP_WAIT_POLICY"), "tok_s": new / wall}


def worker(spec: dict) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    result = {"peaks": measure_peaks, "compare": run_compare, "policy": run_policy}[spec["kind"]](spec)
    print("RESULT " + json.dumps(result), flush=True)


def run_worker(spec: dict, policy: str | None = None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1")
    env["OMP_NUM_THREADS"] = str(spec["threads"])
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    else:
        env.pop("OMP_WAIT_POLICY", None)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"worker {spec['kind']} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT ") :])


# ---------------------------------------------------------------------------------------------
# Parent: run everything, write the results


def machine() -> dict:
    import torch
    import transformers

    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return {
        "cpu": names[0] if names else platform.processor(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "omp_wait_policy_parent": os.environ.get("OMP_WAIT_POLICY"),
    }


def run_all(s: dict) -> dict:
    results: dict = {"settings": s, "machine": machine(), "load_start": os.getloadavg()}
    cores = os.cpu_count() or 1
    print("peaks ...", flush=True)
    results["peaks"] = [run_worker({"kind": "peaks", "threads": t}, "PASSIVE") for t in sorted({1, cores})]
    results["compare"] = []
    for i, batch in enumerate(s["batches"]):
        print(f"batch {batch} ...", flush=True)
        spec = {
            "kind": "compare",
            "threads": s["threads"],
            "batch": batch,
            "prompts": s["batch1_prompts"] if batch == 1 else batch,
            "max_new_tokens": s["max_new_tokens"],
            "srt_first": i % 2 == 0,
        }
        results["compare"].append(run_worker(spec))
    results["policy"] = []
    for threads, policy in s["policy_runs"]:
        print(f"threads {threads} {policy} ...", flush=True)
        spec = {
            "kind": "policy",
            "threads": threads,
            "batch": s["policy_batch"],
            "max_new_tokens": s["policy_new_tokens"],
        }
        results["policy"].append(run_worker(spec, policy))
    results["load_end"] = os.getloadavg()
    return results


def render(r: dict) -> str:
    s = r["settings"]
    peaks = {p["threads"]: p for p in r["peaks"]}
    load = lambda xs: ", ".join(f"{x:.1f}" for x in xs)  # noqa: E731
    m = r["machine"]
    lines = [
        "# Generation: srt vs plain `generate` (SmolLM2-135M-Instruct, CPU)",
        "",
        "Written by `benchmarks/generation.py` (method and roofline formula in its docstring).",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}, transformers {m['transformers']}",
        f"- Load average at start: {load(r['load_start'])}; at end: {load(r['load_end'])}",
        "- Measured peaks (FP32 matmul 1024^3, memory read of 256 MiB): "
        + "; ".join(
            f"{t} thread{'s' if t > 1 else ''}: {p['matmul_gflops']:.1f} GFLOP/s, {p['read_gbs']:.1f} GB/s"
            for t, p in sorted(peaks.items())
        ),
        f"- Greedy, max_new_tokens={s['max_new_tokens']}, float32, {s['threads']} thread(s), "
        "OMP_WAIT_POLICY unset (the OpenMP default), one batch of `batch` prompts (batch 1: "
        f"{s['batch1_prompts']} prompts one at a time), the demo's stage-1 word problems.",
        "",
        "| batch | new tokens | srt tok/s | generate tok/s | srt / generate | ms per decoding step, srt / generate "
        "| prefill s, srt / generate | decode roofline, srt / generate | rows computed that produce a token, srt / generate "
        "| greedy identical |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in r["compare"]:
        a, b = c["srt"], c["generate"]
        peak = peaks.get(c["threads"]) or peaks[min(peaks)]
        roof = decode_roofline(c["shape"], a["roofline_groups"], peak)
        step = lambda x: 1e3 * x["decode_s"] / max(x["decode_steps"], 1)  # noqa: E731
        useful = lambda x: x["useful_row_steps"] / max(x["decode_row_steps"], 1)  # noqa: E731
        lines.append(
            f"| {c['batch']} | {a['new_tokens']} | {a['tok_s']:.1f} | {b['tok_s']:.1f} | **{a['tok_s'] / b['tok_s']:.2f}x** "
            f"| {step(a):.0f} / {step(b):.0f} | {a['prefill_s']:.1f} / {b['prefill_s']:.1f} "
            f"| {roof / a['decode_s']:.0%} / {roof / b['decode_s']:.0%} | {useful(a):.0%} / {useful(b):.0%} "
            f"| {c['identical']}/{c['prompts']} |"
        )
    lines += [
        "",
        "Decode roofline: the fraction of the measured decoding time (forward calls with one new position",
        "per row) that the roofline needs for the same tokens; prefill is not in it. The peaks are measured",
        "in the same run, under the same load, so the fraction says how much of what the machine gave",
        "this run the decoding used. srt's decoding steps shrink as rows finish and generate's keep the",
        "whole batch, so srt's mean step is shorter for the same number of steps.",
        "",
        "Where srt's time goes and generate's extra: generate keeps finished rows in every step (the",
        "column 'rows computed that produce a token'), concatenates the whole KV cache at every step,",
        "and prefills every prompt padded to the longest, system prompt included; srt drops finished rows",
        "(never below the BLAS row floor), writes keys and values in place, prefills the chat template's",
        "system prompt once and the rest of the prompts in length-sorted chunks. The ratio grows with the",
        "batch because all three costs do. On a loaded machine single runs move by tens of percent: compare ratios",
        "within one run (srt and generate alternate in one process), not absolute tokens/s across runs.",
        "",
        f"## Threads and OpenMP wait policy (srt, batch {s['policy_batch']}, {s['policy_new_tokens']} new tokens)",
        "",
        "| threads | OMP_WAIT_POLICY | tok/s | vs 1 thread ACTIVE |",
        "| --- | --- | --- | --- |",
    ]
    base = next((p["tok_s"] for p in r["policy"] if p["threads"] == 1 and p["policy"] == "ACTIVE"), None)
    for p in r["policy"]:
        rel = f"{p['tok_s'] / base:.2f}x" if base else ""
        lines.append(f"| {p['threads']} | {p['policy']} | {p['tok_s']:.1f} | {rel} |")
    lines += [
        "",
        "The runs go one after another in this order, each in a fresh process; with one thread OpenMP has",
        "no thread to wait for, so a 1-thread ACTIVE / PASSIVE difference is the load's drift.",
        "srt's command-line entry points set `OMP_WAIT_POLICY=PASSIVE` when it is not set (before torch",
        "starts OpenMP): on a shared machine, threads that spin while they wait take the cores the",
        "other jobs (and the other thread) need.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 1, 16, 48, 32 new tokens, three thread runs")
    parser.add_argument("--batches", help="comma-separated batch sizes (default 1,16,48,96)")
    parser.add_argument("--max-new-tokens", type=int, help="override the new-token budget of the comparison")
    parser.add_argument("--out", type=Path, help="results markdown (the .json goes next to it)")
    parser.add_argument("--from-json", type=Path, help="re-render the markdown from an earlier run's JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        out = args.out or args.from_json.with_suffix(".md")
    else:
        s = settings(args.quick)
        if args.batches:
            s["batches"] = [int(b) for b in args.batches.split(",")]
        if args.max_new_tokens:
            s["max_new_tokens"] = s["policy_new_tokens"] = args.max_new_tokens
        results = run_all(s)
        out = args.out or HERE / ("RESULTS-generation-quick.md" if args.quick else "RESULTS-generation.md")
        out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    out.write_text(render(results))
    print(render(results))


if __name__ == "__main__":
    main()
