"""Run configuration: YAML files validated by pydantic, with dotted ``--set`` overrides.

One schema serves ``srt-train stage1|stage2|run|preprocess``; each section mirrors the builder it
feeds (torchtune style), so a config reads like the recipe it drives. Unknown keys are errors
(typos must not be ignored); API keys are refused (name the environment variable instead).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from srt.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    path: str = "tiny"  # "tiny" | "smollm2-135m-instruct" | local HF folder | hub id
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    system_prompt: str | None = None
    trust_remote_code: bool = False


class InstructionSource(_Strict):
    """Where instructions come from: a JSON/JSONL file, or a Hugging Face dataset (hub id or local)."""

    path: str
    format: Literal["auto", "jsonl", "json", "hf"] = "auto"
    split: str = "train"
    name: str | None = None  # HF dataset config name
    # Field mapping: our name -> the source's column name.
    fields: dict[str, str] = Field(default_factory=lambda: {"instruction": "instruction"})
    limit: int | None = None  # take the first N (after optional shuffling)
    offset: int = 0  # skip the first N: lets stage 2 rounds use fresh instructions from one file

    @field_validator("fields")
    @classmethod
    def _needs_instruction(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = set(v) - {"instruction", "id", "reference", "input"}
        if unknown:
            raise ValueError(f"unknown field mapping keys {sorted(unknown)}; use instruction, id, reference, input")
        v.setdefault("instruction", "instruction")
        return v


class SamplingSettings(_Strict):
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(512, ge=1)


class GenerationConfig(_Strict):
    backend: Literal["hf", "openai"] = "hf"  # in-process transformers, or an OpenAI-compatible server (vLLM/TGI)
    batch_size: int = Field(8, ge=1)
    chunk_size: int = Field(64, ge=1)  # results are appended to disk every chunk: a kill loses at most one
    response: SamplingSettings = Field(default_factory=lambda: SamplingSettings(temperature=0.7, max_new_tokens=512))
    critique: SamplingSettings = Field(default_factory=lambda: SamplingSettings(temperature=0.0, max_new_tokens=2048))
    server: dict[str, Any] = Field(
        default_factory=dict
    )  # for backend=openai: base_url, model, api_key_env, max_concurrency


class FilterConfig(_Strict):
    # Filter 1 (always on): the critique must parse into weaknesses, suggestions, a score and a
    # refinement. Filter 2: the re-scored refinement must not be worse than the response.
    refinement_vs_response: Literal[">=", ">"] = ">="
    min_refinement_score: int | None = Field(None, ge=1, le=10)


class LoraConfig(_Strict):
    r: int = Field(16, ge=1)
    alpha: int = 32
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"


class OptimConfig(_Strict):
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    betas: tuple[float, float] = (0.9, 0.999)


class SFTConfig(_Strict):
    epochs: int = Field(5, ge=1)
    max_steps: int = -1
    micro_batch_size: int = Field(1, ge=1)
    global_batch_size: int = Field(32, ge=1)
    max_length: int = Field(8192, ge=16)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    lora: LoraConfig | None = None
    gradient_checkpointing: bool = False
    mask_response: bool = False
    ablation: Literal["no_weaknesses", "no_suggestions", "no_score", "no_feedback", "refinement_only"] | None = None
    truncation: Literal["drop", "truncate_right", "truncate_left_response"] = "drop"  # counted and reported
    group_by_length: bool = True
    packing: bool = False
    merge_lora: bool = True  # export merged weights too, so stage 2 can start from them


class DPOConfig(_Strict):
    beta: float = Field(0.01, gt=0)
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    nll_weight: float = Field(0.0, ge=0)
    reference: Literal["precomputed", "frozen_copy", "adapter_disabled"] = "precomputed"
    reference_is_base: bool = False  # required for adapter_disabled: the LoRA base really is the stage-1 model
    check_reference_at_start: bool = True
    epochs: int = Field(1, ge=1)
    max_steps: int = -1
    micro_batch_size: int = Field(1, ge=1)
    global_batch_size: int = Field(32, ge=1)
    max_length: int = Field(2048, ge=16)
    max_prompt_length: int | None = Field(None, ge=1)
    truncation: Literal["drop", "truncate"] = "truncate"  # counted and reported
    # What is trained after each completion (srt.data.DPODataConfig). Stage-2 pairs are an SRT
    # model's response vs its refinement, and the ending teaches it where answers end. Measured on
    # the demo (SmolLM2-135M, 32 pairs): "eos" made it stop after its response (no feedback, no
    # refinement) on 13/64 held-out problems, "feedback" (default, the SRT feedback header) on 1/64.
    # With 127 pairs no choice kept the format: "feedback" -> it never stopped after its refinement,
    # "none" (no ending trained) -> it stopped after its response on 63/64 (README, the demo).
    completion_end: Literal["eos", "feedback", "none"] = "feedback"
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=5e-7))
    lora: LoraConfig | None = None
    gradient_checkpointing: bool = False
    group_by_length: bool = True
    packing: bool = False  # pack each batch's chosen/rejected sequences into rows (no padding, same pairs per step)
    merge_lora: bool = True


class Stage2Config(_Strict):
    rounds: int = Field(1, ge=1)
    # The paper's stage 2 is self-feedback; another critic can be named for experiments (the tiny
    # config uses `reference`, since a 172k-parameter model cannot critique itself).
    critic: dict[str, Any] = Field(default_factory=lambda: {"name": "self"})
    # Paper: keep pairs where the refinement scores strictly higher than the response.
    refinement_vs_response: Literal[">=", ">"] = ">"
    min_refinement_score: int | None = Field(None, ge=1, le=10)
    instructions_per_round: int | None = None  # slice fresh instructions from stage2 data for each round


class TrainerConfig(_Strict):
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: Literal["auto", "ddp", "ddp_spawn", "fsdp", "fsdp2", "deepspeed"] | str = "auto"
    precision: str = "auto"  # auto: bf16-mixed on a GPU that supports it, else 32-true
    log_every_n_steps: int = 10
    gradient_clip_val: float | None = 1.0
    val_fraction: float = Field(0.0, ge=0, lt=1)
    checkpoint_every_n_steps: int = 50
    fsdp: dict[str, Any] = Field(default_factory=dict)  # sharding_strategy, activation_checkpointing, ...


class DataConfig(_Strict):
    stage1: InstructionSource | None = None
    stage2: InstructionSource | None = None


class RunConfig(_Strict):
    name: str = "srt"
    seed: int = 0
    output_dir: str = "runs/srt"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    critic: dict[str, Any] = Field(default_factory=lambda: {"name": "reference"})
    filter: FilterConfig = Field(default_factory=FilterConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    stage2: Stage2Config = Field(default_factory=Stage2Config)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    eval: dict[str, Any] = Field(default_factory=dict)  # optional srt-eval section run after training

    @field_validator("critic")
    @classmethod
    def _critic_named(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(v.get("name"), str) or not v["name"]:
            raise ValueError("critic needs a 'name' (an installed srt.critics plugin, see `srt-train plugins`)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
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


def validation_problems(exc: ValidationError, prefix: str = "") -> str:
    """One line from a pydantic error: ``loc: what is wrong`` per problem, unknown keys called typos."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (*([prefix] if prefix else []), *err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)


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
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
