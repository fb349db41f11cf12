"""Segments to token ids: tokenization, the truncation policies, the BOS checks, the counters.

Every segment is tokenized on its own (``add_special_tokens=False``) and the ids are concatenated,
so each token knows which segment, and therefore which mask, it belongs to. Data text is tokenized
with ``split_special_tokens=True``: a literal ``</s>`` in a response stays text instead of becoming
the EOS id (the model would learn to stop there). Sequences over ``max_length`` follow the
configured truncation policy, and nothing is silent: what was truncated, dropped or rejected is
counted in a :class:`DataStats` per split.

Examples are stored compactly (int32 ids + a bool train mask); datasets turn them into
``input_ids`` / ``labels`` (-100 where not trained) on access.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from srt.config import DPOConfig, SFTConfig
from srt.data.segments import TEMPLATE_SEGMENTS, Segment
from srt.errors import TemplateError

IGNORE_INDEX = -100

TokenizedSegment = tuple[str, list[int], bool]  # (name, ids, train)


@dataclass
class DataStats:
    """What happened to one split's records (logged at setup, kept on ``datamodule.stats``)."""

    records: int = 0  # records read
    rejected: int = 0  # records without usable feedback/refinement (should be filtered upstream)
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    truncated: int = 0  # examples kept after truncation
    dropped_too_long: int = 0  # examples left out because of max_length
    examples: int = 0  # examples in the dataset
    tokens: int = 0  # sum of sequence lengths (DPO: chosen + rejected)
    trained_tokens: int = 0  # tokens with a label (DPO: chosen + rejected)
    max_tokens: int = 0  # longest sequence

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        text = (
            f"{self.examples} examples from {self.records} records; {self.trained_tokens}/{self.tokens} "
            f"tokens trained, longest {self.max_tokens}; truncated {self.truncated}, "
            f"dropped (too long) {self.dropped_too_long}, rejected {self.rejected}"
        )
        if self.rejected_reasons:
            text += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(self.rejected_reasons.items())) + ")"
        return text


# ---------------------------------------------------------------------------------------------
# Tokenization


def tokenize_texts(tokenizer, texts: list[str], desc: str, *, literal: bool, chunk: int = 1024) -> list[list[int]]:
    """Tokenize many texts (batched: the fast tokenizer works in parallel), no special tokens added.

    ``literal``: data text (response, feedback, completion...), where a special-token string such
    as ``</s>`` is plain text and must not become the EOS id (the model would learn to stop there).
    Template text (prompt, end of turn) keeps its special tokens.
    """
    out: list[list[int]] = []
    with tqdm(total=len(texts), desc=desc, unit="seg", disable=len(texts) < 20_000, leave=False) as bar:
        for start in range(0, len(texts), chunk):
            batch = texts[start : start + chunk]
            out.extend(tokenizer(batch, add_special_tokens=False, split_special_tokens=literal)["input_ids"])
            bar.update(len(batch))
    return out


def tokenize_segment_lists(tokenizer, segment_lists: list[list[Segment]], desc: str) -> list[list[TokenizedSegment]]:
    """Each segment tokenized on its own; returns [(name, ids, train)] per list."""
    flat = [(name, text) for segments in segment_lists for name, text, _ in segments]
    ids: list[list[int] | None] = [None] * len(flat)
    for literal in (False, True):
        where = [k for k, (name, _) in enumerate(flat) if (name not in TEMPLATE_SEGMENTS) == literal]
        for k, seg_ids in zip(where, tokenize_texts(tokenizer, [flat[k][1] for k in where], desc, literal=literal)):
            ids[k] = seg_ids
    it = iter(ids)
    return [[(name, next(it), train) for name, _, train in segments] for segments in segment_lists]


def check_ids(tokenizer, ids: list[int], where: str, bos_per_conversation: int = 1) -> None:
    """At most one BOS, and only in first position (double BOS: a template applied twice).

    Where the template itself renders BOS once per turn, only more than that is an error."""
    bos = tokenizer.bos_token_id
    if bos is None or bos == tokenizer.eos_token_id:
        return
    count = ids.count(bos)
    if bos_per_conversation > 1:
        if count > bos_per_conversation or ids[:2] == [bos, bos]:
            raise TemplateError(
                f"{where}: BOS appears {count} times, the chat template renders {bos_per_conversation} "
                "(the template or the data adds BOS twice)"
            )
        return
    if count > 1 or (count == 1 and ids[0] != bos):
        raise TemplateError(f"{where}: BOS appears {count} times / not first (the template or the data adds BOS twice)")


# ---------------------------------------------------------------------------------------------
# Truncation policies


def fit_sft(pieces: list[TokenizedSegment], config: SFTConfig, stats: DataStats) -> list[TokenizedSegment] | None:
    """Apply ``config.truncation`` to one SFT sequence; returns the (possibly shortened) pieces, or
    None when it is dropped.

    * ``drop``: leave the example out;
    * ``truncate_right``: cut the end (the refinement and EOS may be lost);
    * ``truncate_left_response``: cut tokens from the *start of the response*, keeping the prompt,
      the feedback, the refinement and EOS whole; dropped when the response is too short for that.
    """
    total = sum(len(ids) for _, ids, _ in pieces)
    excess = total - config.max_length
    if excess <= 0:
        return pieces
    if config.truncation == "truncate_right":
        out, room = [], config.max_length
        for name, ids, train in pieces:
            out.append((name, ids[:room], train))
            room -= len(out[-1][1])
        if not any(train and ids for _, ids, train in out):  # the prompt alone fills max_length
            stats.dropped_too_long += 1
            return None
        stats.truncated += 1
        return out
    if config.truncation == "truncate_left_response":
        for k, (name, ids, train) in enumerate(pieces):
            if name == "response" and len(ids) > excess:
                pieces = list(pieces)
                pieces[k] = (name, ids[excess:], train)
                stats.truncated += 1
                return pieces
    stats.dropped_too_long += 1
    return None


def fit_dpo(
    prompt_ids: list[int],
    chosen_ids: list[int],
    rejected_ids: list[int],
    config: DPOConfig,
    bos: int | None,
    stats: DataStats,
) -> tuple[list[int], list[int], list[int]] | None:
    """Apply ``config.truncation`` when prompt + longest completion exceeds ``max_length``; returns
    (prompt, chosen, rejected) ids, or None when the pair is dropped.

    * ``drop``: leave the pair out;
    * ``truncate``: first cut the prompt from the left (a leading BOS is kept) but not below
      ``max_prompt_length`` (default ``max_length // 2``), then cut both completions from the right.
    """
    longest = max(len(chosen_ids), len(rejected_ids))
    if len(prompt_ids) + longest <= config.max_length:
        return prompt_ids, chosen_ids, rejected_ids
    if config.truncation == "drop":
        stats.dropped_too_long += 1
        return None
    max_prompt = config.max_prompt_length or config.max_length // 2
    keep = max(config.max_length - longest, min(len(prompt_ids), max_prompt))
    keep = min(keep, len(prompt_ids), config.max_length - 1)
    if keep < len(prompt_ids):  # cut the prompt from the left, keeping a leading BOS
        has_bos = bos is not None and prompt_ids[:1] == [bos]
        head = prompt_ids[:1] if has_bos and keep > 1 else []
        prompt_ids = head + prompt_ids[len(prompt_ids) - (keep - len(head)) :]
    room = config.max_length - len(prompt_ids)
    stats.truncated += 1
    return prompt_ids, chosen_ids[:room], rejected_ids[:room]


# ---------------------------------------------------------------------------------------------
# Stored examples


def stored(ids: list[int], train: list[bool], weights: list[float] | None = None) -> dict[str, torch.Tensor]:
    # int32 ids + bool mask: 5 bytes a token in memory instead of 16 for two int64 tensors.
    out = {
        "input_ids": torch.tensor(ids, dtype=torch.int32),
        "train_mask": torch.tensor(train, dtype=torch.bool),
    }
    if weights is not None:  # sft.segment_weights: each token's loss weight (only when one is not 1.0)
        out["loss_weights"] = torch.tensor(weights, dtype=torch.float32)
    return out


def labels_of(example: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) as long tensors from a stored example; labels are -100 where not trained."""
    ids = example["input_ids"].long()
    return ids, ids.masked_fill(~example["train_mask"], IGNORE_INDEX)
