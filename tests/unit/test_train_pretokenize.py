"""train.pretokenize: texts tokenized once, batches only padded, and the batches the same tensors as before."""

from __future__ import annotations

import logging
import random

import pytest
import torch
import torch.nn.functional as F

from mrlkit.train.pretokenize import NotPretokenizable, PretokenizedPreprocess, pretokenize_collator

WORDS = ("the revenue of Company increased by 12.5% in fiscal year 2023 compared with the prior period, due to "
         "growth in café sales 中文 and ünits").split()


def random_texts(n: int, seed: int = 0, longest: int = 300) -> list[str]:
    """Texts from empty to longer than the tiny model's 128 positions (so some are truncated)."""
    rng = random.Random(seed)
    return ["", "  ", "x"] + [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, longest))) for _ in range(n)]


@pytest.fixture(scope="module")
def model(tiny_model):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(tiny_model, device="cpu")


def assert_same_batch(expected: dict, got: dict) -> None:
    assert list(got) == list(expected)  # the collator names the features in this order
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
        else:
            assert got[key] == value, key


def pads_with_7(model):
    """A tokenizer whose padding token is 7 (BERT's is 0, the value an unfilled array would hold anyway)."""

    def preprocess(inputs, prompt=None, task=None):
        out = model.preprocess(inputs, prompt=prompt, task=task)
        return {**out, "input_ids": out["input_ids"].masked_fill(out["attention_mask"] == 0, 7)}

    return preprocess


@pytest.mark.parametrize("padding", ["bert", "pad id 7"])
def test_padded_batches_equal_the_tokenizers_own(model, padding):
    preprocess = model.preprocess if padding == "bert" else pads_with_7(model)
    texts = random_texts(600)
    cache = PretokenizedPreprocess(preprocess, texts + texts[:50], chunk_texts=128)  # repeats: once each
    assert cache.texts == len(set(texts)) and cache.fallback_batches == 0
    assert max(cache._lengths) == model.max_seq_length  # the long ones are truncated as the tokenizer does
    rng = random.Random(1)
    for size in (1, 2, 7, 32, 32, 32, 64):
        batch = rng.sample(texts, size)
        assert_same_batch(preprocess(batch, prompt=None, task=None), cache(batch, prompt=None, task=None))
    assert cache.fallback_batches == 0
    assert cache.nbytes < 4 * 3 * cache.tokens  # compact: at most 4 bytes a token per output


def test_the_trainers_collator_gives_the_same_features(model):
    from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

    texts = random_texts(80, seed=2)
    rows = [{"anchor": a, "positive": p} for a, p in zip(texts[:40], texts[40:80], strict=True)]
    plain = SentenceTransformerDataCollator(preprocess_fn=model.preprocess)
    padded = SentenceTransformerDataCollator(preprocess_fn=model.preprocess)
    cache = pretokenize_collator(padded, [DatasetStandIn({"anchor": texts[:40], "positive": texts[40:80]})])
    assert padded.preprocess_fn is cache
    for start in range(0, 40, 16):
        assert_same_batch(plain(rows[start:start + 16]), padded(rows[start:start + 16]))


class DatasetStandIn:
    """What pretokenize_collator reads of a datasets.Dataset: column names, and a column by name."""

    def __init__(self, columns: dict[str, list[str]]):
        self.columns = columns
        self.column_names = list(columns)

    def __getitem__(self, name: str) -> list[str]:
        return self.columns[name]


def test_prompts_tasks_and_unseen_texts_are_tokenized_as_they_come(model, caplog):
    texts = random_texts(20, seed=3)
    cache = PretokenizedPreprocess(model.preprocess, texts)
    with caplog.at_level(logging.INFO, logger="mrlkit.train.pretokenize"):
        unseen = [texts[0], "a text nobody tokenized"]
        assert_same_batch(model.preprocess(unseen, prompt=None, task=None), cache(unseen, prompt=None, task=None))
        prompted = texts[:3]
        assert_same_batch(model.preprocess(prompted, prompt="query: ", task=None),
                          cache(prompted, prompt="query: ", task=None))
    assert cache.fallback_batches == 2
    assert sum("tokenized as it comes" in r.message for r in caplog.records) == 1  # said once


def test_a_tokenizer_that_pads_on_the_left_is_refused_and_the_collator_left_alone(model, caplog):
    from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

    def left_padded(inputs, prompt=None, task=None):
        out = model.preprocess(inputs, prompt=prompt, task=task)
        lengths = out["attention_mask"].sum(1)
        return {k: torch.stack([torch.roll(row, int(row.numel() - n)) for row, n in zip(v, lengths, strict=True)])
                if isinstance(v, torch.Tensor) else v for k, v in out.items()}

    collator = SentenceTransformerDataCollator(preprocess_fn=left_padded)
    with caplog.at_level(logging.WARNING, logger="mrlkit.train.pretokenize"):
        assert pretokenize_collator(collator, [DatasetStandIn({"anchor": ["a", "b c"]})]) is None
    assert collator.preprocess_fn is left_padded
    assert "does not pad on the right" in caplog.text and "tokenized as they come" in caplog.text


def test_a_tokenizer_padding_to_a_multiple_is_refused(model):
    def multiple_of_8(inputs, prompt=None, task=None):
        out = model.preprocess(inputs, prompt=prompt, task=task)
        extra = -out["input_ids"].shape[1] % 8
        return {k: F.pad(v, (0, extra)) if isinstance(v, torch.Tensor) else v for k, v in out.items()}

    with pytest.raises(NotPretokenizable, match="pads beyond the longest text"):
        PretokenizedPreprocess(multiple_of_8, random_texts(30, seed=4))


def test_a_cache_that_would_not_reproduce_the_tokenizer_is_refused(model):
    """A tokenizer whose output depends on the batch (a word added to batches of 3 to 99 texts): the probe (2 texts)
    cannot tell, the check on a sample can."""

    def depends_on_the_batch(inputs, prompt=None, task=None):
        texts = [t + " growth" for t in inputs] if 2 < len(inputs) < 100 else inputs
        return model.preprocess(texts, prompt=prompt, task=task)

    with pytest.raises(NotPretokenizable, match="'input_ids' differs from the tokenizer's own"):
        PretokenizedPreprocess(depends_on_the_batch, random_texts(200, seed=4), chunk_texts=1024)


def test_outputs_that_are_not_token_rows_are_refused(model):
    def with_floats(inputs, prompt=None, task=None):
        out = model.preprocess(inputs, prompt=prompt, task=task)
        return {**out, "weights": torch.ones(len(inputs))}

    with pytest.raises(NotPretokenizable, match="'weights' is neither token rows nor a constant"):
        PretokenizedPreprocess(with_floats, ["a", "b"])
    with pytest.raises(NotPretokenizable, match="no texts"):
        PretokenizedPreprocess(model.preprocess, [])


def test_the_worker_trains_the_same_with_and_without_pretokenizing(tmp_path, tiny_model):
    """Through the real trainer (dropout on, same seed, an evaluation set): the same per-step losses."""
    from test_train_fused_loss import ANCHORS, POSITIVES
    from test_train_setup import publish_pairs
    from test_train_worker import tiny_worker_config

    from mrlkit import layout
    from mrlkit.config import config_to_dict
    from mrlkit.train.worker import train_loop

    summaries = {}
    for pretokenize in ("true", "false"):
        cfg = tiny_worker_config(tmp_path / pretokenize, tiny_model, f"train.pretokenize={pretokenize}",
                                 "train.batch_size=4", "train.max_steps=4", "train.learning_rate=1e-3",
                                 "train.eval_strategy=steps", "train.eval_steps=2")
        publish_pairs(layout.pairs_uri(cfg), {"anchor": ANCHORS, "positive": POSITIVES})
        summaries[pretokenize] = train_loop({"config": config_to_dict(cfg),
                                             "output_dir": str(tmp_path / pretokenize / "out")})
    on, off = summaries["true"], summaries["false"]
    assert on["step"] == off["step"] == 4
    assert on["train_loss"] == pytest.approx(off["train_loss"], rel=1e-6)
    # 16 training texts and the held-out pair's 2, each once; every batch, evaluation's included, was only padded
    assert on["pretokenized"]["texts"] == 18 and on["pretokenized"]["fallback_batches"] == 0
    assert "pretokenized" not in off
