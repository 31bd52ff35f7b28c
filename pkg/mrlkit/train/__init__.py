"""Stage ``train``: MRL fine-tuning of a sentence-transformers model on Ray Train.

- :mod:`mrlkit.train.loss`: MatryoshkaLoss over (Cached)MultipleNegativesRankingLoss.
- :mod:`mrlkit.train.fused_loss`: the same MatryoshkaLoss(MNRL), every dim in one batched pass.
- :mod:`mrlkit.train.data`: the pairs and held-out set, read from the storage layout.
- :mod:`mrlkit.train.callbacks`: progress (loss, pairs/s, ETA), Ray reporting with retried uploads.
- :mod:`mrlkit.train.worker`: the per-worker loop; runs with or without Ray.
- :mod:`mrlkit.train.run_storage`: the filesystem Ray Train checkpoints through (local or S3).
- :mod:`mrlkit.train.export`: best checkpoint -> sentence-transformers folder + ``mrlkit.json``.
- :mod:`mrlkit.train.resources`: the CPUs each worker reserves (unset: a one-node Ray's free CPUs, split).
- :mod:`mrlkit.train.local_ray`: Ray Train on a Ray of its own, without the cleaner that misfires there.
- :mod:`mrlkit.train.launch`: ``TrainStage`` (TorchTrainer, storage, failure policy, resume, export).
"""
