"""The GPU check, in one time-bounded run: GPU-only tests, srt vs TRL on a ~1B Llama, generation, MFU.

    benchmarks/gpu/run.sh            # on the GPU machine (installs the wheels, then runs this)
    benchmarks/gpu/run.sh --dry      # the same on CPU with a tiny model, in well under 2 minutes

This file is the orchestrator (stdlib only, never touches CUDA itself) and, with ``--job``, the worker
it starts in fresh processes. Phases, each bounded by the time left before ``--deadline``:

1. setup: machine, versions, measured bf16 matmul rate and copy bandwidth; the model (a Llama built
   from a config with random weights: Llama-3.2-1B shapes, srt.tiny's tokenizer, embedding rows
   padded to Llama 3's 128256-token vocabulary) and seeded synthetic data at 1-2K tokens.
2. tests: ``tests/test_gpu.py`` (FSDP1 and FSDP2 on one device, LoRA adapter export under both,
   bf16-mixed, attention kernels) and the GPU test of ``tests/test_distributed.py``.
3. SFT tokens/s and DPO pairs/s, srt vs TRL, bf16 autocast over fp32 weights on both sides (Lightning
   ``bf16-mixed``, TRL ``bf16=True``), full fine-tuning, AdamW, gradient clipping 1.0, no gradient
   checkpointing; SDPA, then FlashAttention 2 where ``flash_attn`` is installed. One configuration per
   fresh process (``--isolation process``, the default): peak GPU memory is that process's
   ``torch.cuda.max_memory_allocated`` (weights + gradients + optimizer + activations).
4. generation tokens/s: ``srt.generation.Generator`` and plain ``model.generate``, bf16, batch 1/8/32.

Results go to ``benchmarks/RESULTS-gpu.md`` / ``.json`` (``--dry``: ``benchmarks/RESULTS-gpu-dry.*``,
git-ignored) and, when ``$OUT`` is set, to ``$OUT`` too with the logs. They are rewritten after every
phase, so a run stopped half-way still leaves what it measured.

MFU. Model FLOPs of a training step, per sequence of T real tokens (padding counts for nothing):
``6 * N * T + 6 * n_layers * d_attn * T**2``, where N is the number of parameters in matrix
multiplications (every projection of every layer and the LM head; not the embedding lookup, norms or
RoPE; with tied embeddings the shared matrix counts once, as the LM head) and the second term is causal
self-attention (QK^T and AV, 2 * 2 * T^2 * d_attn per layer forward with half the pairs masked, times 3
for forward + backward; d_attn = heads * head_dim). Packed rows count each example separately (no
attention across examples is useful). DPO counts the policy's forward + backward over chosen and
rejected; TRL's default reference model adds a forward (``2 * N * T + 2 * n_layers * d_attn * T**2``)
in the step, which is counted for it; srt's precomputed reference runs once before training and is
timed separately, not counted. LM-head projections that a trainer skips (srt scores only labelled
positions) still count: MFU is work by the model's definition over wall time over the chip's peak.
Peak: the chip's dense bf16 rate from its datasheet, looked up by device name (H100/H200 SXM 989.4
TFLOP/s), and the measured bf16 matmul rate (8192^3) beside it; in the dry run the CPU's measured
matmul rate.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

SELF = str(Path(__file__).resolve())
HERE = Path(SELF).parent
ROOT = HERE.parent.parent
RESERVE_S = 15  # kept back at the end for writing the results

# Dense bf16 tensor-core peaks (datasheets, without sparsity), by device-name substring, first match wins.
DENSE_BF16_TFLOPS = [
    ("GH200", 989.4),
    ("H200", 989.4),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("H800", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
    ("A10G", 70.0),
]
HBM_TB_S = [("GH200", 4.9), ("H200", 4.8), ("H100 NVL", 3.9), ("H100 PCIe", 2.0), ("H100", 3.35), ("A100", 2.0)]

PRESETS = {
    # Llama-3.2-1B shapes (hidden 2048, 16 layers, 32 heads / 8 KV heads, MLP 8192, tied embeddings, vocab
    # 128256): 1.24B parameters. 1-2K-token examples, 4 per step.
    "gpu": dict(
        model=dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            tie_word_embeddings=True,
            max_position_embeddings=4096,
        ),
        model_desc="Llama (Llama-3.2-1B shapes: hidden 2048, 16 layers, 32 heads / 8 KV, MLP 8192, tied embeddings, "
        "vocab 128256 with srt.tiny's 768-token tokenizer), random weights",
        max_length=2048,
        fill=0.6,
        batch_size=4,
        warmup=3,
        steps=20,
        gen_batches=[1, 8, 32],
        gen_tokens=128,
        gen_dtype="bfloat16",
        threads=None,
        isolation="process",
    ),
    # The dry run: the same code on CPU with a tiny Llama (srt.tiny's tokenizer and sizes).
    "dry": dict(
        model=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=2048,
            tie_word_embeddings=True,
            max_position_embeddings=1024,
        ),
        model_desc="tiny Llama (srt.tiny sizes: hidden 64, 2 layers, 4 heads / 2 KV, MLP 128, tied embeddings, vocab "
        "2048 with srt.tiny's 768-token tokenizer), random weights",
        max_length=256,
        fill=0.6,
        batch_size=2,
        warmup=1,
        steps=2,
        gen_batches=[1, 4],
        gen_tokens=8,
        gen_dtype="float32",
        threads=1,
        isolation="shared",
    ),
}
SFT_CONFIGS = ["srt", "trl", "srt_packed", "trl_packed"]  # srt and TRL alternate
DPO_CONFIGS = ["srt", "trl", "srt_packed", "trl_precompute"]
NAMES = {
    ("sft", "srt"): "srt SFTModule (padded, length-grouped)",
    ("sft", "srt_packed"): "srt SFTModule (packed)",
    ("sft", "trl"): "TRL SFTTrainer (padded)",
    ("sft", "trl_packed"): "TRL SFTTrainer (packing=True, padding-free)",
    ("dpo", "srt"): "srt DPOModule, precomputed reference",
    ("dpo", "srt_packed"): "srt DPOModule, precomputed reference, packed",
    ("dpo", "trl"): "TRL DPOTrainer, default reference model",
    ("dpo", "trl_precompute"): "TRL DPOTrainer, precompute_ref_log_probs=True",
}


# =============================================================================================
# srt's public pieces, imported in this one place (the module names may change).


def srt_api():
    from types import SimpleNamespace

    import srt
    from srt.config import DPOConfig, SFTConfig
    from srt.data import DPODataModule, SFTDataModule
    from srt.generation import Generator, SamplingConfig
    from srt.models import load_tokenizer
    from srt.tiny import build_tiny_tokenizer
    from srt.training.dpo import DPOModule
    from srt.training.reference import compute_reference_logps
    from srt.training.sft import SFTModule

    return SimpleNamespace(
        srt=srt,
        SFTConfig=SFTConfig,
        DPOConfig=DPOConfig,
        SFTDataModule=SFTDataModule,
        DPODataModule=DPODataModule,
        DPOModule=DPOModule,
        compute_reference_logps=compute_reference_logps,
        Generator=Generator,
        SamplingConfig=SamplingConfig,
        load_tokenizer=load_tokenizer,
        SFTModule=SFTModule,
        build_tiny_tokenizer=build_tiny_tokenizer,
    )


def cpu_bench():
    """benchmarks/run.py (the CPU benchmark): its synthetic data builder and batch counters are reused."""
    spec = importlib.util.spec_from_file_location("srt_cpu_bench", HERE.parent / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# =============================================================================================
# FLOPs and batch accounting


def matmul_params(c: dict) -> int:
    """Parameters in matrix multiplications: per layer q, k, v, o and the gated MLP; plus the LM head."""
    head_dim = c["hidden_size"] // c["num_attention_heads"]
    d, q, kv = c["hidden_size"], c["num_attention_heads"] * head_dim, c["num_key_value_heads"] * head_dim
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * c["intermediate_size"]
    return c["num_hidden_layers"] * per_layer + c["vocab_size"] * d


def step_flops(c: dict, lengths: list[int], reference_forward: bool = False) -> float:
    """Model FLOPs of one training step over sequences of these real lengths (module docstring)."""
    n = matmul_params(c)
    d_attn = c["num_attention_heads"] * (c["hidden_size"] // c["num_attention_heads"])
    tokens, squares = sum(lengths), sum(t * t for t in lengths)
    flops = 6 * n * tokens + 6 * c["num_hidden_layers"] * d_attn * squares
    if reference_forward:
        flops += 2 * n * tokens + 2 * c["num_hidden_layers"] * d_attn * squares
    return float(flops)


def sequence_lengths(batch, pad_id: int) -> list[int]:
    """Real lengths of the sequences in an srt or TRL, SFT or DPO, padded or packed batch."""
    import torch

    if "sequence_ids" in batch:  # srt packed DPO: -1 on padding
        ids = batch["sequence_ids"]
        return [int(x) for x in torch.bincount(ids[ids >= 0].flatten()) if x > 0]
    if "chosen_attention_mask" in batch:  # srt padded DPO
        return [int(x) for side in ("chosen", "rejected") for x in batch[f"{side}_attention_mask"].sum(1)]
    if "attention_mask" in batch:  # padded: srt/TRL SFT, TRL DPO (chosen and rejected rows)
        return [int(x) for x in batch["attention_mask"].sum(1) if x > 0]
    lengths = []  # packed rows without a mask: position_ids restart at every example
    for row_pos, row_ids in zip(batch["position_ids"], batch["input_ids"]):
        starts = (row_pos == 0).nonzero().flatten().tolist() + [len(row_pos)]
        for a, b in zip(starts, starts[1:]):
            if not bool((row_ids[a:b] == pad_id).all()):  # srt's pad run at a row's end is its own block
                lengths.append(b - a)
    return lengths


def batch_record(batch, units: float, pad_id: int, c: dict, reference_forward: bool) -> dict:
    lengths = sequence_lengths(batch, pad_id)
    positions = sum(
        int(batch[k].numel()) for k in ("input_ids", "chosen_input_ids", "rejected_input_ids") if k in batch
    )
    if "chosen_input_ids" in batch:  # srt padded DPO: both sides padded to one width in the forward
        width = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
        positions = 2 * len(batch["chosen_input_ids"]) * width
    return {
        "units": float(units),
        "tokens": sum(lengths),
        "positions": positions,
        "flops": step_flops(c, lengths, reference_forward),
    }


def step_stats(ends: list[float], records: list[dict], warmup: int) -> dict:
    durations = [b - a for a, b in zip(ends[warmup - 1 :], ends[warmup:])]
    if not durations:
        raise RuntimeError(f"no timed steps ({len(ends)} steps ran, {warmup} warm-up)")
    timed = records[warmup : warmup + len(durations)]
    total = sum(durations)
    return {
        "steps": len(durations),
        "median_step_s": statistics.median(durations),
        "seconds": total,
        "units_per_s": sum(r["units"] for r in timed) / total,
        "tokens_per_s": sum(r["tokens"] for r in timed) / total,
        "units_per_step": statistics.mean(r["units"] for r in timed),
        "tokens_per_step": statistics.mean(r["tokens"] for r in timed),
        "padding": 1 - sum(r["tokens"] for r in timed) / max(1, sum(r["positions"] for r in timed)),
        "model_flops_per_s": sum(r["flops"] for r in timed) / total,
    }


# =============================================================================================
# Worker side


class Memory:
    """Peak memory of one configuration: CUDA allocator peak (GPU), or RSS (CPU: the process's peak in
    a fresh process; sampled every 10 ms in a shared one, indicative only)."""

    def __init__(self, device: str, shared: bool):
        import torch

        self.torch, self.device, self.shared = torch, device, shared
        self._peak_rss, self._stop = 0.0, threading.Event()

    def __enter__(self):
        if self.device == "cuda":
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()
            self.base = self.torch.cuda.memory_allocated()
        else:
            self.base = current_rss_mb()
            if self.shared:
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        return False

    def _sample(self):
        while not self._stop.wait(0.01):
            self._peak_rss = max(self._peak_rss, current_rss_mb())

    def result(self) -> dict:
        if self.device == "cuda":
            t = self.torch.cuda
            return {
                "peak_gb": (t.max_memory_allocated() - self.base) / 2**30,
                "reserved_gb": t.max_memory_reserved() / 2**30,
                "memory": "cuda max_memory_allocated",
            }
        if self.shared:
            self._stop.set()
            self._thread.join()
            self._peak_rss = max(self._peak_rss, current_rss_mb())
            return {
                "peak_gb": max(0.0, self._peak_rss - self.base) / 1024,
                "memory": "RSS rise, sampled (shared process)",
            }
        return {"peak_gb": max(0.0, peak_rss_mb() - self.base) / 1024, "memory": "peak RSS - RSS after imports"}


def current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def lightning_timer(device: str, units_of_batch, pad_id: int, c: dict):
    import lightning as L

    class StepTimer(L.Callback):
        def __init__(self):
            self.ends, self.records = [], []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.records.append(batch_record(batch, units_of_batch(batch), pad_id, c, False))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            synchronize(device)  # the step's kernels are done: wall time between step ends is the step
            self.ends.append(time.perf_counter())

    return StepTimer()


def hf_timer(device: str):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(device)
            self.ends.append(time.perf_counter())

    return StepTimer()


def counting_collator(collate, records: list, units_of_batch, pad_id: int, c: dict, reference_forward: bool):
    def wrapped(examples):
        batch = collate(examples)
        records.append(batch_record(batch, units_of_batch(batch), pad_id, c, reference_forward))
        return batch

    return wrapped


def sft_units(batch) -> int:
    return (
        sum(sequence_lengths(batch, -1))
        if "sequence_ids" in batch
        else int(
            batch["attention_mask"].sum()
            if "attention_mask" in batch
            else batch.get("num_tokens", batch["input_ids"].numel())
        )
    )


def lightning_trainer(ctx: dict, steps: int, callback):
    import lightning as L

    return L.Trainer(
        accelerator="gpu" if ctx["device"] == "cuda" else "cpu",
        devices=1,
        precision=ctx["precision"],
        max_steps=steps,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[callback],
    )


def trl_args(config_cls, ctx: dict, out_dir: str, **extra):
    s = ctx["settings"]
    return config_cls(
        output_dir=out_dir,
        per_device_train_batch_size=s["batch_size"],
        max_length=s["max_length"],
        max_steps=s["warmup"] + s["steps"],
        gradient_checkpointing=False,
        bf16=ctx["precision"] == "bf16-mixed",
        use_cpu=ctx["device"] == "cpu",
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        **extra,
    )


def load_policy(ctx: dict, attn: str):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"device_map": "cuda"} if ctx["device"] == "cuda" else {}
    return AutoModelForCausalLM.from_pretrained(ctx["model"], dtype=torch.float32, attn_implementation=attn, **kwargs)


def run_sft(cfg: dict, ctx: dict) -> dict:
    api = srt_api()
    s, c, data = ctx["settings"], ctx["config"], ctx["data"]
    tokenizer = api.load_tokenizer(ctx["model"])
    pad_id = tokenizer.pad_token_id
    total = s["warmup"] + s["steps"]
    model = load_policy(ctx, cfg["attn"])
    if cfg["config"].startswith("srt"):
        sft = api.SFTConfig(
            micro_batch_size=s["batch_size"], max_length=s["max_length"], packing=cfg["config"] == "srt_packed"
        )
        datamodule = api.SFTDataModule(tokenizer, sft, train_files=data["sft"])
        module = api.SFTModule(model, tokenizer, config=sft)  # optim.lr 1e-5 (the default)
        timer = lightning_timer(ctx["device"], sft_units, pad_id, c)
        trainer = lightning_trainer(ctx, total, timer)
        trainer.fit(module, datamodule=datamodule)
        optimizer = type(trainer.optimizers[0]).__name__ + describe_adamw(trainer.optimizers[0])
        return {**step_stats(timer.ends, timer.records, s["warmup"]), "optimizer": optimizer}

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    cpu = cpu_bench()
    with tempfile.TemporaryDirectory() as out_dir:
        args = trl_args(
            SFTConfig,
            ctx,
            out_dir,
            learning_rate=1e-5,
            completion_only_loss=True,
            packing=cfg["config"] == "trl_packed",
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(cpu.read_jsonl(data["trl_sft"])),
            processing_class=tokenizer,
        )
        timer, records = hf_timer(ctx["device"]), []
        trainer.add_callback(timer)
        trainer.data_collator = counting_collator(trainer.data_collator, records, sft_units, pad_id, c, False)
        trainer.train()
        optimizer = getattr(args.optim, "value", str(args.optim))
    return {**step_stats(timer.ends, records, s["warmup"]), "optimizer": optimizer}


def describe_adamw(optimizer) -> str:
    group = optimizer.param_groups[0]
    flags = [k for k in ("fused", "foreach") if group.get(k)]
    return f" ({', '.join(flags)})" if flags else " (torch default: foreach on CUDA)"


def run_dpo(cfg: dict, ctx: dict) -> dict:
    import torch

    api = srt_api()
    s, c, data = ctx["settings"], ctx["config"], ctx["data"]
    tokenizer = api.load_tokenizer(ctx["model"])
    pad_id = tokenizer.pad_token_id
    total = s["warmup"] + s["steps"]
    model = load_policy(ctx, cfg["attn"])

    def pairs_of(batch):
        return len(batch["chosen_input_ids"] if "chosen_input_ids" in batch else batch["ids"])

    if cfg["config"].startswith("srt"):
        # completion_end="eos": the same sequences as TRL's (its completions end with the end of turn).
        dpo = api.DPOConfig(
            micro_batch_size=s["batch_size"],
            max_length=s["max_length"],
            packing=cfg["config"] == "srt_packed",
            completion_end="eos",
        )
        datamodule = api.DPODataModule(tokenizer, dpo, train_files=data["dpo"])
        datamodule.setup("fit")
        synchronize(ctx["device"])
        start = time.perf_counter()
        # The starting policy is the reference: its log-probs once, under the same autocast as training.
        with torch.autocast(ctx["device"], dtype=torch.bfloat16, enabled=ctx["precision"] == "bf16-mixed"):
            reference = api.compute_reference_logps(model, datamodule.predict_dataloader())
        synchronize(ctx["device"])
        precompute_s = time.perf_counter() - start
        datamodule.set_reference_logps(reference)
        module = api.DPOModule(model, tokenizer, config=dpo)  # beta 0.01, optim.lr 5e-7, reference precomputed
        timer = lightning_timer(ctx["device"], pairs_of, pad_id, c)
        trainer = lightning_trainer(ctx, total, timer)
        trainer.fit(module, datamodule=datamodule)
        optimizer = type(trainer.optimizers[0]).__name__ + describe_adamw(trainer.optimizers[0])
        return {
            **step_stats(timer.ends, timer.records, s["warmup"]),
            "precompute_s": precompute_s,
            "optimizer": optimizer,
        }

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    cpu = cpu_bench()
    precompute = cfg["config"] == "trl_precompute"
    with tempfile.TemporaryDirectory() as out_dir:
        args = trl_args(DPOConfig, ctx, out_dir, learning_rate=5e-7, beta=0.01, precompute_ref_log_probs=precompute)
        synchronize(ctx["device"])
        start = time.perf_counter()
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(cpu.read_jsonl(data["trl_dpo"])),
            processing_class=tokenizer,
        )
        setup_s = time.perf_counter() - start  # TRL's trainer construction, its reference precompute included
        timer, records = hf_timer(ctx["device"]), []
        trainer.add_callback(timer)
        trainer.data_collator = counting_collator(
            trainer.data_collator,
            records,
            lambda b: len(b["input_ids"]) // 2,
            pad_id,
            c,
            reference_forward=not precompute,
        )
        trainer.train()
        optimizer = getattr(args.optim, "value", str(args.optim))
    out = {**step_stats(timer.ends, records, s["warmup"]), "optimizer": optimizer}
    if precompute:
        out["precompute_s"] = setup_s
    return out


def run_generate(cfg: dict, ctx: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    api = srt_api()
    s = ctx["settings"]
    cpu = cpu_bench()
    tokenizer = api.load_tokenizer(ctx["model"])
    dtype = getattr(torch, s["gen_dtype"])
    model = AutoModelForCausalLM.from_pretrained(ctx["model"], dtype=dtype, attn_implementation=cfg["attn"]).to(
        ctx["device"]
    )
    model.eval()
    instructions = [r["instruction"] for r in cpu.read_jsonl(ctx["data"]["sft"])]
    out = {"dtype": s["gen_dtype"], "max_new_tokens": s["gen_tokens"]}
    for batch_size in s["gen_batches"]:
        prompts = (instructions * (1 + 2 * batch_size // len(instructions)))[: max(batch_size, 2)]
        generator = api.Generator(model, tokenizer, batch_size=batch_size)
        # Sampling at temperature 1 (srt's seeded per-row sampler) so a random model rarely stops early.
        sampling = api.SamplingConfig(temperature=1.0, max_new_tokens=s["gen_tokens"], seed=0)
        generator.chat(prompts[:batch_size], api.SamplingConfig(max_new_tokens=4), desc="warm-up")
        synchronize(ctx["device"])
        start = time.perf_counter()
        results = generator.chat(prompts, sampling, desc=f"srt generate bs={batch_size}")
        synchronize(ctx["device"])
        srt_s = time.perf_counter() - start
        srt_tokens = sum(r.num_new_tokens for r in results)
        # The same batches through plain transformers generate (multinomial sampling, T=1, no top-k).
        rendered = generator.render_chat(prompts, None, None)
        hf_tokens, hf_s = 0, 0.0
        old_side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            for i in range(0, len(rendered), batch_size):
                enc = tokenizer(
                    rendered[i : i + batch_size], add_special_tokens=False, return_tensors="pt", padding=True
                ).to(ctx["device"])
                synchronize(ctx["device"])
                t0 = time.perf_counter()
                with torch.inference_mode():
                    seq = model.generate(
                        **enc,
                        max_new_tokens=s["gen_tokens"],
                        do_sample=True,
                        temperature=1.0,
                        top_k=0,
                        top_p=1.0,
                        pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=generator.eos_token_ids,
                    )
                synchronize(ctx["device"])
                hf_s += time.perf_counter() - t0
                new = seq[:, enc["input_ids"].shape[1] :]
                hf_tokens += int((new != tokenizer.pad_token_id).sum())
        finally:
            tokenizer.padding_side = old_side
        out[f"batch_{batch_size}"] = {
            "prompts": len(prompts),
            "srt_tokens_per_s": srt_tokens / srt_s,
            "srt_new_tokens": srt_tokens,
            "hf_tokens_per_s": hf_tokens / hf_s,
            "hf_new_tokens": hf_tokens,
            "prompt_tokens_mean": statistics.mean(r.num_prompt_tokens for r in results),
        }
    return out


def measure_peaks(device: str) -> dict:
    """Measured bf16 (and on CPU fp32) matmul rate and device copy bandwidth: the ceilings MFU is read against."""
    import torch

    out = {}
    if device == "cuda":
        n, reps = 8192, 10
        a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            a @ b
        end.record()
        torch.cuda.synchronize()
        out["matmul_tflops"] = 2 * n**3 * reps / (start.elapsed_time(end) / 1e3) / 1e12
        out["matmul"] = f"bf16 {n}x{n}x{n}, mean of {reps} after 3 warm-ups, random normal data"
        src = torch.empty(2**30, dtype=torch.uint8, device="cuda").random_(0, 255)
        dst = torch.empty_like(src)
        for _ in range(2):
            dst.copy_(src)
        start.record()
        for _ in range(reps):
            dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        out["copy_tb_s"] = 2 * src.numel() * reps / (start.elapsed_time(end) / 1e3) / 1e12  # read + write
        del a, b, src, dst
        torch.cuda.empty_cache()
        return out
    # CPU (the dry run): fp32, the CPU's fast path (bf16 matmuls without AVX512-BF16/AMX are ~50x slower).
    n, reps = 1024, 5
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    out["matmul_tflops"] = 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12
    out["matmul"] = f"CPU fp32 {n}x{n}x{n} with {torch.get_num_threads()} thread(s), mean of {reps}"
    return out


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in (
        "torch",
        "transformers",
        "lightning",
        "peft",
        "accelerate",
        "trl",
        "datasets",
        "pydantic",
        "tokenizers",
        "safetensors",
        "huggingface-hub",
        "flash-attn",
        "pytest",
        "numpy",
    ):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def job_setup(job: dict) -> dict:
    """Machine, versions, peaks; builds the model and the data into job['work']."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    api = srt_api()
    work, s = Path(job["work"]), job["settings"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if job["require_gpu"] and device != "cuda":
        raise RuntimeError("no CUDA device visible to torch (run.sh --dry runs the CPU version)")
    info = {
        "device": device,
        "versions": versions(),
        "srt_file": api.srt.__file__,
        "srt_version": api.srt.__version__,
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_memory_gb=props.total_memory / 2**30,
            capability=f"{props.major}.{props.minor}",
            sm_count=props.multi_processor_count,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            bf16=torch.cuda.is_bf16_supported(),
            driver=nvidia_smi("driver_version"),
            clocks=nvidia_smi("clocks.sm,clocks.max.sm"),
        )
        info["datasheet_tflops"] = next((v for k, v in DENSE_BF16_TFLOPS if k in info["gpu"]), None)
        info["datasheet_hbm_tb_s"] = next((v for k, v in HBM_TB_S if k in info["gpu"]), None)
    info["flash_attn"] = flash_attention_available()
    info.update(measure_peaks(device))

    tokenizer = api.build_tiny_tokenizer()
    tokenizer.model_max_length = max(4096, 2 * s["max_length"])  # the benchmark's lengths, not srt.tiny's 1024
    config = LlamaConfig(
        **{**job["model"], "vocab_size": max(job["model"]["vocab_size"], len(tokenizer))},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds, not a minute on the CPU
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model_dir = work / "model"
    model.to(torch.bfloat16).save_pretrained(model_dir)  # bf16 on disk; every run loads it as fp32 (exact)
    tokenizer.save_pretrained(model_dir)
    info["parameters"] = sum(p.numel() for p in model.parameters())
    del model
    cfg = config.to_dict()
    info["model_config"] = {
        k: cfg[k]
        for k in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "vocab_size",
        )
    }
    info["matmul_parameters"] = matmul_params(info["model_config"])
    records = s["records"] or (s["warmup"] + s["steps"]) * s["batch_size"]
    data_dir = work / "data"
    data_dir.mkdir(exist_ok=True)
    info["data"] = cpu_bench().build_data(str(model_dir), {**s, "records": records}, data_dir)
    info["model"] = str(model_dir)
    return info


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def nvidia_smi(query: str) -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def flash_attention_available() -> bool:
    try:
        from transformers.utils import is_flash_attn_2_available

        return bool(is_flash_attn_2_available())
    except Exception:  # noqa: BLE001 (any import problem means: not usable)
        return False


def job_configs(job: dict) -> None:
    """Run the listed configurations one after another in this process; one JSON line each to job['results']."""
    import torch

    ctx = job["ctx"]
    if ctx["settings"].get("threads"):
        torch.set_num_threads(ctx["settings"]["threads"])
    # The same imports before every configuration, srt's or TRL's, so that (on CPU) RSS baselines compare.
    import lightning  # noqa: F401
    import transformers  # noqa: F401

    srt_api()
    try:
        import datasets  # noqa: F401
        import trl  # noqa: F401
    except Exception:  # noqa: BLE001 (TRL's configurations then fail on their own; srt's still run)
        traceback.print_exc()
    for cfg in job["configs"]:
        torch.manual_seed(0)
        start = time.perf_counter()
        record = {**cfg}
        try:
            with Memory(ctx["device"], shared=len(job["configs"]) > 1) as memory:
                run = {"sft": run_sft, "dpo": run_dpo, "generate": run_generate}[cfg["kind"]]
                record.update(run(cfg, ctx))
                record.update(memory.result())
            record["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 (recorded; the other configurations still run)
            record.update(
                status="failed", error=f"{type(exc).__name__}: {exc}"[:2000], traceback=traceback.format_exc()[-4000:]
            )
            print(record["traceback"], file=sys.stderr, flush=True)
        record["wall_s"] = time.perf_counter() - start
        with open(job["results"], "a") as f:
            f.write(json.dumps(record) + "\n")
        gc.collect()
        if ctx["device"] == "cuda":
            torch.cuda.empty_cache()


def make_ctx(setup: dict, settings: dict) -> dict:
    return {
        "device": setup["device"],
        "model": setup["model"],
        "data": setup["data"],
        "config": setup["model_config"],
        "settings": settings,
        "precision": settings["precision"],
    }


def worker(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    if job["job"] in ("setup", "all"):
        info = job_setup(job)
        Path(job["out"]).write_text(json.dumps(info, indent=1))
        if job["job"] == "all":  # shared isolation: the benchmarks follow in this process
            configs = [c for c in job["configs"] if c["attn"] != "flash_attention_2" or info["flash_attn"]]
            job_configs({"configs": configs, "ctx": make_ctx(info, job["settings"]), "results": job["results"]})
    else:
        job_configs(job)


# =============================================================================================
# Orchestrator


class Run:
    def __init__(self, args):
        self.args = args
        self.dry = args.dry
        self.preset = dict(PRESETS["dry" if args.dry else "gpu"])
        if args.isolation:
            self.preset["isolation"] = args.isolation
        self.start = time.time()
        self.deadline = args.deadline or self.start + (args.budget or (120 if args.dry else 480))
        self.work = Path(tempfile.mkdtemp(prefix="srt-gpu-check-"))
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
        self.results_md = args.results or ROOT / "benchmarks" / ("RESULTS-gpu-dry.md" if args.dry else "RESULTS-gpu.md")
        self.phases: list[dict] = []
        self.state: dict = {
            "mode": "dry (CPU, tiny model)" if args.dry else "GPU",
            "settings": self.settings(),
            "setup": None,
            "tests": None,
            "sft": [],
            "dpo": [],
            "generate": None,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.start)),
            "budget_s": round(self.deadline - self.start),
        }

    def settings(self) -> dict:
        p = self.preset
        return {
            k: p[k]
            for k in (
                "max_length",
                "fill",
                "batch_size",
                "warmup",
                "steps",
                "gen_batches",
                "gen_tokens",
                "gen_dtype",
                "threads",
                "isolation",
            )
        } | {"records": None, "precision": "bf16-mixed", "model_desc": p["model_desc"]}

    def left(self) -> float:
        return self.deadline - time.time()

    def log(self, msg: str) -> None:
        print(f"[{time.time() - self.start:6.1f}s | {self.left():5.0f}s left] {msg}", flush=True)

    # -- running things -------------------------------------------------------------------
    def subprocess(
        self, name: str, cmd: list[str], timeout: float, env: dict | None = None
    ) -> tuple[int | None, float]:
        log_path = self.logs / f"{name}.log"
        start = time.time()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
            try:
                rc = proc.wait(timeout=max(1.0, timeout))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                rc = None
        return rc, time.time() - start

    def python(self) -> list[str]:
        # -P: the checkout is not put on sys.path, so `import srt` finds the installed srt (the wheel on the GPU).
        return [sys.executable, "-P"]

    def phase(self, name: str, estimate: float, cap: float, fn) -> None:
        left = self.left() - RESERVE_S
        if left < estimate:
            self.phases.append(
                {
                    "phase": name,
                    "status": "skipped",
                    "seconds": 0.0,
                    "note": f"budget: {left:.0f} s left, needs about {estimate:.0f} s",
                }
            )
            self.log(f"{name}: SKIPPED (budget: {left:.0f} s left, needs ~{estimate:.0f} s)")
            return
        self.log(f"{name}: start (estimate {estimate:.0f} s, cap {min(cap, left):.0f} s)")
        start = time.time()
        try:
            status, note = fn(min(cap, left))
        except Exception as exc:  # noqa: BLE001 (a phase's failure is recorded; the next phase still runs)
            status, note = "failed", f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        seconds = time.time() - start
        self.phases.append({"phase": name, "status": status, "seconds": seconds, "note": note})
        self.log(f"{name}: {status} in {seconds:.1f} s{' (' + note + ')' if note else ''}")
        self.write()

    # -- phases ---------------------------------------------------------------------------
    def setup_job(self, kind: str) -> dict:
        return {
            "job": kind,
            "work": str(self.work),
            "settings": self.state["settings"],
            "model": self.preset["model"],
            "require_gpu": not self.dry,
            "out": str(self.work / "setup.json"),
        }

    def setup_note(self) -> str:
        setup = self.state["setup"]
        return (
            f"{setup['device']}: {setup.get('gpu', setup['cpu'])}; {setup['parameters'] / 1e6:.1f}M parameters; "
            f"{setup['data']['summary']}"
        )

    def do_setup(self, timeout: float):
        path = self.work / "job-setup.json"
        path.write_text(json.dumps(self.setup_job("setup")))
        rc, _ = self.subprocess("setup", [*self.python(), SELF, "--job", str(path)], timeout, self.thread_env())
        if rc != 0:
            raise RuntimeError(f"setup {'timed out' if rc is None else f'exited {rc}'}:\n{self.tail('setup')}")
        self.state["setup"] = json.loads((self.work / "setup.json").read_text())
        return "ok", self.setup_note()

    def do_all(self, timeout: float):
        """Shared isolation (the dry run): setup and every benchmark in one process (one set of imports)."""
        specs = [
            {"kind": kind, "config": c, "attn": a}
            for a in ("sdpa", "flash_attention_2")
            for kind, configs in (("sft", SFT_CONFIGS), ("dpo", DPO_CONFIGS))
            for c in configs
        ]
        specs.insert(len(SFT_CONFIGS) + len(DPO_CONFIGS), {"kind": "generate", "config": "srt", "attn": "sdpa"})
        results = self.work / "results-all.jsonl"
        path = self.work / "job-all.json"
        path.write_text(json.dumps({**self.setup_job("all"), "configs": specs, "results": str(results)}))
        rc, seconds = self.subprocess(
            "benchmarks", [*self.python(), SELF, "--job", str(path)], timeout, self.thread_env()
        )
        if (self.work / "setup.json").exists():
            self.state["setup"] = json.loads((self.work / "setup.json").read_text())
        if self.state["setup"] is None:
            raise RuntimeError(f"setup {'timed out' if rc is None else f'exited {rc}'}:\n{self.tail('benchmarks')}")
        done = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
        expected = [c for c in specs if c["attn"] == "sdpa" or self.state["setup"]["flash_attn"]]
        for cfg in expected[len(done) :]:
            done.append(
                {
                    **cfg,
                    "status": "timed out" if rc is None else f"crashed (exit {rc})",
                    "error": self.tail("benchmarks", 12),
                    "wall_s": seconds,
                }
            )
        for record in done:
            if record["kind"] == "generate":
                self.state["generate"] = record
            else:
                self.state[record["kind"]].append(record)
        bad = [f"{r['kind']} {r['config']}/{r['attn']}: {r['status']}" for r in done if r["status"] != "ok"]
        return ("ok" if not bad and rc == 0 else "failed"), "; ".join(bad) or self.setup_note()

    def thread_env(self) -> dict:
        t = self.preset.get("threads")
        return {"OMP_NUM_THREADS": str(t), "MKL_NUM_THREADS": str(t)} if t else {}

    def do_tests(self, timeout: float):
        junit = self.logs / "pytest.xml"
        cmd = [
            *self.python(),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-rA",
            f"--junitxml={junit}",
            "tests/test_gpu.py",
            "tests/test_distributed.py::test_fsdp_gpu_lora_training_and_adapter_export",
        ]
        env = {**self.thread_env(), "SRT_GPU_DRY": "1" if self.dry else "0"}
        rc, seconds = self.subprocess("pytest", cmd, timeout, env)
        self.state["tests"] = parse_junit(junit) if junit.exists() else {"cases": []}
        self.state["tests"].update(exit_code=rc, seconds=seconds)
        counts = self.state["tests"].get("counts", {})
        note = ", ".join(f"{v} {k}" for k, v in counts.items()) or self.tail("pytest", 3)
        if rc is None:
            return "timed out", note
        return ("ok" if rc == 0 else "failed"), note

    def configs_job(self, name: str, configs: list[dict], timeout: float) -> list[dict]:
        results = self.work / f"results-{name}.jsonl"
        path = self.work / f"job-{name}.json"
        path.write_text(
            json.dumps(
                {
                    "job": "configs",
                    "configs": configs,
                    "results": str(results),
                    "ctx": make_ctx(self.state["setup"], self.state["settings"]),
                }
            )
        )
        rc, seconds = self.subprocess(name, [*self.python(), SELF, "--job", str(path)], timeout, self.thread_env())
        done = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
        for cfg in configs[len(done) :]:  # killed (time-out) or crashed before writing these
            done.append(
                {
                    **cfg,
                    "status": "timed out" if rc is None else f"crashed (exit {rc})",
                    "error": self.tail(name, 12),
                    "wall_s": seconds,
                }
            )
        for record in done:
            record["process_s"] = seconds / len(done)  # the worker process's wall time, imports included
        return done

    def run_training(self, kind: str, configs: list[str], attns: list[str]) -> None:
        specs = [{"kind": kind, "config": c, "attn": a} for a in attns for c in configs]
        estimate = {"sft": 45.0, "dpo": 55.0}[kind]
        for spec in specs:
            name = f"{kind}-{spec['config']}-{spec['attn']}"
            self.phase(
                name,
                estimate,
                240,
                lambda timeout, spec=spec, name=name: self._collect(kind, self.configs_job(name, [spec], timeout)),
            )
            ran = [r["process_s"] for r in self.state[kind] if r.get("status") == "ok"]
            if ran:  # the next estimate: the slowest of these so far, with a margin
                estimate = 1.15 * max(ran)

    def _collect(self, kind: str, records: list[dict]):
        self.state[kind].extend(records)
        bad = [f"{r['config']}/{r['attn']}: {r['status']}" for r in records if r["status"] != "ok"]
        return ("ok" if not bad else "failed"), "; ".join(bad)

    def do_generate(self, timeout: float):
        records = self.configs_job("generate", [{"kind": "generate", "config": "srt", "attn": "sdpa"}], timeout)
        self.state["generate"] = records[0]
        return ("ok" if records[0]["status"] == "ok" else "failed"), records[0].get("error", "")[:300]

    def tail(self, name: str, lines: int = 25) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # -- the whole run --------------------------------------------------------------------
    def main(self) -> int:
        self.log(f"{self.state['mode']} run, budget {self.deadline - self.start:.0f} s, work dir {self.work}")
        if self.preset["isolation"] == "shared":
            self.phase("setup + SFT + DPO + generation (one process)", 30, 240, self.do_all)
            if self.state["setup"] is not None:
                self.phase("tests", 30, 180, self.do_tests)
        else:
            self.phase("setup", 45, 150, self.do_setup)
            if self.state["setup"] is not None:
                self.phase("tests", 60, 180, self.do_tests)
                self.run_training("sft", SFT_CONFIGS, ["sdpa"])
                self.run_training("dpo", DPO_CONFIGS, ["sdpa"])
                self.phase("generation", 45, 150, self.do_generate)
                if self.state["setup"]["flash_attn"]:
                    self.run_training("sft", SFT_CONFIGS, ["flash_attention_2"])
                    self.run_training("dpo", DPO_CONFIGS, ["flash_attention_2"])
        self.write(final=True)
        if self.state["setup"] is None:
            return 1
        # On the GPU a phase skipped for time is the budget doing its job; in the dry run (CI) nothing may be skipped.
        failed = [p for p in self.phases if p["status"] not in (("ok",) if self.dry else ("ok", "skipped"))]
        self.log(
            f"done in {time.time() - self.start:.0f} s; wrote {self.results_md}"
            + (f"; FAILED phases: {', '.join(p['phase'] for p in failed)}" if failed else "")
        )
        return 1 if failed else 0

    def write(self, final: bool = False) -> None:
        self.state["phases"] = self.phases
        self.state["wall_s"] = time.time() - self.start
        self.state["complete"] = final
        json_path = self.results_md.with_suffix(".json")
        json_path.write_text(json.dumps(self.state, indent=1, default=str))
        self.results_md.write_text(render(self.state))
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.results_md, self.out_dir / self.results_md.name)
            shutil.copy(json_path, self.out_dir / json_path.name)
            with tarfile.open(self.out_dir / "logs.tar.gz", "w:gz") as tar:
                tar.add(self.logs, arcname="logs")
        if final:  # the logs stay in benchmarks/gpu/logs/ (git-ignored); the model and data go
            keep = ROOT / "benchmarks" / "gpu" / "logs"
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(self.logs, keep)
            shutil.rmtree(self.work, ignore_errors=True)


def parse_junit(path: Path) -> dict:
    import xml.etree.ElementTree as ET

    cases, counts = [], {}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (
                    (child.get("message") or child.text or "").strip().splitlines()[0][:200]
                    if (child.get("message") or child.text)
                    else ""
                )
        counts[outcome] = counts.get(outcome, 0) + 1
        cases.append(
            {
                "name": f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}",
                "outcome": outcome,
                "seconds": float(case.get("time", 0)),
                "message": message,
            }
        )
    return {"cases": cases, "counts": counts}


# =============================================================================================
# Markdown


def fmt(x, spec: str = ".2f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def render(st: dict) -> str:
    setup, s = st.get("setup") or {}, st["settings"]
    v = setup.get("versions", {})
    on_gpu = setup.get("device") == "cuda"
    peak_sheet = setup.get("datasheet_tflops") if on_gpu else None
    peak_meas = setup.get("matmul_tflops")
    lines = [
        "# GPU check: srt vs TRL" + (" (dry run on CPU)" if not on_gpu and setup else ""),
        "",
        f"Written by `benchmarks/gpu/run.sh{' --dry' if 'dry' in st['mode'] else ''}` (`benchmarks/gpu/bench_gpu.py`), "
        f"started {st['started']}; {'complete' if st.get('complete') else 'INCOMPLETE (still running or stopped)'}: "
        f"{st['wall_s']:.0f} s of the {st['budget_s']} s budget.",
    ]
    if not on_gpu:
        lines += [
            "",
            "This is the dry run: the same script on CPU with a tiny model, to show the check works before "
            "a GPU is there. Its numbers measure nothing about srt or TRL on a GPU.",
        ]
    lines += ["", "## Machine", ""]
    if on_gpu:
        lines += [
            f"- GPU: {setup['gpu']}, {setup['gpu_memory_gb']:.0f} GiB, compute capability {setup['capability']}, "
            f"{setup['sm_count']} SMs; driver {setup.get('driver')}; CUDA {setup['cuda']}, cuDNN {setup['cudnn']}; "
            f"SM clock now / max: {setup.get('clocks')}"
        ]
    if setup:
        lines += [
            f"- CPU: {setup['cpu']}, {setup['cpu_cores']} cores (torch threads {setup['torch_threads']})",
            f"- Python {v.get('python')}; torch {v.get('torch')}, transformers {v.get('transformers')}, lightning "
            f"{v.get('lightning')}, peft {v.get('peft')}, accelerate {v.get('accelerate')}, trl {v.get('trl')}, "
            f"datasets {v.get('datasets')}, pydantic {v.get('pydantic')}, flash-attn {v.get('flash-attn') or 'not installed'}",
            f"- srt {setup['srt_version']} imported from `{setup['srt_file']}`",
            "- Peak used for MFU: "
            + (f"datasheet dense bf16 {fmt(peak_sheet, '.1f')} TFLOP/s ({setup['gpu']}); " if on_gpu else "")
            + f"measured {fmt(peak_meas, '.3f' if not on_gpu else '.0f')} TFLOP/s ({setup.get('matmul')})"
            + (f"; device copy {setup['copy_tb_s']:.2f} TB/s (read + write)" if on_gpu else ""),
        ]
    lines += ["", "## Phases", "", "| phase | status | seconds | note |", "| --- | --- | --- | --- |"]
    for p in st.get("phases", []):
        lines.append(f"| {p['phase']} | {p['status']} | {p['seconds']:.1f} | {md_cell(p.get('note', ''))} |")

    tests = st.get("tests")
    if tests:
        counts = ", ".join(f"{n} {k}" for k, n in tests.get("counts", {}).items())
        lines += [
            "",
            "## GPU-only tests",
            "",
            f"`pytest tests/test_gpu.py` + the GPU test of `tests/test_distributed.py`: "
            f"{counts or 'no result'} (exit {tests.get('exit_code')}, {tests.get('seconds', 0):.0f} s).",
            "",
            "| test | outcome | seconds | message |",
            "| --- | --- | --- | --- |",
        ]
        for c in tests.get("cases", []):
            lines.append(f"| `{c['name']}` | {c['outcome']} | {c['seconds']:.1f} | {md_cell(c['message'])} |")

    if setup:
        lines += [
            "",
            "## Setup",
            "",
            f"- Model: {s['model_desc']}; {setup['parameters'] / 1e6:.1f}M parameters, "
            f"{setup['matmul_parameters'] / 1e6:.1f}M in matrix multiplications (N).",
            f"- Data: {setup['data']['summary']} (seeded synthetic, lognormal lengths, typical example about "
            f"{s['fill']:.0%} of max length {s['max_length']}); srt and TRL get the same rendered texts.",
            f"- Training: {s['precision']} (autocast bf16 over fp32 weights; TRL `bf16=True`), full fine-tuning, AdamW, "
            f"gradient clipping 1.0, no gradient checkpointing; batch size {s['batch_size']} (packed: rows of "
            f"{s['max_length']} tokens), {s['warmup']} warm-up + {s['steps']} timed steps, one run per configuration "
            + (
                "in a fresh process."
                if s["isolation"] == "process"
                else "(all in one shared process: memory figures are indicative)."
            ),
            "- tokens/s: real (non-pad) tokens, prompt included, per second of wall time between step ends (CUDA "
            "synchronized at each step end). padding: share of computed positions that were padding.",
            "- Model FLOP/s and MFU: `6 N T + 6 L d_attn T^2` per sequence of T real tokens (causal attention), TRL's "
            "default reference adds its forward `2 N T + 2 L d_attn T^2`; see the docstring of `bench_gpu.py`.",
            "- Peak memory: "
            + (
                "`torch.cuda.max_memory_allocated` of the configuration's process (weights + "
                "gradients + optimizer + activations)."
                if on_gpu
                else "CPU RSS (see the method)."
            ),
        ]
    for kind, unit in (("sft", "tokens/s"), ("dpo", "pairs/s")):
        rows = st.get(kind) or []
        if not rows:
            continue
        head = (
            ["configuration", "attention", unit]
            + (["tokens/s"] if kind == "dpo" else [])
            + ["median step s", "tokens/step", "padding", "peak GB", "model TFLOP/s"]
            + (["MFU (datasheet peak)", "MFU (measured matmul)"] if on_gpu else ["MFU (measured CPU matmul)"])
            + ["optimizer", "status"]
        )
        lines += ["", f"## {kind.upper()}", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for r in rows:
            name = NAMES.get((kind, r["config"]), r["config"])
            if "precompute_s" in r:
                what = (
                    "trainer setup incl. reference precompute"
                    if r["config"].startswith("trl")
                    else "reference precompute"
                )
                name += f" ({what} {r['precompute_s']:.1f} s, not in {unit})"
            if r["status"] != "ok":
                lines.append(
                    f"| {name} | {r['attn']} |"
                    + " - |" * (len(head) - 3)
                    + f" {r['status']}: {md_cell(r.get('error', ''))[:300]} |"
                )
                continue
            tflops = r["model_flops_per_s"] / 1e12
            cells = (
                [name, r["attn"], f"{r['units_per_s']:.{0 if kind == 'sft' else 2}f}"]
                + ([f"{r['tokens_per_s']:.0f}"] if kind == "dpo" else [])
                + [
                    f"{r['median_step_s']:.3f}",
                    f"{r['tokens_per_step']:.0f}",
                    f"{r['padding']:.0%}",
                    f"{r['peak_gb']:.2f}",
                    f"{tflops:.{1 if on_gpu else 4}f}",
                ]
                + ([pct(tflops, peak_sheet), pct(tflops, peak_meas)] if on_gpu else [pct(tflops, peak_meas)])
                + [r.get("optimizer", ""), "ok"]
            )
            lines.append("| " + " | ".join(cells) + " |")
    ratio_lines = ratios(st)
    if ratio_lines:
        lines += [
            "",
            "## Ratios (srt / TRL)",
            "",
            "| comparison | attention | speed | peak memory |",
            "| --- | --- | --- | --- |",
            *ratio_lines,
        ]
    gen = st.get("generate")
    if gen:
        lines += ["", "## Generation", ""]
        if gen["status"] != "ok":
            lines.append(f"{gen['status']}: {md_cell(gen.get('error', ''))}")
        else:
            bw = setup.get("copy_tb_s") if on_gpu else None
            weight_bytes = setup["parameters"] * (2 if gen["dtype"] == "bfloat16" else 4)
            lines += [
                f"{gen['dtype']}, sdpa, sampling at temperature 1, {gen['max_new_tokens']} new tokens per prompt; "
                "`srt.generation.Generator` (seeded per-row sampler, left padding) against plain "
                "`model.generate(do_sample=True)` on the same batches. Roofline: each decoding step reads the weights "
                "once, so batch b cannot beat b x bandwidth / weight bytes (KV-cache reads ignored)"
                + (f"; measured copy bandwidth {bw:.2f} TB/s, weights {weight_bytes / 1e9:.2f} GB." if bw else "."),
                "",
                "| batch | prompts | srt tokens/s | transformers tokens/s | srt / transformers | srt vs roofline | peak GB |",
                "| --- | --- | --- | --- | --- | --- | --- |",
            ]
            for b in s["gen_batches"]:
                g = gen.get(f"batch_{b}")
                if not g:
                    continue
                roof = b * bw * 1e12 / weight_bytes if bw else None
                lines.append(
                    f"| {b} | {g['prompts']} | {g['srt_tokens_per_s']:.0f} | {g['hf_tokens_per_s']:.0f} | "
                    f"{g['srt_tokens_per_s'] / g['hf_tokens_per_s']:.2f} | {pct(g['srt_tokens_per_s'], roof)} | "
                    f"{gen['peak_gb']:.2f} |"
                )
    if setup and not setup.get("flash_attn"):
        lines += [
            "",
            "FlashAttention 2 (`flash_attn`) is not installed here, so only SDPA was measured (PyTorch's SDPA "
            "picks its own fused kernel: flash when there is no mask, memory-efficient with one).",
        ]
    return "\n".join(lines) + "\n"


def ratios(st: dict) -> list[str]:
    def pick(kind, config, attn):
        return next(
            (r for r in st.get(kind) or [] if r["config"] == config and r["attn"] == attn and r["status"] == "ok"), None
        )

    out = []
    pairs = [
        ("sft", "srt", "trl", "SFT: srt padded / TRL padded"),
        ("sft", "srt_packed", "trl", "SFT: srt packed / TRL padded"),
        ("sft", "srt_packed", "trl_packed", "SFT: srt packed / TRL packed"),
        ("dpo", "srt", "trl", "DPO: srt precomputed / TRL default reference"),
        ("dpo", "srt", "trl_precompute", "DPO: srt precomputed / TRL precompute_ref_log_probs"),
        ("dpo", "srt_packed", "trl", "DPO: srt precomputed packed / TRL default reference"),
    ]
    attns = sorted({r["attn"] for kind in ("sft", "dpo") for r in st.get(kind) or []})
    for attn in attns:
        for kind, a, b, label in pairs:
            x, y = pick(kind, a, attn), pick(kind, b, attn)
            if x and y:
                isolated = st["settings"]["isolation"] == "process" and y["peak_gb"] > 0
                memory = f"{x['peak_gb'] / y['peak_gb']:.2f}" if isolated else "- (not isolated: shared process)"
                out.append(f"| {label} | {attn} | {x['units_per_s'] / y['units_per_s']:.2f} | {memory} |")
    return out


def pct(x, peak) -> str:
    return "-" if not peak or x is None else f"{100 * x / peak:.1f}%"


def md_cell(text) -> str:
    return str(text or "").replace("|", "\\|").replace("\n", " ").strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="CPU, tiny model, short runs (what CI runs)")
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds for the whole check (default 480; --dry 120)"
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="absolute end time (epoch seconds; run.sh passes its own start + budget, so the install counts too)",
    )
    parser.add_argument(
        "--isolation",
        choices=["process", "shared"],
        default=None,
        help="one fresh process per configuration (GPU default) or all in one (dry default)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="results markdown (default benchmarks/RESULTS-gpu.md; --dry: benchmarks/RESULTS-gpu-dry.md)",
    )
    parser.add_argument(
        "--from-json", type=Path, default=None, help="re-render a results .json as markdown, no measuring"
    )
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        worker(args.job)
        return 0
    if args.from_json:
        out = args.results or args.from_json.with_suffix(".md")
        out.write_text(render(json.loads(args.from_json.read_text())))
        print(f"wrote {out}")
        return 0
    return Run(args).main()


if __name__ == "__main__":
    sys.exit(main())
