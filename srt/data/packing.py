"""Packing: several examples in one row, without attention across them (no padding to compute).

A packed row concatenates examples; ``position_ids`` restart at 0 for each one, and there is no
``attention_mask``. From that, transformers (``masking_utils.find_packed_sequence_indices``, used
for sdpa, eager and flex attention; flash-attention reads the same position_ids as varlen
boundaries, within a single row: ``srt.training.policy.scored_logits`` passes it the rows as one)
builds a block-diagonal causal mask: a token attends only to earlier tokens of its own example,
and RoPE sees the same positions as for the example alone. The first label of every example is
-100, so no token is predicted from the previous example. Rows are right-padded; a pad run gets
its own positions 0..k-1 (its own block) and label -100, and under causal attention no real token
ever sees it.

SFT packs examples into rows once (:class:`PackedSFTDataset`; the batch size counts rows). DPO
keeps B pairs per step (the loss is per pair) and packs each batch's 2B sequences into rows
(:class:`PackedDPOCollator`).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from srt.data.collate import pad_right, pad_weights, reference_columns
from srt.data.tokenization import IGNORE_INDEX
from srt.errors import ConfigError

if TYPE_CHECKING:
    from srt.data.sft import SFTDataset


def pack_by_length(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing: groups of indices whose lengths sum to <= ``capacity``.

    Longest first, each into the open row with the least room that still fits it (a new row when
    none does). Deterministic; rows come out in order of their longest example.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    open_rows: list[tuple[int, int]] = []  # (room left, row index), sorted: bisect finds the best fit
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ConfigError(f"a sequence of {n} tokens does not fit a packed row of {capacity} tokens")
        k = bisect.bisect_left(open_rows, (n, -1))
        if k == len(open_rows):
            rows.append([i])
            room, row = capacity - n, len(rows) - 1
        else:
            room, row = open_rows.pop(k)
            rows[row].append(i)
            room -= n
        if room > 0:
            bisect.insort(open_rows, (room, row))
    return rows


def _packed_row(sequences: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate (input_ids, labels) pairs; position_ids restart and each first label is -100."""
    labels = [seq_labels.clone() for _, seq_labels in sequences]
    for seq_labels in labels:
        seq_labels[0] = IGNORE_INDEX
    return {
        "input_ids": torch.cat([ids for ids, _ in sequences]),
        "labels": torch.cat(labels),
        "position_ids": torch.cat([torch.arange(len(ids)) for ids, _ in sequences]),
    }


def _pad_packed_rows(
    rows: Sequence[Mapping[str, torch.Tensor]], pad_token_id: int, multiple: int | None
) -> dict[str, torch.Tensor]:
    longest = max(len(r["input_ids"]) for r in rows)
    if multiple:
        longest = math.ceil(longest / multiple) * multiple
    batch = {
        "input_ids": torch.full((len(rows), longest), pad_token_id, dtype=torch.long),
        "labels": torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long),
        "position_ids": torch.zeros((len(rows), longest), dtype=torch.long),
    }
    for k, r in enumerate(rows):
        n = len(r["input_ids"])
        for key in batch:
            batch[key][k, :n] = r[key]
        batch["position_ids"][k, n:] = torch.arange(longest - n)  # the pad run is its own block
    if "loss_weights" in rows[0]:  # padding weighs 0
        batch["loss_weights"] = pad_weights([r["loss_weights"] for r in rows], longest)
    batch["num_tokens"] = torch.tensor(sum(len(r["input_ids"]) for r in rows))
    batch["num_trained_tokens"] = (batch["labels"] != IGNORE_INDEX).sum()
    return batch


class PackedSFTDataset(Dataset):
    """SFT examples packed into rows of at most ``capacity`` tokens (:func:`pack_by_length`).

    Items: ``{"ids", "input_ids", "labels", "position_ids"}`` for one row (see the module docstring).
    Packed once at construction; the sampler shuffles rows per epoch.
    """

    def __init__(self, dataset: SFTDataset, capacity: int):
        self.dataset = dataset
        self.capacity = capacity
        self.rows = pack_by_length(dataset.lengths(), capacity)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, r: int) -> dict[str, Any]:
        items = [self.dataset[i] for i in self.rows[r]]
        row = {"ids": [it["id"] for it in items], **_packed_row([(it["input_ids"], it["labels"]) for it in items])}
        if "loss_weights" in items[0]:  # sft.segment_weights
            row["loss_weights"] = torch.cat([it["loss_weights"] for it in items])
        return row

    def lengths(self) -> list[int]:
        example_lengths = self.dataset.lengths()
        return [sum(example_lengths[i] for i in row) for row in self.rows]

    def fill(self) -> float:
        """Fraction of the rows' capacity holding real tokens."""
        return sum(self.lengths()) / max(1, len(self.rows) * self.capacity)


class PackedSFTCollator:
    """Right-pads packed SFT rows: ``input_ids``, ``labels``, ``position_ids`` [R, L] (long),
    ``num_tokens`` (non-pad tokens) and ``num_trained_tokens``; no ``attention_mask`` on purpose
    (with one, transformers would not separate the examples)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        return _pad_packed_rows(rows, self.pad_token_id, self.pad_to_multiple_of)


class PackedDPOCollator:
    """Packs the 2B sequences of a batch of B pairs (chosen 0..B-1, then rejected 0..B-1) into rows
    of at most ``capacity`` tokens: ``input_ids``, ``labels``, ``position_ids`` and
    ``sequence_ids`` [R, L] (which of the 2B sequences a token belongs to; -1 on padding), plus
    ``ids`` and the reference log-probs as :class:`~srt.data.collate.DPOCollator` gives them. A step
    still sees B pairs (the DPO loss is per pair); packing only removes the padding of the
    chosen/rejected stack."""

    def __init__(self, pad_token_id: int, capacity: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.capacity = capacity
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        sequences = [(it[f"{side}_input_ids"], it[f"{side}_labels"]) for side in ("chosen", "rejected") for it in items]
        rows = []
        for row in pack_by_length([len(ids) for ids, _ in sequences], self.capacity):
            packed = _packed_row([sequences[s] for s in row])
            packed["sequence_ids"] = torch.cat([torch.full((len(sequences[s][0]),), s) for s in row])
            rows.append(packed)
        batch: dict[str, Any] = _pad_packed_rows(rows, self.pad_token_id, self.pad_to_multiple_of)
        batch["sequence_ids"] = pad_right([r["sequence_ids"] for r in rows], -1, self.pad_to_multiple_of)
        batch["ids"] = [it["id"] for it in items]
        batch.update(reference_columns(items))
        return batch
