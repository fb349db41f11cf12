"""Train-loader order: length-grouped, rank-aware, seeded per epoch, and resumable mid-epoch.

Distributed training: :class:`LengthGroupedSampler` is a ``DistributedSampler`` subclass that
shards by rank itself. Lightning leaves a ``DistributedSampler`` in place (it only injects one when
the loader has another kind of sampler) and calls its ``set_epoch`` every epoch, so shuffling is
seeded per epoch and identical on all ranks. :class:`ResumableDataLoader` makes the position inside
an epoch part of the checkpoint, so a run killed mid-epoch resumes with exactly the batches an
uninterrupted run would have trained (tests/test_guarantees.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.utils.data import DataLoader, DistributedSampler

from srt.errors import ConfigError


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
