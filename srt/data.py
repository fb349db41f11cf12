"""Tokenized training data for both stages: one ``FeedbackDataModule``, an SFT view and a DPO view.

SFT view (stage 1): each :class:`~srt.records.FeedbackRecord` becomes one sequence::

    <chat prompt: system? + instruction + generation prompt>   masked
    <response>                                                   trained (masked with mask_response)
    \\n\\n### Feedback\\n<canonical feedback>                      trained
    \\n\\n### Improved Response\\n<refinement>                     trained
    <end of turn, up to and including EOS>                       trained

DPO view (stage 2): each :class:`~srt.records.PreferencePair` becomes a prompt (masked) followed by
the chosen or the rejected completion plus end-of-turn (trained).

Loss masks are built from segment spans, never by searching the rendered text: every segment is
tokenized on its own (``add_special_tokens=False``) and carries a ``train`` flag; the ids are
concatenated (special-token strings inside the data, such as a literal ``</s>`` in a response,
stay plain text). The prompt text comes from the tokenizer's own chat template, and the end-of-turn
text is what that template writes after an assistant message, cut right after the EOS token. The
template therefore owns BOS (exactly one, checked) and EOS is always the last trained token (pad is
masked by position, so ``pad == eos`` cannot hide the EOS label).

Truncation is never silent: what was truncated, dropped or rejected is counted per split in
:attr:`FeedbackDataModule.stats` (and logged).

Distributed training: the train loader uses :class:`LengthGroupedSampler`, a ``DistributedSampler``
subclass that shards by rank itself. Lightning leaves a ``DistributedSampler`` in place (it only
injects one when the loader has another kind of sampler) and calls its ``set_epoch`` every epoch,
so shuffling is seeded per epoch and identical on all ranks. Validation and predict loaders are
plain ordered loaders; under DDP Lightning shards them with its own ``DistributedSampler``.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from srt.critic_template import FEEDBACK_SEPARATOR, render_feedback, srt_segments
from srt.errors import ConfigError, RecordError, TemplateError
from srt.records import FeedbackRecord, PreferencePair, read_jsonl

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100

Ablation = Literal["no_weaknesses", "no_suggestions", "no_score", "no_feedback", "refinement_only"]


# ---------------------------------------------------------------------------------------------
# Options


class SFTDataConfig(BaseModel):
    """How feedback records become SFT sequences.

    truncation (for sequences longer than max_length; every case is counted in the stats):
      * ``drop``: leave the example out;
      * ``truncate_right``: cut the end (the refinement and EOS may be lost);
      * ``truncate_left_response``: cut tokens from the *start of the response*, keeping the prompt,
        the feedback, the refinement and EOS whole; dropped when the response is too short for that.
    """

    model_config = ConfigDict(extra="forbid")

    max_length: int = Field(2048, ge=8)
    truncation: Literal["drop", "truncate_right", "truncate_left_response"] = "drop"
    mask_response: bool = False  # paper: the response is trained
    ablation: Ablation | None = None
    system_prompt: str | None = None


class DPODataConfig(BaseModel):
    """How preference pairs become DPO sequences.

    truncation when prompt + longest completion exceeds max_length:
      * ``drop``: leave the pair out;
      * ``truncate``: first cut the prompt from the left (BOS is kept) but not below
        max_prompt_length (default max_length // 2), then cut both completions from the right.
    """

    model_config = ConfigDict(extra="forbid")

    max_length: int = Field(2048, ge=8)
    max_prompt_length: int | None = Field(None, ge=1)
    truncation: Literal["drop", "truncate"] = "truncate"
    system_prompt: str | None = None
    # What is trained after each completion: "eos" (the end of turn, as TRL does), "feedback" (the
    # SRT feedback header, the way an SRT model's response goes on) or "none" (nothing: the pair
    # judges the response's content and leaves where an answer ends to the model; see DPOConfig).
    completion_end: Literal["eos", "feedback", "none"] = "eos"


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


class _Unusable(Exception):
    """A record that cannot make a training example; the message is the counted reason."""


# ---------------------------------------------------------------------------------------------
# Chat template: prompt text and end-of-turn text


class ChatFormat:
    """The tokenizer's chat template, split into the pieces the segment builder needs.

    ``prompt(user_text)``: system prompt (if any) + user turn + generation prompt.
    ``end_of_turn``: what the template writes after an assistant message, cut right after EOS
    (a trailing newline after EOS is never trained). If the template writes no EOS there, EOS is
    appended so the model still learns to stop.
    """

    _PROBE_USER = "srt probe instruction"
    _PROBE_ASSISTANT = "srt probe answer"

    def __init__(self, tokenizer, system_prompt: str | None = None):
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        if getattr(tokenizer, "chat_template", None) is None:
            raise TemplateError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; "
                "set tokenizer.chat_template (srt trains inside the model's chat format)"
            )
        if tokenizer.eos_token is None or tokenizer.eos_token_id is None:
            raise TemplateError("tokenizer has no EOS token: the model could never learn to stop")
        self.end_of_turn = self._find_end_of_turn()
        eot_ids = tokenizer(self.end_of_turn, add_special_tokens=False)["input_ids"]
        if eot_ids[-1:] != [tokenizer.eos_token_id]:
            raise TemplateError(
                f"end of turn {self.end_of_turn!r} does not tokenize to ids ending with EOS "
                f"{tokenizer.eos_token_id} (got {eot_ids}): EOS would never be trained"
            )
        self.prepend_bos = self._template_lacks_bos()
        # How many BOS tokens one rendered conversation legitimately holds: 1 for most templates,
        # one per turn where BOS doubles as the turn marker (ChatML models whose bos is <|im_start|>).
        probe = self.tokenizer.apply_chat_template(
            self._messages(self._PROBE_USER) + [{"role": "assistant", "content": self._PROBE_ASSISTANT}], tokenize=False
        )
        ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
        turn_marker = (
            tokenizer.bos_token_id is not None
            and ids.count(tokenizer.bos_token_id) > 1
            and ids[:2] != [tokenizer.bos_token_id] * 2
        )  # not simply a BOS rendered twice at the start
        self.bos_per_conversation = ids.count(tokenizer.bos_token_id) + int(self.prepend_bos) if turn_marker else 1

    def _messages(self, user_text: str) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return messages + [{"role": "user", "content": user_text}]

    def prompt(self, user_text: str) -> str:
        return self.tokenizer.apply_chat_template(self._messages(user_text), add_generation_prompt=True, tokenize=False)

    def _find_end_of_turn(self) -> str:
        prefix = self.prompt(self._PROBE_USER)
        full = self.tokenizer.apply_chat_template(
            self._messages(self._PROBE_USER) + [{"role": "assistant", "content": self._PROBE_ASSISTANT}],
            tokenize=False,
        )
        if not full.startswith(prefix + self._PROBE_ASSISTANT):
            raise TemplateError(
                "the chat template does not render a conversation as <prompt with generation prompt> + "
                "<assistant content> + <end of turn> (it rewrites the content or the prompt), so the "
                f"training sequence cannot be built from spans.\n  prompt: {prefix!r}\n  full:   {full!r}"
            )
        tail = full[len(prefix) + len(self._PROBE_ASSISTANT) :]
        eos = self.tokenizer.eos_token
        if eos in tail:
            return tail[: tail.index(eos) + len(eos)]
        return tail + eos

    def _template_lacks_bos(self) -> bool:
        """True when the tokenizer normally adds BOS but the template text does not render it."""
        tok = self.tokenizer
        if tok.bos_token_id is None:
            return False
        adds_bos = tok("a", add_special_tokens=True)["input_ids"][:1] == [tok.bos_token_id]
        prompt_ids = tok(self.prompt(self._PROBE_USER), add_special_tokens=False)["input_ids"]
        return adds_bos and prompt_ids[:1] != [tok.bos_token_id]


# ---------------------------------------------------------------------------------------------
# Segments: (name, text, train)

Segment = tuple[str, str, bool]


def sft_segments(record: FeedbackRecord, config: SFTDataConfig, chat: ChatFormat) -> list[Segment]:
    """The named, flagged text pieces of one SFT sequence; raises _Unusable with the reason."""
    ablation = config.ablation
    if not record.refinement or not record.refinement.strip():
        raise _Unusable("no refinement")
    prompt = ("prompt", chat.prompt(record.instruction), False)
    end = ("eos", chat.end_of_turn, True)
    if ablation == "refinement_only":  # plain SFT on the refined answer
        return [prompt, ("refinement", record.refinement, True), end]
    if not record.response.strip():
        raise _Unusable("empty response")

    if ablation == "no_feedback":
        feedback_text = None
    else:
        fb = record.feedback
        if fb is None:
            raise _Unusable("no feedback")
        if ablation != "no_weaknesses" and not fb.weaknesses.strip():
            raise _Unusable("empty weaknesses")
        if ablation != "no_suggestions" and not fb.suggestions.strip():
            raise _Unusable("empty suggestions")
        if ablation != "no_score" and fb.score is None:
            raise _Unusable("no score")
        feedback_text = render_feedback(
            None if ablation == "no_weaknesses" else fb.weaknesses,
            None if ablation == "no_suggestions" else fb.suggestions,
            None if ablation == "no_score" else fb.score,
        )
    train = {"response": not config.mask_response, "feedback": True, "refinement": True}
    pieces = srt_segments(record.response, feedback_text, record.refinement)
    return [prompt, *((name, text, train[name]) for name, text in pieces), end]


def dpo_segments(
    pair: PreferencePair, chat: ChatFormat, completion_end: str = "eos"
) -> tuple[str, list[Segment], list[Segment]]:
    """(prompt text, chosen segments, rejected segments) of one pair; raises _Unusable."""
    if not pair.chosen.strip():
        raise _Unusable("empty chosen")
    if not pair.rejected.strip():
        raise _Unusable("empty rejected")
    if pair.chosen == pair.rejected:
        raise _Unusable("chosen == rejected")
    ends = {
        "eos": [("eos", chat.end_of_turn, True)],
        "feedback": [("completion", FEEDBACK_SEPARATOR, True)],
        "none": [],
    }
    end = ends[completion_end]
    return (
        chat.prompt(pair.prompt),
        [("completion", pair.chosen, True), *end],
        [("completion", pair.rejected, True), *end],
    )


def _tokenize_texts(tokenizer, texts: list[str], desc: str, *, literal: bool, chunk: int = 1024) -> list[list[int]]:
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


def _check_ids(tokenizer, ids: list[int], where: str, bos_per_conversation: int = 1) -> None:
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
# Building examples


def _stored(ids: list[int], train: list[bool]) -> dict[str, torch.Tensor]:
    # int32 ids + bool mask: 5 bytes a token in memory instead of 16 for two int64 tensors.
    return {
        "input_ids": torch.tensor(ids, dtype=torch.int32),
        "train_mask": torch.tensor(train, dtype=torch.bool),
    }


def _labels(stored: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = stored["input_ids"].long()
    return ids, ids.masked_fill(~stored["train_mask"], IGNORE_INDEX)


_TEMPLATE_SEGMENTS = ("prompt", "eos")  # rendered by the chat template: special tokens are meant


def _tokenize_segment_lists(
    tokenizer, segment_lists: list[list[Segment]], desc: str
) -> list[list[tuple[str, list[int], bool]]]:
    """Each segment tokenized on its own; returns [(name, ids, train)] per list."""
    flat = [(name, text) for segments in segment_lists for name, text, _ in segments]
    ids: list[list[int] | None] = [None] * len(flat)
    for literal in (False, True):
        where = [k for k, (name, _) in enumerate(flat) if (name not in _TEMPLATE_SEGMENTS) == literal]
        for k, seg_ids in zip(where, _tokenize_texts(tokenizer, [flat[k][1] for k in where], desc, literal=literal)):
            ids[k] = seg_ids
    it = iter(ids)
    return [[(name, next(it), train) for name, _, train in segments] for segments in segment_lists]


def build_sft_examples(
    tokenizer,
    records: Iterable[FeedbackRecord],
    config: SFTDataConfig,
    *,
    chat: ChatFormat | None = None,
    stats: DataStats | None = None,
    desc: str = "tokenize sft",
) -> list[dict[str, Any]]:
    """Tokenize records into stored SFT examples ``{"id", "input_ids" int32, "train_mask" bool}``."""
    chat = chat or ChatFormat(tokenizer, config.system_prompt)
    stats = stats if stats is not None else DataStats()
    reasons = Counter(stats.rejected_reasons)
    ids_kept, segment_lists = [], []
    for record in records:
        stats.records += 1
        try:
            segment_lists.append(sft_segments(record, config, chat))
            ids_kept.append(record.id)
        except _Unusable as why:
            reasons[str(why)] += 1
    stats.rejected = sum(reasons.values())
    stats.rejected_reasons = dict(reasons)

    examples = []
    for rid, pieces in zip(ids_kept, _tokenize_segment_lists(tokenizer, segment_lists, desc)):
        if chat.prepend_bos:
            pieces[0] = (pieces[0][0], [tokenizer.bos_token_id, *pieces[0][1]], False)
        pieces = _fit_sft(pieces, config, stats)
        if pieces is None:
            continue
        ids = [i for _, seg, _ in pieces for i in seg]
        train = [flag for _, seg, flag in pieces for _ in seg]
        _check_ids(tokenizer, ids, f"record {rid!r}", chat.bos_per_conversation)
        stats.examples += 1
        stats.tokens += len(ids)
        stats.trained_tokens += sum(train)
        stats.max_tokens = max(stats.max_tokens, len(ids))
        examples.append({"id": rid, **_stored(ids, train)})
    return examples


def _fit_sft(pieces, config: SFTDataConfig, stats: DataStats):
    """Apply the truncation policy; returns the (possibly shortened) pieces or None (dropped)."""
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


def build_dpo_examples(
    tokenizer,
    pairs: Iterable[PreferencePair],
    config: DPODataConfig,
    *,
    chat: ChatFormat | None = None,
    stats: DataStats | None = None,
    desc: str = "tokenize dpo",
) -> list[dict[str, Any]]:
    """Tokenize pairs into stored DPO examples ``{"id", "chosen": {...}, "rejected": {...}}``."""
    chat = chat or ChatFormat(tokenizer, config.system_prompt)
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
            prompt, chosen, rejected = dpo_segments(pair, chat, config.completion_end)
        except _Unusable as why:
            reasons[str(why)] += 1
            continue
        ids_kept.append(pair.id)
        segment_lists += [[("prompt", prompt, False)], chosen, rejected]
    stats.rejected = sum(reasons.values())
    stats.rejected_reasons = dict(reasons)

    tokenized = _tokenize_segment_lists(tokenizer, segment_lists, desc)
    max_prompt = config.max_prompt_length or config.max_length // 2
    examples = []
    for n, pid in enumerate(ids_kept):
        prompt_ids = tokenized[3 * n][0][1]
        if chat.prepend_bos:
            prompt_ids = [tokenizer.bos_token_id, *prompt_ids]
        chosen_ids = [i for _, seg, _ in tokenized[3 * n + 1] for i in seg]
        rejected_ids = [i for _, seg, _ in tokenized[3 * n + 2] for i in seg]
        longest = max(len(chosen_ids), len(rejected_ids))
        if len(prompt_ids) + longest > config.max_length:
            if config.truncation == "drop":
                stats.dropped_too_long += 1
                continue
            keep = max(config.max_length - longest, min(len(prompt_ids), max_prompt))
            keep = min(keep, len(prompt_ids), config.max_length - 1)
            if keep < len(prompt_ids):  # cut the prompt from the left, keeping a leading BOS
                has_bos = prompt_ids[:1] == [tokenizer.bos_token_id]
                head = prompt_ids[:1] if has_bos and keep > 1 else []
                prompt_ids = head + prompt_ids[len(prompt_ids) - (keep - len(head)) :]
            room = config.max_length - len(prompt_ids)
            chosen_ids, rejected_ids = chosen_ids[:room], rejected_ids[:room]
            stats.truncated += 1
        example = {"id": pid}
        for side, completion in (("chosen", chosen_ids), ("rejected", rejected_ids)):
            ids = prompt_ids + completion
            _check_ids(tokenizer, ids, f"pair {pid!r} ({side})", chat.bos_per_conversation)
            example[side] = _stored(ids, [False] * len(prompt_ids) + [True] * len(completion))
            stats.tokens += len(ids)
            stats.trained_tokens += len(completion)
            stats.max_tokens = max(stats.max_tokens, len(ids))
        stats.examples += 1
        examples.append(example)
    return examples


# ---------------------------------------------------------------------------------------------
# Datasets and collators


class SFTDataset(Dataset):
    """Items: ``{"id", "input_ids" [T] long, "labels" [T] long}`` (labels -100 where not trained)."""

    def __init__(self, examples: list[dict[str, Any]]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.examples[i]
        input_ids, labels = _labels(ex)
        return {"id": ex["id"], "input_ids": input_ids, "labels": labels}

    def lengths(self) -> list[int]:
        return [len(ex["input_ids"]) for ex in self.examples]


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
            item[f"{side}_input_ids"], item[f"{side}_labels"] = _labels(ex[side])
        if self.ref_logps is not None:
            item["ref_chosen_logps"], item["ref_rejected_logps"] = self.ref_logps[ex["id"]]
        return item

    def lengths(self) -> list[int]:
        return [max(len(ex["chosen"]["input_ids"]), len(ex["rejected"]["input_ids"])) for ex in self.examples]

    def ids(self) -> list[str]:
        return [ex["id"] for ex in self.examples]


def _pad_right(seqs: Sequence[torch.Tensor], value: int, multiple: int | None) -> torch.Tensor:
    longest = max(len(s) for s in seqs)
    if multiple:
        longest = math.ceil(longest / multiple) * multiple
    out = torch.full((len(seqs), longest), value, dtype=torch.long)
    for row, s in zip(out, seqs):
        row[: len(s)] = s
    return out


def _pad_side(
    items: Sequence[Mapping[str, Any]], prefix: str, pad_token_id: int, multiple: int | None
) -> dict[str, torch.Tensor]:
    ids = [it[f"{prefix}input_ids"] for it in items]
    mask = [torch.ones(len(s), dtype=torch.long) for s in ids]
    return {
        f"{prefix}input_ids": _pad_right(ids, pad_token_id, multiple),
        f"{prefix}attention_mask": _pad_right(mask, 0, multiple),
        f"{prefix}labels": _pad_right([it[f"{prefix}labels"] for it in items], IGNORE_INDEX, multiple),
    }


def _pad_id(tokenizer) -> int:
    # Padding is masked by position (attention 0, label -100), so falling back to EOS is safe here.
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise TemplateError("tokenizer has neither a pad nor an EOS token")
    return pad


class SFTCollator:
    """Right-pads SFT items into ``input_ids``, ``attention_mask``, ``labels`` [B, T] (long) and
    ``num_trained_tokens`` (scalar long: labels != -100). Usable without Lightning."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = _pad_side(items, "", self.pad_token_id, self.pad_to_multiple_of)
        batch["num_trained_tokens"] = (batch["labels"] != IGNORE_INDEX).sum()
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
        batch.update(_reference_columns(items))
        return batch


def _reference_columns(items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    with_ref = ["ref_chosen_logps" in it for it in items]
    if not any(with_ref):
        return {}
    if not all(with_ref):
        raise ValueError("some items of the batch carry reference log-probs and some do not")
    return {
        key: torch.tensor([float(it[key]) for it in items], dtype=torch.float32)
        for key in ("ref_chosen_logps", "ref_rejected_logps")
    }


# ---------------------------------------------------------------------------------------------
# Packing: several examples in one row, without attention across them
#
# A packed row concatenates examples; ``position_ids`` restart at 0 for each one, and there is no
# ``attention_mask``. From that, transformers (``masking_utils.find_packed_sequence_indices``, used
# for sdpa, eager and flex attention; flash-attention reads the same position_ids as varlen
# boundaries, within a single row: ``srt.sft_module.scored_logits`` passes it the rows as one)
# builds a block-diagonal causal mask: a token attends only to earlier tokens of its
# own example, and RoPE sees the same positions as for the example alone. The first label of every
# example is -100, so no token is predicted from the previous example. Rows are right-padded; a
# pad run gets its own positions 0..k-1 (its own block) and label -100, and under causal attention
# no real token ever sees it.


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
    batch["num_tokens"] = torch.tensor(sum(len(r["input_ids"]) for r in rows))
    batch["num_trained_tokens"] = (batch["labels"] != IGNORE_INDEX).sum()
    return batch


class PackedSFTDataset(Dataset):
    """SFT examples packed into rows of at most ``capacity`` tokens (:func:`pack_by_length`).

    Items: ``{"ids", "input_ids", "labels", "position_ids"}`` for one row (see the section comment).
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
        return {"ids": [it["id"] for it in items], **_packed_row([(it["input_ids"], it["labels"]) for it in items])}

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
    ``ids`` and the reference log-probs as :class:`DPOCollator` gives them. A step still sees B pairs
    (the DPO loss is per pair); packing only removes the padding of the chosen/rejected stack."""

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
        batch["sequence_ids"] = _pad_right([r["sequence_ids"] for r in rows], -1, self.pad_to_multiple_of)
        batch["ids"] = [it["id"] for it in items]
        batch.update(_reference_columns(items))
        return batch


# ---------------------------------------------------------------------------------------------
# Length-grouped, rank-aware sampler


class LengthGroupedSampler(DistributedSampler):
    """Shuffled indices for one rank, ordered so that consecutive ``batch_size`` chunks (the
    DataLoader's batches) hold examples of similar length.

    Per epoch (seed + epoch, same on every rank): shuffle all indices, pad to a multiple of
    ``num_replicas`` by repeating the first ones (as ``DistributedSampler`` does), sort by length
    inside mega-batches of ``mega_batch_mult`` global batches, cut global batches of
    ``batch_size * num_replicas``, shuffle the batch order (the batch holding the longest example
    goes first, so an out-of-memory shows at step 0; a short last batch stays last), and give rank r
    the slice ``global_batch[r::num_replicas]``. Every rank gets the same number of batches; with
    one replica each index appears exactly once per epoch.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        group_by_length: bool = True,
        mega_batch_mult: int = 50,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        super().__init__(
            list(lengths), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
        )
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.group_by_length = group_by_length
        self.mega_batch_mult = mega_batch_mult
        self.start_batch = 0  # batches of this epoch to skip (resume; see ResumableDataLoader)

    def __iter__(self):
        n, world = len(self.lengths), self.num_replicas
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
        while len(order) < self.total_size:
            order += order[: self.total_size - len(order)]

        step = self.batch_size * world
        if self.group_by_length:
            mega = step * self.mega_batch_mult
            order = [
                i
                for s in range(0, len(order), mega)
                for i in sorted(order[s : s + mega], key=lambda j: -self.lengths[j])
            ]
        batches = [order[s : s + step] for s in range(0, len(order), step)]
        if self.shuffle:
            full = [b for b in batches if len(b) == step]
            tail = [b for b in batches if len(b) != step]
            full = [full[k] for k in torch.randperm(len(full), generator=g).tolist()]
            if self.group_by_length and full:
                longest = max(range(len(full)), key=lambda k: max(self.lengths[i] for i in full[k]))
                full.insert(0, full.pop(longest))
            batches = full + tail
        mine = [i for b in batches for i in b[self.rank :: world]]
        skip, self.start_batch = self.start_batch * self.batch_size, 0  # set by ResumableDataLoader, once
        return iter(mine[skip:])


class ResumableDataLoader(DataLoader):
    """A train loader whose position is part of the checkpoint.

    Lightning stores ``state_dict()`` of a loader that has one in every checkpoint and calls
    ``load_state_dict()`` before iterating again; resumed mid-epoch, the loader then yields the rest
    of that epoch's batches (same order: the sampler is seeded by seed + epoch), so the run trains
    exactly the batches an uninterrupted run would have. Needs a :class:`LengthGroupedSampler`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._epoch = self._start = self._served = 0
        self._resume_at: tuple[int, int] | None = None

    def __iter__(self):
        epoch = getattr(self.sampler, "epoch", 0)
        start = 0
        if self._resume_at is not None:
            saved_epoch, batches = self._resume_at
            self._resume_at = None
            if saved_epoch == epoch:
                start = batches
        self._epoch, self._start, self._served = epoch, start, 0
        self.sampler.start_batch = start
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches": self._start + self._served}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self._resume_at = (int(state["epoch"]), int(state["batches"]))


# ---------------------------------------------------------------------------------------------
# Reference log-probs


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


# ---------------------------------------------------------------------------------------------
# The data module


def _load_records(records, files, model: type[BaseModel], what: str) -> list | None:
    if records is not None and files is not None:
        raise ConfigError(f"give either {what}_records or {what}_files, not both")
    if files is not None:
        if isinstance(files, (str, os.PathLike)):
            files = [files]
        return [r for path in files for r in read_jsonl(path, model, allow_empty=False)]
    if records is None:
        return None
    out = []
    for k, r in enumerate(records):
        if isinstance(r, Mapping):
            try:
                r = model.model_validate(dict(r))
            except ValidationError as e:
                raise RecordError(f"{what}_records[{k}]: {e.errors(include_url=False)[0]['msg']}") from None
        elif not isinstance(r, model):
            raise RecordError(f"{what}_records[{k}]: expected a {model.__name__}, got {type(r).__name__}")
        out.append(r)
    return out


class FeedbackDataModule(L.LightningDataModule):
    """Both stages' data: ``mode="sft"`` (FeedbackRecords) or ``mode="dpo"`` (PreferencePairs).

    ``setup()`` reads and tokenizes once and keeps the examples in memory; ``stats`` then holds a
    :class:`DataStats` per split. See the module docstring for the batch layout and DDP handling.

    ``packing=True`` (see the packing section): SFT examples are packed into rows of at most
    ``packing_length`` tokens (default ``max_length``) and ``batch_size`` counts rows; DPO keeps
    ``batch_size`` pairs per batch and packs their chosen/rejected sequences into rows.
    """

    def __init__(
        self,
        tokenizer,
        *,
        mode: Literal["sft", "dpo"],
        train_records: Sequence[Any] | None = None,
        train_files: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        val_records: Sequence[Any] | None = None,
        val_files: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        val_fraction: float = 0.0,
        batch_size: int = 1,
        eval_batch_size: int | None = None,
        max_length: int = 2048,
        num_workers: int = 0,
        group_by_length: bool = True,
        seed: int = 0,
        system_prompt: str | None = None,
        truncation: str | None = None,  # default: "drop" (sft) / "truncate" (dpo)
        mask_response: bool = False,  # sft only
        ablation: str | None = None,  # sft only
        max_prompt_length: int | None = None,  # dpo only
        completion_end: str = "eos",  # dpo only: "eos", "feedback" or "none" (DPODataConfig)
        pad_to_multiple_of: int | None = None,
        packing: bool = False,
        packing_length: int | None = None,  # tokens per packed row; default max_length
    ):
        super().__init__()
        if mode not in ("sft", "dpo"):
            raise ConfigError(f"mode must be 'sft' or 'dpo', got {mode!r}")
        if train_records is None and train_files is None:
            raise ConfigError("FeedbackDataModule needs train_records or train_files")
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if packing_length is not None and (not packing or packing_length < max_length):
            raise ConfigError(
                f"packing_length ({packing_length}) needs packing=True and must be >= max_length ({max_length})"
            )
        self.tokenizer = tokenizer
        self.mode = mode
        try:
            if mode == "sft":
                if max_prompt_length is not None:
                    raise ConfigError("max_prompt_length applies to mode='dpo' only")
                self.config: SFTDataConfig | DPODataConfig = SFTDataConfig(
                    max_length=max_length,
                    truncation=truncation or "drop",
                    mask_response=mask_response,
                    ablation=ablation,
                    system_prompt=system_prompt,
                )
            else:
                if mask_response or ablation is not None:
                    raise ConfigError("mask_response and ablation apply to mode='sft' only")
                self.config = DPODataConfig(
                    max_length=max_length,
                    max_prompt_length=max_prompt_length,
                    truncation=truncation or "truncate",
                    system_prompt=system_prompt,
                    completion_end=completion_end,
                )
        except ValidationError as e:
            err = e.errors(include_url=False)[0]
            raise ConfigError(f"data option {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        self._sources = {"train": (train_records, train_files), "val": (val_records, val_files)}
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.group_by_length = group_by_length
        self.seed = seed
        self.pad_to_multiple_of = pad_to_multiple_of
        self.packing = packing
        self.packing_length = packing_length or max_length
        self.stats: dict[str, DataStats] = {}
        self.datasets: dict[str, SFTDataset | DPODataset] = {}
        self._ref_logps: dict[str, tuple[float, float]] | None = None
        self._train_loader: ResumableDataLoader | None = None
        self._loader_resume: dict[str, int] | None = None  # a checkpoint's loader position, for the next loader

    # -- setup -----------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:  # tokenized once, whatever the stage
            return
        model = FeedbackRecord if self.mode == "sft" else PreferencePair
        train = _load_records(*self._sources["train"], model, "train")
        val = _load_records(*self._sources["val"], model, "val")
        if val is None and self.val_fraction > 0:
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed)).tolist()
            n_val = max(1, round(len(train) * self.val_fraction))
            val = [train[i] for i in sorted(order[:n_val])]
            train = [train[i] for i in sorted(order[n_val:])]

        chat = ChatFormat(self.tokenizer, self.config.system_prompt)
        for split, records in (("train", train), ("val", val)):
            if records is None:
                continue
            stats = DataStats()
            if self.mode == "sft":
                examples = build_sft_examples(
                    self.tokenizer, records, self.config, chat=chat, stats=stats, desc=f"tokenize {split}"
                )
                self.datasets[split] = SFTDataset(examples)
                if self.packing:
                    self.datasets[split] = PackedSFTDataset(self.datasets[split], self.packing_length)
            else:
                examples = build_dpo_examples(
                    self.tokenizer, records, self.config, chat=chat, stats=stats, desc=f"tokenize {split}"
                )
                self.datasets[split] = DPODataset(examples)
            self.stats[split] = stats
            if self._rank_and_world()[0] == 0:  # every rank tokenizes; one of them reports
                log = logger.warning if (stats.truncated or stats.dropped_too_long or stats.rejected) else logger.info
                log("%s data (%s): %s", split, self.mode, stats.summary())
                if isinstance(self.datasets[split], PackedSFTDataset):
                    packed = self.datasets[split]
                    logger.info(
                        "%s data: %d examples packed into %d rows of <= %d tokens (%.0f%% filled)",
                        split,
                        stats.examples,
                        len(packed),
                        packed.capacity,
                        100 * packed.fill(),
                    )
        if not len(self.datasets["train"]):
            raise ConfigError(f"no usable training examples: {self.stats['train'].summary()}")
        if self._ref_logps is not None:
            self._attach_reference_logps()

    # -- reference log-probs (DPO) -----------------------------------------------------------

    def set_reference_logps(self, source: Mapping[str, Any] | str | os.PathLike | None) -> None:
        """Make DPO items carry precomputed ``ref_chosen_logps`` / ``ref_rejected_logps``, looked up
        by pair id (see :func:`load_reference_logps` for the accepted forms); None removes them.
        Every pair of every split must be covered."""
        if self.mode != "dpo":
            raise ConfigError("reference log-probs apply to mode='dpo' only")
        self._ref_logps = None if source is None else load_reference_logps(source)
        if self.datasets:
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

    # -- loaders ---------------------------------------------------------------------------

    @property
    def collator(self) -> SFTCollator | DPOCollator | PackedSFTCollator | PackedDPOCollator:
        pad_id = _pad_id(self.tokenizer)
        if self.packing and self.mode == "sft":
            return PackedSFTCollator(pad_id, self.pad_to_multiple_of)
        if self.packing:
            return PackedDPOCollator(pad_id, self.packing_length, self.pad_to_multiple_of)
        cls = SFTCollator if self.mode == "sft" else DPOCollator
        return cls(_pad_id(self.tokenizer), self.pad_to_multiple_of)

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _dataset(self, split: str):
        if not self.datasets:
            self.setup()
        return self.datasets.get(split)

    def train_sampler(self) -> LengthGroupedSampler:
        dataset = self._dataset("train")
        rank, world = self._rank_and_world()
        return LengthGroupedSampler(
            dataset.lengths(),
            self.batch_size,
            num_replicas=world,
            rank=rank,
            seed=self.seed,
            group_by_length=self.group_by_length,
        )

    def train_dataloader(self) -> DataLoader:
        # Own generators: creating an iterator must not draw from the global RNG, or a resumed run's
        # dropout would drift from an uninterrupted one (srt.pipeline.checkpoints.ResumeRNG).
        loader = ResumableDataLoader(
            self._dataset("train"),
            batch_size=self.batch_size,
            sampler=self.train_sampler(),
            collate_fn=self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )
        if self._loader_resume is not None:
            loader.load_state_dict(self._loader_resume)
            self._loader_resume = None
        self._train_loader = loader
        return loader

    def _ordered_loader(self, dataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def val_dataloader(self) -> DataLoader | list:
        dataset = self._dataset("val")
        return self._ordered_loader(dataset) if dataset is not None else []

    def predict_dataloader(self) -> DataLoader:
        """Every example of every split (train, then val), in order, for reference log-prob
        precomputation; DPO batches carry ``ids`` to key the results."""
        self._dataset("train")
        return self._ordered_loader(ConcatDataset(list(self.datasets.values())))

    # -- resume ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        # The epoch comes back through the trainer (it calls set_epoch), the position inside it from
        # the train loader. Lightning restores a datamodule before it builds the loaders (a loader's
        # own state is restored only when the loader is built after the loops, which sizing the LR
        # schedule prevents), so the position travels here. Also what shaped the data, to notice a
        # resume with different data settings.
        state = {
            "seed": self.seed,
            "mode": self.mode,
            "config": self.config.model_dump(),
            "train_examples": len(self.datasets["train"]) if self.datasets else None,
            "packing": self.packing,
        }
        if self._train_loader is not None:
            state["train_loader"] = self._train_loader.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state.get("mode"), state.get("config"), state.get("packing", False)) != (
            self.mode,
            self.config.model_dump(),
            self.packing,
        ):
            logger.warning("resuming with different data settings than the checkpoint: %s", state)
        self._loader_resume = state.get("train_loader")
