"""Exact and near-duplicate detection across every shard.

Each shard computes, per chunk, an exact key (8 bytes of blake2b over the
case-folded, whitespace-collapsed text) and a MinHash signature over
~4-word shingles (:func:`exact_keys`, :func:`minhash_signatures`). The driver then sees
only those numbers, never the text, and makes one global pass in corpus order
(:class:`GlobalDeduper`): the first occurrence is kept, later exact copies and
chunks whose estimated Jaccard similarity to a kept chunk reaches the threshold
are dropped. Near-duplicate candidates come from LSH banding of the signatures,
with the band size chosen so a pair at the threshold is a candidate with >= 99.5%
probability; candidates are then confirmed on the full signature.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

NUM_PERM = 64
SHINGLE_BYTES = 24
# Fixed seeds: signatures must be identical on every worker and every run.
_RNG = np.random.default_rng(20240611)
_A = (_RNG.integers(1, 2**63 - 1, size=NUM_PERM, dtype=np.int64).astype(np.uint64) << np.uint64(1)) | np.uint64(1)
_B = _RNG.integers(0, 2**63 - 1, size=NUM_PERM, dtype=np.int64).astype(np.uint64)
_POS = _RNG.integers(1, 2**63 - 1, size=SHINGLE_BYTES, dtype=np.int64).astype(np.uint64) | np.uint64(1)


def canonical(text: str) -> bytes:
    """The form both checks compare: case-folded, whitespace collapsed to single spaces, UTF-8."""
    return " ".join(text.casefold().split()).encode("utf-8")


def exact_keys(canon: list[bytes]) -> np.ndarray:
    """One signed 64-bit key per canonical text (see :func:`canonical`)."""
    out = np.empty(len(canon), dtype=np.int64)
    for i, blob in enumerate(canon):
        out[i] = int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little", signed=True)
    return out


def minhash_signatures(canon: list[bytes], group: int = 256) -> np.ndarray:
    """``(len(canon), NUM_PERM)`` uint32 MinHash signatures of canonical texts.

    Shingles are the ``SHINGLE_BYTES`` bytes starting at each word start (about four
    words), hashed with a position-weighted sum, then permuted by multiply-shift
    hashing; all vectorised over a group of texts at a time.
    """
    out = np.empty((len(canon), NUM_PERM), dtype=np.uint32)
    for lo in range(0, len(canon), group):
        out[lo: lo + group] = _signatures(canon[lo: lo + group])
    return out


def _signatures(canon: list[bytes]) -> np.ndarray:
    pad = b"\x00" * SHINGLE_BYTES
    buf = np.frombuffer(pad.join(canon) + pad, dtype=np.uint8)
    lengths = np.array([len(c) for c in canon], dtype=np.int64)
    text_starts = np.concatenate([[0], np.cumsum(lengths + SHINGLE_BYTES)[:-1]])
    positions = np.flatnonzero(buf[:-1] == 0x20) + 1  # the byte after a space starts a word
    positions = np.union1d(positions, text_starts)  # every text has at least its first shingle
    h = np.zeros(len(positions), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(SHINGLE_BYTES):  # wrapping uint64 arithmetic
            h += buf[positions + j].astype(np.uint64) * _POS[j]
        permuted = (_A[:, None] * h[None, :] + _B[:, None]) >> np.uint64(32)
    segment_starts = np.searchsorted(positions, text_starts)
    return np.minimum.reduceat(permuted, segment_starts, axis=1).T.astype(np.uint32)


def band_rows(threshold: float, num_perm: int = NUM_PERM) -> int:
    """Rows per LSH band: the largest power of two that still finds a pair at ``threshold`` with p >= 0.995."""
    best = 1
    for rows in (1, 2, 4, 8, 16):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= 0.995:
            best = rows
    return best


class GlobalDeduper:
    """Collects keys and signatures shard by shard (in corpus order), then marks duplicates in one pass.

    Args:
        mode: ``"none"``, ``"exact"`` or ``"near"`` (near includes exact).
        threshold: estimated Jaccard similarity at or above which a chunk is a near duplicate.
        spill_dir: where signatures go as they arrive (a file read back memory-mapped), so the driver does not
            hold 256 bytes per chunk in memory (a few hundred MB for a 2 GB corpus); None keeps them in memory.
    """

    def __init__(self, mode: str, threshold: float = 0.9, spill_dir: Path | None = None):
        self.mode = mode
        self.threshold = threshold
        self._keys: list[np.ndarray] = []
        self._sigs: list[np.ndarray] = []
        self._sig_file = None if spill_dir is None else Path(spill_dir) / "minhash-signatures.u32"
        self._sig_rows = 0
        if self._sig_file is not None:
            self._sig_file.parent.mkdir(parents=True, exist_ok=True)
            self._sig_file.write_bytes(b"")

    def add(self, keys: np.ndarray, signatures: np.ndarray | None) -> None:
        self._keys.append(np.asarray(keys, dtype=np.int64))
        if self.mode == "near" and signatures is not None:
            block = np.ascontiguousarray(signatures, dtype=np.uint32).reshape(len(keys), NUM_PERM)
            if self._sig_file is None:
                self._sigs.append(block)
            else:
                with self._sig_file.open("ab") as fh:
                    fh.write(block.tobytes())
                self._sig_rows += len(block)

    def _signatures(self) -> np.ndarray:
        if self._sig_file is None:
            return np.concatenate(self._sigs) if self._sigs else np.empty((0, NUM_PERM), dtype=np.uint32)
        if not self._sig_rows:
            return np.empty((0, NUM_PERM), dtype=np.uint32)
        return np.memmap(self._sig_file, dtype=np.uint32, mode="r", shape=(self._sig_rows, NUM_PERM))

    def keys(self) -> np.ndarray:
        return np.concatenate(self._keys) if self._keys else np.empty(0, dtype=np.int64)

    def duplicates(self, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks ``(exact_duplicate, near_duplicate)`` and ``dup_of`` (index of the kept original, or -1).

        ``exclude`` marks chunks already dropped for other reasons: they are neither kept nor counted.
        """
        keys = self.keys()
        n = len(keys)
        exact = np.zeros(n, dtype=bool)
        near = np.zeros(n, dtype=bool)
        dup_of = np.full(n, -1, dtype=np.int64)
        if self.mode == "none" or not n:
            return exact, near, dup_of
        live = np.flatnonzero(~exclude) if exclude is not None else np.arange(n)
        _, first, inverse = np.unique(keys[live], return_index=True, return_inverse=True)
        original = live[first][inverse.ravel()]
        is_copy = original != live
        exact[live[is_copy]] = True
        dup_of[live[is_copy]] = original[is_copy]
        if self.mode == "near":
            sigs = self._signatures()
            skip = exact.copy() if exclude is None else exact | exclude
            near, near_of = self._near(sigs, skip)
            dup_of[near] = near_of[near]
        return exact, near, dup_of

    def _near(self, sigs: np.ndarray, skip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = band_rows(self.threshold)
        bands = NUM_PERM // rows
        bucket_ids = []
        candidate = np.zeros(len(sigs), dtype=bool)
        for band in range(bands):
            block = np.ascontiguousarray(sigs[:, band * rows: (band + 1) * rows])
            _, inverse, counts = np.unique(block.view(np.dtype((np.void, 4 * rows))).ravel(),
                                           return_inverse=True, return_counts=True)
            inverse = inverse.ravel()
            # one id per chunk and band is the pass's largest array: int32 halves it (2M chunks: 128 MB)
            bucket_ids.append(inverse.astype(np.int32) if len(counts) < 2**31 else inverse)
            candidate |= counts[inverse] > 1
        candidate &= ~skip
        near = np.zeros(len(sigs), dtype=bool)
        near_of = np.full(len(sigs), -1, dtype=np.int64)
        kept: list[dict[int, list[int]]] = [{} for _ in range(bands)]
        need = int(np.ceil(self.threshold * NUM_PERM - 1e-9))
        for i in np.flatnonzero(candidate):
            match = -1
            for band in range(bands):
                for j in kept[band].get(int(bucket_ids[band][i]), ()):
                    if int(np.count_nonzero(sigs[i] == sigs[j])) >= need:
                        match = j
                        break
                if match >= 0:
                    break
            if match >= 0:
                near[i] = True
                near_of[i] = match
                continue
            for band in range(bands):
                kept[band].setdefault(int(bucket_ids[band][i]), []).append(int(i))
        return near, near_of
