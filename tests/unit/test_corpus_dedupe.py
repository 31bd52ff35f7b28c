"""Exact and near-duplicate detection: first occurrence wins, across batches (shards), deterministic."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from mrlkit.corpus.dedupe import GlobalDeduper, band_rows, canonical, exact_keys, minhash_signatures


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(3000)]
    return [" ".join(rng.choice(vocab) for _ in range(120)) for _ in range(n)]


def _run(texts: list[str], mode: str, threshold: float = 0.8, shards: int = 3, spill_dir=None):
    canon = [canonical(t) for t in texts]
    keys, sigs = exact_keys(canon), minhash_signatures(canon)
    dedupe = GlobalDeduper(mode, threshold, spill_dir=spill_dir)
    bounds = np.linspace(0, len(texts), shards + 1).astype(int)
    for lo, hi in itertools.pairwise(bounds):  # each shard adds its own slice, like Ray blocks
        dedupe.add(keys[lo:hi], sigs[lo:hi])
    return dedupe.duplicates()


def test_exact_ignores_case_and_whitespace_and_crosses_shards():
    texts = _texts(30)
    texts[25] = "  " + texts[2].upper().replace(" ", "\n  ")  # same text, other shard
    exact, near, dup_of = _run(texts, "exact")
    assert np.flatnonzero(exact).tolist() == [25] and dup_of[25] == 2 and not near.any()


def test_near_duplicates_found_across_shards_and_unrelated_kept():
    texts = _texts(60)
    words = texts[3].split()
    words[60] = "edited"  # one word of 120 changed: Jaccard over shingles ~0.9
    texts[50] = " ".join(words)
    exact, near, dup_of = _run(texts, "near", threshold=0.8)
    assert np.flatnonzero(near).tolist() == [50] and dup_of[50] == 3 and not exact.any()
    _, near_strict, _ = _run(texts, "near", threshold=0.99)
    assert not near_strict.any()


def test_modes_none_and_exact_do_not_flag_near():
    texts = _texts(10)
    texts[9] = texts[0] + " extra"
    for mode in ("none", "exact"):
        exact, near, _ = _run(texts, mode)
        assert not near.any() and not exact.any()


def test_excluded_rows_are_neither_kept_nor_originals():
    texts = _texts(5)
    texts[4] = texts[1]
    canon = [canonical(t) for t in texts]
    dedupe = GlobalDeduper("near", 0.9)
    dedupe.add(exact_keys(canon), minhash_signatures(canon))
    exclude = np.array([False, True, False, False, False])
    exact, near, _dup_of = dedupe.duplicates(exclude=exclude)
    assert not exact.any() and not near.any()  # row 4 becomes the first (kept) copy


def test_signatures_are_deterministic_and_batch_independent():
    canon = [canonical(t) for t in _texts(7)]
    whole = minhash_signatures(canon)
    assert np.array_equal(whole, minhash_signatures(canon, group=2))
    assert np.array_equal(whole[3], minhash_signatures([canon[3]])[0])
    assert whole.dtype == np.uint32 and whole.shape == (7, 64)


@pytest.mark.parametrize(("threshold", "rows"), [(0.9, 4), (0.5, 2), (0.2, 1)])
def test_band_rows(threshold, rows):
    assert band_rows(threshold) == rows


def test_signatures_spilled_to_disk_give_the_same_answer_and_are_deleted_after_the_pass(tmp_path):
    texts = _texts(60)
    for source, target in ((3, 50), (7, 20)):
        words = texts[source].split()
        words[60] = "edited"
        texts[target] = " ".join(words)
    in_memory = _run(texts, "near", threshold=0.8)
    canon = [canonical(t) for t in texts]
    dedupe = GlobalDeduper("near", 0.8, spill_dir=tmp_path)
    dedupe.add(exact_keys(canon[:25]), minhash_signatures(canon[:25]))
    dedupe.add(exact_keys(canon[25:]), minhash_signatures(canon[25:]))
    band_files = sorted(tmp_path.glob("minhash-band-*.u32"))  # band-major: one file per LSH band (4 rows at 0.8)
    assert len(band_files) == 16 and all(f.stat().st_size == 60 * 4 * 4 for f in band_files)
    spilled = dedupe.duplicates()
    assert np.flatnonzero(spilled[1]).tolist() == [20, 50]
    assert all(np.array_equal(a, b) for a, b in zip(in_memory, spilled, strict=True))
    assert not list(tmp_path.iterdir())  # one pass is all they are for: their page cache is memory too
    with pytest.raises(RuntimeError, match="runs once"):
        dedupe.duplicates()


def test_near_pass_keeps_no_two_matching_chunks_and_every_drop_points_at_an_earlier_kept_one(tmp_path):
    rng = random.Random(5)
    texts = _texts(80, seed=1)
    for target in range(40, 80):  # half the corpus: edited copies of earlier chunks, some of them copies of copies
        words = texts[rng.randrange(target)].split()
        for _ in range(rng.randint(1, 12)):
            words[rng.randrange(len(words))] = f"edit{rng.randrange(10**6)}"
        texts[target] = " ".join(words)
    threshold = 0.8
    exact, near, dup_of = _run(texts, "near", threshold=threshold, shards=5, spill_dir=tmp_path)
    sigs = minhash_signatures([canonical(t) for t in texts])
    need = int(np.ceil(threshold * 64))
    kept = np.flatnonzero(~(exact | near))
    assert 0 < near.sum() < 40
    for i in np.flatnonzero(near):
        j = dup_of[i]
        assert j < i and j in kept and np.count_nonzero(sigs[i] == sigs[j]) >= need
    rows = band_rows(threshold)
    for a, b in itertools.combinations(kept, 2):  # kept chunks that are LSH candidates of each other do not match
        shares_band = any(np.array_equal(sigs[a, s: s + rows], sigs[b, s: s + rows]) for s in range(0, 64, rows))
        assert not (shares_band and np.count_nonzero(sigs[a] == sigs[b]) >= need)


def test_near_mode_without_signatures_is_an_error():
    dedupe = GlobalDeduper("near", 0.9)
    with pytest.raises(ValueError, match="signature for every chunk"):
        dedupe.add(np.zeros(3, dtype=np.int64), None)
