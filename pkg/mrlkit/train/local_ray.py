"""Ray Train on a Ray this machine runs for one job (``mrlkit train`` without ``RAY_ADDRESS``).

Ray Train starts a detached ``PlacementGroupCleaner`` beside its controller: every second it
asks Ray's state API whether the controller is alive, and removes the training's placement
group once told it is not. That helps on a cluster, where a controller can die and leave its
workers' resources reserved. On the Ray that ``mrlkit.ray_runtime.init_ray`` starts it harms:

- that Ray has no state API (``include_dashboard=False`` saves ~200 MB), so the cleaner logged
  "Failed to query Ray Train Controller actor state" every second of a run;
- its state API client finds "the" cluster by looking around the machine. While another Ray
  started and stopped on the same machine, the cleaner of a live seed-benchmark run was told its
  controller was dead and removed the run's placement group: Ray killed the worker, and the run
  started over from its newest checkpoint (none yet: 80 steps lost).

A Ray started for one job ends with its driver, and its reservations with it, so nothing is lost
without the cleaner. :class:`LocalTorchTrainer` is Ray's ``TorchTrainer`` without it.
"""

from __future__ import annotations

from typing import Any

from ray.train.torch import TorchTrainer

CLEANER_CALLBACK = "PlacementGroupCleanerCallback"


class LocalTorchTrainer(TorchTrainer):
    """``TorchTrainer`` without Ray Train's placement-group cleaner (see the module docstring)."""

    def _create_default_callbacks(self) -> list[Any]:
        return [cb for cb in super()._create_default_callbacks() if type(cb).__name__ != CLEANER_CALLBACK]
