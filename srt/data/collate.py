"""Padded batches: dataset items right-padded into the tensors the Lightning modules read.

Padding is masked by position (attention 0, label -100), never by token id, so a tokenizer whose
pad token is EOS still trains its real EOS. The collators are plain callables, usable without
Lightning (``DataLoader(dataset, collate_fn=SFTCollator(pad_id))``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from srt.data.tokenization import IGNORE_INDEX
from srt.errors import TemplateError


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, or EOS when it has none (padding is masked by position, so that is safe)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise TemplateError("tokenizer has neither a pad nor an EOS token")
    return pad


def pad_right(seqs: Sequence[torch.Tensor], value: int, multiple: int | None) -> torch.Tensor:
    """[len(seqs), longest] long tensor, each row a sequence followed by ``value``; the width is
    rounded up to ``multiple`` when given."""
    longest = max(len(s) for s in seqs)
    if multiple:
        longest = math.ceil(longest / multiple) * multiple
    out = torch.full((len(seqs), longest), value, dtype=torch.long)
    for row, s in zip(out, seqs):
        row[: len(s)] = s
    return out


def pad_weights(seqs: Sequence[torch.Tensor], width: int) -> torch.Tensor:
    """[len(seqs), width] float tensor of per-token loss weights, 0 after each sequence."""
    out = torch.zeros((len(seqs), width), dtype=torch.float32)
    for row, s in zip(out, seqs):
        row[: len(s)] = s
    return out


def _pad_side(
    items: Sequence[Mapping[str, Any]], prefix: str, pad_id: int, multiple: int | None
) -> dict[str, torch.Tensor]:
    ids = [it[f"{prefix}input_ids"] for it in items]
    mask = [torch.ones(len(s), dtype=torch.long) for s in ids]
    return {
        f"{prefix}input_ids": pad_right(ids, pad_id, multiple),
        f"{prefix}attention_mask": pad_right(mask, 0, multiple),
        f"{prefix}labels": pad_right([it[f"{prefix}labels"] for it in items], IGNORE_INDEX, multiple),
    }


def reference_columns(items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """``ref_chosen_logps`` / ``ref_rejected_logps`` float [B] when the items carry them (all or none)."""
    with_ref = ["ref_chosen_logps" in it for it in items]
    if not any(with_ref):
        return {}
    if not all(with_ref):
        raise ValueError("some items of the batch carry reference log-probs and some do not")
    return {
        key: torch.tensor([float(it[key]) for it in items], dtype=torch.float32)
        for key in ("ref_chosen_logps", "ref_rejected_logps")
    }


class SFTCollator:
    """Right-pads SFT items into ``input_ids``, ``attention_mask``, ``labels`` [B, T] (long) and
    ``num_trained_tokens`` (scalar long: labels != -100), and ``loss_weights`` [B, T] float when the
    items carry them (``sft.segment_weights``). Usable without Lightning."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = _pad_side(items, "", self.pad_token_id, self.pad_to_multiple_of)
        batch["num_trained_tokens"] = (batch["labels"] != IGNORE_INDEX).sum()
        if "loss_weights" in items[0]:  # sft.segment_weights; padding weighs 0
            batch["loss_weights"] = pad_weights([it["loss_weights"] for it in items], batch["labels"].shape[1])
        return batch


class DPOCollator:
    """Right-pads DPO items: ``chosen_*`` / ``rejected_*`` (``input_ids``, ``attention_mask``,
    ``labels``; each side padded to its own length), ``ids`` (list of pair ids), and
    ``ref_chosen_logps`` / ``ref_rejected_logps`` float [B] when the items carry them."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        for side in ("chosen_", "rejected_"):
            batch.update(_pad_side(items, side, self.pad_token_id, self.pad_to_multiple_of))
        batch["ids"] = [it["id"] for it in items]
        batch.update(reference_columns(items))
        return batch
