"""Tokenized training data for both stages: an SFT data module (stage 1) and a DPO data module (stage 2).

Both take the run config's section (``srt.config.SFTConfig`` / ``DPOConfig``) as the only source of
their data settings::

    SFTDataModule(tokenizer, cfg.sft, system_prompt=cfg.model.system_prompt, train_files=[records])
    DPODataModule(tokenizer, cfg.dpo, system_prompt=cfg.model.system_prompt, train_files=[pairs])

The package is split along the way a record becomes a batch, one concern per file:

=================  ==================================================================================
``chat_format``    the tokenizer's chat template as pieces: prompt text, end of turn, BOS handling
``segments``       a record as named ``(name, text, train)`` pieces: the loss mask comes from spans
``tokenization``   segments to ids, truncation policies, the BOS checks, :class:`DataStats` counters
``sft``            SFT examples, :class:`SFTDataset`, :class:`SFTDataModule`
``dpo``            DPO examples, :class:`DPODataset`, :class:`DPODataModule`, reference log-probs
``collate``        padded batches (:class:`SFTCollator`, :class:`DPOCollator`)
``packing``        padding-free rows without attention across examples
``sampling``       length-grouped, rank-aware, resumable train order
``base``           what both data modules share: records in, validation split, loaders, resume state
=================  ==================================================================================

Loss masks are built from segment spans, never by searching the rendered text; the chat template
owns BOS (exactly one, checked) and EOS is the last trained token of an SFT sequence. Truncation
is never silent: what was truncated, dropped or rejected is counted per split in
``datamodule.stats`` (and logged).
"""

from srt.data.base import BaseDataModule
from srt.data.chat_format import ChatFormat
from srt.data.collate import DPOCollator, SFTCollator, pad_token_id
from srt.data.dpo import DPODataModule, DPODataset, build_dpo_examples, load_reference_logps
from srt.data.packing import PackedDPOCollator, PackedSFTCollator, PackedSFTDataset, pack_by_length
from srt.data.sampling import LengthGroupedSampler, ResumableDataLoader
from srt.data.segments import Segment, dpo_segments, sft_segments
from srt.data.sft import SFTDataModule, SFTDataset, build_sft_examples
from srt.data.tokenization import IGNORE_INDEX, DataStats

__all__ = [
    "IGNORE_INDEX",
    "BaseDataModule",
    "ChatFormat",
    "DPOCollator",
    "DPODataModule",
    "DPODataset",
    "DataStats",
    "LengthGroupedSampler",
    "PackedDPOCollator",
    "PackedSFTCollator",
    "PackedSFTDataset",
    "ResumableDataLoader",
    "SFTCollator",
    "SFTDataModule",
    "SFTDataset",
    "Segment",
    "build_dpo_examples",
    "build_sft_examples",
    "dpo_segments",
    "load_reference_logps",
    "pack_by_length",
    "pad_token_id",
    "sft_segments",
]
