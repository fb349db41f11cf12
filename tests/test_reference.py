"""The precomputed reference pass: its own (larger) length-sorted batches, results in dataset order,
the same numbers as one pair at a time."""

import random

import pytest
import torch

from srt.config import DPOConfig
from srt.data import DPODataModule
from srt.errors import ConfigError
from srt.training.reference import (
    REFERENCE_BATCH_MULTIPLE,
    ReferenceLogpsCache,
    compute_reference_logps,
    length_sorted_batches,
    precompute_reference_logps,
    reference_batch_size,
    reference_dataloader,
)

WORDS = "the a answer step first then because total each number more less half twice apples train speed".split()


def pairs(n=11, seed=0):
    rng = random.Random(seed)
    text = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    return [
        {
            "id": f"q{i}",
            "prompt": text(rng.randint(2, 20)),
            "chosen": text(rng.randint(1, 30)),
            "rejected": text(rng.randint(1, 30)),
        }
        for i in range(n)
    ]


def data_module(tokenizer, *, packing=False, val_fraction=0.0, **config):
    dm = DPODataModule(
        tokenizer,
        DPOConfig(micro_batch_size=2, max_length=128, packing=packing, **config),
        train_records=pairs(),
        val_fraction=val_fraction,
        seed=3,
    )
    dm.setup()
    return dm


def one_at_a_time(model, dm):
    """The per-example reference: every pair alone in its batch, dataset order."""
    splits = list(dm.datasets.values())
    return {
        pair_id: value
        for dataset in splits
        for pair_id, value in compute_reference_logps(
            model, [dm.collator([dataset[i]]) for i in range(len(dataset))]
        ).items()
    }


def test_length_sorted_batches_cover_every_index_once_longest_first():
    lengths = [5, 9, 1, 9, 7, 3, 5]
    batches = length_sorted_batches(lengths, 3)
    assert batches == [[1, 3, 4], [0, 6, 5], [2]]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert length_sorted_batches([], 4) == []
    with pytest.raises(ConfigError):
        length_sorted_batches(lengths, 0)


def test_reference_batch_size_defaults_to_a_multiple_of_the_micro_batch():
    assert reference_batch_size(DPOConfig(micro_batch_size=3)) == REFERENCE_BATCH_MULTIPLE * 3
    assert reference_batch_size(DPOConfig(micro_batch_size=3, reference_batch_size=5)) == 5
    # gradient checkpointing: steps hold little, so the reference batch stays at the micro-batch
    assert reference_batch_size(DPOConfig(micro_batch_size=3, gradient_checkpointing=True)) == 3
    assert reference_batch_size(DPOConfig(micro_batch_size=3, gradient_checkpointing=True, reference_batch_size=8)) == 8
    with pytest.raises(ValueError):
        DPOConfig(reference_batch_size=0)


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_precomputed_equals_per_example_in_dataset_order(tiny_model, tiny_tokenizer, packing):
    dm = data_module(tiny_tokenizer, packing=packing, val_fraction=0.25)
    assert len(dm.datasets["val"]) > 0
    loader = reference_dataloader(dm)
    assert loader.batch_size is None and len(loader.batch_sampler[0]) == REFERENCE_BATCH_MULTIPLE * 2
    lengths = [n for d in dm.datasets.values() for n in d.lengths()]
    widths = [max(lengths[i] for i in batch) for batch in loader.batch_sampler]  # really length-sorted
    assert widths == sorted(widths, reverse=True)

    got = precompute_reference_logps(tiny_model, dm)
    expected = one_at_a_time(tiny_model, dm)
    order = [pair_id for batch in dm.predict_dataloader() for pair_id in batch["ids"]]
    assert list(got) == list(expected) == order  # dataset order: train, then val
    for pair_id in order:
        assert got[pair_id] == pytest.approx(expected[pair_id], rel=1e-5, abs=1e-4), pair_id
    # and the same as the old pass (training micro-batches, dataset order) to float rounding
    old = compute_reference_logps(tiny_model, dm.predict_dataloader())
    for pair_id in order:
        assert got[pair_id] == pytest.approx(old[pair_id], rel=1e-5, abs=1e-4), pair_id


def test_batch_size_does_not_change_the_numbers(tiny_model, tiny_tokenizer):
    dm = data_module(tiny_tokenizer)
    small = precompute_reference_logps(tiny_model, dm, batch_size=1)
    large = precompute_reference_logps(tiny_model, dm, batch_size=64)  # one batch holds everything
    assert list(small) == list(large)
    for pair_id in small:
        assert small[pair_id] == pytest.approx(large[pair_id], rel=1e-5, abs=1e-4)
    assert tiny_model.training is False  # left as found (the fixture's model is in eval mode)


def test_cached_reference_resumes_and_feeds_training_batches(tiny_model, tiny_tokenizer, tmp_path):
    """A resumed run loads the cache instead of recomputing, and the values reach the right pairs."""
    dm = data_module(tiny_tokenizer, reference_batch_size=3)
    cache = ReferenceLogpsCache(tmp_path)
    fields = dict(data_hash="d", model="m", chat_template=None, max_length=128, dtype="float32")
    calls = []

    def compute():
        calls.append(1)
        return precompute_reference_logps(tiny_model, dm)

    first = cache.get_or_compute(compute, **fields)
    again = cache.get_or_compute(compute, **fields)
    assert calls == [1] and list(again) == list(first)
    assert all(torch.tensor(again[k]).allclose(torch.tensor(first[k]), atol=1e-6) for k in first)
    dm.set_reference_logps(again)
    for batch in dm.train_dataloader():
        for j, pair_id in enumerate(batch["ids"]):
            assert batch["ref_chosen_logps"][j].item() == pytest.approx(first[pair_id][0], abs=1e-5)
            assert batch["ref_rejected_logps"][j].item() == pytest.approx(first[pair_id][1], abs=1e-5)
