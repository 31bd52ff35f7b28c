"""Encode texts at full dimension, in process or sharded over Ray actors.

For a large corpus the encoding is the whole cost of an evaluation, so with
``evaluate.num_workers > 1`` the texts are cut into contiguous slices, each
slice is encoded by its own Ray actor (one model copy per actor, a GPU each with
``use_gpu``), and the embeddings come back in input order. Scoring stays on the
driver: it is a few matrix products per dimension.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from mrlkit.errors import MrlkitError

log = logging.getLogger(__name__)


def pick_device(use_gpu: bool) -> str:
    """``cuda`` when asked for and present; a clear error when asked for and absent."""
    if not use_gpu:
        return "cpu"
    if not torch.cuda.is_available():
        raise MrlkitError("evaluate.use_gpu is true but no CUDA GPU is visible; set evaluate.use_gpu=false")
    return "cuda"


def encode_in_process(model: Any, texts: list[str], kind: str, batch_size: int) -> torch.Tensor:
    """Full-dimension embeddings; ``kind`` picks ``encode_query`` or ``encode_document`` (their prompts)."""
    encode = model.encode_query if kind == "query" else model.encode_document
    out = encode(texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
    return out.float().cpu()


def load_encoder(model_ref: str, device: str, unpad: bool) -> tuple[Any, Any]:
    """The model to evaluate and, with ``evaluate.unpad``, the wrapper that has it encode real tokens only (None
    for a model that cannot, which stays padded with a warning, or without the setting)."""
    from mrlkit.models import load_sentence_transformer

    model = load_sentence_transformer(model_ref, device=device)
    if not unpad:
        return model, None
    from mrlkit.unpad import unpad_or_warn

    return model, unpad_or_warn(model, "evaluate.unpad", model_ref, logger=log)


class ShardEncoder:
    """One Ray actor's model copy; encodes the slices it is given."""

    def __init__(self, model_ref: str, batch_size: int, use_gpu: bool, unpad: bool = True) -> None:
        self.model, _ = load_encoder(model_ref, pick_device(use_gpu), unpad)
        self.batch_size = batch_size

    def encode(self, texts: list[str], kind: str) -> torch.Tensor:
        return encode_in_process(self.model, texts, kind, self.batch_size)


class RayShardedEncoder:
    """An :data:`~mrlkit.evaluate.evaluator.Encoder` that spreads texts over ``num_workers`` Ray actors.

    Use as a context manager so the actors (and their model copies) are released::

        with RayShardedEncoder("s3://bucket/mrl/models/demo", num_workers=4, batch_size=64) as enc:
            embeddings = enc(None, texts, "document")
    """

    def __init__(self, model_ref: str, num_workers: int, batch_size: int, use_gpu: bool = False,
                 unpad: bool = True) -> None:
        import ray

        if not ray.is_initialized():
            raise MrlkitError("sharded encoding needs Ray; call mrlkit.ray_runtime.init_ray first")
        resource = "GPU" if use_gpu else "CPU"
        available = ray.cluster_resources().get(resource, 0)
        if available < num_workers:  # an autoscaling cluster may still grow, so say why we wait rather than fail
            log.warning("evaluate: %d encoding workers need %d %ss but the Ray cluster has %g now; they wait "
                        "until it grows (or lower evaluate.num_workers)", num_workers, num_workers, resource, available)
        actor_cls = ray.remote(num_cpus=0 if use_gpu else 1, num_gpus=1 if use_gpu else 0)(ShardEncoder)
        self.actors = [actor_cls.remote(model_ref, batch_size, use_gpu, unpad) for _ in range(num_workers)]
        self.num_workers = num_workers

    def __call__(self, model: Any, texts: list[str], kind: str) -> torch.Tensor:
        import ray

        size = max(1, -(-len(texts) // self.num_workers))  # ceil: every actor gets at most one slice
        slices = [texts[i:i + size] for i in range(0, len(texts), size)]
        futures = [actor.encode.remote(part, kind) for actor, part in zip(self.actors, slices, strict=False)]
        log.info("evaluate: encoding %d %s texts on %d Ray workers", len(texts), kind, len(futures))
        try:
            parts = ray.get(futures)
        except ray.exceptions.RayActorError as exc:
            raise MrlkitError(f"an encoding worker died: {exc}") from None
        return torch.cat(parts) if parts else torch.empty(0, 0)

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []

    def __enter__(self) -> RayShardedEncoder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
