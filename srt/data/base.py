"""What the SFT and DPO data modules share: records in, a validation split, loaders, resume state.

A data module reads its records (files through the one JSONL reader, or objects in memory),
holds out a validation split, tokenizes once at ``setup()`` and serves three loaders: the train
loader (length-grouped, rank-aware, resumable mid-epoch), and ordered validation and predict
loaders (under DDP Lightning shards those with its own ``DistributedSampler``). Every data setting
comes from the run config's section (``srt.config.SFTConfig`` / ``DPOConfig``); the subclasses
say how a split of records becomes a dataset and which collator batches it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import lightning as L
import torch
from pydantic import BaseModel, ValidationError
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from srt.data.chat_format import ChatFormat
from srt.data.sampling import LengthGroupedSampler, ResumableDataLoader
from srt.data.tokenization import DataStats
from srt.errors import ConfigError, RecordError, validation_problems
from srt.records import read_jsonl

logger = logging.getLogger(__name__)

Section = TypeVar("Section", bound=BaseModel)
Files = str | os.PathLike | Sequence[str | os.PathLike]


def as_section(config: Any, schema: type[Section], name: str) -> Section:
    """The run config's ``name`` section: a ``schema`` instance as it is, or a mapping of its fields
    validated as one (errors are ConfigErrors naming the field)."""
    if isinstance(config, schema):
        return config
    if isinstance(config, Mapping):
        try:
            return schema.model_validate(dict(config))
        except ValidationError as exc:
            raise ConfigError(f"{name} settings: {validation_problems(exc, model=schema)}") from None
    raise ConfigError(
        f"expected srt.config.{schema.__name__} (the run config's {name} section) or a mapping of its fields, "
        f"got {type(config).__name__}"
    )


def load_records(records, files, model: type[BaseModel], what: str) -> list | None:
    """Records from ``files`` (JSONL, read with file:line errors; an empty file is an error) or from
    ``records`` (objects or mappings, validated); None when neither is given."""
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
                raise RecordError(f"{what}_records[{k}]: {validation_problems(e, model=model)}") from None
        elif not isinstance(r, model):
            raise RecordError(f"{what}_records[{k}]: expected a {model.__name__}, got {type(r).__name__}")
        out.append(r)
    return out


class BaseDataModule(L.LightningDataModule):
    """Shared machinery of :class:`~srt.data.sft.SFTDataModule` and :class:`~srt.data.dpo.DPODataModule`.

    ``config`` is the run config's section (or a mapping of its fields); the batch size is its
    ``micro_batch_size``. Keyword arguments are the settings from elsewhere in the run config
    (``system_prompt``: ``model.system_prompt``; ``val_fraction``: ``trainer.val_fraction``;
    ``seed``: ``seed``) and run-time knobs that do not change what is trained (``eval_batch_size``,
    ``num_workers``, ``pad_to_multiple_of``). ``packing_length``: tokens per packed row (default
    ``config.max_length``; needs ``config.packing``).

    ``setup()`` reads and tokenizes once and keeps the examples in memory; ``stats`` then holds a
    :class:`~srt.data.tokenization.DataStats` per split and ``datasets`` the datasets.
    """

    kind: ClassVar[str]  # "sft" / "dpo": logged, and kept in the checkpoint as "mode"
    config_schema: ClassVar[type[BaseModel]]
    record_schema: ClassVar[type[BaseModel]]

    def __init__(
        self,
        tokenizer,
        config: Any,
        *,
        system_prompt: str | None = None,
        train_records: Sequence[Any] | None = None,
        train_files: Files | None = None,
        val_records: Sequence[Any] | None = None,
        val_files: Files | None = None,
        val_fraction: float = 0.0,
        seed: int = 0,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pad_to_multiple_of: int | None = None,
        packing_length: int | None = None,
    ):
        super().__init__()
        self.config = as_section(config, self.config_schema, self.kind)
        if train_records is None and train_files is None:
            raise ConfigError(f"{type(self).__name__} needs train_records or train_files")
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
        max_length = self.config.max_length
        if packing_length is not None and (not self.config.packing or packing_length < max_length):
            raise ConfigError(
                f"packing_length ({packing_length}) needs packing=True and must be >= max_length ({max_length})"
            )
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self._sources = {"train": (train_records, train_files), "val": (val_records, val_files)}
        self.val_fraction = val_fraction
        self.seed = seed
        self.eval_batch_size = eval_batch_size or self.batch_size
        self.num_workers = num_workers
        self.pad_to_multiple_of = pad_to_multiple_of
        self.packing_length = packing_length or max_length
        self.stats: dict[str, DataStats] = {}
        self.datasets: dict[str, Dataset] = {}
        self._train_loader: ResumableDataLoader | None = None
        self._loader_resume: dict[str, int] | None = None  # a checkpoint's loader position, for the next loader

    @property
    def batch_size(self) -> int:
        """Train batch size: the section's ``micro_batch_size`` (SFT with packing: rows)."""
        return self.config.micro_batch_size

    @property
    def packing(self) -> bool:
        return self.config.packing

    def data_settings(self) -> dict[str, Any]:
        """The settings that shape the token ids (kept in checkpoints and cache keys)."""
        raise NotImplementedError

    # -- what a subclass provides -----------------------------------------------------------

    def build_dataset(self, records: list, chat: ChatFormat, stats: DataStats, split: str) -> Dataset:
        raise NotImplementedError

    @property
    def collator(self):
        raise NotImplementedError

    def _after_setup(self) -> None:
        """Called once the datasets are built."""

    def _log_dataset(self, split: str) -> None:
        """Log anything beyond the stats about a built split (rank 0 only)."""

    # -- setup -----------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:  # tokenized once, whatever the stage
            return
        train = load_records(*self._sources["train"], self.record_schema, "train")
        val = load_records(*self._sources["val"], self.record_schema, "val")
        if val is None and self.val_fraction > 0:
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed)).tolist()
            n_val = max(1, round(len(train) * self.val_fraction))
            val = [train[i] for i in sorted(order[:n_val])]
            train = [train[i] for i in sorted(order[n_val:])]

        chat = ChatFormat(self.tokenizer, self.system_prompt)
        for split, records in (("train", train), ("val", val)):
            if records is None:
                continue
            stats = DataStats()
            self.datasets[split] = self.build_dataset(records, chat, stats, split)
            self.stats[split] = stats
            if self._rank_and_world()[0] == 0:  # every rank tokenizes; one of them reports
                log = logger.warning if (stats.truncated or stats.dropped_too_long or stats.rejected) else logger.info
                log("%s data (%s): %s", split, self.kind, stats.summary())
                self._log_dataset(split)
        if not len(self.datasets["train"]):
            raise ConfigError(f"no usable training examples: {self.stats['train'].summary()}")
        self._after_setup()

    # -- loaders ---------------------------------------------------------------------------

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
            group_by_length=self.config.group_by_length,
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
            "mode": self.kind,
            "config": self.data_settings(),
            "train_examples": len(self.datasets["train"]) if self.datasets else None,
            "packing": self.packing,
        }
        if self._train_loader is not None:
            state["train_loader"] = self._train_loader.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state.get("mode"), state.get("config"), state.get("packing", False)) != (
            self.kind,
            self.data_settings(),
            self.packing,
        ):
            logger.warning("resuming with different data settings than the checkpoint: %s", state)
        self._loader_resume = state.get("train_loader")
