"""Training and generation throughput and peak memory of srt, side by side with TRL.

    python benchmarks/run.py                 # full run (a few minutes on 2 CPU cores), writes benchmarks/RESULTS.md
    python benchmarks/run.py --quick         # smoke run (well under a minute of measuring)
    python benchmarks/run.py --model smollm2-135m-instruct   # a real model (srt.models.resolve_model_path)

One run measures, on the same model, data and machine:
  * SFT tokens/s and peak memory: srt (SFTModule + SFTDataModule, padded and packed) vs TRL SFTTrainer
    (prompt-completion data, completion-only loss; padded and packed);
  * DPO pairs/s and peak memory: srt DPOModule with a precomputed reference (one model held; padded and
    packed) vs TRL DPOTrainer (its default reference model, and precompute_ref_log_probs=True);
  * generation tokens/s (srt.generation.Generator, batch 1 and 8);
  * SFT step time over a grid of sequence lengths x batch sizes.

Method: every configuration runs in a fresh subprocess (``--worker``); peak memory is that process's
peak RSS (``getrusage``) minus its RSS after all imports, so it counts model, optimizer, data and
activations. Timed steps follow warm-up steps; a step's time is the wall time between two step ends
(data loading, forward, backward, optimizer, logging: everything a user waits for). srt and TRL
runs alternate (order reversed every repeat) and medians over repeats are reported. Default model: a
4-layer, hidden-256 Llama with srt.tiny's tokenizer (float32, CPU), big enough that the numbers
measure the training code rather than Python overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
SFT_CONFIGS = ["srt", "srt_packed", "trl", "trl_packed"]
DPO_CONFIGS = ["srt", "srt_packed", "trl", "trl_precompute"]
# With --lora: LoRA as the demo trains it (configs/demo.yaml: r 16, alpha 32, no dropout, the *_proj
# modules of the upper half of the layers), srt and TRL (peft_config) side by side.
LORA_CONFIGS = ["srt_lora", "trl_lora"]
# With --memory-rows: srt DPO with dpo.gradient_checkpointing (memory for compute; TRL's own default, turned
# off in every other row on both sides) and with dpo.lm_head_chunk_size (the LM head recomputed in chunks).
MEMORY_CONFIGS = ["srt_gc", "srt_chunked"]
CHUNKED_HEAD = 256  # labelled positions per LM-head chunk: 256 x vocabulary x 4 bytes of logits at a time
DEMO_LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
TARGETS = {"dpo_speed": 1.5, "dpo_memory": 0.7, "sft_speed": 1.2}


# ---------------------------------------------------------------------------------------------
# Settings


def settings(quick: bool) -> dict:
    # records default to (warmup + steps) x batch size: one run is one epoch, so srt and TRL both see
    # every example, the longest included (peak memory depends on the longest batch a run meets).
    if quick:
        return dict(
            repeats=1,
            warmup=1,
            steps=2,
            batch_size=2,
            max_length=128,
            threads=1,
            gen_prompts=4,
            gen_tokens=8,
            grid_lengths=[64, 128],
            grid_batches=[1, 2],
        )
    return dict(
        repeats=3,
        warmup=2,
        steps=10,
        batch_size=4,
        max_length=512,
        threads=1,
        gen_prompts=16,
        gen_tokens=64,
        grid_lengths=[128, 256, 512],
        grid_batches=[1, 4, 8],
    )


# ---------------------------------------------------------------------------------------------
# Model and data (built once by the parent, read by every worker)


def build_default_model(out_dir: Path) -> str:
    """4 layers, hidden 256, srt.tiny's tokenizer and chat template; fixed seed."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from srt.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


WORDS = (
    "the a of to and in is that for it with as was on be by this are from or at which an not have "
    "answer step first then because so total each number more than less equal half twice clips friends "
    "April May sold price cost apples train speed hours minutes distance water tank fills rate paper "
    "explain reason example clearly correct wrong missing detail check result final therefore"
).split()


def words(rng: random.Random, mean: float, sigma: float = 0.5) -> str:
    """A lognormal number of words (long-tailed, like real instructions and answers)."""
    n = max(2, int(rng.lognormvariate(0, sigma) * mean))
    return " ".join(rng.choice(WORDS) for _ in range(n))


def build_data(model_path: str, s: dict, out_dir: Path, seed: int = 0) -> dict:
    """Seeded synthetic feedback records and preference pairs, kept only if they fit max_length
    (so neither side truncates), in srt's format and TRL's (same rendered text)."""
    from srt.config import DPOConfig, SFTConfig
    from srt.data import ChatFormat, build_dpo_examples, build_sft_examples, sft_segments
    from srt.models import load_tokenizer
    from srt.records import Feedback, FeedbackRecord, PreferencePair

    tokenizer = load_tokenizer(model_path)
    chat = ChatFormat(tokenizer)
    rng = random.Random(seed)
    sample = words(random.Random(seed + 1), 200)
    tokens_per_word = len(tokenizer(sample, add_special_tokens=False)["input_ids"]) / len(sample.split())
    # Mean words per part (15 + 30 + 10 + 10 + 40 = 105), scaled so a typical example fills about 40%
    # of max_length (s["fill"], if given: benchmarks/gpu uses 0.6): long-tailed, most examples fit,
    # several fit in one packed row.
    scale = s.get("fill", 0.4) * s["max_length"] / (105 * tokens_per_word)
    records = [
        FeedbackRecord(
            id=f"r{i}",
            instruction=words(rng, 15 * scale),
            response=words(rng, 30 * scale),
            feedback=Feedback(
                weaknesses=words(rng, 10 * scale), suggestions=words(rng, 10 * scale), score=rng.randint(1, 9), raw=""
            ),
            refinement=words(rng, 40 * scale),
            stage=1,
        )
        for i in range(2 * s["records"])
    ]
    sft_config = SFTConfig(max_length=s["max_length"], truncation="drop")
    kept = {ex["id"] for ex in build_sft_examples(tokenizer, records, sft_config, chat=chat)}
    records = [r for r in records if r.id in kept][: s["records"]]
    pairs = [
        PreferencePair(id=f"p{i}", prompt=r.instruction, chosen=r.refinement, rejected=r.response)
        for i, r in enumerate(records)
    ]
    kept = {
        ex["id"]
        for ex in build_dpo_examples(
            tokenizer, pairs, DPOConfig(max_length=s["max_length"], truncation="drop", completion_end="eos"), chat=chat
        )
    }
    pairs = [p for p in pairs if p.id in kept]

    def trl_sft(r):
        segments = sft_segments(r, sft_config, chat)
        return {"prompt": segments[0][1], "completion": "".join(text for _, text, _ in segments[1:])}

    files = {
        "sft": [r.model_dump(mode="json") for r in records],
        "dpo": [p.model_dump(mode="json") for p in pairs],
        "trl_sft": [trl_sft(r) for r in records],
        "trl_dpo": [
            {
                "prompt": chat.prompt(p.prompt),
                "chosen": p.chosen + chat.end_of_turn,
                "rejected": p.rejected + chat.end_of_turn,
            }
            for p in pairs
        ],
    }
    paths = {}
    for name, rows in files.items():
        paths[name] = str(out_dir / f"{name}.jsonl")
        with open(paths[name], "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    sft_lengths = sorted(len(ex["input_ids"]) for ex in build_sft_examples(tokenizer, records, sft_config, chat=chat))
    paths["summary"] = (
        f"{len(records)} SFT records (tokens: median {sft_lengths[len(sft_lengths) // 2]}, "
        f"min {sft_lengths[0]}, max {sft_lengths[-1]}), {len(pairs)} preference pairs"
    )
    return paths


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


# ---------------------------------------------------------------------------------------------
# Worker side: one configuration in a fresh process


def current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def batch_counts(batch) -> tuple[int, int]:
    """(real tokens, positions the model computes incl. padding) of one srt or TRL, SFT or DPO batch."""
    if "chosen_input_ids" in batch:  # srt padded DPO: chosen and rejected padded to one width, stacked
        width = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
        tokens = batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum()
        return int(tokens), 2 * len(batch["chosen_input_ids"]) * width
    positions = batch["input_ids"].numel()
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum()), positions
    if "num_tokens" in batch:  # srt packed
        return int(batch["num_tokens"]), positions
    return positions, positions  # TRL padding-free: one row, no padding


def _segments(position_ids) -> list[int]:
    """Lengths of the runs of one row's restarting position_ids (0, 1, ..., 0, 1, ...)."""
    starts = (position_ids == 0).nonzero().flatten().tolist() + [len(position_ids)]
    return [b - a for a, b in zip(starts, starts[1:])]


def batch_shape(batch, pad_token_id: int | None = None) -> dict:
    """What one srt or TRL, SFT or DPO batch asks of the model, for FLOP counting: ``seqs`` (real
    tokens of each sequence), ``rows`` (width of each row the model computes, padding included; a
    packed row's attention runs over its whole width, dense on CPU), ``labelled`` (positions whose
    next token is trained: the LM-head positions that matter) and ``head_all`` (every position of
    every row, what an LM head that projects everything computes)."""
    if "chosen_input_ids" in batch:  # srt padded DPO: chosen and rejected padded to one width, stacked
        width = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
        seqs = [int(n) for side in ("chosen", "rejected") for n in batch[f"{side}_attention_mask"].sum(1)]
        labelled = sum(int((batch[f"{side}_labels"][:, 1:] != -100).sum()) for side in ("chosen", "rejected"))
        return {"seqs": seqs, "rows": [width] * len(seqs), "labelled": labelled, "head_all": len(seqs) * (width - 1)}
    input_ids = batch["input_ids"]
    rows = [input_ids.shape[1]] * input_ids.shape[0]
    head_all = input_ids.shape[0] * (input_ids.shape[1] - 1)
    if "labels" in batch:
        labelled = int((batch["labels"][:, 1:] != -100).sum())
    else:  # TRL DPO: completion_mask
        labelled = int(batch["completion_mask"][:, 1:].sum())
    if "sequence_ids" in batch:  # srt packed DPO: -1 on padding
        ids = batch["sequence_ids"].flatten()
        seqs = [int(n) for n in ids[ids >= 0].bincount() if n > 0]
    elif "attention_mask" in batch:
        seqs = [int(n) for n in batch["attention_mask"].sum(1)]
    else:  # packed (srt) or padding-free (TRL): restarting position_ids; a row's pad run is a run of pad tokens
        seqs = []
        for row_ids, row_pos, row_labels in zip(input_ids, batch["position_ids"], batch["labels"]):
            start = 0
            for n in _segments(row_pos):
                ids, labels = row_ids[start : start + n], row_labels[start : start + n]
                is_pad = pad_token_id is not None and bool((ids == pad_token_id).all()) and bool((labels == -100).all())
                if not is_pad:
                    seqs.append(n)
                start += n
    return {"seqs": seqs, "rows": rows, "labelled": labelled, "head_all": head_all}


def flop_spec(model) -> dict:
    """The matmul parameters of a causal LM by where they sit (decoder layer i, the LM head), which of
    them train (full fine-tuning, or LoRA adapters), and the attention width: what
    :func:`step_flops` needs. Embedding lookups cost no FLOPs; norms, activations and the softmax are
    left out (a few percent)."""
    import re

    import torch

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layers = config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    head = model.get_output_embeddings()
    per_layer = [{"params": 0, "base": 0, "trained": 0} for _ in range(layers)]
    spec = {"layers": layers, "d_attn": config.num_attention_heads * head_dim, "head": 0, "head_trained": False}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        n = module.weight.numel()
        if module is head or module.weight is head.weight:
            spec["head"], spec["head_trained"] = n, module.weight.requires_grad
            continue
        match = re.search(r"\.layers\.(\d+)\.", name)
        if match is None:
            continue
        layer = per_layer[int(match.group(1))]
        layer["params"] += n
        if "lora_" not in name:  # peft's adapters: lora_A / lora_B
            layer["base"] += n
        if module.weight.requires_grad:
            layer["trained"] += n
    trained = [i for i, layer in enumerate(per_layer) if layer["trained"]]
    embeddings = model.get_input_embeddings().weight.requires_grad
    # The backward runs from the loss down to the lowest layer with a trained parameter (all layers
    # when the embeddings train); below it nothing needs a gradient.
    spec["lowest_trained"] = 0 if embeddings else (trained[0] if trained else layers)
    spec["per_layer"] = per_layer
    spec["trained_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    spec["params"] = sum(p.numel() for p in model.parameters())
    return spec


def step_flops(spec: dict, shape: dict, *, reference_forward: bool = False, head_all_positions: bool = False) -> dict:
    """Model FLOPs of one training step (see FLOP_FORMULA): ``useful`` counts real tokens and the
    labelled LM-head positions only; ``executed`` what the kernels run: padded row widths, a packed
    row's attention over the whole row, and (``head_all_positions``: TRL on CPU) the LM head at every
    position. ``reference_forward``: add a no-grad forward of the base model (no adapters) on the same
    batch, as TRL's default DPO step runs."""
    L, d = spec["layers"], spec["d_attn"]
    low = spec["lowest_trained"]
    layer_params = sum(x["params"] for x in spec["per_layer"])
    base_params = sum(x["base"] for x in spec["per_layer"])
    traversed_params = sum(x["params"] for x in spec["per_layer"][low:])
    trained_params = sum(x["trained"] for x in spec["per_layer"])
    traversed_layers = L - low
    backward_reaches_head = traversed_layers > 0  # the head's input gradient feeds the layers below

    def total(tokens: list[int], attention_lengths: list[int], head_positions: int) -> float:
        t, t2 = sum(tokens), sum(n * n for n in attention_lengths)
        forward = 2 * layer_params * t + 4 * L * d * t2 + 2 * spec["head"] * head_positions
        backward = (
            2 * traversed_params * t  # activation gradients, layers from the lowest trained one up
            + 2 * trained_params * t  # weight gradients, trained matmuls only
            + 8 * traversed_layers * d * t2  # attention backward (dQ, dK, dV, dP): 2x its forward
            + 2 * spec["head"] * head_positions * (int(backward_reaches_head) + int(spec["head_trained"]))
        )
        reference = (
            (2 * base_params * t + 4 * L * d * t2 + 2 * spec["head"] * head_positions) if reference_forward else 0
        )
        return forward + backward + reference

    useful = total(shape["seqs"], shape["seqs"], shape["labelled"])
    executed = total(shape["rows"], shape["rows"], shape["head_all"] if head_all_positions else shape["labelled"])
    return {"useful": useful, "executed": executed}


def forward_flops(spec: dict, shape: dict) -> float:
    """Useful FLOPs of a no-grad forward of the base model (a reference pass) over one batch."""
    base_params = sum(x["base"] for x in spec["per_layer"])
    t, t2 = sum(shape["seqs"]), sum(n * n for n in shape["seqs"])
    return 2 * base_params * t + 4 * spec["layers"] * spec["d_attn"] * t2 + 2 * spec["head"] * shape["labelled"]


FLOP_FORMULA = (
    "Per step, summed over the sequences of the batch (t = a sequence's real tokens; DPO: chosen and rejected "
    "both): forward = 2 x N_layers x t (every matmul weight of the decoder layers, LoRA adapters included) + "
    "4 x L x d x t^2 (attention scores QK^T and the weighted sum AV, 2 x 2 x L x t^2 x d, the full t x t square "
    "as is usual, not the causal half) + 2 x N_head x n_labelled (the LM head at the positions whose next "
    "token is trained). Backward: activation gradients 2 x N x t for the layers the backward traverses (from "
    "the lowest layer with a trained parameter up: all of them in full fine-tuning, the upper half with the "
    "demo's LoRA; that lowest layer's own input gradient is counted, a small overcount), plus weight gradients "
    "2 x N_trained x t for the trained matmuls only (all weights, or the LoRA adapters), plus 8 x L_traversed x "
    "d x t^2 for attention (2x its forward), plus the LM head's input gradient (and weight gradient when it "
    "trains) at the labelled positions. TRL's default DPO step adds the reference forward (the base model, "
    "adapters off) on the same batch; precomputed references run before training and are not in the step. "
    "Embedding lookups, norms, activations and softmax are not counted (a few percent). 'useful' counts real "
    "tokens only, the same for srt and TRL on the same data, so its GFLOP/s ratio is the speed ratio; "
    "'executed' counts what the kernels run (padded widths, a packed row's attention over the whole row, and "
    "TRL's LM head at every position on CPU)."
)


def step_stats(
    step_ends: list[float],
    counts: list[tuple[float, int, int]],
    warmup: int,
    *,
    cpu_ends: list[float] | None = None,
    shapes: list[dict] | None = None,
    spec: dict | None = None,
    flop_options: dict | None = None,
) -> dict:
    """Durations between consecutive step ends after the warm-up, and the (units, tokens, positions) of
    the same steps; units are tokens (SFT) or pairs (DPO). With ``shapes`` and ``spec``: the model
    FLOPs of those steps (:func:`step_flops`), per wall second and per CPU second of the process."""
    durations = [b - a for a, b in zip(step_ends[warmup - 1 :], step_ends[warmup:])]
    units, tokens, positions = zip(*counts[warmup : warmup + len(durations)])
    out = {
        "median_step_s": statistics.median(durations),
        "steps": len(durations),
        "units_per_s": sum(units) / sum(durations),
        "units_per_step": statistics.mean(units),
        "tokens_per_step": statistics.mean(tokens),
        "padding": 1 - sum(tokens) / sum(positions),
        "wall_s": sum(durations),
        "units": sum(units),
    }
    if cpu_ends:
        out["cpu_s"] = cpu_ends[warmup + len(durations) - 1] - cpu_ends[warmup - 1]
    if shapes and spec:
        flops = [step_flops(spec, shape, **(flop_options or {})) for shape in shapes[warmup : warmup + len(durations)]]
        out["useful_flops"] = sum(f["useful"] for f in flops)
        out["executed_flops"] = sum(f["executed"] for f in flops)
        out["flop_spec"] = {k: v for k, v in spec.items() if k != "per_layer"}
    return out


def lightning_timer(units_of_batch, pad_token_id=None):
    import lightning as L

    class StepTimer(L.Callback):
        def __init__(self):
            self.ends, self.cpu_ends, self.counts, self.shapes, self.spec = [], [], [], [], None

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if self.spec is None:
                self.spec = flop_spec(module.model)
            self.counts.append((float(units_of_batch(batch)), *batch_counts(batch)))
            self.shapes.append(batch_shape(batch, pad_token_id))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.ends.append(time.perf_counter())
            self.cpu_ends.append(time.process_time())

    return StepTimer()


def hf_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.ends, self.cpu_ends = [], []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())
            self.cpu_ends.append(time.process_time())

    return StepTimer()


def counting_collator(collate, counts: list, units_of_batch, shapes: list | None = None, pad_token_id=None):
    """Wrap TRL's collator to record each batch's counts (and shapes); batch i is step i (no accumulation)."""

    def wrapped(examples):
        batch = collate(examples)
        counts.append((float(units_of_batch(batch)), *batch_counts(batch)))
        if shapes is not None:
            shapes.append(batch_shape(batch, pad_token_id))
        return batch

    return wrapped


def sft_tokens(batch) -> int:
    return batch_counts(batch)[0]


def lightning_trainer(steps: int, callback):
    import lightning as L

    # Gradient clipping at 1.0 as srt's pipeline (trainer.gradient_clip_val) and TRL (max_grad_norm) default to.
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=steps,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[callback],
    )


def trl_args(config_cls, s: dict, out_dir: str, **extra):
    return config_cls(
        output_dir=out_dir,
        per_device_train_batch_size=s["batch_size"],
        max_length=s["max_length"],
        max_steps=s["warmup"] + s["steps"],
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        **extra,
    )


def upper_half_lora(model) -> dict:
    """The demo's LoRA (configs/demo.yaml): r 16, alpha 32, no dropout, on the ``*_proj`` modules of the
    upper half of the decoder layers (SmolLM2-135M: layers 15-29, the demo's regex exactly)."""
    layers = model.config.num_hidden_layers
    upper = "|".join(str(i) for i in range(layers // 2, layers))
    return {**DEMO_LORA, "target_modules": rf".*\.layers\.({upper})\..*_proj"}


def trl_peft_config(lora: dict):
    from peft import LoraConfig

    return LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        task_type="CAUSAL_LM",
    )


def trl_scores_every_position() -> bool:
    """TRL 1.16's fused LM head projects only the labelled positions where Triton runs (CUDA, XPU);
    elsewhere, CPU included, every position of every row goes through the head, in tiles
    (``trl/trainer/utils.py`` ``add_fused_lm_head``: ``compact = _use_triton(hidden_states.device)``)."""
    import torch
    from trl.kernels.chunked_logprob import _use_triton

    return not _use_triton(torch.device("cpu"))


class SavedTensorMeter:
    """Bytes autograd saves for the backward during one call of the wrapped function (distinct
    storages; the model's parameters left out), the largest over calls: the activations a step
    holds between its forward and its backward."""

    def __init__(self, model_of):
        self.model_of = model_of  # called at the first step: LoRA adapters exist by then
        self.params: set[int] | None = None
        self.current: dict[int, int] = {}
        self.peak = 0

    def _pack(self, t):
        try:
            storage = t.untyped_storage()
            if storage.data_ptr() not in self.params:
                self.current[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    def wrap(self, fn):
        import torch

        def wrapped(*args, **kwargs):
            if self.params is None:
                self.params = {p.untyped_storage().data_ptr() for p in self.model_of().parameters()}
            self.current = {}
            with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
                out = fn(*args, **kwargs)
            self.peak = max(self.peak, sum(self.current.values()))
            return out

        return wrapped


def memory_parts(model, meter: SavedTensorMeter, reference_copy: bool) -> dict:
    """MB of what training holds: weights, gradients + two AdamW moments of the trained parameters
    (fp32), a reference copy of the weights (TRL's default DPO, full fine-tuning), and the activations
    saved for the backward at the largest step."""
    params = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    mb = 4 / 2**20
    return {
        "weights_mb": params * mb,
        "grads_adam_mb": 3 * trained * mb,
        "reference_mb": params * mb if reference_copy else 0.0,
        "activations_mb": meter.peak / 2**20,
    }


def run_sft(config: str, s: dict, model_path: str, data: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from srt.models import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    total_steps = s["warmup"] + s["steps"]
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    lora = upper_half_lora(model) if config.endswith("_lora") else None
    pad = tokenizer.pad_token_id
    if config.startswith("srt"):
        from srt import config as srt_config
        from srt.data import SFTDataModule
        from srt.training.sft import SFTModule

        sft = srt_config.SFTConfig(
            micro_batch_size=s["batch_size"],
            max_length=s["max_length"],
            packing=config == "srt_packed",
            lora=srt_config.LoraConfig(**lora) if lora else None,
        )
        datamodule = SFTDataModule(tokenizer, sft, train_files=data["sft"])
        module = SFTModule(model, tokenizer, config=sft)  # optim.lr 1e-5 (the default)
        meter = SavedTensorMeter(lambda: module.model)
        module.training_step = meter.wrap(module.training_step)
        timer = lightning_timer(sft_tokens, pad)
        lightning_trainer(total_steps, timer).fit(module, datamodule=datamodule)
        stats = step_stats(
            timer.ends, timer.counts, s["warmup"], cpu_ends=timer.cpu_ends, shapes=timer.shapes, spec=timer.spec
        )
        return {**stats, **memory_parts(module.model, meter, reference_copy=False)}

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    with tempfile.TemporaryDirectory() as out_dir:
        args = trl_args(
            SFTConfig, s, out_dir, learning_rate=1e-5, completion_only_loss=True, packing=config == "trl_packed"
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(read_jsonl(data["trl_sft"])),
            processing_class=tokenizer,
            peft_config=trl_peft_config(lora) if lora else None,
        )
        timer, counts, shapes = hf_timer(), [], []
        trainer.add_callback(timer)
        trainer.data_collator = counting_collator(trainer.data_collator, counts, sft_tokens, shapes, pad)
        meter = SavedTensorMeter(lambda: trainer.model)
        trainer.compute_loss = meter.wrap(trainer.compute_loss)
        spec = flop_spec(trainer.model)
        trainer.train()
    stats = step_stats(
        timer.ends,
        counts,
        s["warmup"],
        cpu_ends=timer.cpu_ends,
        shapes=shapes,
        spec=spec,
        flop_options={"head_all_positions": trl_scores_every_position()},
    )
    return {**stats, **memory_parts(trainer.model, meter, reference_copy=False)}


def reference_passes(config: str, model, datamodule, baseline: float) -> dict:
    """srt's reference pass, timed: the new one (its own batches of 4 x micro_batch_size pairs, sorted
    by length) and, for the padded configuration, the old one (training micro-batches, dataset
    order), alternating (old, new, old, new) in the same process; the max difference of their log-probs;
    the useful forward FLOPs; the peak memory up to here (the passes run before training)."""
    from srt.training.reference import (
        compute_reference_logps,
        precompute_reference_logps,
        reference_batch_size,
        reference_dataloader,
    )

    spec = flop_spec(model)
    flops = sum(forward_flops(spec, batch_shape(b)) for b in reference_dataloader(datamodule))
    kinds = ["micro", "sorted", "micro", "sorted"] if config == "srt" else ["sorted"]
    times: dict[str, list[float]] = {"micro": [], "sorted": []}
    results = {}
    for kind in kinds:
        start = time.perf_counter()
        if kind == "micro":
            results[kind] = compute_reference_logps(model, datamodule.predict_dataloader(), desc="reference (micro)")
        else:
            results[kind] = precompute_reference_logps(model, datamodule, desc="reference (sorted)")
        times[kind].append(time.perf_counter() - start)
    out = {
        "precompute_s": statistics.median(times["sorted"]),
        "reference_flops": flops,
        "reference_pairs": len(results["sorted"]),
        "reference_peak_mb": peak_rss_mb() - baseline,
        "reference_batch": reference_batch_size(datamodule.config),
    }
    if times["micro"]:
        out["precompute_micro_s"] = statistics.median(times["micro"])
        out["reference_max_abs_diff"] = max(
            abs(a - b) for k in results["micro"] for a, b in zip(results["micro"][k], results["sorted"][k])
        )
        assert list(results["sorted"]) == list(results["micro"]), "reference log-probs out of dataset order"
    return {**out, "reference_logps": results["sorted"]}


def run_dpo(config: str, s: dict, model_path: str, data: dict, baseline: float = 0.0) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from srt.models import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    total_steps = s["warmup"] + s["steps"]
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    lora = upper_half_lora(model) if config.endswith("_lora") else None
    pad = tokenizer.pad_token_id
    pairs_of_batch = lambda batch: len(batch["chosen_input_ids"] if "chosen_input_ids" in batch else batch["ids"])  # noqa: E731
    if config.startswith("srt"):
        from srt import config as srt_config
        from srt.data import DPODataModule
        from srt.training.dpo import DPOModule

        # completion_end="eos": the same sequences as TRL's (its completions end with the end of turn).
        dpo = srt_config.DPOConfig(
            micro_batch_size=s["batch_size"],
            max_length=s["max_length"],
            packing=config == "srt_packed",
            completion_end="eos",
            lora=srt_config.LoraConfig(**lora) if lora else None,
            gradient_checkpointing=config == "srt_gc",
            lm_head_chunk_size=CHUNKED_HEAD if config == "srt_chunked" else None,
        )
        datamodule = DPODataModule(tokenizer, dpo, train_files=data["dpo"])
        datamodule.setup("fit")
        # The starting policy is the reference: compute its log-probs once, then hold one model.
        ref = reference_passes(config, model, datamodule, baseline)
        datamodule.set_reference_logps(ref.pop("reference_logps"))
        module = DPOModule(model, tokenizer, config=dpo)  # beta 0.01, optim.lr 5e-7, reference precomputed
        meter = SavedTensorMeter(lambda: module.model)
        module.training_step = meter.wrap(module.training_step)
        timer = lightning_timer(pairs_of_batch, pad)
        lightning_trainer(total_steps, timer).fit(module, datamodule=datamodule)
        stats = step_stats(
            timer.ends, timer.counts, s["warmup"], cpu_ends=timer.cpu_ends, shapes=timer.shapes, spec=timer.spec
        )
        return {**stats, **ref, **memory_parts(module.model, meter, reference_copy=False)}

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    with tempfile.TemporaryDirectory() as out_dir:
        args = trl_args(
            DPOConfig, s, out_dir, learning_rate=5e-7, beta=0.01, precompute_ref_log_probs=config == "trl_precompute"
        )
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(read_jsonl(data["trl_dpo"])),
            processing_class=tokenizer,
            peft_config=trl_peft_config(lora) if lora else None,
        )
        timer, counts, shapes = hf_timer(), [], []
        trainer.add_callback(timer)
        trainer.data_collator = counting_collator(
            trainer.data_collator, counts, lambda batch: len(batch["input_ids"]) // 2, shapes, pad
        )
        meter = SavedTensorMeter(lambda: trainer.model)
        trainer.compute_loss = meter.wrap(trainer.compute_loss)
        spec = flop_spec(trainer.model)
        trainer.train()
    # TRL's default step runs the reference forward (a copy of the model; with LoRA the adapter-disabled
    # policy) on the same batch; with precompute_ref_log_probs it ran before training.
    stats = step_stats(
        timer.ends,
        counts,
        s["warmup"],
        cpu_ends=timer.cpu_ends,
        shapes=shapes,
        spec=spec,
        flop_options={
            "head_all_positions": trl_scores_every_position(),
            "reference_forward": config != "trl_precompute",
        },
    )
    return {**stats, **memory_parts(trainer.model, meter, reference_copy=config == "trl" and lora is None)}


def run_roofline(quick: bool) -> dict:
    """The machine's FP32 matmul peak (a square sgemm, 2 n^3 FLOPs) and memory bandwidth (a copy of a
    256 MB tensor: read + write), on 1 thread and on all cores; the best and the median of several
    tries, per wall second and (1 thread) per CPU second of the thread, which a loaded machine does
    not dilute."""
    import torch

    n = 1024 if quick else 2048
    elements = (16 if quick else 64) * 2**20
    tries = 3 if quick else 7
    out = {"matmul_n": n, "copy_mb": elements * 4 / 2**20}

    def timed(fn) -> tuple[list[float], list[float]]:
        fn()
        wall, cpu = [], []
        for _ in range(tries):
            start, start_cpu = time.perf_counter(), time.thread_time()
            fn()
            wall.append(time.perf_counter() - start)
            cpu.append(time.thread_time() - start_cpu)
        return wall, cpu

    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
        wall, cpu = timed(lambda a=a, b=b, c=c: torch.mm(a, b, out=c))
        out[f"matmul_gflops_{threads}t"] = 2 * n**3 / min(wall) / 1e9
        out[f"matmul_gflops_{threads}t_median"] = 2 * n**3 / statistics.median(wall) / 1e9
        if threads == 1:
            out["matmul_gflops_1t_cpu"] = 2 * n**3 / min(cpu) / 1e9
            out["matmul_gflops_1t_cpu_median"] = 2 * n**3 / statistics.median(cpu) / 1e9
        src = torch.ones(elements)
        dst = torch.empty_like(src)
        wall, cpu = timed(lambda src=src, dst=dst: dst.copy_(src))
        out[f"copy_gbs_{threads}t"] = 2 * src.nbytes / min(wall) / 1e9
        out[f"copy_gbs_{threads}t_median"] = 2 * src.nbytes / statistics.median(wall) / 1e9
        if threads == 1:
            out["copy_gbs_1t_cpu"] = 2 * src.nbytes / min(cpu) / 1e9
            out["copy_gbs_1t_cpu_median"] = 2 * src.nbytes / statistics.median(cpu) / 1e9
        del a, b, c, src, dst
    out["threads_all"] = os.cpu_count() or 1
    return out


def run_generate(s: dict, model_path: str, data: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from srt.generation import Generator, SamplingConfig
    from srt.models import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    instructions = [r["instruction"] for r in read_jsonl(data["sft"])][: s["gen_prompts"]]
    # Sampling (not greedy) so a random model rarely stops early; new tokens are counted anyway.
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=s["gen_tokens"], seed=0)
    out = {}
    for batch_size in (1, 8):
        generator = Generator(model, tokenizer, batch_size=batch_size)
        generator.chat(instructions[:batch_size], SamplingConfig(max_new_tokens=4), desc="warm-up")
        start = time.perf_counter()
        results = generator.chat(instructions, sampling, desc=f"generate bs={batch_size}")
        elapsed = time.perf_counter() - start
        out[f"batch_{batch_size}"] = {
            "tokens_per_s": sum(r.num_new_tokens for r in results) / elapsed,
            "new_tokens": sum(r.num_new_tokens for r in results),
            "seconds": elapsed,
        }
    return out


def run_grid(s: dict, model_path: str, data: dict) -> dict:
    """SFT step time (forward, backward, AdamW step) on fixed-shape batches: how it grows with T and B."""
    import torch
    from transformers import AutoModelForCausalLM

    from srt.config import OptimConfig
    from srt.training.policy import build_optimizer
    from srt.training.sft import SFTModule

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    module = SFTModule(model)
    module.configure_model()
    module.model.train()
    optimizer = build_optimizer(module.model.parameters(), OptimConfig(lr=1e-5, weight_decay=0.0, betas=(0.9, 0.999)))
    vocab = model.config.vocab_size
    out = {}
    for length in s["grid_lengths"]:
        for batch_size in s["grid_batches"]:
            input_ids = torch.randint(6, vocab, (batch_size, length), generator=torch.Generator().manual_seed(0))
            batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}
            times = []
            for _ in range(1 + 3):  # one warm-up step
                start = time.perf_counter()
                loss, _ = module.masked_lm_loss(batch)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                times.append(time.perf_counter() - start)
            out[f"{length}x{batch_size}"] = statistics.median(times[1:])
    return out


def worker(spec: dict) -> None:
    # Same imports in every worker, so the RSS baseline is comparable between srt and TRL runs.
    import datasets  # noqa: F401
    import lightning  # noqa: F401
    import torch
    import transformers  # noqa: F401
    import trl  # noqa: F401

    import srt.data  # noqa: F401
    import srt.training  # noqa: F401

    torch.set_num_threads(spec["settings"]["threads"])
    torch.manual_seed(0)
    baseline = current_rss_mb()
    kind, config, s, model_path, data = spec["kind"], spec.get("config"), spec["settings"], spec["model"], spec["data"]
    if kind == "sft":
        result = run_sft(config, s, model_path, data)
    elif kind == "dpo":
        result = run_dpo(config, s, model_path, data, baseline)
    elif kind == "roofline":
        result = run_roofline(s.get("quick", False))
    elif kind == "generate":
        result = run_generate(s, model_path, data)
    else:
        result = run_grid(s, model_path, data)
    result["peak_mb"] = peak_rss_mb() - baseline
    print("RESULT " + json.dumps(result), flush=True)


def run_worker(spec: dict, log_dir: Path) -> dict:
    name = "-".join(str(spec[k]) for k in ("kind", "config", "repeat") if spec.get(k) is not None)
    threads = str(spec["settings"]["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    (log_dir / f"{name}.log").write_text(proc.stdout + proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise RuntimeError(f"benchmark worker {name} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len("RESULT ") :])


# ---------------------------------------------------------------------------------------------
# Parent side: run everything, summarize, write RESULTS.md


def machine_description() -> dict:
    import torch
    import transformers
    import trl

    cpu = platform.processor() or "unknown CPU"
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    if names:
        cpu = names[0]
    with open("/proc/meminfo") as f:
        mem_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "load_avg": os.getloadavg(),
    }


def run_all(s: dict, model_path: str, data: dict, log_dir: Path) -> dict:
    sft_configs = SFT_CONFIGS + (LORA_CONFIGS if s.get("lora") else [])
    dpo_configs = (
        DPO_CONFIGS + (LORA_CONFIGS if s.get("lora") else []) + (MEMORY_CONFIGS if s.get("memory_rows") else [])
    )
    results: dict = {"sft": {c: [] for c in sft_configs}, "dpo": {c: [] for c in dpo_configs}}
    base = {"settings": s, "model": model_path, "data": data}
    all_cores = {**base, "kind": "roofline", "settings": {**s, "threads": os.cpu_count() or 1}}
    print("roofline (matmul peak, copy bandwidth) ...", flush=True)
    results["roofline"] = [run_worker({**all_cores, "repeat": 0}, log_dir)]
    for repeat in range(s["repeats"]):
        for kind, configs in (("sft", sft_configs), ("dpo", dpo_configs)):
            interleaved = [configs[i] for i in (0, 2, 1, 3)]  # srt, TRL, srt, TRL
            order = interleaved if repeat % 2 == 0 else interleaved[::-1]  # reversed every other repeat
            if s.get("lora"):
                order += LORA_CONFIGS if repeat % 2 == 0 else LORA_CONFIGS[::-1]
            if kind == "dpo" and s.get("memory_rows"):
                order += MEMORY_CONFIGS
            for config in order:
                print(f"[repeat {repeat + 1}/{s['repeats']}] {kind} {config} ...", flush=True)
                results[kind][config].append(
                    run_worker({**base, "kind": kind, "config": config, "repeat": repeat}, log_dir)
                )
    if not s.get("training_only"):
        print("generation ...", flush=True)
        results["generate"] = run_worker({**base, "kind": "generate"}, log_dir)
        print("step-time grid ...", flush=True)
        results["grid"] = run_worker({**base, "kind": "grid"}, log_dir)
    print("roofline again ...", flush=True)
    results["roofline"].append(run_worker({**all_cores, "repeat": 1}, log_dir))
    return results


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def padding_of(runs: list[dict]) -> str:
    """Share of computed positions that were padding (median over runs)."""
    return f"{100 * median_of(runs, 'padding'):.0f}%" if "padding" in runs[0] else "n/a"


def per_run(runs: list[dict], fmt: str) -> str:
    return ", ".join(format(r["units_per_s"], fmt) for r in runs)


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def write_results(path: Path, machine: dict, s: dict, model_desc: str, data: dict, results: dict, load_end) -> dict:
    sft, dpo = results["sft"], results["dpo"]
    speed = {
        k: {c: median_of(runs, "units_per_s") for c, runs in group.items()} for k, group in (("sft", sft), ("dpo", dpo))
    }
    peak = {
        k: {c: median_of(runs, "peak_mb") for c, runs in group.items()} for k, group in (("sft", sft), ("dpo", dpo))
    }
    ratios = {
        "sft_speed_padded": speed["sft"]["srt"] / speed["sft"]["trl"],
        "sft_speed_packed": speed["sft"]["srt_packed"] / speed["sft"]["trl"],
        "sft_speed_packed_vs_trl_packed": speed["sft"]["srt_packed"] / speed["sft"]["trl_packed"],
        "sft_memory": peak["sft"]["srt"] / peak["sft"]["trl"],
        "dpo_speed": speed["dpo"]["srt"] / speed["dpo"]["trl"],
        "dpo_memory": peak["dpo"]["srt"] / peak["dpo"]["trl"],
        "dpo_speed_vs_trl_precompute": speed["dpo"]["srt"] / speed["dpo"]["trl_precompute"],
        "dpo_memory_vs_trl_precompute": peak["dpo"]["srt"] / peak["dpo"]["trl_precompute"],
        "dpo_packed_speed": speed["dpo"]["srt_packed"] / speed["dpo"]["trl"],
        "dpo_packed_vs_padded": speed["dpo"]["srt_packed"] / speed["dpo"]["srt"],
        "sft_packed_vs_padded": speed["sft"]["srt_packed"] / speed["sft"]["srt"],
    }
    best_sft = max(ratios["sft_speed_padded"], ratios["sft_speed_packed"])
    met = {
        "sft_speed": best_sft >= TARGETS["sft_speed"],
        "dpo_speed": ratios["dpo_speed"] >= TARGETS["dpo_speed"],
        "dpo_memory": ratios["dpo_memory"] <= TARGETS["dpo_memory"],
    }

    names = {
        "srt": "srt (padded)",
        "srt_packed": "srt (packed)",
        "trl": "TRL (padded)",
        "trl_packed": "TRL (packed)",
        "srt_lora": "srt, LoRA (demo's, padded)",
        "trl_lora": "TRL, LoRA (demo's, padded)",
    }
    dpo_names = {
        "srt": "srt, precomputed reference",
        "srt_packed": "srt, precomputed reference, packed",
        "trl": "TRL, default reference model",
        "trl_precompute": "TRL, precompute_ref_log_probs=True",
        "srt_lora": "srt, LoRA (demo's), precomputed reference",
        "srt_gc": "srt, precomputed reference, gradient checkpointing",
        "srt_chunked": f"srt, precomputed reference, lm_head_chunk_size {CHUNKED_HEAD}",
        "trl_lora": "TRL, LoRA (demo's), default reference (adapter disabled)",
    }
    lines = [
        "# srt vs TRL: throughput and peak memory",
        "",
        "Written by `benchmarks/run.py` ("
        + ("`--quick` smoke run" if s.get("quick") else "full run" if s["repeats"] > 1 else "a single-repeat run")
        + f") on {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores visible; RAM {machine['ram_gb']} GB; each worker runs torch with {s['threads']} thread(s)",
        f"- Python {machine['python']}, torch {machine['torch']}, transformers {machine['transformers']}, trl {machine['trl']}",
        f"- Load average at start: {', '.join(f'{x:.1f}' for x in machine['load_avg'])}; at end: {', '.join(f'{x:.1f}' for x in load_end)}"
        " (a shared machine: absolute numbers are noisy; srt/TRL runs alternate, so the ratios are the fair comparison)",
        *roofline_lines(results.get("roofline")),
        "",
        "## Setup",
        "",
        f"- Model: {model_desc}; float32, CPU, full fine-tuning (and, where the rows say so, the demo's LoRA), AdamW, no gradient checkpointing on either side.",
        f"- Data: {data['summary']} (seeded synthetic, lognormal lengths); both sides get the same rendered texts.",
        f"- Batch size {s['batch_size']}, max length {s['max_length']}, {s['warmup']} warm-up + {s['steps']} timed steps per run, "
        f"{s['repeats']} repeat(s), each configuration in a fresh process; medians over repeats. "
        f"{s['records']} records: a run is about one epoch, so every configuration meets the longest examples.",
        "- tokens/s counts non-pad tokens (prompt included) per second of wall time between step ends; "
        "packed rows hold several examples, so a packed step processes more tokens. padding = share of the "
        "positions the model computed that were padding.",
        "- Both sides clip gradients at norm 1.0 (srt pipeline's `gradient_clip_val` and TRL's `max_grad_norm` defaults).",
        "- Peak memory: peak RSS of the worker process minus its RSS after imports (model + optimizer + data + activations).",
        "",
        "## Targets",
        "",
        "| target | measured | result |",
        "| --- | --- | --- |",
        f"| DPO pairs/s >= {TARGETS['dpo_speed']}x TRL (default reference) | {ratios['dpo_speed']:.2f}x | {verdict(met['dpo_speed'])} |",
        f"| DPO peak memory <= {TARGETS['dpo_memory']}x TRL (default reference) | {ratios['dpo_memory']:.2f}x | {verdict(met['dpo_memory'])} |",
        f"| SFT tokens/s >= {TARGETS['sft_speed']}x TRL (padded) | padded {ratios['sft_speed_padded']:.2f}x, packed {ratios['sft_speed_packed']:.2f}x | {verdict(met['sft_speed'])} |",
        "",
        "## Ratios (srt / TRL)",
        "",
        "| comparison | speed | peak memory |",
        "| --- | --- | --- |",
        f"| SFT: srt padded / TRL padded | {ratios['sft_speed_padded']:.2f} | {ratios['sft_memory']:.2f} |",
        f"| SFT: srt packed / TRL padded | {ratios['sft_speed_packed']:.2f} | {peak['sft']['srt_packed'] / peak['sft']['trl']:.2f} |",
        f"| SFT: srt packed / TRL packed | {ratios['sft_speed_packed_vs_trl_packed']:.2f} | {peak['sft']['srt_packed'] / peak['sft']['trl_packed']:.2f} |",
        f"| DPO: srt precomputed / TRL default reference | {ratios['dpo_speed']:.2f} | {ratios['dpo_memory']:.2f} |",
        f"| DPO: srt precomputed / TRL precompute_ref_log_probs | {ratios['dpo_speed_vs_trl_precompute']:.2f} | {ratios['dpo_memory_vs_trl_precompute']:.2f} |",
        f"| DPO: srt precomputed packed / TRL default reference | {ratios['dpo_packed_speed']:.2f} | {peak['dpo']['srt_packed'] / peak['dpo']['trl']:.2f} |",
        *(
            [
                f"| SFT, demo's LoRA: srt / TRL (padded) | {speed['sft']['srt_lora'] / speed['sft']['trl_lora']:.2f} | {peak['sft']['srt_lora'] / peak['sft']['trl_lora']:.2f} |",
                f"| DPO, demo's LoRA: srt precomputed / TRL default (adapter-disabled reference) | {speed['dpo']['srt_lora'] / speed['dpo']['trl_lora']:.2f} | {peak['dpo']['srt_lora'] / peak['dpo']['trl_lora']:.2f} |",
            ]
            if "srt_lora" in sft
            else []
        ),
        "",
        "## Raw numbers (medians over repeats)",
        "",
        "| SFT | tokens/s | median step (s) | tokens/step | padding | peak MB | runs (tokens/s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in sft:
        runs = sft[c]
        lines.append(
            f"| {names[c]} | {speed['sft'][c]:.0f} | {median_of(runs, 'median_step_s'):.3f} | "
            f"{median_of(runs, 'units_per_step'):.0f} | {padding_of(runs)} | {peak['sft'][c]:.0f} | {per_run(runs, '.0f')} |"
        )
    lines += [
        "",
        "| DPO | pairs/s | median step (s) | tokens/step | padding | peak MB | runs (pairs/s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in dpo:
        runs = dpo[c]
        extra = (
            f" (reference precompute {median_of(runs, 'precompute_s'):.1f} s, not in pairs/s)"
            if "precompute_s" in runs[0]
            else ""
        )
        lines.append(
            f"| {dpo_names[c]}{extra} | {speed['dpo'][c]:.2f} | {median_of(runs, 'median_step_s'):.3f} | "
            f"{median_of(runs, 'tokens_per_step'):.0f} | {padding_of(runs)} | {peak['dpo'][c]:.0f} | {per_run(runs, '.2f')} |"
        )
    lines += roofline_sections(results, s, names, dpo_names)
    gen = results.get("generate")
    lines += (
        []
        if gen is None
        else [
            "",
            "| generation (srt.generation.Generator, sampling) | new tokens/s | new tokens | peak MB |",
            "| --- | --- | --- | --- |",
        ]
    )
    for b in (1, 8) if gen else ():
        g = gen[f"batch_{b}"]
        lines.append(
            f"| batch size {b} | {g['tokens_per_s']:.0f} | {g['new_tokens']} | {gen['peak_mb']:.0f} (whole worker) |"
        )
    grid = results.get("grid", {})
    lines += (
        []
        if not grid
        else [
            "",
            "SFT step time in seconds (forward + backward + AdamW, srt SFTModule loss, fixed-shape batches):",
            "",
            "| seq length \\ batch | " + " | ".join(str(b) for b in s["grid_batches"]) + " |",
            "| --- |" + " --- |" * len(s["grid_batches"]),
        ]
    )
    for length in s["grid_lengths"] if grid else ():
        lines.append(f"| {length} | " + " | ".join(f"{grid[f'{length}x{b}']:.3f}" for b in s["grid_batches"]) + " |")
    step = {
        k: {c: median_of(runs, "median_step_s") for c, runs in group.items()}
        for k, group in (("sft", sft), ("dpo", dpo))
    }
    pad = {
        k: {c: median_of(runs, "padding") if "padding" in runs[0] else float("nan") for c, runs in group.items()}
        for k, group in (("sft", sft), ("dpo", dpo))
    }
    lines += ["", "## Why", "", *explain(ratios, peak, step, pad, s["max_length"]), ""]
    path.write_text("\n".join(lines))
    return {"ratios": ratios, "met": met}


def peaks(results: dict) -> dict | None:
    """Best matmul GFLOP/s and copy GB/s over the roofline runs (start and end of the run)."""
    runs = results.get("roofline")
    if not runs:
        return None
    keys = [k for k in runs[0] if k.startswith(("matmul_gflops_", "copy_gbs_")) and not k.endswith("_median")]
    out = {k: max(r[k] for r in runs) for k in keys}
    out["threads_all"] = runs[0]["threads_all"]
    return out


def roofline_lines(runs: list[dict] | None) -> list[str]:
    if not runs:
        return []
    n, cores = runs[0]["matmul_n"], runs[0]["threads_all"]
    fmt = lambda key, unit: ", ".join(f"{r[key]:.0f} (median {r[key + '_median']:.0f})" for r in runs) + f" {unit}"  # noqa: E731
    p = peaks({"roofline": runs})
    return [
        f"- Roofline, measured at the start and at the end of this run (best of 7 tries, median in brackets): "
        f"FP32 matmul ({n} x {n} sgemm, 2n^3 FLOPs) on 1 thread per CPU-second of that thread "
        f"{fmt('matmul_gflops_1t_cpu', 'GFLOP/s')}, per wall second {fmt('matmul_gflops_1t', 'GFLOP/s')}"
        + (f"; on all {cores} threads (wall) {fmt(f'matmul_gflops_{cores}t', 'GFLOP/s')}" if cores > 1 else ""),
        f"- Memory bandwidth (copy of a {runs[0]['copy_mb']:.0f} MB tensor, read + write counted): 1 thread per "
        f"CPU-second {fmt('copy_gbs_1t_cpu', 'GB/s')}, per wall second {fmt('copy_gbs_1t', 'GB/s')}"
        + (f"; all {cores} threads (wall) {fmt(f'copy_gbs_{cores}t', 'GB/s')}" if cores > 1 else ""),
        f"- Peak used for MFU: the best 1-thread matmul per CPU-second, {p['matmul_gflops_1t_cpu']:.0f} GFLOP/s "
        "(the workers run torch on 1 thread; per CPU-second so that other jobs on the machine do not lower the "
        f"peak); ridge point {p['matmul_gflops_1t_cpu'] / p['copy_gbs_1t_cpu']:.0f} FLOP/byte: the training "
        "matmuls here ([tokens x hidden] x [hidden x hidden], hundreds of FLOPs per byte) sit far right of it, "
        "compute-bound, so MFU against the matmul peak is the measure.",
    ]


def roofline_sections(results: dict, s: dict, names: dict, dpo_names: dict) -> list[str]:
    """Achieved GFLOP/s and MFU of every row; what holds the memory; the reference pass."""
    p = peaks(results)
    sft, dpo = results["sft"], results["dpo"]
    first = next(iter(sft.values()))[0]
    if p is None or "useful_flops" not in first:
        return []
    threads, cores = s["threads"], p["threads_all"]
    peak_1t = p.get("matmul_gflops_1t_cpu", p["matmul_gflops_1t"])
    peak = peak_1t if threads == 1 else p.get(f"matmul_gflops_{threads}t", threads * peak_1t)
    med = lambda runs, f: statistics.median(f(r) for r in runs)  # noqa: E731
    lines = [
        "",
        "## Model FLOPs and MFU",
        "",
        f"FLOP formula. {FLOP_FORMULA}",
        "",
        f"MFU = useful model FLOPs / time / peak; peak = the measured {threads}-thread matmul peak, "
        f"{peak:.0f} GFLOP/s (the workers run torch on {threads} thread(s) of {cores}). 'per CPU-s' divides by "
        "the worker's CPU time over the timed steps instead of wall time (robust to a loaded machine taking "
        "the core away; against the 1-thread peak times the threads). MFU (wall) is below MFU per CPU-s by the "
        "share of the core the worker did not get. Medians over repeats.",
        "",
        "| run | GFLOP/step (useful) | GFLOP/s (wall) | MFU (wall) | GFLOP/s per CPU-s | MFU per CPU-s | executed / useful FLOPs |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, group, row_names in (("SFT", sft, names), ("DPO", dpo, dpo_names)):
        for c, runs in group.items():
            per_step = med(runs, lambda r: r["useful_flops"] / r["steps"]) / 1e9
            wall = med(runs, lambda r: r["useful_flops"] / r["wall_s"]) / 1e9
            cpu = med(runs, lambda r: r["useful_flops"] / r["cpu_s"]) / 1e9
            executed = med(runs, lambda r: r["executed_flops"] / r["useful_flops"])
            lines.append(
                f"| {kind}: {row_names[c]} | {per_step:.1f} | {wall:.1f} | {100 * wall / peak:.0f}% | {cpu:.1f} | "
                f"{100 * cpu / (peak_1t * threads):.0f}% | {executed:.2f} |"
            )
    wall_speed = lambda runs: statistics.median(r["units_per_s"] for r in runs)  # noqa: E731
    cpu_speed = lambda runs: statistics.median(r["units"] / r["cpu_s"] for r in runs)  # noqa: E731
    pairs = [
        ("SFT: srt padded / TRL padded", sft, "srt", "trl"),
        ("SFT: srt packed / TRL padded", sft, "srt_packed", "trl"),
        ("DPO: srt precomputed / TRL default reference", dpo, "srt", "trl"),
        ("DPO: srt precomputed / TRL precompute_ref_log_probs", dpo, "srt", "trl_precompute"),
        ("SFT, demo's LoRA: srt / TRL", sft, "srt_lora", "trl_lora"),
        ("DPO, demo's LoRA: srt precomputed / TRL default (adapter disabled)", dpo, "srt_lora", "trl_lora"),
    ]
    lines += [
        "",
        "Speed ratios per wall second (the tables above) and per CPU-second of the worker (tokens or pairs per "
        "second of CPU time: what the code costs when the machine's other jobs take turns on the core):",
        "",
        "| comparison | speed (wall) | speed per CPU-s |",
        "| --- | --- | --- |",
    ]
    for label, group, a, b in pairs:
        if a in group and b in group:
            lines.append(
                f"| {label} | {wall_speed(group[a]) / wall_speed(group[b]):.2f} | "
                f"{cpu_speed(group[a]) / cpu_speed(group[b]):.2f} |"
            )
    spec = first["flop_spec"]
    lines += [
        "",
        f"Model for the counts: {spec['params'] / 1e6:.1f}M parameters, {spec['layers']} layers, attention width "
        f"{spec['d_attn']}, LM head {spec['head'] / 1e6:.2f}M; the LoRA rows train "
        + (
            f"{next(iter(sft['srt_lora']))['flop_spec']['trained_params'] / 1e6:.2f}M adapter parameters, the "
            f"backward stopping at layer {next(iter(sft['srt_lora']))['flop_spec']['lowest_trained']}"
            if "srt_lora" in sft
            else "(none in this run)"
        )
        + ". TRL 1.16 on CPU projects every position of every row through its LM head (its fused head keeps only "
        "the labelled positions where Triton runs, CUDA/XPU: `trl/trainer/utils.py`, `add_fused_lm_head`, "
        "`compact = _use_triton(device)`), so its executed FLOPs include the prompt and padding positions; srt "
        "projects only the labelled positions on every device (`logits_to_keep` as a mask).",
    ]
    # memory
    lines += [
        "",
        "## Memory: what holds it (DPO and SFT, medians)",
        "",
        "weights, gradients and AdamW moments (fp32, 4 bytes each) come from the parameter counts; activations "
        "= the bytes autograd saved for the backward in the largest step (distinct storages, parameters left "
        "out; measured with `torch.autograd.graph.saved_tensors_hooks` around srt's `training_step` and TRL's "
        "`compute_loss`); rest = peak RSS above the post-import baseline minus those: the forward's transient "
        "buffers (logits, attention, MLP temporaries), gradient buffers of the backward, data, framework and "
        "allocator slack.",
        "",
        "| run | peak MB | weights | grads + AdamW (trained) | reference copy | activations saved | rest |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, group, row_names in (("DPO", dpo, dpo_names), ("SFT", sft, names)):
        for c, runs in group.items():
            parts = [
                med(runs, lambda r, k=k: r[k])
                for k in ("weights_mb", "grads_adam_mb", "reference_mb", "activations_mb")
            ]
            total = med(runs, lambda r: r["peak_mb"])
            lines.append(
                f"| {kind}: {row_names[c]} | {total:.0f} | "
                + " | ".join(f"{x:.0f}" for x in parts)
                + f" | {total - sum(parts):.0f} |"
            )
    lines += memory_target(dpo)
    # reference pass
    ref = [r for r in dpo["srt"] if "precompute_micro_s" in r]
    if ref:
        micro = statistics.median(r["precompute_micro_s"] for r in ref)
        new = statistics.median(r["precompute_s"] for r in ref)
        flops = ref[0]["reference_flops"]
        lines += [
            "",
            "## Reference pass (srt, `reference: precomputed`)",
            "",
            f"Old: training micro-batches ({s['batch_size']} pairs) in dataset order; new: "
            f"`precompute_reference_logps`, its own batches of {ref[0]['reference_batch']} pairs "
            "(`dpo.reference_batch_size`, default 4 x micro_batch_size), sorted by length, results in dataset "
            "order. Alternating old, new, old, new in each srt padded DPO worker; medians.",
            "",
            "| pass | seconds | pairs/s | GFLOP/s (useful) | MFU (wall) |",
            "| --- | --- | --- | --- | --- |",
        ]
        pairs = ref[0]["reference_pairs"]
        for label, secs in (("old: micro-batch, dataset order", micro), ("new: own batches, length-sorted", new)):
            lines.append(
                f"| {label} | {secs:.2f} | "
                + f"{pairs / secs:.1f} | {flops / secs / 1e9:.1f} | {100 * flops / secs / 1e9 / peak:.0f}% |"
            )
        diff = max(r["reference_max_abs_diff"] for r in ref)
        lines += [
            "",
            f"Speedup new / old: {micro / new:.2f}x (per run: "
            + ", ".join(f"{r['precompute_micro_s'] / r['precompute_s']:.2f}" for r in ref)
            + f"); largest |difference| of a summed log-prob between the two: {diff:.1e} (float rounding); peak "
            f"memory up to the end of the passes {statistics.median(r['reference_peak_mb'] for r in ref):.0f} MB "
            f"against {statistics.median(r['peak_mb'] for r in dpo['srt']):.0f} MB for the whole run (the larger "
            "batches stay under training's peak).",
        ]
    return lines


def memory_target(dpo: dict) -> list[str]:
    """Where srt's DPO peak stands against 0.7x TRL's default, part by part (medians)."""
    if "trl" not in dpo or "activations_mb" not in dpo["trl"][0]:
        return []
    med = lambda c, k: statistics.median(r[k] for r in dpo[c])  # noqa: E731
    keys = ("weights_mb", "grads_adam_mb", "reference_mb", "activations_mb")
    srt, trl = ({k: med(c, k) for k in (*keys, "peak_mb")} for c in ("srt", "trl"))
    for part in (srt, trl):
        part["rest_mb"] = part["peak_mb"] - sum(part[k] for k in keys)
    target = TARGETS["dpo_memory"] * trl["peak_mb"]
    state = srt["weights_mb"] + srt["grads_adam_mb"]
    lines = [
        "",
        f"**DPO memory target** (srt <= {TARGETS['dpo_memory']}x TRL's default = {target:.0f} MB here; srt "
        f"measures {srt['peak_mb']:.0f} MB, {srt['peak_mb'] / trl['peak_mb']:.2f}x). Against TRL's default srt "
        f"saves the reference copy ({trl['reference_mb']:.0f} MB) and {trl['rest_mb'] - srt['rest_mb']:.0f} MB of "
        f"the rest; the activations saved for the backward differ by {trl['activations_mb'] - srt['activations_mb']:.0f} "
        "MB (each side's largest step: srt's longest length-grouped batch, TRL's most padded random one). "
        "What srt still holds: "
        f"weights + gradients + AdamW moments {state:.0f} MB (fixed by the model and the optimizer), the "
        f"activations of the policy's forward over chosen + rejected {srt['activations_mb']:.0f} MB (what the "
        f"backward needs; the logits of the scored positions are part of them) and {srt['rest_mb']:.0f} MB of "
        "transient buffers and framework. Reaching the target needs "
        f"{srt['peak_mb'] - target:.0f} MB less, i.e. "
        f"{100 * (srt['peak_mb'] - target) / max(srt['activations_mb'], 1e-9):.0f}% of the activations: on CPU that "
        "means recomputing them (gradient checkpointing) or holding fewer at once (a smaller micro-batch with "
        "gradient accumulation: the same optimizer step, since the DPO loss is a mean over pairs), both "
        "settings rather than overhead, and both available to TRL as well.",
    ]
    if "srt_gc" in dpo:
        gc = {k: med("srt_gc", k) for k in ("peak_mb", "activations_mb", "units_per_s")}
        lines.append(
            "With `dpo.gradient_checkpointing: true` (the gradient checkpointing rows above"
            + (
                f"; measured in a separate run on the same seeded data and settings, load average "
                f"{dpo['srt_gc'][0]['separate_run']}"
                if dpo["srt_gc"][0].get("separate_run")
                else ""
            )
            + f"; TRL's own default, off in the other rows on both sides) srt's peak is {gc['peak_mb']:.0f} MB = {gc['peak_mb'] / trl['peak_mb']:.2f}x TRL's default "
            f"(activations {gc['activations_mb']:.0f} MB) at {gc['units_per_s']:.2f} pairs/s = "
            f"{gc['units_per_s'] / med('trl', 'units_per_s'):.2f}x TRL's default speed."
        )
    if "srt_chunked" in dpo:
        ch = {k: med("srt_chunked", k) for k in ("peak_mb", "activations_mb", "units_per_s")}
        lines.append(
            f"With `dpo.lm_head_chunk_size: {CHUNKED_HEAD}` (the LM head over {CHUNKED_HEAD} labelled positions at a "
            "time, recomputed in the backward, so the scored positions' logits are never all held) srt's peak is "
            f"{ch['peak_mb']:.0f} MB = {ch['peak_mb'] / trl['peak_mb']:.2f}x TRL's default (activations "
            f"{ch['activations_mb']:.0f} MB, {srt['activations_mb'] - ch['activations_mb']:.0f} MB less than without: "
            f"the logits it no longer keeps) at {ch['units_per_s']:.2f} pairs/s = "
            f"{ch['units_per_s'] / med('srt', 'units_per_s'):.2f}x srt's default speed (one more LM-head matmul per "
            "labelled token). What it saves grows with the vocabulary: positions x vocabulary x 4 bytes."
        )
    return lines


def explain(r: dict, peak: dict, step: dict, pad: dict, max_length: int) -> list[str]:
    """The mechanisms behind the ratios, with this run's numbers."""
    trl_ref_cost = step["dpo"]["trl"] / step["dpo"]["trl_precompute"]
    versus = (
        "about what that arithmetic predicts"
        if abs(trl_ref_cost - 4 / 3) < 0.15
        else (
            "more than that arithmetic: the rest is TRL per-step overhead or load noise that this benchmark does "
            "not separate (see the per-run spread)"
            if trl_ref_cost > 4 / 3
            else "less than that arithmetic"
        )
    )
    saved_mb = peak["dpo"]["trl"] - peak["dpo"]["srt"]
    pct = lambda kind, config: f"{100 * pad[kind][config]:.0f}%"  # noqa: E731
    return [
        "- **DPO speed.** TRL's default step runs the policy forward + backward *and* a reference forward "
        "(no grad) on the same batch; srt's precomputed reference is one forward per pair done once before "
        "training, so each step is only the policy forward + backward. By arithmetic the reference forward is "
        "about a third of a policy forward + backward (a backward costs about two forwards; measured 0.43 s vs "
        "1.34 s on the default benchmark model for 8 sequences of 260 tokens), which alone would give about 1.33x. Here TRL's "
        f"default step took {trl_ref_cost:.2f}x its own precompute step ({step['dpo']['trl']:.2f} s vs "
        f"{step['dpo']['trl_precompute']:.2f} s), {versus}. Against TRL with `precompute_ref_log_probs=True` "
        f"(the same model work per token) srt measures {r['dpo_speed_vs_trl_precompute']:.2f}x: srt's "
        "length-grouped sampler puts pairs of similar length in a batch, so "
        f"{pct('dpo', 'srt')} of the positions it computes are padding against {pct('dpo', 'trl_precompute')} "
        "in TRL's random batches; the remainder is per-step framework overhead, not profiled further. "
        f"Overall srt vs TRL's default: {r['dpo_speed']:.2f}x. Packed DPO "
        f"runs at {r['dpo_packed_vs_padded']:.2f}x srt padded: chosen and rejected have similar lengths here, "
        "so the padded stack wastes little, while a packed row of max-length tokens attends over a longer "
        "(block-diagonal, but dense on CPU) mask; DPO packing pays off when lengths within a batch differ a lot.",
        "- **DPO memory.** The reference copy is one more set of weights (W). Full fine-tuning already holds "
        "weights, gradients and two AdamW moments (4W) plus activations, so dropping the copy saves at most "
        "1/5 of the peak when weights dominate (ratio >= 0.8); reaching 0.7x needs savings beyond the "
        "reference, in activations (the memory table above measures each part). srt scores only the labelled "
        "positions through the LM head and never builds [batch, length, vocab] logits, but keeps the scored "
        "positions' logits for the backward (in the activations column); TRL 1.16's fused LM head keeps none "
        "(it tiles the vocabulary and recomputes in the backward) but on CPU projects every position. "
        f"Measured {r['dpo_memory']:.2f}x TRL's default ({abs(saved_mb):.0f} MB "
        f"{'less' if saved_mb >= 0 else 'more'}) and {r['dpo_memory_vs_trl_precompute']:.2f}x TRL with precomputed reference log-probs (which "
        "holds one model too, so the rest of the gap is framework and data overhead). With LoRA, TRL already "
        "uses the adapter-disabled model as the reference: no copy to save.",
        "- **SFT speed.** Per token both sides run the same layers forward and backward; srt projects only the "
        "labelled positions through the LM head (transformers' `logits_to_keep` boolean mask), TRL 1.16 on CPU "
        "every position (its fused LM head keeps only the labelled ones where Triton runs, on GPU), which the "
        "'executed / useful' column of the MFU table counts; the rest of the differences are padding and "
        "per-step overhead. srt batches examples of "
        f"similar length together ({pct('sft', 'srt')} padding vs {pct('sft', 'trl')} in TRL's random batches) "
        f"and, packed, trains on rows of max-length tokens ({pct('sft', 'srt_packed')} padding) with a "
        "block-diagonal causal mask built by transformers from restarting `position_ids`; a packed step holds "
        f"about twice the tokens, and attention over {max_length}-token rows costs more per token than over the "
        "single examples (packing pays off most with heavily padded data, or on a GPU with FlashAttention's "
        f"variable-length kernels). Measured vs TRL padded: srt padded {r['sft_speed_padded']:.2f}x, srt packed "
        f"{r['sft_speed_packed']:.2f}x. TRL's packing flattens each batch into one padding-free row meant for "
        "FlashAttention's variable-length kernels; on CPU (sdpa) that row is batch x max-length tokens long "
        "and attention over it is quadratic in that length, which is why TRL packed is slower than TRL "
        f"padded here, and srt packed / TRL packed is {r['sft_speed_packed_vs_trl_packed']:.2f}x.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny settings, one repeat")
    parser.add_argument(
        "--model",
        default=None,
        help="model name or path (srt.models.resolve_model_path); default: "
        "a 4-layer hidden-256 Llama with srt.tiny's tokenizer",
    )
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps per run (not timed)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run")
    parser.add_argument(
        "--records",
        type=int,
        default=None,
        help="synthetic records/pairs (default (warmup + steps) x batch size: one epoch per run)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per worker (default 1: on a shared, loaded machine more threads make timings erratic)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results file (default benchmarks/RESULTS.md; --quick writes benchmarks/RESULTS-quick.md)",
    )
    parser.add_argument(
        "--training-only",
        action="store_true",
        help="only the SFT and DPO comparisons (no generation, no step-time grid): for big models on a CPU",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="re-render the markdown from a RESULTS.json written by an earlier run (no measuring)",
    )
    parser.add_argument(
        "--lora",
        action="store_true",
        default=None,
        help="also the demo's LoRA (r 16, alpha 32, no dropout, *_proj of the upper half of the layers), srt and TRL",
    )
    parser.add_argument(
        "--memory-rows",
        "--gradient-checkpointing-row",
        dest="memory_rows",
        action="store_true",
        default=None,
        help="also srt DPO with gradient checkpointing and with the chunked LM head (memory rows; not in the targets)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        out = args.out or args.from_json.with_suffix(".md")
        write_results(
            out,
            saved["machine"],
            saved["settings"],
            saved["model_desc"],
            {"summary": saved["data_summary"]},
            saved["results"],
            saved["load_end"],
        )
        return print(f"wrote {out}")

    s = {**settings(args.quick), "quick": args.quick}
    for key in (
        "repeats",
        "batch_size",
        "max_length",
        "threads",
        "warmup",
        "steps",
        "records",
        "training_only",
        "lora",
        "memory_rows",
    ):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    s.setdefault("records", (s["warmup"] + s["steps"]) * s["batch_size"])
    machine = machine_description()
    print(f"machine: {machine}", flush=True)
    with tempfile.TemporaryDirectory(prefix="srt-bench-") as tmp:
        tmp = Path(tmp)
        if args.model:
            from srt.models import resolve_model_path

            model_path, model_desc = resolve_model_path(args.model), f"`{args.model}`"
        else:
            model_path = build_default_model(tmp / "model")
            model_desc = (
                "Llama, 4 layers, hidden 256, 8 heads (4 KV), MLP 1024, srt.tiny tokenizer (vocab 768), ~4M parameters"
            )
        (tmp / "logs").mkdir()
        data = build_data(model_path, s, tmp)
        print(f"data: {data['summary']}", flush=True)
        results = run_all(s, model_path, data, tmp / "logs")
        out = args.out or HERE / ("RESULTS-quick.md" if args.quick else "RESULTS.md")
        load_end = os.getloadavg()
        summary = write_results(out, machine, s, model_desc, data, results, load_end)
    saved = {
        "machine": machine,
        "settings": s,
        "model_desc": model_desc,
        "data_summary": data["summary"],
        "load_end": load_end,
        "results": results,
        **summary,
    }
    out.with_suffix(".json").write_text(json.dumps(saved, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
