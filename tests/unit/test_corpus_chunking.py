"""Chunks stay within the token budget as the model's own tokenizer counts it, and cut at good boundaries."""

from __future__ import annotations

import itertools
import logging
import random
import shutil
import subprocess
import sys

import pytest

from mrlkit.corpus.chunking import Chunker, effective_limits, load_tokenizer

MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # resolves to the offline package copy; nothing is downloaded


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(MODEL)


def _document(seed: int, paragraphs: int = 6) -> str:
    rng = random.Random(seed)
    words = ["matryoshka", "embedding", "ray", "shard", "tokenizer", "über", "naïve", "x", "unbelievably",
             "3.14", "(nested)", "e-mail", "日本語", "dimension", "retrieval"]
    paras = []
    for _ in range(paragraphs):
        sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 40))) + rng.choice(".!?")
                     for _ in range(rng.randint(1, 6))]
        paras.append(" ".join(sentences))
    return ("\n\n".join(paras) + " " + "x" * 300 + " " + "word " * 400).strip()  # a huge "word", a long run


@pytest.mark.parametrize("by_words", [True, False], ids=["word-cache", "token-offsets"])
@pytest.mark.parametrize(("max_tokens", "overlap"), [(16, 0), (64, 8), (254, 32)])
def test_chunks_within_budget_per_the_tokenizer(tokenizer, max_tokens, overlap, by_words):
    chunker = Chunker(tokenizer, max_tokens, overlap)
    assert chunker.word_additive  # WordPiece splits on whitespace first: the fast path applies
    chunker.word_additive = by_words
    texts = [_document(seed) for seed in range(5)]
    for text, spans in zip(texts, chunker.chunk_texts(texts), strict=True):
        assert len(spans) > 1
        chunks = [text[a:b] for a, b, _ in spans]
        recount = chunker.count_tokens(chunks)
        with_specials = [len(tokenizer(c)["input_ids"]) for c in chunks]
        for (_, _, n), again, full in zip(spans, recount, with_specials, strict=True):
            assert n <= max_tokens
            assert again == n  # cuts fall on word starts, so re-tokenising gives the same count
            assert full <= max_tokens + 2  # [CLS] + [SEP]: never over what the model reads
        # nothing is lost: consecutive chunks touch or overlap, and the ends are the text's ends
        assert spans[0][0] == 0 and spans[-1][1] == len(text)
        for (a1, b1, _), (a2, _b2, _) in itertools.pairwise(spans):
            assert a1 < a2 <= b1 + 2
            if overlap == 0:
                assert a2 >= b1


def test_prefers_paragraph_and_sentence_boundaries(tokenizer):
    para = "This is a sentence about shards. " * 6
    text = (para.strip() + "\n\n") * 6
    spans = Chunker(tokenizer, 100, 0).chunk_texts([text])[0]
    for a, b, _ in spans[:-1]:
        assert text[b - 1] == "." and text[a:b].endswith("shards.")
    assert all(text[a:b].split("\n\n")[-1].count("shards.") in (0, 6) or b == len(text) for a, b, _ in spans)


def test_short_text_is_one_chunk(tokenizer):
    assert Chunker(tokenizer, 32).chunk_texts(["A short one."]) == [[(0, 12, 4)]]


def test_chunk_size_clamped_to_the_model_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        size, overlap = effective_limits(MODEL, 10_000, 6_000)
    assert size == 254  # all-MiniLM-L6-v2 reads 256 tokens, 2 of them special
    assert overlap == 127
    assert "chunk_tokens=10000" in caplog.text
    assert effective_limits(MODEL, 128, 16) == (128, 16)


def test_chunk_size_clamped_to_the_training_sequence_length(caplog):
    # The fine-tuned model is trained and exported with train.max_seq_length: a longer chunk's tail is never read.
    with caplog.at_level(logging.WARNING):
        assert effective_limits(MODEL, 192, 24, max_seq_length=128) == (126, 24)
    assert "chunk_tokens=192" in caplog.text and "train.max_seq_length=128" in caplog.text
    assert "126 content tokens" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # a longer training length than the model's own lifts its limit
        assert effective_limits(MODEL, 400, 24, max_seq_length=512) == (400, 24)
    assert caplog.text == ""


def test_bad_chunker_arguments(tokenizer):
    with pytest.raises(ValueError, match="max_tokens"):
        Chunker(tokenizer, 4)
    with pytest.raises(ValueError, match="overlap_tokens"):
        Chunker(tokenizer, 32, 20)


def test_model_limits_are_read_without_importing_transformers(tiny_model, tmp_path):
    # prepare's driver needs only these numbers; transformers would bring torch (~230 MB) into it.
    bare = tmp_path / "no-sentence-bert-config"  # the limit then comes from tokenizer_config.json
    shutil.copytree(tiny_model, bare)
    (bare / "sentence_bert_config.json").unlink()
    code = ("import sys; from mrlkit.corpus.chunking import model_max_tokens; "
            f"print(model_max_tokens({MODEL!r}), model_max_tokens({str(bare)!r}), 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    tokenizer = load_tokenizer(str(bare))  # transformers' own answer
    limit = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else 512
    assert out == ["254", str(limit - tokenizer.num_special_tokens_to_add(pair=False)), "False"]


def test_prepare_chunks_to_the_training_sequence_length():
    from mrlkit.config import load_config
    from mrlkit.pairs.stage import shard_options

    cfg = load_config(None, ["name=x", "corpus.chunk_tokens=192", f"train.base_model={MODEL}"])
    assert shard_options(cfg).max_tokens == 192
    shorter = load_config(None, ["name=x", "corpus.chunk_tokens=192", f"train.base_model={MODEL}",
                                 "train.max_seq_length=64"])
    assert shard_options(shorter).max_tokens == 62
