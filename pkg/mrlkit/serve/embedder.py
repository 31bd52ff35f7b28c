"""The model behind ``/v1/embeddings``: load once, encode at full dimension, truncate per request.

No Ray import here, so the same object serves a Ray Serve replica, a benchmark's
raw ``encode`` baseline and a unit test.

Matryoshka truncation keeps the first ``d`` components; when the model ends in
a ``Normalize`` module (its full vectors are unit length) the truncated vector is
re-normalised too, so cosine and dot product agree at every dimension.

Example::

    from mrlkit.serve.embedder import Embedder
    emb = Embedder.load("./mrlkit-data/models/demo")
    full = emb.encode_full(["what was revenue in 2023?"])      # (1, 384) float32
    small = emb.truncate(full, 64)                            # (1, 64), unit norm
"""

from __future__ import annotations

import base64
import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mrlkit import storage
from mrlkit.errors import ModelError

log = logging.getLogger(__name__)

Quantization = Literal["int8", "uint8", "binary", "ubinary"]
QUANTIZATIONS: tuple[str, ...] = ("int8", "uint8", "binary", "ubinary")


@dataclass
class TextCheck:
    """The result of checking one request's texts before they are batched."""

    token_counts: list[int]  # tokens each text contributes (after truncation to the model's max length)
    too_long: list[int]  # indices of texts longer than the model's max length


def default_model_name(ref: str) -> str:
    """The name a model is served under when none is configured: the folder name of a path/URI, else the hub id."""
    if storage.is_s3_uri(ref) or ref.startswith((".", "/", "~")) or Path(ref).expanduser().exists():
        name = ref.rstrip("/").rsplit("/", 1)[-1]
        return name or ref
    return ref


class Embedder:
    """A loaded sentence-transformers model plus the dimensions it may be served at.

    Args:
        model: a loaded ``SentenceTransformer``.
        name: the name clients use in ``"model"`` and that responses report.
        trained_dims: the MRL dimensions from ``mrlkit.json`` (descending), or () for a model without one.
        allow_any_dimension: accept every dimension 1..full instead of only the trained ones.
        aliases: other names accepted in a request's ``"model"`` (e.g. the storage URI it came from).
        unpad: encode a batch's real tokens only (``mrlkit.unpad``): a batch is whatever requests arrived
            together, and a short query batched with a long passage would otherwise be computed at the
            passage's length. A model it cannot serve computes on padding, with a warning.
    """

    def __init__(self, model: Any, *, name: str, trained_dims: tuple[int, ...] = (),
                 allow_any_dimension: bool = False, aliases: tuple[str, ...] = (), unpad: bool = True):
        self.model = model
        self.name = name
        self.aliases = tuple(a for a in aliases if a and a != name)
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.full_dim = int(get_dim())
        too_big = [d for d in trained_dims if d > self.full_dim]
        if too_big:
            raise ModelError(f"model {name!r}: trained dims {too_big} exceed its embedding size {self.full_dim}")
        self.trained_dims = tuple(sorted(set(trained_dims), reverse=True))
        self.allow_any_dimension = allow_any_dimension
        # The full size is always servable: it is what the model computes, nothing is truncated.
        self.allowed_dims = tuple(sorted({*self.trained_dims, self.full_dim}, reverse=True))
        self.normalizes = _ends_in_normalize(model)
        self.max_seq_length = int(model.get_max_seq_length() or 512)
        self.tokenizer = model.tokenizer
        # Counting tokens (check_texts, on the replica's event loop) gets its own copy of the tokenizer: a fast
        # tokenizer keeps padding/truncation as mutable state, so counting with truncation=False while a batch
        # encodes (padding on, in a worker thread) on the same object strips the batch's padding and fails it.
        self._counting_tokenizer = copy.deepcopy(model.tokenizer)
        self.check_texts(["settle the counting tokenizer's settings once, before any concurrent use"])
        self.unpadded = None
        if unpad:
            from mrlkit.unpad import unpad_or_warn

            self.unpadded = unpad_or_warn(model, "serve.unpad", name, logger=log)

    @classmethod
    def load(cls, ref: str, *, name: str | None = None, allow_any_dimension: bool = False,
             device: str | None = None, unpad: bool = True) -> Embedder:
        """Load a model from a storage URI, a local folder or a hub id; its MRL dims come from ``mrlkit.json``."""
        from mrlkit.models import load_sentence_transformer, read_metadata, resolve_model

        resolved = resolve_model(ref)
        meta = read_metadata(resolved) if Path(resolved).is_dir() else None
        model = load_sentence_transformer(ref, device=device or "cpu")
        model.eval()
        dims = tuple(meta.matryoshka_dims) if meta is not None else ()
        if meta is None:
            log.warning("model %s has no mrlkit.json: only its full dimension is served unless allow_any_dimension",
                        ref)
        return cls(model, name=name or default_model_name(ref), trained_dims=dims,
                   allow_any_dimension=allow_any_dimension, aliases=(ref,), unpad=unpad)

    # -- checks done before a request joins a batch ------------------------------------------

    def accepts_model(self, requested: str | None) -> bool:
        return requested is None or requested == self.name or requested in self.aliases

    def dimension_allowed(self, dim: int) -> bool:
        if self.allow_any_dimension:
            return 1 <= dim <= self.full_dim
        return dim in self.allowed_dims

    def describe_allowed_dims(self) -> str:
        if self.allow_any_dimension:
            return f"any integer from 1 to {self.full_dim}"
        return "one of " + ", ".join(str(d) for d in self.allowed_dims)

    def check_texts(self, texts: list[str]) -> TextCheck:
        """Count tokens per text (as the model sees them, special tokens included) and find over-long ones."""
        encoded = self._counting_tokenizer(texts, add_special_tokens=True, truncation=False,
                                           verbose=False)["input_ids"]
        lengths = [len(ids) for ids in encoded]
        too_long = [i for i, n in enumerate(lengths) if n > self.max_seq_length]
        return TextCheck(token_counts=[min(n, self.max_seq_length) for n in lengths], too_long=too_long)

    # -- the work ------------------------------------------------------------------------------

    def encode_full(self, texts: list[str]) -> np.ndarray:
        """One forward pass over ``texts`` at full dimension; float32 array of shape (len(texts), full_dim)."""
        vectors = self.model.encode(texts, batch_size=max(1, len(texts)), convert_to_numpy=True,
                                    show_progress_bar=False, normalize_embeddings=False)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.full_dim)

    def encode_isolated(self, texts: list[str]) -> list[np.ndarray | Exception]:
        """Encode a shared batch; if the forward pass fails, retry text by text so one bad text fails alone.

        Returns one full-dimension vector, or the exception that text raised, per text.
        """
        try:
            return list(self.encode_full(texts))
        except Exception:
            log.exception("batch of %d texts failed; encoding them one by one to isolate the failure", len(texts))
        results: list[np.ndarray | Exception] = []
        for text in texts:
            try:
                results.append(self.encode_full([text])[0])
            except Exception as exc:
                results.append(exc)
        return results

    def truncate(self, vectors: np.ndarray, dim: int | None) -> np.ndarray:
        """The first ``dim`` components, re-normalised to unit length when the model normalises."""
        if dim is None or dim == self.full_dim:
            return vectors
        out = np.array(vectors[:, :dim], dtype=np.float32)
        if self.normalizes:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.where(norms > 0, norms, 1.0)  # an all-zero prefix stays zero rather than becoming NaN
        return out

    def quantize(self, vectors: np.ndarray, precision: Quantization) -> np.ndarray:
        """Quantise with sentence-transformers' ``quantize_embeddings``.

        int8/uint8 use fixed ranges, never ranges computed from the batch, so a
        vector does not depend on which other requests shared its batch: [-1, 1]
        per component for a normalising model (unit vectors lie inside it), else
        the vector's own largest absolute component.
        """
        from sentence_transformers.util import quantize_embeddings

        if precision in ("binary", "ubinary"):
            return quantize_embeddings(vectors, precision)
        if self.normalizes:
            return quantize_embeddings(vectors, precision, ranges=_ranges(1.0, vectors.shape[1]))
        rows = [quantize_embeddings(v[None, :], precision, ranges=_ranges(float(np.abs(v).max()) or 1.0, v.shape[0]))
                for v in vectors]
        return np.concatenate(rows, axis=0)


def _ranges(bound: float, dim: int) -> np.ndarray:
    return np.stack([np.full(dim, -bound, dtype=np.float32), np.full(dim, bound, dtype=np.float32)])


def _ends_in_normalize(model: Any) -> bool:
    from sentence_transformers.models import Normalize

    modules = list(model.children()) if hasattr(model, "children") else []
    return bool(modules) and isinstance(modules[-1], Normalize)


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | list[int] | str:
    """One vector as the wire wants it: a JSON list, or base64 of its little-endian bytes (float32 for floats)."""
    if encoding_format == "base64":
        if vector.dtype.kind == "f":
            vector = vector.astype("<f4")
        return base64.b64encode(np.ascontiguousarray(vector).tobytes()).decode("ascii")
    return vector.tolist()
