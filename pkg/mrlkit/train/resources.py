"""How many CPUs each training worker reserves, and computes with on a CPU.

``train.cpus_per_worker`` set: that many. Unset (the default): on a Ray of one node (the
embedded Ray of ``mrlkit train``, or ``ray start --head`` on one machine), the CPUs free
on it now, split between the workers; a laptop's training then uses the laptop, not one
core of it. On a cluster of several nodes, or on GPU workers, the least a worker needs
(the training process and one CPU per data loader): the nodes' sizes are the cluster's
business (the chart's worker pods, an autoscaler), so there it is set explicitly.
"""

from __future__ import annotations

from typing import Any

from mrlkit.config_schema import TrainConfig


def least_cpus(train: TrainConfig) -> int:
    """The training process plus one CPU per loader process."""
    return 1 + train.dataloader_workers


def auto_cpus_per_worker(train: TrainConfig, alive_nodes: int, free_cpus: float) -> tuple[int, str]:
    """CPUs per worker when ``train.cpus_per_worker`` is unset, and why (for the log).

    ``alive_nodes``: how many Ray nodes are alive; ``free_cpus``: the CPUs free in the cluster now.
    """
    least = least_cpus(train)
    if train.use_gpu:
        return least, "GPU workers"
    if alive_nodes != 1:
        return least, (f"a cluster of {alive_nodes} nodes: set train.cpus_per_worker to the CPUs a "
                       "worker node can give")
    share = int(free_cpus // train.num_workers)
    return max(least, share), f"the {free_cpus:g} free CPUs of this Ray node over {train.num_workers} worker(s)"


def cpus_per_worker(train: TrainConfig, ray: Any) -> tuple[int, str]:
    """The CPUs each worker reserves on this (initialised) Ray, and why."""
    if train.cpus_per_worker is not None:
        return train.cpus_per_worker, "train.cpus_per_worker"
    alive = sum(1 for node in ray.nodes() if node.get("Alive"))
    return auto_cpus_per_worker(train, alive, ray.available_resources().get("CPU", 0.0))
