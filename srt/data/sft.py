"""Stage-1 data: feedback records become SFT sequences; :class:`SFTDataModule` serves them.

Each :class:`~srt.records.FeedbackRecord` becomes one sequence::

    <chat prompt: system? + instruction + generation prompt>   masked
    <response>                                                   trained (masked with mask_response)
    \\n\\n### Feedback\\n<canonical feedback>                      trained
    \\n\\n### Improved Response\\n<refinement>                     trained
    <end of turn, up to and including EOS>                       trained

EOS is always the last trained token (pad is masked by position, so ``pad == eos`` cannot hide the
EOS label). Every setting comes from ``srt.config.SFTConfig``, the run config's ``sft`` section.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

from torch.utils.data import Dataset

from srt.config import SFTConfig
from srt.data.base import BaseDataModule, as_section
from srt.data.chat_format import ChatFormat, chat_format_for
from srt.data.collate import SFTCollator, pad_token_id
from srt.data.packing import PackedSFTCollator, PackedSFTDataset
from srt.data.segments import Unusable, sft_segments
from srt.data.tokenization import DataStats, check_ids, fit_sft, labels_of, stored, tokenize_segment_lists
from srt.records import FeedbackRecord

logger = logging.getLogger(__name__)


def build_sft_examples(
    tokenizer,
    records: Iterable[FeedbackRecord],
    config: SFTConfig,
    *,
    system_prompt: str | None = None,
    chat: ChatFormat | None = None,
    stats: DataStats | None = None,
    desc: str = "tokenize sft",
) -> list[dict[str, Any]]:
    """Tokenize records into stored SFT examples ``{"id", "input_ids" int32, "train_mask" bool}``, plus
    ``loss_weights`` float32 per token (its segment's ``segment_weights`` entry) when a weight is not 1.0.

    ``config``: the run config's ``sft`` section (or a mapping of its fields): max_length,
    truncation, mask_response, ablation. ``system_prompt`` (``model.system_prompt``) or a ready
    ``chat`` format; unusable records are counted in ``stats``, not raised.
    """
    config = as_section(config, SFTConfig, "sft")
    chat = chat_format_for(tokenizer, system_prompt, chat)
    stats = stats if stats is not None else DataStats()
    reasons = Counter(stats.rejected_reasons)
    ids_kept, segment_lists = [], []
    for record in records:
        stats.records += 1
        try:
            segment_lists.append(sft_segments(record, config, chat))
            ids_kept.append(record.id)
        except Unusable as why:
            reasons[str(why)] += 1
    stats.rejected = sum(reasons.values())
    stats.rejected_reasons = dict(reasons)

    weights = config.weighted_segments()  # None: the plain token mean (no weights stored)
    examples = []
    for rid, pieces in zip(ids_kept, tokenize_segment_lists(tokenizer, segment_lists, desc)):
        if chat.prepend_bos:
            pieces[0] = (pieces[0][0], [tokenizer.bos_token_id, *pieces[0][1]], False)
        pieces = fit_sft(pieces, config, stats)
        if pieces is None:
            continue
        ids = [i for _, seg, _ in pieces for i in seg]
        train = [flag for _, seg, flag in pieces for _ in seg]
        loss_weights = (
            None
            if weights is None
            else [weights.get(name, 0.0) if flag else 0.0 for name, seg, flag in pieces for _ in seg]
        )
        check_ids(tokenizer, ids, f"record {rid!r}", chat.bos_per_conversation)
        stats.examples += 1
        stats.tokens += len(ids)
        stats.trained_tokens += sum(train)
        stats.max_tokens = max(stats.max_tokens, len(ids))
        examples.append({"id": rid, **stored(ids, train, loss_weights)})
    return examples


class SFTDataset(Dataset):
    """Items: ``{"id", "input_ids" [T] long, "labels" [T] long}`` (labels -100 where not trained), and
    ``loss_weights`` [T] float when the examples carry segment weights."""

    def __init__(self, examples: list[dict[str, Any]]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.examples[i]
        input_ids, labels = labels_of(ex)
        item = {"id": ex["id"], "input_ids": input_ids, "labels": labels}
        if "loss_weights" in ex:
            item["loss_weights"] = ex["loss_weights"]
        return item

    def lengths(self) -> list[int]:
        return [len(ex["input_ids"]) for ex in self.examples]


class SFTDataModule(BaseDataModule):
    """Stage-1 training data: :class:`~srt.records.FeedbackRecord` s as masked SRT sequences.

    ``SFTDataModule(tokenizer, cfg.sft, system_prompt=cfg.model.system_prompt, train_files=[...],
    val_fraction=cfg.trainer.val_fraction, seed=cfg.seed)``; the other keywords are those of
    :class:`~srt.data.base.BaseDataModule`. With ``config.packing`` examples are packed into rows of
    at most ``packing_length`` tokens (default ``max_length``) and the batch size counts rows.
    """

    kind = "sft"
    config_schema = SFTConfig
    record_schema = FeedbackRecord
    config: SFTConfig

    def data_settings(self) -> dict[str, Any]:
        c = self.config
        return {
            "max_length": c.max_length,
            "truncation": c.truncation,
            "mask_response": c.mask_response,
            "ablation": c.ablation,
            "system_prompt": self.system_prompt,
            **({"segment_weights": c.weighted_segments()} if c.weighted_segments() else {}),
        }

    def build_dataset(self, records: list, chat: ChatFormat, stats: DataStats, split: str) -> Dataset:
        examples = build_sft_examples(
            self.tokenizer, records, self.config, chat=chat, stats=stats, desc=f"tokenize {split}"
        )
        dataset = SFTDataset(examples)
        return PackedSFTDataset(dataset, self.packing_length) if self.packing else dataset

    def _log_dataset(self, split: str) -> None:
        packed = self.datasets[split]
        if isinstance(packed, PackedSFTDataset):
            logger.info(
                "%s data: %d examples packed into %d rows of <= %d tokens (%.0f%% filled)",
                split,
                self.stats[split].examples,
                len(packed),
                packed.capacity,
                100 * packed.fill(),
            )

    @property
    def collator(self) -> SFTCollator | PackedSFTCollator:
        cls = PackedSFTCollator if self.packing else SFTCollator
        return cls(pad_token_id(self.tokenizer), self.pad_to_multiple_of)
