"""Stage-2 data: preference pairs become DPO sequences; :class:`DPODataModule` serves them.

Each :class:`~srt.records.PreferencePair` becomes a prompt (masked) followed by the chosen or the
rejected completion and what ``completion_end`` trains after it (the SRT feedback header by
default, the end of turn with ``eos``, nothing with ``none``). Precomputed reference log-probs are
attached by pair id (:meth:`DPODataModule.set_reference_logps`), so training holds one model.
Every setting comes from ``srt.config.DPOConfig``, the run config's ``dpo`` section.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from srt.config import DPOConfig
from srt.data.base import BaseDataModule, as_section
from srt.data.chat_format import ChatFormat, chat_format_for
from srt.data.collate import DPOCollator, pad_token_id
from srt.data.packing import PackedDPOCollator
from srt.data.segments import Unusable, dpo_segments
from srt.data.tokenization import DataStats, check_ids, fit_dpo, labels_of, stored, tokenize_segment_lists
from srt.errors import ConfigError, RecordError
from srt.records import PreferencePair


def build_dpo_examples(
    tokenizer,
    pairs: Iterable[PreferencePair],
    config: DPOConfig,
    *,
    system_prompt: str | None = None,
    chat: ChatFormat | None = None,
    stats: DataStats | None = None,
    desc: str = "tokenize dpo",
) -> list[dict[str, Any]]:
    """Tokenize pairs into stored DPO examples ``{"id", "chosen": {...}, "rejected": {...}}``.

    ``config``: the run config's ``dpo`` section (or a mapping of its fields): max_length,
    max_prompt_length, truncation, completion_end. ``system_prompt`` (``model.system_prompt``) or a
    ready ``chat`` format. Pair ids must be unique (reference log-probs are looked up by id).
    """
    config = as_section(config, DPOConfig, "dpo")
    chat = chat_format_for(tokenizer, system_prompt, chat)
    stats = stats if stats is not None else DataStats()
    reasons = Counter(stats.rejected_reasons)
    seen: set[str] = set()
    ids_kept, segment_lists = [], []
    for pair in pairs:
        stats.records += 1
        if pair.id in seen:  # reference log-probs are looked up by id
            raise RecordError(f"duplicate preference pair id {pair.id!r}")
        seen.add(pair.id)
        try:
            prompt, chosen, rejected = dpo_segments(pair, config, chat)
        except Unusable as why:
            reasons[str(why)] += 1
            continue
        ids_kept.append(pair.id)
        segment_lists += [[("prompt", prompt, False)], chosen, rejected]
    stats.rejected = sum(reasons.values())
    stats.rejected_reasons = dict(reasons)

    tokenized = tokenize_segment_lists(tokenizer, segment_lists, desc)
    examples = []
    for n, pid in enumerate(ids_kept):
        prompt_ids = tokenized[3 * n][0][1]
        if chat.prepend_bos:
            prompt_ids = [tokenizer.bos_token_id, *prompt_ids]
        chosen_ids = [i for _, seg, _ in tokenized[3 * n + 1] for i in seg]
        rejected_ids = [i for _, seg, _ in tokenized[3 * n + 2] for i in seg]
        fitted = fit_dpo(prompt_ids, chosen_ids, rejected_ids, config, tokenizer.bos_token_id, stats)
        if fitted is None:
            continue
        prompt_ids, chosen_ids, rejected_ids = fitted
        example = {"id": pid}
        for side, completion in (("chosen", chosen_ids), ("rejected", rejected_ids)):
            ids = prompt_ids + completion
            check_ids(tokenizer, ids, f"pair {pid!r} ({side})", chat.bos_per_conversation)
            example[side] = stored(ids, [False] * len(prompt_ids) + [True] * len(completion))
            stats.tokens += len(ids)
            stats.trained_tokens += len(completion)
            stats.max_tokens = max(stats.max_tokens, len(ids))
        stats.examples += 1
        examples.append(example)
    return examples


class DPODataset(Dataset):
    """Items: ``{"id", "chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"}``
    plus ``ref_chosen_logps`` / ``ref_rejected_logps`` (floats) when ``ref_logps`` is set."""

    def __init__(self, examples: list[dict[str, Any]], ref_logps: Mapping[str, tuple[float, float]] | None = None):
        self.examples = examples
        self.ref_logps = ref_logps

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.examples[i]
        item: dict[str, Any] = {"id": ex["id"]}
        for side in ("chosen", "rejected"):
            item[f"{side}_input_ids"], item[f"{side}_labels"] = labels_of(ex[side])
        if self.ref_logps is not None:
            item["ref_chosen_logps"], item["ref_rejected_logps"] = self.ref_logps[ex["id"]]
        return item

    def lengths(self) -> list[int]:
        return [max(len(ex["chosen"]["input_ids"]), len(ex["rejected"]["input_ids"])) for ex in self.examples]

    def ids(self) -> list[str]:
        return [ex["id"] for ex in self.examples]


def load_reference_logps(source: Mapping[str, Any] | str | os.PathLike) -> dict[str, tuple[float, float]]:
    """Normalize reference log-probs to ``{pair_id: (ref_chosen_logps, ref_rejected_logps)}``.

    Accepts that mapping itself (values: a pair of floats or ``{"chosen", "rejected"}``), a columnar
    dict ``{"ids": [...], "ref_chosen_logps": tensor/list, "ref_rejected_logps": ...}``, or a path to
    a ``torch.save`` file holding either.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"reference log-probs file not found: {path}")
        source = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(source, Mapping):
        raise ConfigError(f"reference log-probs must be a mapping, got {type(source).__name__}")
    if "ids" in source and "ref_chosen_logps" in source:
        chosen = torch.as_tensor(source["ref_chosen_logps"]).tolist()
        rejected = torch.as_tensor(source["ref_rejected_logps"]).tolist()
        if not len(source["ids"]) == len(chosen) == len(rejected):
            raise ConfigError("reference log-probs: ids, ref_chosen_logps and ref_rejected_logps differ in length")
        return {str(i): (float(c), float(r)) for i, c, r in zip(source["ids"], chosen, rejected)}
    out = {}
    for key, value in source.items():
        if isinstance(value, Mapping):
            value = (value["chosen"], value["rejected"])
        chosen, rejected = (float(torch.as_tensor(v)) for v in value)
        out[str(key)] = (chosen, rejected)
    return out


class DPODataModule(BaseDataModule):
    """Stage-2 training data: :class:`~srt.records.PreferencePair` s as masked DPO sequences.

    ``DPODataModule(tokenizer, cfg.dpo, system_prompt=cfg.model.system_prompt, train_files=[...],
    val_fraction=cfg.trainer.val_fraction, seed=cfg.seed)``; the other keywords are those of
    :class:`~srt.data.base.BaseDataModule`. A batch holds ``micro_batch_size`` pairs; with
    ``config.packing`` their chosen/rejected sequences are packed into rows of at most
    ``packing_length`` tokens (default ``max_length``).
    """

    kind = "dpo"
    config_schema = DPOConfig
    record_schema = PreferencePair
    config: DPOConfig
    _ref_logps: dict[str, tuple[float, float]] | None = None  # set by set_reference_logps

    def data_settings(self) -> dict[str, Any]:
        c = self.config
        return {
            "max_length": c.max_length,
            "max_prompt_length": c.max_prompt_length,
            "truncation": c.truncation,
            "system_prompt": self.system_prompt,
            "completion_end": c.completion_end,
        }

    def build_dataset(self, records: list, chat: ChatFormat, stats: DataStats, split: str) -> Dataset:
        return DPODataset(
            build_dpo_examples(self.tokenizer, records, self.config, chat=chat, stats=stats, desc=f"tokenize {split}")
        )

    @property
    def collator(self) -> DPOCollator | PackedDPOCollator:
        if self.packing:
            return PackedDPOCollator(pad_token_id(self.tokenizer), self.packing_length, self.pad_to_multiple_of)
        return DPOCollator(pad_token_id(self.tokenizer), self.pad_to_multiple_of)

    # -- reference log-probs ---------------------------------------------------------------

    def set_reference_logps(self, source: Mapping[str, Any] | str | os.PathLike | None) -> None:
        """Make items carry precomputed ``ref_chosen_logps`` / ``ref_rejected_logps``, looked up by
        pair id (see :func:`load_reference_logps` for the accepted forms); None removes them.
        Every pair of every split must be covered."""
        self._ref_logps = None if source is None else load_reference_logps(source)
        if self.datasets:
            self._attach_reference_logps()

    def _after_setup(self) -> None:
        if self._ref_logps is not None:
            self._attach_reference_logps()

    def _attach_reference_logps(self) -> None:
        for split, dataset in self.datasets.items():
            if self._ref_logps is not None:
                missing = [i for i in dataset.ids() if i not in self._ref_logps]
                if missing:
                    raise ConfigError(
                        f"reference log-probs missing for {len(missing)} of {len(dataset)} {split} pairs "
                        f"(first: {missing[0]!r}); recompute them for this data"
                    )
            dataset.ref_logps = self._ref_logps
