"""Export a trained policy as a standard Hugging Face folder, atomically, from rank 0 only.

- Full fine-tuning: the model (config + safetensors) and the tokenizer.
- LoRA, ``merge_lora=False``: the adapter folder (``adapter_config.json`` + adapter weights, loadable
  with ``peft.PeftModel.from_pretrained`` / ``AutoPeftModelForCausalLM``) and the tokenizer.
- LoRA, ``merge_lora=True``: merged full weights (W + scaling * B @ A) that load with plain
  ``AutoModelForCausalLM.from_pretrained``. The merge is computed into a new state dict, so the
  live PeftModel is left untouched (training can continue after an export).

``dtype`` (e.g. ``torch.bfloat16``): the dtype of the merged or full weights written, and the
``dtype`` in their ``config.json``; :meth:`srt.training.policy.PolicyModule.save_hf` passes the dtype
the weights were loaded in, so a bf16 model trained with fp32 master weights is exported in bf16.
An adapter-only export keeps the adapter's own dtype.

Sharded models (FSDP2 / ``ModelParallelStrategy``: parameters are DTensors) are gathered into a full
CPU state dict first; that gather is a collective, so call ``save_hf`` on **every** rank; only rank 0
writes. The folder is written to a temporary sibling and renamed into place, so a crash never
leaves a half-written export under the final name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from srt.errors import ConfigError


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # peft is a dependency, but keep full fine-tuning usable without it
        return False
    return isinstance(model, PeftModel)


_WRAPPERS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module")


def _unwrapped(name: str) -> str:
    """A module or parameter name without FSDP1 / activation-checkpointing wrapper levels."""
    return ".".join(p for p in name.split(".") if p not in _WRAPPERS)


def _lookup(root: torch.nn.Module, dotted: str) -> torch.Tensor:
    obj = root
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _full_state_dict(
    model: torch.nn.Module, fsdp_root: torch.nn.Module | None = None
) -> dict[str, torch.Tensor] | None:
    """Gathered CPU state dict if the model is sharded (FSDP1 units or FSDP2 DTensors), else None
    (use the live one). A collective: every rank must call it; with FSDP1 only rank 0 gets the tensors."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.tensor import DTensor

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
        # FSDP1: the parameters outside the wrapped layers belong to the root unit (Lightning's
        # wrapper around the LightningModule), so gather from the root and keep this model's part.
        name = next((n for n, m in (fsdp_root.named_modules() if fsdp_root is not None else ()) if m is model), None)
        if name is None:
            raise ConfigError(
                "the model is sharded with FSDP: pass fsdp_root=, the FSDP-wrapped module that contains it"
            )
        # summon_full_params, not a state-dict gather: torch's FSDP1 state-dict hooks fail when the root
        # unit holds only frozen parameters (a LoRA model's embeddings).
        from torch.distributed.fsdp import ShardingStrategy

        sharded = getattr(fsdp_root, "sharding_strategy", None) != ShardingStrategy.NO_SHARD  # one device: NO_SHARD
        names = [n for n, _ in model.named_parameters()]  # the names state_dict() would have (wrapped)
        for mod_name, module in model.named_modules():
            prefix = f"{mod_name}." if mod_name else ""
            names += [
                prefix + b
                for b, _ in module.named_buffers(recurse=False)
                if b not in module._non_persistent_buffers_set
            ]
            # The root unit's parameters: FSDP1 leaves them as plain tensor attributes between steps.
            names += [
                prefix + k for k, v in vars(module).items() if isinstance(v, torch.Tensor) and not k.startswith("_")
            ]
        with FullyShardedDataParallel.summon_full_params(
            fsdp_root, writeback=False, offload_to_cpu=sharded, rank0_only=True
        ):
            # Looked up by attribute: inside summon_full_params a unit's parameters are the full tensors.
            return {_unwrapped(name): _lookup(model, name).detach().cpu().clone() for name in names}
    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return None
    return get_model_state_dict(model, options=options)


def merged_lora_state_dict(peft_model, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Base-model state dict (HF key names) with every active LoRA delta folded into its weight, on CPU."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    state_dict = peft_model.state_dict() if state_dict is None else state_dict
    prefix = "base_model.model."
    merged: dict[str, torch.Tensor] = {}
    lora_modules = {_unwrapped(name): m for name, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    for name, module in lora_modules.items():
        if not isinstance(module, LoraLinear) or getattr(module, "use_dora", {}).get(module.active_adapters[0], False):
            raise ConfigError(
                f"merge_lora supports plain LoRA on Linear layers only; {name} is {type(module).__name__}"
            )
        weight = state_dict[f"{name}.base_layer.weight"]
        delta = torch.zeros(weight.shape, dtype=torch.float32, device="cpu")
        for adapter in module.active_adapters:
            lora_a = state_dict[f"{name}.lora_A.{adapter}.weight"].float().cpu()
            lora_b = state_dict[f"{name}.lora_B.{adapter}.weight"].float().cpu()
            update = lora_b @ lora_a
            delta += (update.T if module.fan_in_fan_out else update) * module.scaling[adapter]
        merged[f"{name.removeprefix(prefix)}.weight"] = (weight.float().cpu() + delta).to(weight.dtype)
    for key, value in state_dict.items():
        if ".lora_" in key or ".base_layer." in key:
            continue  # already folded above
        if "modules_to_save" in key or "original_module" in key:
            raise ConfigError(f"merge_lora does not support peft modules_to_save ({key})")
        merged[key.removeprefix(prefix)] = value.detach().cpu()
    return merged


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _as_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ConfigError(f"export dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    return _DTYPES[name]


def cast_state_dict(
    state_dict: dict[str, torch.Tensor], dtype: torch.dtype, keep: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """Floating-point tensors cast to ``dtype`` (others unchanged); tensors that shared storage still do
    (tied weights are then recognised and saved once). Keys naming a module in ``keep`` (a model's
    ``_keep_in_fp32_modules``) are left as they are."""
    keep_re = re.compile(r"(^|\.)(" + "|".join(map(re.escape, keep)) + r")(\.|$)") if keep else None
    done: dict[tuple, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if (
            not isinstance(value, torch.Tensor)
            or not value.is_floating_point()
            or value.dtype == dtype
            or (keep_re is not None and keep_re.search(key))
        ):
            out[key] = value
            continue
        alias = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), value.stride())
        if alias not in done:
            done[alias] = value.detach().to(dtype)
        out[key] = done[alias]
    return out


def _keep_in_fp32(model: torch.nn.Module) -> tuple[str, ...]:
    names: set[str] = set()
    for module in model.modules():
        for attr in ("_keep_in_fp32_modules", "_keep_in_fp32_modules_strict"):
            names.update(getattr(module, attr, None) or ())
    return tuple(sorted(names))


def _write_config_dtype(folder: Path, dtype: torch.dtype) -> None:
    """save_pretrained records the live parameters' dtype (fp32 master weights); record the one written."""
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    name = str(dtype).removeprefix("torch.")
    config["dtype"] = name
    if "torch_dtype" in config:
        config["torch_dtype"] = name
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_hf(
    model: torch.nn.Module,
    output_dir: str | os.PathLike,
    tokenizer=None,
    *,
    merge_lora: bool = False,
    is_global_zero: bool = True,
    fsdp_root: torch.nn.Module | None = None,
    dtype: str | torch.dtype | None = None,
) -> Path:
    """Write ``model`` (+ ``tokenizer``) as a HF folder at ``output_dir`` (replacing it atomically).

    Call on every rank when the model is sharded; pass ``is_global_zero`` from the trainer/fabric,
    and with FSDP1 ``fsdp_root``, the FSDP root module (``trainer.strategy.model``).
    ``dtype``: of the merged or full weights written ("bfloat16", ``torch.bfloat16``, ...; None keeps the
    live tensors' dtype); ignored for an adapter-only export, which keeps the adapter's dtype.
    Returns the output path.
    """
    output_dir = Path(output_dir)
    dtype = _as_dtype(dtype)
    is_peft = _is_peft(model)
    if merge_lora and not is_peft:
        raise ConfigError("merge_lora=True needs a LoRA (peft) model; this model is fully fine-tuned")
    gathered = _full_state_dict(model, fsdp_root)  # collective: every rank must reach this line
    if not is_global_zero:
        return output_dir
    if is_peft and not merge_lora:
        dtype = None  # the adapter keeps its own dtype (fp32 adapters on a bf16 base)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = output_dir.parent / f".{output_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir()
    try:
        if merge_lora:
            base = model.get_base_model()
            state_dict = merged_lora_state_dict(model, gathered)
        else:
            base, state_dict = model, gathered  # peft filters the adapter weights itself
        if dtype is not None:
            state_dict = cast_state_dict(
                base.state_dict() if state_dict is None else state_dict, dtype, keep=_keep_in_fp32(base)
            )
        config = getattr(base, "config", None)
        live_dtype = getattr(config, "dtype", None)
        try:
            if is_peft and not merge_lora and state_dict is not None and _fsdp1_wrapped(model):
                _save_adapter(model, tmp_dir, state_dict)
            else:
                base.save_pretrained(tmp_dir, state_dict=state_dict)
        finally:
            if config is not None:
                config.dtype = live_dtype  # save_pretrained overwrites it with the live weights' dtype
        if dtype is not None and (tmp_dir / "config.json").is_file():
            _write_config_dtype(tmp_dir, dtype)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp_dir)
        _replace_dir(tmp_dir, output_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return output_dir


def _fsdp1_wrapped(model: torch.nn.Module) -> bool:
    return any(_WRAPPERS[0] in name for name, _ in model.named_modules())


def _save_adapter(peft_model, out_dir: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """The adapter folder from a gathered state dict, for FSDP1: peft finds adapter weights by module
    name and strips only a leading FSDP wrapper level, so under per-layer FSDP units it finds none."""
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import save_file

    adapter = peft_model.active_adapter
    layers = [_unwrapped(n) for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)]
    tensors = {}
    for key, value in state_dict.items():
        layer = next((name for name in layers if key.startswith(name + ".lora_")), None)
        if layer is not None and f".{adapter}." in key:
            tensors[key.replace(f".{adapter}.", ".")] = value.contiguous()
    if not tensors:
        raise ConfigError("no LoRA weights found in the gathered state dict (FSDP1 adapter export)")
    peft_model.peft_config[adapter].save_pretrained(str(out_dir))
    save_file(tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; an existing ``dst`` is moved aside first and deleted afterwards."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = dst.parent / f".{dst.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)
