"""The policy both stages train: :class:`PolicyModule`, the Lightning base of SFT and DPO.

It builds the policy (full fine-tuning or LoRA), keeps fp32 master weights, switches on gradient
checkpointing, and owns AdamW + cosine-with-warmup, gradient clipping (FSDP1 included), the
precision checks and the Hugging Face export. Every setting comes from the run config: the stage's
section (``srt.config.SFTConfig`` / ``DPOConfig``: ``optim``, ``lora``, ``gradient_checkpointing``,
``merge_lora``) and ``srt.config.ModelConfig`` (``dtype``, ``revision``, ``trust_remote_code``).
Gradient accumulation is the Trainer's ``accumulate_grad_batches`` (see
:func:`accumulation_for_global_batch`).

Precision: **fp32 master weights, bf16 compute.** Whatever dtype the weights are loaded in, every
trainable parameter is held in float32 (:func:`fp32_master_weights_`); the Trainer's
``precision: bf16-mixed`` (autocast) or FSDP's mixed precision runs the matmuls in bf16. An AdamW
step at the paper's learning rates (5e-7 .. 1e-5) is far below bf16's resolution (8 significant
bits: next to a weight of 0.02 the nearest bf16 numbers are 1.2e-4 away, so an update under ~6e-5
rounds away), so trainable bf16 weights barely change; for that reason ``bf16-true`` / ``16-true``
(which cast the module back to half precision) are refused for training. Frozen weights (LoRA's
base, DPO's frozen reference) keep their load dtype, except under FSDP1, whose flat parameters
need one dtype per unit. Exports are written in the dtype the weights were loaded in
(:attr:`PolicyModule.load_dtype`), not in fp32.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from pydantic import BaseModel

from srt.config import LoraConfig, ModelConfig, OptimConfig
from srt.data.base import as_section
from srt.data.tokenization import IGNORE_INDEX
from srt.errors import ConfigError

log = logging.getLogger(__name__)

HALF_TRUE_PRECISIONS = ("bf16-true", "16-true")


def accumulation_for_global_batch(global_batch: int, micro_batch: int, world_size: int) -> int:
    """Gradient-accumulation steps so that micro_batch * world_size * steps == global_batch."""
    if min(global_batch, micro_batch, world_size) < 1:
        raise ConfigError(f"batch sizes must be >= 1 (global={global_batch}, micro={micro_batch}, world={world_size})")
    per_step = micro_batch * world_size
    if global_batch % per_step:
        raise ConfigError(
            f"global_batch_size {global_batch} is not divisible by micro_batch_size {micro_batch} x "
            f"{world_size} device(s) = {per_step}; pick a global batch that is a multiple of {per_step}"
        )
    return global_batch // per_step


def build_optimizer(params, optim: OptimConfig | Mapping[str, Any]) -> torch.optim.AdamW:
    """AdamW from the ``optim`` section; as in HF Trainer, 1-D tensors (biases, norm scales) get no
    weight decay."""
    optim = as_section(optim, OptimConfig, "optim")
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("no trainable parameters (is the model frozen, or is the LoRA target list empty?)")
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": optim.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=optim.lr, betas=tuple(optim.betas))


def cosine_with_warmup(optimizer, total_steps: int, warmup_ratio: float) -> dict[str, Any]:
    """Lightning scheduler dict: linear warmup over ceil(ratio * total) steps, then cosine to 0."""
    from transformers import get_cosine_schedule_with_warmup

    total_steps = max(1, int(total_steps))
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(warmup_ratio * total_steps), total_steps)
    return {"scheduler": scheduler, "interval": "step", "frequency": 1}


def scored_logits(
    model, input_ids, labels, attention_mask=None, position_ids=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits only at the positions whose next token is labelled: ``(logits [N, V], labels [N], scored [B, T-1])``.

    ``scored[b, t]`` is True where ``labels[b, t + 1] != -100``; the N logits are those positions in
    row-major order. transformers projects only these hidden states through the LM head
    (``logits_to_keep`` as a boolean mask), so the [B, T, V] logits of masked prompts and padding
    (large for a 50k-150k vocabulary) are never built. Packed rows: pass ``position_ids`` and no mask.
    """
    input_ids, position_ids, keep, scored = _scored_positions(model, input_ids, labels, position_ids)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=keep,
        use_cache=False,
    ).logits
    if logits.shape[:-1] != (int(scored.sum()),):
        raise ConfigError(
            f"{type(model).__name__} ignores logits_to_keep given as a boolean mask (transformers models call "
            "slice_logits_to_keep); srt's training losses need a transformers causal LM that supports it"
        )
    return logits, labels[:, 1:][scored], scored


def scored_token_logps(
    model, input_ids, labels, attention_mask=None, position_ids=None, *, lm_head_chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(label) at every labelled position, float32: ``(token_logps [N], scored [B, T-1])`` in
    :func:`scored_logits`' order. Both losses use it: SFT's masked cross-entropy is ``-token_logps``,
    DPO sums it per sequence.

    ``lm_head_chunk_size`` None: the model's forward computes the logits of all N positions (kept for
    the backward: N x vocab floats, 4 bytes each), upcast to float32 1,024 rows at a time. A number:
    the decoder runs alone and its final hidden states go through the LM head that many positions at
    a time under activation checkpointing, so at most one chunk's logits exist, in the forward and in
    the backward, which recomputes them (one more LM-head matmul per labelled token). The log-probs
    are the same (float rounding). Only for models whose logits are the plain LM head of the final
    hidden state (:data:`PLAIN_LM_HEAD_MODEL_TYPES`), and not under FSDP (the run plan refuses it).
    """
    if lm_head_chunk_size is None:
        logits, scored_labels, scored = scored_logits(model, input_ids, labels, attention_mask, position_ids)
        parts = [
            _label_logps(part, part_labels) for part, part_labels in zip(logits.split(1024), scored_labels.split(1024))
        ]
        return (torch.cat(parts) if parts else logits.new_zeros(0, dtype=torch.float32)), scored
    causal_lm = model.get_base_model() if is_peft_model(model) else model
    model_type = getattr(causal_lm.config, "model_type", None)
    if model_type not in PLAIN_LM_HEAD_MODEL_TYPES:
        raise ConfigError(
            f"lm_head_chunk_size: model type {model_type!r} is not one whose logits are known to be the plain LM head "
            f"of the final hidden state ({', '.join(PLAIN_LM_HEAD_MODEL_TYPES)}); unset lm_head_chunk_size"
        )
    input_ids, position_ids, keep, scored = _scored_positions(model, input_ids, labels, position_ids)
    hidden = causal_lm.base_model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state[keep]
    scored_labels = labels[:, 1:][scored]
    head = causal_lm.get_output_embeddings()
    parts = [
        torch.utils.checkpoint.checkpoint(_head_logps, head, part, part_labels, use_reentrant=False)
        for part, part_labels in zip(hidden.split(lm_head_chunk_size), scored_labels.split(lm_head_chunk_size))
    ]
    return (torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)), scored


# Model types whose causal-LM logits are exactly ``lm_head(final hidden state)`` (no soft-capping,
# scaling or extra heads), so lm_head_chunk_size may run the decoder and the head apart.
PLAIN_LM_HEAD_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "smollm3")


def _label_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = logits.float()  # no-op for float32; bf16 is upcast one chunk at a time
    return logits.gather(-1, labels[:, None]).squeeze(-1) - logits.logsumexp(dim=-1)


def _head_logps(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return _label_logps(head(hidden), labels)


def _scored_positions(model, input_ids, labels, position_ids):
    """``(input_ids, position_ids, keep [rows, T], scored [B, T-1])``: which positions predict a label;
    packed rows under flash-attention go in as one row."""
    scored = labels[:, 1:] != IGNORE_INDEX
    keep = F.pad(scored, (0, 1), value=False)  # the last position predicts nothing
    if position_ids is not None and input_ids.shape[0] > 1 and _flash_attention(model):
        # flash-attention finds packed sequences (restarting position_ids) only within a single row, so
        # the packed rows go in as one. Every row starts an example whose first label is -100: nothing is
        # scored across a row boundary and the scored positions keep their order.
        input_ids, position_ids, keep = input_ids.reshape(1, -1), position_ids.reshape(1, -1), keep.reshape(1, -1)
    return input_ids, position_ids, keep, scored


def _flash_attention(model) -> bool:
    return "flash" in str(getattr(model.config, "_attn_implementation", ""))


def apply_lora(model, lora: LoraConfig | Mapping[str, Any]):
    """Wrap ``model`` with fresh LoRA adapters from the ``lora`` section (``r``, ``alpha``, ``dropout``,
    ``target_modules``; or a mapping of those fields)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    lora = as_section(lora, LoraConfig, "lora")
    config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def is_peft_model(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def load_dtype_of(model: torch.nn.Module) -> torch.dtype | None:
    """The dtype most of ``model``'s floating-point weights have (by element count); None if it has none."""
    counts: Counter[torch.dtype] = Counter()
    for param in model.parameters():
        if param.is_floating_point():
            counts[param.dtype] += param.numel()
    return counts.most_common(1)[0][0] if counts else None


def fp32_master_weights_(module: torch.nn.Module, *, all_floating: bool = False) -> Counter[torch.dtype]:
    """Upcast to float32, in place, every trainable floating-point parameter that is not float32
    (every floating-point parameter with ``all_floating``). Returns the number of tensors upcast per
    original dtype.

    The parameter objects stay the same (``param.data`` is replaced), so tied weights stay tied and
    references held elsewhere (an optimizer built later, peft's bookkeeping) remain valid.
    """
    upcast: Counter[torch.dtype] = Counter()
    for param in module.parameters():  # each shared (tied) parameter once
        if (param.requires_grad or all_floating) and param.is_floating_point() and param.dtype != torch.float32:
            upcast[param.dtype] += 1
            param.data = param.data.to(torch.float32)
    return upcast


def needs_uniform_dtype(strategy) -> bool:
    """True for FSDP1 (Lightning's ``FSDPStrategy``): it flattens each unit's parameters into one flat
    parameter of a single dtype, so trainable fp32 and frozen bf16 weights cannot share a unit."""
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(strategy, FSDPStrategy)


def _keeps_own_master_weights(strategy) -> bool:
    # DeepSpeed holds fp32 master weights inside its optimizer, whatever dtype the module has.
    name = strategy if isinstance(strategy, str) else type(strategy).__name__
    return "deepspeed" in name.lower()


def check_training_precision(precision: str, strategy=None) -> None:
    """Refuse ``bf16-true`` / ``16-true`` for training: they cast every weight, trainable ones
    included, to half precision, where updates at fine-tuning learning rates are lost.
    ``strategy``: the Lightning strategy or its name in the run config (``trainer.strategy``)."""
    if str(precision) in HALF_TRUE_PRECISIONS and not _keeps_own_master_weights(strategy):
        mixed = "bf16-mixed" if str(precision).startswith("bf16") else "16-mixed"
        raise ConfigError(
            f"trainer precision {precision!r} trains the weights in half precision: Lightning casts the whole "
            f"module to {'bfloat16' if mixed == 'bf16-mixed' else 'float16'}, and an optimizer step at fine-tuning "
            "learning rates (5e-7 .. 1e-5) is smaller than the spacing of half-precision numbers around a weight "
            "(bf16: 1/256 to 1/128 of its magnitude), so most updates round away and the weights barely move. Use "
            f"precision '{mixed}': srt keeps fp32 master weights and the matmuls still run in half precision. To "
            "save memory, load the weights with model.dtype: bfloat16 (frozen weights, e.g. a LoRA base, stay in "
            "that dtype)"
        )


class PolicyModule(L.LightningModule):
    """Shared base of :class:`~srt.training.sft.SFTModule` and :class:`~srt.training.dpo.DPOModule`:
    a causal LM policy (full or LoRA) + optimizer/scheduler + HF export.

    ``model`` is a name/path or an already-loaded ``PreTrainedModel``; either way the policy is built
    in :meth:`configure_model` (so sharding strategies can wrap it). A ``PeftModel`` passed in keeps
    training its own adapter (``config.lora`` must then be unset).

    ``config``: the run config's section for this stage (a subclass's :attr:`config_schema`, or a
    mapping of its fields; unset: the section's defaults); the module reads ``optim``, ``lora``,
    ``gradient_checkpointing`` and ``merge_lora`` from it. ``model_config``: the run config's ``model``
    section (or a mapping), for how ``model`` is loaded: ``dtype``, ``revision``, ``trust_remote_code``
    (its ``path`` is not read: ``model`` says what to load). Both are kept in the checkpoint's
    hyperparameters as plain dicts (Lightning loads checkpoints with ``weights_only=True``).
    """

    config_schema: ClassVar[type[BaseModel]]
    section: ClassVar[str]  # the run config's key of config_schema, for messages

    def __init__(
        self,
        model: str | os.PathLike | torch.nn.Module,
        tokenizer=None,
        *,
        config: BaseModel | Mapping[str, Any] | None = None,
        model_config: ModelConfig | Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.config = as_section({} if config is None else config, self.config_schema, self.section)
        self.model_config = as_section({} if model_config is None else model_config, ModelConfig, "model")
        self.save_hyperparameters(
            {"config": self.config.model_dump(mode="json"), "model_config": self.model_config.model_dump(mode="json")}
        )
        self.tokenizer = tokenizer
        self.model: torch.nn.Module | None = None
        self.model_name_or_path: str | None = None
        # A given model is kept in a tuple (not registered as a submodule) until configure_model.
        self._given_model: tuple[torch.nn.Module, ...] = ()
        if isinstance(model, torch.nn.Module):
            if self.config.lora is not None and is_peft_model(model):
                raise ConfigError(f"model is already a PeftModel: its adapter is trained; unset {self.section}.lora")
            self._given_model = (model,)
        else:
            self.model_name_or_path = str(model)
        # The dtype of the starting weights (set when the policy is built): exports are written in it.
        self.load_dtype: torch.dtype | None = None
        self._batch_start = 0.0

    @property
    def has_adapter(self) -> bool:
        """The policy trains a LoRA adapter: a fresh one (``config.lora``) or that of a PeftModel passed in."""
        model = self.model if self.model is not None else (self._given_model[0] if self._given_model else None)
        return self.config.lora is not None or (model is not None and is_peft_model(model))

    @property
    def merges_lora(self) -> bool:
        """The final export merges the adapter into full weights (``config.merge_lora`` with a LoRA policy)."""
        return self.has_adapter and self.config.merge_lora

    # -- model building -------------------------------------------------------------------
    def load_base_model(self) -> torch.nn.Module:
        """Load the starting weights as ``model_config`` says (a stage-1 adapter folder is merged by
        load_model_and_tokenizer); on the CPU, in eval mode."""
        from srt.models import load_model_and_tokenizer

        mc = self.model_config
        model, tokenizer = load_model_and_tokenizer(
            self.model_name_or_path, dtype=mc.dtype, revision=mc.revision, trust_remote_code=mc.trust_remote_code
        )
        if self.tokenizer is None:
            self.tokenizer = tokenizer
        return model

    def configure_model(self) -> None:
        """Build the policy. The Trainer calls this (inside the strategy's init context); outside a
        Trainer call it yourself before using the module. Idempotent."""
        if self.model is None:
            base = self._given_model[0] if self._given_model else self.load_base_model()
            self._given_model = ()
            self._setup_policy(base)

    def _setup_policy(self, model: torch.nn.Module) -> None:
        self.load_dtype = load_dtype_of(model)
        self.on_base_model(model)
        model.train()  # loaders return eval-mode models; dropout (e.g. LoRA's) must be on in training
        if self.config.lora is not None:
            model = apply_lora(model, self.config.lora)  # peft creates the adapters in fp32 (autocast_adapter_dtype)
        elif is_peft_model(model):
            for name, param in model.named_parameters():  # continue training the loaded adapter
                param.requires_grad_(".lora_" in name)
        self.model = model
        self._use_fp32_master_weights()
        if self.config.gradient_checkpointing:
            # Non-reentrant checkpointing works with frozen inputs (LoRA) without enable_input_require_grads.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if self.device_mesh is not None:  # ModelParallelStrategy (fsdp2): shard now, before the optimizer exists
            from srt.training.distributed import shard_model_fsdp2

            shard_kwargs = getattr(self.trainer.strategy, "shard_kwargs", dict)()
            shard_model_fsdp2(model, self.device_mesh, **shard_kwargs)

    def _use_fp32_master_weights(self) -> None:
        """Trainable weights in fp32 (before any sharding); under FSDP1 every weight (see module docstring)."""
        attached = self._trainer is not None
        uniform = attached and needs_uniform_dtype(self.trainer.strategy)
        upcast = fp32_master_weights_(self, all_floating=uniform)  # self: the policy and e.g. DPO's reference
        if upcast and (not attached or self.trainer.is_global_zero):
            what = ", ".join(f"{n} {str(d).removeprefix('torch.')}" for d, n in upcast.items())
            scope = "all weights: FSDP1 needs one dtype per unit" if uniform else "the trainable weights"
            log.info(
                "fp32 master weights: upcast %s parameter tensor(s) to float32 (%s); compute runs in the "
                "Trainer's precision, exports are written in %s",
                what,
                scope,
                self.load_dtype,
            )

    def setup(self, stage: str) -> None:
        if stage == "fit":
            check_training_precision(self.trainer.precision, self.trainer.strategy)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # ddp_spawn hands the trained weights back to the main process, whose policy was never built
        # (and Lightning loads them non-strictly there, so they would otherwise be dropped silently).
        self.configure_model()
        if not self._trainable_only_checkpoint:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        frozen = {n for n, p in self.named_parameters() if not p.requires_grad}
        frozen |= {n for n, _ in self.named_buffers()}
        missing = [k for k in result.missing_keys if k not in frozen]
        if missing or result.unexpected_keys:
            raise RuntimeError(
                f"checkpoint does not fit this policy: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}"
            )
        return result

    # -- checkpoints: with LoRA, only what is trained --------------------------------------------
    _trainable_only_checkpoint = False

    def _frozen_weights_reload(self) -> bool:
        """Checkpoints may leave the frozen weights out when they come back from the base model on
        resume: a LoRA policy, on a strategy that saves one full state dict (not sharded)."""
        from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

        sharded = self._trainer is not None and isinstance(self.trainer.strategy, (FSDPStrategy, ModelParallelStrategy))
        return self.has_adapter and not sharded

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The frozen base of a LoRA run is most of the state dict (all of SmolLM2-135M's 568 MB in
        # fp32) and never changes: resume reloads it from the base model, as the first attempt did.
        if self._frozen_weights_reload():
            trainable = {n for n, p in self.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
            checkpoint["srt_trainable_only"] = True

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._trainable_only_checkpoint = bool(checkpoint.get("srt_trainable_only"))

    def on_base_model(self, model: torch.nn.Module) -> None:
        """Hook: sees the starting weights before LoRA wrapping (DPO keeps a frozen copy here)."""

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        # Packed rows come with position_ids restarting per example and no attention_mask:
        # transformers then builds the block-diagonal causal mask (see srt.data.packing).
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).logits

    # -- optimization ---------------------------------------------------------------------
    def configure_optimizers(self):
        optim = self.config.optim
        optimizer = build_optimizer(self.model.parameters(), optim)
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ConfigError("cannot size the LR schedule: set max_steps or max_epochs on the Trainer")
        return {"optimizer": optimizer, "lr_scheduler": cosine_with_warmup(optimizer, total, optim.warmup_ratio)}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # Lightning's FSDP1 precision plugin refuses clipping by norm (the norm spans every shard);
        # the FSDP root unit computes it across ranks and clips.
        from lightning.pytorch.strategies import FSDPStrategy

        strategy = self.trainer.strategy
        if gradient_clip_val and isinstance(strategy, FSDPStrategy) and gradient_clip_algorithm in (None, "norm"):
            strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_train_start(self):
        # Lightning keeps submodules in whatever mode they were given; HF models load in eval mode.
        self.model.train()
        self._check_master_weights()

    def _check_master_weights(self) -> None:
        """Trainable weights must still be fp32 once Lightning has set everything up."""
        if _keeps_own_master_weights(self.trainer.strategy):
            return
        low = Counter(str(p.dtype) for p in self.model.parameters() if p.requires_grad and p.dtype != torch.float32)
        if low:  # something cast the module after configure_model (a precision plugin, a callback)
            raise ConfigError(
                f"trainable weights are not float32 when training starts ({dict(low)}); updates at fine-tuning "
                "learning rates are lost in half precision. Use trainer precision bf16-mixed (not *-true)"
            )

    def on_train_batch_start(self, batch, batch_idx):
        self._batch_start = time.perf_counter()

    def log_lr(self) -> None:
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)

    # -- export ---------------------------------------------------------------------------
    def save_hf(
        self, output_dir: str | os.PathLike, merge_lora: bool = False, dtype: str | torch.dtype | None = "auto"
    ):
        """Export as a HF folder (adapter, merged or full weights + tokenizer); rank 0 writes
        (:func:`srt.training.export.save_hf`). ``merge_lora``: write merged full weights of a LoRA policy
        (the pipeline passes :attr:`merges_lora`); by default a LoRA policy exports its adapter.

        ``dtype``: of merged or full weights; "auto" (default) is :attr:`load_dtype`, the dtype the starting
        weights were loaded in (so fp32 master weights do not double the export of a bf16 model), None
        keeps the training dtype. An adapter-only export keeps the adapter's own dtype.
        """
        from srt.training.export import save_hf

        attached = self._trainer is not None
        is_zero = self.trainer.is_global_zero if attached else True
        root = self.trainer.strategy.model if attached else None  # FSDP1 gathers through its root unit
        if isinstance(dtype, str) and dtype == "auto":
            dtype = self.load_dtype
        return save_hf(
            self.model,
            output_dir,
            self.tokenizer,
            merge_lora=merge_lora,
            is_global_zero=is_zero,
            fsdp_root=root,
            dtype=dtype,
        )
