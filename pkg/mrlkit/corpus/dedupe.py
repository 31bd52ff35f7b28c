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


class SignatureBands:
    """MinHash signatures stored band-major: one ``(chunks, rows)`` array per LSH band.

    The near-duplicate pass reads each band in full and, for the few candidate chunks, whole
    signatures. Stored row-major (one 256-byte signature after another), reading one band meant
    reading the whole file again, strided: 16 passes over 504 MB at 2M chunks, which thrashed once
    the file outgrew a capped page cache (measured: 11 GB read from disk in 7.5 minutes under an
    1800 MB cap). Band-major, a band is a sequential read of ``4 * rows`` bytes per chunk.

    Args:
        rows: signature values per band (:func:`band_rows`).
        spill_dir: where the band files go as blocks arrive (read back memory-mapped); None keeps them in memory.
    """

    def __init__(self, rows: int, spill_dir: Path | None = None):
        self.rows = rows
        self.bands = NUM_PERM // rows
        self._count = 0
        self._blocks: list[list[np.ndarray]] = [[] for _ in range(self.bands)]
        self._files = None if spill_dir is None else [
            Path(spill_dir) / f"minhash-band-{band:02d}.u32" for band in range(self.bands)]
        for path in self._files or ():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")

    def __len__(self) -> int:
        return self._count

    def add(self, signatures: np.ndarray) -> None:
        """Append ``(n, NUM_PERM)`` signatures, in corpus order."""
        for band in range(self.bands):
            columns = np.ascontiguousarray(signatures[:, band * self.rows: (band + 1) * self.rows])
            if self._files is None:
                self._blocks[band].append(columns)
            else:
                with self._files[band].open("ab") as fh:
                    fh.write(columns.tobytes())
        self._count += len(signatures)

    def band(self, band: int) -> np.ndarray:
        """Every chunk's values in ``band``: ``(len(self), rows)`` uint32."""
        if not self._count:
            return np.empty((0, self.rows), dtype=np.uint32)
        if self._files is None:
            blocks = self._blocks[band]
            if len(blocks) > 1:  # joined once and kept: the near pass reads each band twice (candidates, gather)
                blocks[:] = [np.concatenate(blocks)]
            return blocks[0]
        return np.memmap(self._files[band], dtype=np.uint32, mode="r", shape=(self._count, self.rows))

    def discard(self) -> None:
        """Delete the band files: their page cache (~260 bytes a chunk) counts against a container's memory."""
        for path in self._files or ():
            path.unlink(missing_ok=True)
        self._blocks = [[] for _ in range(self.bands)]
        self._count = 0

    def gather(self, index: np.ndarray) -> np.ndarray:
        """Whole signatures of the chunks at ``index`` (sorted), ``(len(index), NUM_PERM)``, in memory."""
        if not len(index):
            return np.empty((0, NUM_PERM), dtype=np.uint32)
        return np.concatenate([np.asarray(self.band(band)[index]) for band in range(self.bands)], axis=1)


def _bucket_ids(values: np.ndarray) -> np.ndarray:
    """Per row of ``values`` (one band), the id of its bucket: equal rows, equal ids."""
    rows = np.ascontiguousarray(values)
    _, inverse = np.unique(rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel(),
                           return_inverse=True)
    return inverse.ravel()


_MIX = np.uint64(0x9E3779B97F4A7C15)


def _shares_a_bucket(values: np.ndarray) -> np.ndarray:
    """Per row of ``values`` (one band, every chunk): whether another row may hold the same values.

    Compares 64-bit hashes of the rows, sorted: ~25 bytes a row at the peak, where ``np.unique`` over the
    rows themselves took ~90 (2M chunks: +180 MB per band). A hash collision only makes a false candidate,
    which then finds no bucket-mate among the candidates' exact buckets: the result is unchanged.
    """
    band = np.asarray(values)
    digest = np.zeros(len(band), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in range(band.shape[1]):  # wrapping multiply-xor over the band's values
            digest ^= band[:, column].astype(np.uint64)
            digest *= _MIX
            digest ^= digest >> np.uint64(29)
    order = np.argsort(digest)
    ordered = digest[order]
    same = ordered[1:] == ordered[:-1]
    del digest, ordered
    shared = np.zeros(len(band), dtype=bool)
    shared[order[1:][same]] = True
    shared[order[:-1][same]] = True
    return shared


class GlobalDeduper:
    """Collects keys and signatures shard by shard (in corpus order), then marks duplicates in one pass.

    Args:
        mode: ``"none"``, ``"exact"`` or ``"near"`` (near includes exact).
        threshold: estimated Jaccard similarity at or above which a chunk is a near duplicate.
        spill_dir: where signatures go as they arrive (:class:`SignatureBands`), so the driver does not
            hold 256 bytes per chunk in memory (~500 MB for a 2 GB corpus); None keeps them in memory.
    """

    def __init__(self, mode: str, threshold: float = 0.9, spill_dir: Path | None = None):
        self.mode = mode
        self.threshold = threshold
        self._keys: list[np.ndarray] = []
        self._bands = SignatureBands(band_rows(threshold), spill_dir) if mode == "near" else None

    def add(self, keys: np.ndarray, signatures: np.ndarray | None) -> None:
        if self._bands is not None and signatures is None:
            raise ValueError("near-duplicate dedupe needs a MinHash signature for every chunk; got keys only")
        self._keys.append(np.asarray(keys, dtype=np.int64))
        if self._bands is not None:
            self._bands.add(np.asarray(signatures, dtype=np.uint32).reshape(len(keys), NUM_PERM))

    def keys(self) -> np.ndarray:
        return np.concatenate(self._keys) if self._keys else np.empty(0, dtype=np.int64)

    def duplicates(self, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks ``(exact_duplicate, near_duplicate)`` and ``dup_of`` (index of the kept original, or -1).

        ``exclude`` marks chunks already dropped for other reasons: they are neither kept nor counted.
        """
        keys = self.keys()
        n = len(keys)
        near = np.zeros(n, dtype=bool)
        if self.mode == "none" or not n:
            return np.zeros(n, dtype=bool), near, np.full(n, -1, dtype=np.int64)
        if self._bands is not None and len(self._bands) != n:
            raise RuntimeError(f"{len(self._bands)} signatures for {n} chunks: duplicates() runs once, after all adds")
        exact, dup_of = _exact_duplicates(keys, exclude)
        del keys
        if self._bands is not None:
            copies, originals = self._near(exact if exclude is None else exact | exclude)
            near[copies] = True
            dup_of[copies] = originals
            self._bands.discard()  # one pass is all they are for
        return exact, near, dup_of

    def _near(self, skip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Near duplicates among the chunks not in ``skip``: their indices, and those of the kept chunks they match."""
        bands = self._bands
        # A candidate shares a bucket with another chunk in some band; only candidates can match each other,
        # so everything after this loop works on the candidates alone (a few percent of a typical corpus).
        candidate = np.zeros(len(skip), dtype=bool)
        for band in range(bands.bands):
            candidate |= _shares_a_bucket(bands.band(band))
        candidate &= ~skip
        index = np.flatnonzero(candidate)
        del candidate
        sigs = bands.gather(index)
        # Bucket ids over the candidates, numbered across bands (two candidates share an id iff they share a band's
        # values), and the kept candidates of each bucket as a chain in corpus order: head, tail, next per band.
        # Arrays, not per-band dicts of lists: those cost ~170 bytes per candidate and band.
        bucket = np.empty((bands.bands, len(index)), dtype=np.int64)
        buckets = 0
        for band in range(bands.bands):
            ids = _bucket_ids(sigs[:, band * bands.rows: (band + 1) * bands.rows])
            bucket[band] = ids + buckets
            buckets += int(ids.max()) + 1 if len(ids) else 0
        head = np.full(buckets, -1, dtype=np.int64)
        tail = np.full(buckets, -1, dtype=np.int64)
        following = np.full((bands.bands, len(index)), -1, dtype=np.int64)
        need = int(np.ceil(self.threshold * NUM_PERM - 1e-9))
        copies: list[int] = []
        originals: list[int] = []
        for k in range(len(index)):  # k: position among the candidates, in corpus order
            mine = bucket[:, k].tolist()
            match = -1
            for band, b in enumerate(mine):
                j = int(head[b])
                while j >= 0 and match < 0:
                    if int(np.count_nonzero(sigs[k] == sigs[j])) >= need:
                        match = j
                    j = int(following[band, j])
                if match >= 0:
                    break
            if match >= 0:
                copies.append(int(index[k]))
                originals.append(int(index[match]))
                continue
            for band, b in enumerate(mine):
                if tail[b] < 0:
                    head[b] = k
                else:
                    following[band, tail[b]] = k
                tail[b] = k
        return np.array(copies, dtype=np.int64), np.array(originals, dtype=np.int64)


def _exact_duplicates(keys: np.ndarray, exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Chunks whose key an earlier live chunk has, and ``dup_of``: that earlier chunk's index (-1 elsewhere)."""
    n = len(keys)
    exact = np.zeros(n, dtype=bool)
    dup_of = np.full(n, -1, dtype=np.int64)
    live = np.flatnonzero(~exclude) if exclude is not None else np.arange(n)
    _, first, inverse = np.unique(keys[live], return_index=True, return_inverse=True)
    original = live[first][inverse.ravel()]
    is_copy = original != live
    exact[live[is_copy]] = True
    dup_of[live[is_copy]] = original[is_copy]
    return exact, dup_of
