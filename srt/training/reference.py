"""Precomputed reference log-probs (``dpo.reference: precomputed``): computed once, cached on disk.

:func:`precompute_reference_logps` scores every pair of a DPO data module with the starting model
(eval mode, no grad, on the device and under the autocast that training uses, see
:func:`autocast_dtype`) in its own batches (:func:`reference_dataloader`): ``dpo.reference_batch_size``
pairs (default :data:`REFERENCE_BATCH_MULTIPLE` x ``micro_batch_size``: no activations are kept for a
backward, so a batch costs a fraction of a training micro-batch's memory), sorted by length so a
batch holds pairs of about one length (little padding); the result comes back in dataset order.
:func:`compute_reference_logps` does the same over any loader of DPO batches.
:class:`ReferenceLogpsCache` keeps the result, one file per (data, model, chat template, max
length, dtype, data settings, autocast), so a resumed or repeated run never recomputes it (the batch
size and order are not in the key: they change the numbers only at float rounding level).
``DPODataModule.set_reference_logps`` attaches the numbers to the batches, and training holds a
single model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader
from tqdm.auto import tqdm

from srt.errors import ConfigError
from srt.training.dpo_objective import concatenated_forward

_AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
# Default reference batch: this many training micro-batches. A no-grad forward keeps one layer's
# activations at a time instead of every layer's for the backward (about L x 30 hidden-sized floats
# per token in training against a few MLP-sized ones, the attention scores and the scored logits
# here), so 4x the pairs stays under a training step's peak memory (benchmarks/RESULTS.md measures
# both). Not with gradient checkpointing: a training step then holds little, and a 4x reference batch
# would set the run's peak, so the default there is the micro-batch itself.
REFERENCE_BATCH_MULTIPLE = 4


def autocast_dtype(precision: str | None) -> torch.dtype | None:
    """The autocast dtype of a Lightning ``precision`` (``bf16-mixed`` -> bfloat16, ``16-mixed`` ->
    float16; None for the others, which run in the weights' dtype)."""
    return _AUTOCAST.get(str(precision))


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def reference_batch_size(config) -> int:
    """Pairs per reference forward: ``config.reference_batch_size``, or when that is unset
    :data:`REFERENCE_BATCH_MULTIPLE` x ``config.micro_batch_size`` (``micro_batch_size`` itself with
    ``gradient_checkpointing``, whose training steps hold little memory)."""
    explicit = getattr(config, "reference_batch_size", None)
    if explicit:
        return explicit
    multiple = 1 if getattr(config, "gradient_checkpointing", False) else REFERENCE_BATCH_MULTIPLE
    return multiple * config.micro_batch_size


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices ``0..len(lengths)-1`` sorted by length, longest first (ties in index order), cut into
    batches of ``batch_size`` (the last one may be smaller): the longest batch, the peak memory,
    comes first, and each batch pads to about its own length."""
    if batch_size < 1:
        raise ConfigError(f"reference batch size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _splits(datamodule) -> list:
    if not datamodule.datasets:
        datamodule.setup()
    return list(datamodule.datasets.values())


def reference_dataloader(datamodule, batch_size: int | None = None) -> DataLoader:
    """Every pair of every split of a DPO data module (what ``predict_dataloader`` yields) in
    length-sorted batches of ``batch_size`` pairs (default :func:`reference_batch_size` of the data
    module's config), collated as training collates them (padded or packed)."""
    splits = _splits(datamodule)
    lengths = [n for dataset in splits for n in dataset.lengths()]
    return DataLoader(
        ConcatDataset(splits),
        batch_sampler=length_sorted_batches(lengths, batch_size or reference_batch_size(datamodule.config)),
        collate_fn=datamodule.collator,
        num_workers=datamodule.num_workers,
    )


def precompute_reference_logps(
    model,
    datamodule,
    *,
    batch_size: int | None = None,
    desc: str = "reference log-probs",
    device: str | torch.device | None = None,
    autocast: torch.dtype | None = None,
) -> dict[str, tuple[float, float]]:
    """:func:`compute_reference_logps` of every pair of ``datamodule`` over :func:`reference_dataloader`
    (its own, larger, length-sorted batches), returned in dataset order (train then val, each in
    file order: the order of ``predict_dataloader``)."""
    logps = compute_reference_logps(
        model, reference_dataloader(datamodule, batch_size), desc, device=device, autocast=autocast
    )
    return {pair_id: logps[pair_id] for dataset in _splits(datamodule) for pair_id in dataset.ids()}


@torch.no_grad()
def compute_reference_logps(
    model,
    dataloader,
    desc: str = "reference log-probs",
    *,
    device: str | torch.device | None = None,
    autocast: torch.dtype | None = None,
) -> dict[str, tuple[float, float]]:
    """``{pair_id: (sum logp chosen, sum logp rejected)}`` for every pair of ``dataloader`` (DPO
    batches with ``ids``), with ``model`` in eval mode (no dropout) and no grad.

    ``device``: where to run (default: where ``model`` is; the model is moved there and left there).
    ``autocast``: run the forward under ``torch.autocast`` in this dtype, as a ``*-mixed`` training
    precision does (:func:`autocast_dtype`), so that the reference matches the policy's step-0
    log-probs as closely as the kernels allow.
    """
    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    cast = torch.autocast(device.type, dtype=autocast) if autocast is not None else nullcontext()
    out: dict[str, tuple[float, float]] = {}
    try:
        with cast:
            for batch in tqdm(dataloader, desc=desc):
                if "ids" not in batch:
                    raise ConfigError("reference log-probs need DPO batches that carry pair 'ids'")
                result = concatenated_forward(model, _to_device(batch, device))
                chosen, rejected = result["chosen_logps"].tolist(), result["rejected_logps"].tolist()
                for pair_id, c, r in zip(batch["ids"], chosen, rejected):
                    out[str(pair_id)] = (c, r)
    finally:
        model.train(was_training)
    return out


class ReferenceLogpsCache:
    """Reference log-probs on disk, one ``<key>.pt`` per (data, model, template, max_length, dtype,
    data settings, autocast).

    The file holds ``{"key_fields", "ids", "ref_chosen_logps", "ref_rejected_logps"}`` (the columnar
    form ``srt.data.load_reference_logps`` reads) and is written to a temporary file then renamed.
    """

    def __init__(self, cache_dir: str | os.PathLike):
        self.cache_dir = Path(cache_dir)

    @staticmethod
    def key_fields(
        *,
        data_hash: str,
        model: str,
        chat_template: str | None,
        max_length: int,
        dtype: str,
        data_config: dict[str, Any] | None = None,
        autocast: str | torch.dtype | None = None,
    ) -> dict[str, Any]:
        # data_config: how pairs became token ids (truncation, system prompt, completion end...).
        # autocast: the dtype the forward ran in under a *-mixed precision; left out of the key when
        # there was none, so entries computed before it existed keep their key.
        fields = {
            "data_hash": data_hash,
            "model": str(model),
            "chat_template": chat_template or "",
            "max_length": int(max_length),
            "dtype": str(dtype),
            "data_config": data_config or {},
        }
        if autocast is not None:
            fields["autocast"] = str(autocast).removeprefix("torch.")
        return fields

    @classmethod
    def key(cls, **fields) -> str:
        # Not srt.io.json_sha256: that one writes non-ASCII as is, and existing cache files keep their keys.
        blob = json.dumps(cls.key_fields(**fields), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def path(self, key: str) -> Path:
        return self.cache_dir / f"ref-logps-{key}.pt"

    def load(self, key: str) -> dict[str, tuple[float, float]] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        blob = torch.load(path, map_location="cpu", weights_only=True)
        chosen, rejected = blob["ref_chosen_logps"].tolist(), blob["ref_rejected_logps"].tolist()
        return {i: (c, r) for i, c, r in zip(blob["ids"], chosen, rejected)}

    def save(self, key: str, logps: Mapping[str, tuple[float, float]], key_fields: dict | None = None) -> Path:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        ids = list(logps)
        blob = {
            "key_fields": key_fields or {},
            "ids": ids,
            "ref_chosen_logps": torch.tensor([logps[i][0] for i in ids], dtype=torch.float64),
            "ref_rejected_logps": torch.tensor([logps[i][1] for i in ids], dtype=torch.float64),
        }
        path = self.path(key)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        torch.save(blob, tmp)
        os.replace(tmp, path)
        return path

    def get_or_compute(
        self, compute: Callable[[], Mapping[str, tuple[float, float]]], **fields
    ) -> dict[str, tuple[float, float]]:
        """Load the entry for ``fields`` (see :meth:`key_fields`), or compute, save and return it."""
        key = self.key(**fields)
        cached = self.load(key)
        if cached is not None:
            return cached
        logps = dict(compute())
        self.save(key, logps, self.key_fields(**fields))
        return logps
