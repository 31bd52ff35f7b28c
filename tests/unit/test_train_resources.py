"""How many CPUs a training worker reserves when train.cpus_per_worker is left unset."""

from __future__ import annotations

import pytest

from mrlkit.config_schema import TrainConfig
from mrlkit.train.resources import auto_cpus_per_worker


@pytest.mark.parametrize(("workers", "free", "expected"), [
    (1, 8.0, 8),  # a laptop: one worker computes on every free core
    (2, 8.0, 4),
    (3, 8.0, 2),  # whole CPUs only
    (1, 2.0, 2),
    (2, 2.0, 1),
    (4, 2.0, 1),  # never below one: the local check then says the group does not fit
])
def test_one_node_splits_its_free_cpus_between_the_workers(workers, free, expected):
    cpus, why = auto_cpus_per_worker(TrainConfig(num_workers=workers), 1, free)
    assert cpus == expected
    assert f"{free:g} free CPUs" in why


def test_loaders_are_counted_in_the_least_a_worker_takes():
    train = TrainConfig(dataloader_workers=2)
    assert auto_cpus_per_worker(train, 1, 2.0)[0] == 3  # 1 training process + 2 loaders
    assert auto_cpus_per_worker(train, 1, 16.0)[0] == 16


def test_gpu_workers_and_clusters_take_the_least_and_say_how_to_change_it():
    assert auto_cpus_per_worker(TrainConfig(use_gpu=True), 1, 32.0) == (1, "GPU workers")
    cpus, why = auto_cpus_per_worker(TrainConfig(dataloader_workers=1), 3, 16.0)
    assert cpus == 2 and "3 nodes" in why and "train.cpus_per_worker" in why


def test_an_explicit_value_must_leave_a_cpu_per_loader_and_unset_needs_none():
    from mrlkit.config_schema import Problem

    assert TrainConfig().cpus_per_worker is None
    TrainConfig(dataloader_workers=3)  # unset: the worker will take at least 4
    with pytest.raises(Problem, match="need cpus_per_worker >= 4"):
        TrainConfig(dataloader_workers=3, cpus_per_worker=3)
