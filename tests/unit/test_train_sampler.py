"""Length-bucketed batches: every pair once per epoch, no repeated text in a batch, far less padding."""

from __future__ import annotations

import random

import pytest

from mrlkit.train.sampler import LengthBucketedBatchSampler


def pairs_dataset(n: int, seed: int = 0, duplicate_every: int = 0):
    """Pairs whose lengths vary widely (5 to 400 words), as the seed dataset's contexts do."""
    from datasets import Dataset

    rng = random.Random(seed)
    anchors, positives = [], []
    for i in range(n):
        anchors.append(f"question {i} " + "w " * rng.randint(3, 30))
        positive = f"context {i} " + "x " * int(rng.paretovariate(1.2) * 5)
        if duplicate_every and i % duplicate_every == 0:
            positive = "a context that many questions share"
        positives.append(positive[:2000])
    return Dataset.from_dict({"anchor": anchors, "positive": positives})


def padded_cost(dataset, batches) -> int:
    """Characters a padded forward pass processes: per column, batch size x its longest text."""
    return sum(len(b) * max(len(dataset[c][i]) for i in b) for b in batches for c in dataset.column_names)


def test_every_pair_once_per_epoch_and_no_batch_repeats_a_text():
    ds = pairs_dataset(1000, duplicate_every=7)
    sampler = LengthBucketedBatchSampler(ds, batch_size=32, drop_last=False, seed=3)
    batches = list(sampler)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(ds)))
    for b in batches:
        texts = [ds[c][i] for i in b for c in ds.column_names]
        assert len(texts) == len(set(texts)), "a text repeated inside a batch is a false in-batch negative"
        assert 1 <= len(b) <= 32
    assert sum(len(b) == 32 for b in batches) >= len(ds) // 32 - 5  # duplicates cost at most a few full batches


def test_bucketing_cuts_padding_against_random_no_duplicate_batches():
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

    ds = pairs_dataset(2048)
    bucketed = list(LengthBucketedBatchSampler(ds, batch_size=32, drop_last=True, seed=0))
    random_batches = list(NoDuplicatesBatchSampler(ds, batch_size=32, drop_last=True, seed=0))
    assert len(bucketed) == len(random_batches) == 64
    assert padded_cost(ds, bucketed) < 0.75 * padded_cost(ds, random_batches)


def test_order_is_seeded_by_epoch_so_a_resumed_run_replays_it():
    ds = pairs_dataset(300)
    first = LengthBucketedBatchSampler(ds, batch_size=16, drop_last=True, seed=5)
    again = LengthBucketedBatchSampler(ds, batch_size=16, drop_last=True, seed=5)
    assert list(first) == list(again)
    epoch0 = list(first)
    first.set_epoch(1)
    assert list(first) != epoch0
    assert len(epoch0) == len(first) == 300 // 16 and all(len(b) == 16 for b in epoch0)


@pytest.mark.parametrize("drop_last, expected", [(True, 3), (False, 4)])
def test_length_matches_the_trainers_expectation(drop_last, expected):
    ds = pairs_dataset(100)
    sampler = LengthBucketedBatchSampler(ds, batch_size=32, drop_last=drop_last)
    assert len(sampler) == expected == len(list(sampler))


def test_config_switches_the_trainer_to_bucketed_batches(tmp_path):
    from sentence_transformers.base.sampler import BatchSamplers

    from mrlkit.config_schema import TrainConfig
    from mrlkit.train.worker import training_arguments

    bucketed = training_arguments(TrainConfig(length_bucketing=True), str(tmp_path), world_size=1)
    default = training_arguments(TrainConfig(), str(tmp_path), world_size=1)
    assert bucketed.batch_sampler is LengthBucketedBatchSampler
    assert default.batch_sampler == BatchSamplers.NO_DUPLICATES  # the seed recipe's sampler stays the default


def test_compile_finds_the_encoder_blocks_and_refuses_a_model_without_any(tiny_model):
    import torch
    from sentence_transformers import SentenceTransformer

    from mrlkit.train.regional_compile import compile_blocks, repeated_blocks

    model = SentenceTransformer(tiny_model, device="cpu")
    blocks = repeated_blocks(model)
    assert [type(b).__name__ for b in blocks] == ["BertLayer", "BertLayer"]
    with pytest.raises(ValueError, match="no repeated transformer blocks.*train.compile: false"):
        compile_blocks(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()))


def test_batches_short_of_distinct_texts_are_drawn_again_to_the_expected_count(caplog):
    # A fifth of the pairs share one context: one pass cannot put them all in full batches, and drop_last (forced
    # under DDP) drops the partial ones. The trainer's schedule and progress count len(sampler) steps an epoch.
    import logging

    import torch

    ds = pairs_dataset(320, duplicate_every=5)
    sampler = LengthBucketedBatchSampler(ds, batch_size=32, drop_last=True, seed=1)
    first_pass = sampler._one_pass(torch.Generator().manual_seed(1))  # epoch 0's generator: seed + epoch
    assert len(first_pass) < len(sampler) == 10
    with caplog.at_level(logging.WARNING, logger="mrlkit.train.sampler"):
        batches = list(sampler)
        sampler.set_epoch(1)
        again = list(sampler)
    assert len(batches) == len(again) == 10 and all(len(b) == 32 for b in batches)
    for b in batches:
        texts = [ds[c][i] for i in b for c in ds.column_names]
        assert len(texts) == len(set(texts))
    assert all(b in batches for b in first_pass)  # the first pass's batches stay; the rest are added
    assert caplog.text.count("length bucketing: one pass over the pairs made") == 1
    assert f"made {len(first_pass)} of 10 full batches" in caplog.text
    assert list(sampler) == again  # the same epoch replays the same batches, resampled ones included
