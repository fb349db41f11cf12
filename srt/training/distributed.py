"""Sharded multi-GPU / multi-node training: FSDP (``strategy: fsdp``) and FSDP2 (``strategy: fsdp2``).

Both read the ``trainer.fsdp`` section of the run config (every key optional)::

    wrap_layers: [LlamaDecoderLayer]   # the decoder-layer classes, one FSDP unit each (names or dotted paths)
    precision: bf16                    # FSDP mixed precision: bf16 | fp16 | fp32 (fp32 = none)
    activation_checkpointing: false    # recompute each decoder layer in backward
    sharding_strategy: FULL_SHARD      # FULL_SHARD | SHARD_GRAD_OP | HYBRID_SHARD | NO_SHARD (fsdp2: first two)
    state_dict_type: sharded           # checkpoints: one file per rank (sharded) or gathered on rank 0 (full)
    cpu_offload: false                 # fsdp only: keep parameters on the CPU between uses
    limit_all_gathers: true            # fsdp only: bound the all-gathers in flight (caps memory)

* ``fsdp`` is Lightning's :class:`~lightning.pytorch.strategies.FSDPStrategy` (torch FSDP1, GPU only).
  ``use_orig_params=True`` so LoRA's frozen and trainable parameters can share a flat parameter.
  The model does not exist when the strategy is built, so the wrap classes are resolved from
  transformers by name; without ``wrap_layers`` a list of common decoder layers is used.
* ``fsdp2`` is Lightning's :class:`~lightning.pytorch.strategies.ModelParallelStrategy` (data parallel
  over all devices, no tensor parallelism): :meth:`PolicyModule.configure_model
  <srt.training.policy.PolicyModule.configure_model>` calls :func:`shard_model_fsdp2`, which applies
  ``torch.distributed.fsdp.fully_shard`` to every decoder layer and then to the whole model, before
  the optimizer is created. Without ``wrap_layers`` the model's own ``_no_split_modules`` are used.
  It also runs on CPU (gloo), which is how the tests exercise the sharded path.

Exporting a sharded model (``srt.training.export.save_hf``) gathers the full weights on every rank and
writes from rank 0.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any, Literal

import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from pydantic import BaseModel, ConfigDict, ValidationError

from srt.errors import ConfigError, validation_problems

# Used by ``fsdp`` when wrap_layers is not set (the model is not built yet when the strategy is).
DEFAULT_WRAP_LAYERS = (
    "LlamaDecoderLayer",
    "MistralDecoderLayer",
    "Qwen2DecoderLayer",
    "Qwen3DecoderLayer",
    "Gemma2DecoderLayer",
    "Gemma3DecoderLayer",
    "Phi3DecoderLayer",
)
_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp32": None,
    "float32": None,
    "32": None,
}


class FSDPOptions(BaseModel):
    """``trainer.fsdp``: see the module docstring."""

    model_config = ConfigDict(extra="forbid")
    wrap_layers: list[str] | None = None
    precision: Literal["bf16", "bfloat16", "fp16", "float16", "fp32", "float32", "32"] = "fp32"
    activation_checkpointing: bool = False
    sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"] = "FULL_SHARD"
    state_dict_type: Literal["sharded", "full"] = "sharded"
    cpu_offload: bool = False
    limit_all_gathers: bool = True

    @classmethod
    def parse(cls, options: dict[str, Any] | None) -> FSDPOptions:
        try:
            return cls.model_validate(dict(options or {}))
        except ValidationError as exc:
            raise ConfigError(validation_problems(exc, "trainer.fsdp")) from None

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES[self.precision]


# ---------------------------------------------------------------------------------------------
# FSDP1 (Lightning FSDPStrategy)


def resolve_layer_class(name: str) -> type[torch.nn.Module]:
    """``"LlamaDecoderLayer"`` -> the transformers class; ``"pkg.module.Class"`` -> that class.

    A bare name is looked up in ``transformers.models.<type>.modeling_<type>`` for the model types
    whose (underscore-free) name starts the class name, longest first (Gemma3 before Gemma).
    """
    if "." in name:
        module_name, _, cls_name = name.rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError):
            raise ConfigError(f"trainer.fsdp.wrap_layers: cannot import {name!r}") from None
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    lowered = name.lower()
    model_types = sorted(
        (t for t in MODEL_MAPPING_NAMES if lowered.startswith(t.replace("_", "").replace("-", ""))),
        key=len,
        reverse=True,
    )
    for model_type in model_types:
        package = model_type.replace("-", "_")
        try:
            module = importlib.import_module(f"transformers.models.{package}.modeling_{package}")
        except ImportError:
            continue
        if isinstance(getattr(module, name, None), type):
            return getattr(module, name)
    raise ConfigError(
        f"trainer.fsdp.wrap_layers: no transformers class named {name!r}; give its full path "
        f"(e.g. 'my_package.modeling.MyDecoderLayer') or the model's `_no_split_modules` names"
    )


def fsdp_strategy(options: dict[str, Any] | None = None) -> FSDPStrategy:
    """Lightning ``FSDPStrategy``: one FSDP unit per decoder layer, options from ``trainer.fsdp``."""
    from torch.distributed.fsdp import MixedPrecision

    opts = FSDPOptions.parse(options)
    layers = {resolve_layer_class(name) for name in (opts.wrap_layers or DEFAULT_WRAP_LAYERS)}
    dtype = opts.dtype
    return FSDPStrategy(
        auto_wrap_policy=layers,
        activation_checkpointing_policy=layers if opts.activation_checkpointing else None,
        # Gradients reduced in fp32 (as fsdp2 does); buffers stay as they are: casting RoPE's fp32
        # inv_freq to bf16 puts positions ~8k off by more than a radian.
        mixed_precision=MixedPrecision(param_dtype=dtype, reduce_dtype=torch.float32, buffer_dtype=None)
        if dtype
        else None,
        sharding_strategy=opts.sharding_strategy,
        state_dict_type=opts.state_dict_type,
        cpu_offload=opts.cpu_offload,
        limit_all_gathers=opts.limit_all_gathers,
        use_orig_params=True,  # LoRA: frozen and trainable parameters in the same FSDP unit
    )


# ---------------------------------------------------------------------------------------------
# FSDP2 (Lightning ModelParallelStrategy + fully_shard)


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` sharding over every device (data parallel = world size, no tensor
    parallelism). It carries the ``trainer.fsdp`` options that :func:`shard_model_fsdp2` applies
    from the module's ``configure_model`` (see :meth:`shard_kwargs`)."""

    def __init__(self, options: dict[str, Any] | None = None, **kwargs: Any):
        self.options = FSDPOptions.parse(options)
        if self.options.sharding_strategy not in ("FULL_SHARD", "SHARD_GRAD_OP"):
            raise ConfigError(
                f"trainer.fsdp.sharding_strategy {self.options.sharding_strategy} is not available with strategy "
                "fsdp2; use FULL_SHARD or SHARD_GRAD_OP (or strategy: fsdp)"
            )
        if self.options.cpu_offload:
            raise ConfigError("trainer.fsdp.cpu_offload is not supported with strategy fsdp2; use strategy: fsdp")
        kwargs.setdefault("save_distributed_checkpoint", self.options.state_dict_type == "sharded")
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, **kwargs)

    def setup_environment(self) -> None:
        # "auto" in ModelParallelStrategy means one data-parallel group per node; here it is all of them.
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def shard_kwargs(self) -> dict[str, Any]:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        dtype = self.options.dtype
        return {
            # Gradients are reduced in fp32: cheap next to the forward/backward and keeps the update exact.
            "mp_policy": MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else None,
            "activation_checkpointing": self.options.activation_checkpointing,
            "wrap_layers": self.options.wrap_layers,
            "reshard_after_forward": self.options.sharding_strategy == "FULL_SHARD",
        }


def fsdp2_strategy(options: dict[str, Any] | None = None) -> FSDP2Strategy:
    return FSDP2Strategy(options)


def decoder_layers(model: torch.nn.Module, wrap_layers: Iterable[str] | None = None) -> list[torch.nn.Module]:
    """The modules to shard one by one: classes named in ``wrap_layers``, by default the
    ``_no_split_modules`` of the (HF) models inside ``model``."""
    names = set(wrap_layers or ())
    if not names:
        for module in model.modules():
            names.update(getattr(module, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(
            f"no decoder layer of class {sorted(names) or '(none declared by the model)'} in "
            f"{type(model).__name__}; set trainer.fsdp.wrap_layers to the model's decoder-layer class name"
        )
    return layers


def shard_model_fsdp2(
    model: torch.nn.Module,
    device_mesh,
    mp_policy=None,
    activation_checkpointing: bool = False,
    wrap_layers: Iterable[str] | None = None,
    reshard_after_forward: bool = True,
) -> torch.nn.Module:
    """``fully_shard`` each decoder layer, then the root (in place; returns ``model``).

    ``device_mesh``: a 1-D mesh, or Lightning's 2-D ``(data_parallel, tensor_parallel)`` mesh
    (its data-parallel dimension is used). Already sharded models are returned unchanged.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(model, FSDPModule):
        return model
    if device_mesh.mesh_dim_names and "data_parallel" in device_mesh.mesh_dim_names:
        device_mesh = device_mesh["data_parallel"]
    kwargs = {"mesh": device_mesh, "reshard_after_forward": reshard_after_forward}
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    layers = decoder_layers(model, wrap_layers)
    already = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5 name
    if already is None:
        already = getattr(model, "is_gradient_checkpointing", False)
    if activation_checkpointing and not already:
        if hasattr(model, "activation_checkpointing_enable"):
            # transformers' own checkpointing keeps parameter names unchanged (no wrapper module).
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        else:
            from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

            layer_ids = {id(layer) for layer in layers}
            apply_activation_checkpointing(model, check_fn=lambda m: id(m) in layer_ids)
    for layer in layers:
        fully_shard(layer, **kwargs)
    # The root unit holds what is left (embeddings, final norm, LM head); it is needed by the
    # output anyway, so it is not resharded after forward.
    fully_shard(model, **{**kwargs, "reshard_after_forward": False})
    return model
