"""Show tokenized training examples with the trained tokens marked (``srt-train preprocess --show N``).

Trained tokens (label != -100) are wrapped in ``⟦ ⟧`` (not ``[[ ]]``, which the score uses) or, on a
terminal, printed in green;
masked tokens (prompt, padding) are printed as they are. Reading a few examples this way is the
quickest check that the loss mask covers what it should.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from srt.config import DPOConfig, SFTConfig
from srt.data import IGNORE_INDEX, DataStats, build_dpo_examples, build_sft_examples
from srt.errors import ConfigError

_GREEN, _RESET = "\033[32m", "\033[0m"


def _sides(example: Mapping[str, Any]) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(title, ids, trained mask) per sequence of an example, whichever form it comes in:
    a stored example (``train_mask``), a dataset item (``labels``), SFT or DPO."""

    def one(ids, labels=None, train_mask=None):
        ids = torch.as_tensor(ids).long()
        mask = torch.as_tensor(train_mask).bool() if train_mask is not None else torch.as_tensor(labels) != IGNORE_INDEX
        return ids, mask

    if "chosen" in example:  # stored DPO example
        return [
            (side, *one(example[side]["input_ids"], train_mask=example[side]["train_mask"]))
            for side in ("chosen", "rejected")
        ]
    if "chosen_input_ids" in example:  # DPO dataset item
        return [
            (side, *one(example[f"{side}_input_ids"], labels=example[f"{side}_labels"]))
            for side in ("chosen", "rejected")
        ]
    return [("sequence", *one(example["input_ids"], example.get("labels"), example.get("train_mask")))]


def format_example(tokenizer, example: Mapping[str, Any], color: bool | None = None) -> str:
    """The decoded example with trained spans marked, plus trained/masked token counts.

    ``color``: ANSI green for trained text (default: only when stdout is a terminal); otherwise
    trained spans are wrapped in ``⟦ ⟧`` (not ``[[ ]]``: the score is written ``[[n]]``).
    """
    if color is None:
        color = sys.stdout.isatty()
    start, end = (_GREEN, _RESET) if color else ("⟦", "⟧")
    lines = [f"== example {example.get('id', '?')} =="]
    for title, ids, trained in _sides(example):
        parts = []
        k = 0
        while k < len(ids):  # decode runs of equal trained-ness together (multi-byte characters)
            j = k
            while j < len(ids) and trained[j] == trained[k]:
                j += 1
            text = tokenizer.decode(ids[k:j].tolist(), skip_special_tokens=False)
            parts.append(f"{start}{text}{end}" if trained[k] else text)
            k = j
        n_trained = int(trained.sum())
        lines.append(f"-- {title}: {len(ids)} tokens, {n_trained} trained, {len(ids) - n_trained} masked")
        lines.append("".join(parts))
    lines.append(f"(legend: {start}trained{end} = has a loss; plain = masked)")
    return "\n".join(lines)


def preview_records(
    tokenizer,
    records: Iterable[Any],
    n: int,
    config: SFTConfig | DPOConfig,
    color: bool | None = None,
    *,
    system_prompt: str | None = None,
) -> str:
    """Tokenize the first ``n`` records (FeedbackRecords for the ``sft`` section, PreferencePairs for
    the ``dpo`` section) exactly as training would, and format them with :func:`format_example`."""
    if not isinstance(config, (SFTConfig, DPOConfig)):
        raise ConfigError(f"preview_records takes the run config's sft or dpo section, got {type(config).__name__}")
    head = []
    for record in records:
        if len(head) >= n:
            break
        head.append(record)
    stats = DataStats()
    build = build_sft_examples if isinstance(config, SFTConfig) else build_dpo_examples
    examples = build(tokenizer, head, config, system_prompt=system_prompt, stats=stats)
    blocks = [format_example(tokenizer, ex, color=color) for ex in examples]
    blocks.append(f"{len(head)} records previewed: {stats.summary()}")
    return "\n\n".join(blocks)
