"""train.unpad: the packed forward must compute what the padded one does, on real tokens only.

The variable-length flash kernel needs CUDA (``check_varlen`` compares it with the grid path on the
GPU a run trains on); here every packed forward takes the grid path, which is what a CPU runs.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import pytest
import torch

from mrlkit.unpad import ATTENTION_NAME, NotUnpaddable, UnpaddedEncoder, unpad_encoder

TEXTS = ["", "a short question", "what did the company report about revenue, margins and liquidity in 2023?",
         "ok", "a much longer context about revenue, margins and the liquidity of the company " * 6]


@pytest.fixture()
def model(tiny_model):
    from sentence_transformers import SentenceTransformer

    from mrlkit.train.dropout import set_dropout

    torch.manual_seed(0)
    m = SentenceTransformer(tiny_model, device="cpu")
    m.max_seq_length = 48  # the longest text is truncated
    m.train()
    set_dropout(m, 0.0)  # the same function on every pass, so packed and padded passes compare
    return m


def _embed_and_grads(model, texts):
    model.zero_grad()
    features = model.preprocess(texts)
    embeddings = model(features)["sentence_embedding"]
    # a loss that mixes texts, so a gradient leaking through padding or across texts would show
    (embeddings @ embeddings.T).logsumexp(1).mean().backward()
    return embeddings.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_training_pass_gives_the_padded_embeddings_and_gradients(model):
    padded, padded_grads = _embed_and_grads(model, TEXTS)
    wrapper = unpad_encoder(model)
    assert model[0].auto_model.forward is wrapper
    packed, packed_grads = _embed_and_grads(model, TEXTS)

    assert wrapper.packed_passes == 1 and wrapper.eager_passes == 0
    assert 0 < wrapper.real_tokens < wrapper.padded_tokens  # the batch had padding, and it was not computed
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    assert packed_grads.keys() == padded_grads.keys()
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    # while wrapped the model attends through the registered function; its saved config does not name it
    assert model[0].auto_model.config._attn_implementation == ATTENTION_NAME
    assert ATTENTION_NAME not in model[0].auto_model.config.to_json_string()


def test_each_text_attends_only_to_itself(model):
    wrapper = unpad_encoder(model)
    model.eval()
    with torch.no_grad():
        alone = model.encode(TEXTS[2:3], convert_to_tensor=True)
        beside_others = model.encode(TEXTS, convert_to_tensor=True, batch_size=len(TEXTS))
    assert wrapper.packed_passes == 1  # encode of one text has no padding: it runs as before
    torch.testing.assert_close(beside_others[2], alone[0], atol=1e-5, rtol=1e-5)


def test_left_padded_batches_keep_the_positions_the_padded_model_gives(model):
    wrapper = unpad_encoder(model)
    model.eval()
    tokenizer = model.tokenizer
    tokenizer.padding_side = "left"
    batch = tokenizer(TEXTS[:4], padding=True, return_tensors="pt")
    assert batch["attention_mask"][:, 0].eq(0).any()  # padding on the left
    with torch.no_grad():
        padded = wrapper.eager_forward(**batch, return_dict=True).last_hidden_state
        packed = wrapper(**batch, return_dict=True).last_hidden_state
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(packed[real], padded[real], atol=1e-5, rtol=1e-5)
    assert packed[~real].abs().max() == 0  # padding positions are zeros, masked out of pooling


def test_forwards_it_cannot_pack_run_as_before(model):
    wrapper = unpad_encoder(model)
    same_length = model.preprocess(["one two", "three four"])
    model(dict(same_length))
    assert (wrapper.packed_passes, wrapper.eager_passes) == (0, 1)  # no padding: nothing to save

    features = model.preprocess(TEXTS)
    out = wrapper(input_ids=features["input_ids"], attention_mask=features["attention_mask"],
                  output_hidden_states=True, return_dict=True)
    assert (wrapper.packed_passes, wrapper.eager_passes) == (0, 2)
    assert len(out.hidden_states) == 3  # what the caller asked for, from the model's own forward


def test_forwards_in_several_threads_at_once_each_give_their_own_texts(model):
    """A serve replica with max_concurrent_batches > 1 runs forwards of one model in several threads: each must
    get what it gets alone, packed or not, and the model must keep working after them."""
    import threading

    wrapper = unpad_encoder(model)
    model.eval()
    batches = [TEXTS, TEXTS[1:4], ["no padding here", "no padding too"], TEXTS[::-1]]
    with torch.no_grad():
        expected = [model.encode(batch, convert_to_tensor=True, batch_size=len(batch)) for batch in batches]
    failures: list[str] = []

    def encode_repeatedly(i: int) -> None:
        try:
            for _ in range(15):
                with torch.no_grad():
                    got = model.encode(batches[i], convert_to_tensor=True, batch_size=len(batches[i]))
                if not torch.allclose(got, expected[i], atol=1e-5, rtol=1e-5):
                    failures.append(f"batch {i}: off by {(got - expected[i]).abs().max():.3g}")
        except Exception as err:  # reported below, with the thread it happened in
            failures.append(f"batch {i}: {type(err).__name__}: {err}")

    threads = [threading.Thread(target=encode_repeatedly, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]
    assert wrapper.packed_passes > 0 and wrapper.eager_passes > 0  # both paths ran concurrently
    with torch.no_grad():
        model.encode(["one text alone: no padding, the model's own forward"])


def _roberta_sentence_model(tiny_model: str, folder: Path):
    """A tiny RoBERTa (positions counted from the padding id, not from 0) behind MiniLM's tokenizer."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64, pad_token_id=tokenizer.pad_token_id,
                           max_position_embeddings=130)
    RobertaModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    transformer = models.Transformer(str(folder), max_seq_length=48)
    return SentenceTransformer(modules=[transformer, models.Pooling(32, pooling_mode="mean")], device="cpu")


def test_models_whose_positions_depend_on_the_padding_are_refused(tiny_model, tmp_path):
    model = _roberta_sentence_model(tiny_model, tmp_path / "roberta")
    own_forward = model[0].auto_model.forward
    with pytest.raises(NotUnpaddable, match="differs from the padded one"):
        unpad_encoder(model)
    assert model[0].auto_model.forward == own_forward  # left as it was
    assert model[0].auto_model.config._attn_implementation != ATTENTION_NAME


def test_models_on_another_attention_than_sdpa_are_refused(model):
    config = model[0].auto_model.config
    config._attn_implementation = "eager"
    with pytest.raises(NotUnpaddable, match="attention implementation is 'eager'"):
        unpad_encoder(model)
    assert config._attn_implementation == "eager" and not isinstance(model[0].auto_model.forward, UnpaddedEncoder)


def test_models_without_an_encoder_are_refused():
    with pytest.raises(NotUnpaddable, match="has no Hugging Face encoder"):
        unpad_encoder([torch.nn.Identity()])


def test_the_worker_unpads_unless_told_otherwise(model):
    from mrlkit.config_schema import TrainConfig
    from mrlkit.train.model_settings import prepare_model

    own_forward = model[0].auto_model.forward
    assert prepare_model(model, TrainConfig(unpad=False)) is None
    assert model[0].auto_model.forward == own_forward
    wrapper = prepare_model(model, TrainConfig())
    assert isinstance(wrapper, UnpaddedEncoder) and model[0].auto_model.forward is wrapper
    assert not wrapper.varlen  # a CPU run: attention on the grid


def test_the_worker_says_why_a_model_stays_padded(tiny_model, tmp_path, caplog):
    from mrlkit.config_schema import TrainConfig
    from mrlkit.train.model_settings import prepare_model

    model = _roberta_sentence_model(tiny_model, tmp_path / "roberta")
    with caplog.at_level(logging.WARNING, logger="mrlkit.train"):
        assert prepare_model(model, TrainConfig(base_model="tiny-roberta")) is None
    assert "train: worker 0: train.unpad cannot serve tiny-roberta, which computes on padding" in caplog.text


def test_the_worker_trains_the_same_with_and_without_unpadding(tmp_path, tiny_model):
    """Through the real trainer (dropout 0, same seed, an evaluation set): the same losses, and an export whose
    config names the model's own attention."""
    from test_train_fused_loss import ANCHORS, POSITIVES
    from test_train_setup import publish_pairs
    from test_train_worker import tiny_worker_config

    from mrlkit import layout
    from mrlkit.config import config_to_dict
    from mrlkit.train.worker import train_loop

    summaries = {}
    for unpad in ("true", "false"):
        cfg = tiny_worker_config(tmp_path / unpad, tiny_model, f"train.unpad={unpad}", "train.dropout=0.0",
                                 "train.batch_size=4", "train.max_steps=4", "train.learning_rate=1e-3",
                                 "train.eval_strategy=steps", "train.eval_steps=2")
        publish_pairs(layout.pairs_uri(cfg), {"anchor": ANCHORS, "positive": POSITIVES})
        summaries[unpad] = train_loop({"config": config_to_dict(cfg), "output_dir": str(tmp_path / unpad / "out")})
    on, off = summaries["true"], summaries["false"]
    assert on["step"] == off["step"] == 4
    assert on["train_loss"] == pytest.approx(off["train_loss"], rel=1e-5)
    assert on["best_metric"] == pytest.approx(off["best_metric"], rel=1e-5)
    assert on["unpadded"]["packed_passes"] >= 8  # 4 steps of anchors and positives, evaluations besides
    assert 0 < on["unpadded"]["real_token_fraction"] < 1
    assert "unpadded" not in off
    saved = list((tmp_path / "true" / "out").rglob("*.json"))
    assert any(path.name == "config.json" for path in saved)
    for path in saved:
        assert ATTENTION_NAME not in path.read_text(), path  # checkpoints load anywhere, without mrlkit


def _brute_force_cost(lengths, group_cost):
    """The cheapest cut of the texts sorted by length into contiguous groups, trying every cut."""
    ordered = sorted(lengths, reverse=True)
    n, best = len(ordered), None
    for cuts in range(2 ** (n - 1)):
        bounds = [0, *[i + 1 for i in range(n - 1) if cuts >> i & 1], n]
        cost = sum((b - a) * ordered[a] ** 2 + group_cost for a, b in itertools.pairwise(bounds))
        best = cost if best is None else min(best, cost)
    return best


def test_attention_groups_cover_every_text_once_at_the_least_cost():
    import random

    from mrlkit.packed_attention import attention_groups

    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.choice([2, 3, 5, 8, 13, 21, 40, 77, 158, 256]) for _ in range(rng.randint(1, 9))]
        group_cost = rng.choice([0, 64, 1024, 10 ** 6])
        groups = attention_groups(lengths, group_cost)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        cost = sum(len(g) * max(lengths[i] for i in g) ** 2 + group_cost for g in groups)
        assert cost == _brute_force_cost(lengths, group_cost), (lengths, group_cost, groups)
    # a batch of equal lengths is one grid; a long text beside short ones attends alone
    assert attention_groups([20] * 32) == [list(range(32))]
    assert attention_groups([256] + [40] * 31)[0] == [0]


def _reference_varlen(calls):
    """A stand-in for ``torch.nn.attention.varlen.varlen_attn`` (CUDA only): attention text by text."""

    def varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None):
        assert q.shape == k.shape == v.shape and q.dim() == 3  # [tokens, heads, dim]
        assert cu_q.dtype == torch.int32 and cu_q[-1] == q.shape[0] and max_q == int((cu_q[1:] - cu_q[:-1]).max())
        calls.append(q.shape[0])
        outs = []
        for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
            one = [t[a:b].transpose(0, 1) for t in (q, k, v)]
            outs.append(torch.nn.functional.scaled_dot_product_attention(*one, scale=scale).transpose(0, 1))
        return torch.cat(outs)

    return varlen_attn


def _on_cpu_as_on_a_gpu(model, monkeypatch, kernel):
    import mrlkit.packed_attention as packed_attention

    monkeypatch.setattr(packed_attention, "varlen_attn", lambda: kernel)
    wrapper = unpad_encoder(model, on_device=lambda t: True)
    assert wrapper.varlen and not wrapper.varlen_checked  # checked on the first batch, where the model trains
    return wrapper


def test_the_flash_kernel_runs_once_checked_and_only_where_it_may(model, monkeypatch):
    calls = []
    wrapper = _on_cpu_as_on_a_gpu(model, monkeypatch, _reference_varlen(calls))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _embed_and_grads(model, TEXTS)
    assert wrapper.varlen_checked and wrapper.varlen
    layers = model[0].auto_model.config.num_hidden_layers
    # the check's flash run and the batch's own pass, each through every layer (a stand-in's backward is autograd's)
    assert len(calls) == 2 * layers
    calls.clear()
    _embed_and_grads(model, TEXTS)  # fp32: the flash kernel takes half precision only, the grid path runs
    assert calls == []
    model[0].auto_model.config.attention_probs_dropout_prob = 0.1
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _embed_and_grads(model, TEXTS)  # attention dropout: the kernel has none, the grid path runs
    assert calls == []


def test_forwards_in_other_threads_wait_for_the_flash_kernels_one_check(model, monkeypatch):
    """Concurrent first batches on a GPU (a serve replica's): one thread checks the kernel, the others wait for the
    outcome; none runs the kernel before it is known to work."""
    import threading
    import time

    import mrlkit.unpad as unpad

    def broken(*args, **kwargs):
        time.sleep(0.05)  # a slow first call: the other threads arrive while the check runs
        raise RuntimeError("FlashAttention only supports Ampere GPUs or newer")

    wrapper = _on_cpu_as_on_a_gpu(model, monkeypatch, broken)
    checks = []
    check = unpad.check_varlen
    monkeypatch.setattr(unpad, "check_varlen", lambda w: checks.append(w) or check(w))
    model.eval()
    start = threading.Barrier(4)
    failures: list[str] = []

    def encode() -> None:
        start.wait()
        try:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                model.encode(TEXTS, batch_size=len(TEXTS))
        except Exception as err:  # reported below
            failures.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=encode) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert len(checks) == 1 and wrapper.varlen_checked and not wrapper.varlen
    assert wrapper.packed_passes == 4 + 1  # the four batches on the grid path, and the check's grid run


@pytest.fixture()
def minilm():
    """all-MiniLM-L6-v2's trained weights: a random tiny model attends almost uniformly, so a kernel attending
    across texts changes its outputs by 0.3% (bf16's noise), where MiniLM's change by 121% (0.9% for a right one)."""
    from sentence_transformers import SentenceTransformer

    from mrlkit.models import resolve_model

    m = SentenceTransformer(resolve_model("sentence-transformers/all-MiniLM-L6-v2"), device="cpu")
    m.train()
    return m


def test_a_flash_kernel_that_fails_or_differs_is_turned_off(minilm, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("FlashAttention only supports Ampere GPUs or newer")

    def across_texts(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None):  # ignores where each text starts
        one = [t.transpose(0, 1) for t in (q, k, v)]
        return torch.nn.functional.scaled_dot_product_attention(*one, scale=scale).transpose(0, 1)

    for kernel, said in ((broken, "fails here (RuntimeError: FlashAttention only supports"),
                         (across_texts, "differs from padded attention by"),
                         (_reference_varlen([]), None)):
        caplog.clear()
        wrapper = _on_cpu_as_on_a_gpu(minilm, monkeypatch, kernel)
        with caplog.at_level(logging.WARNING, logger="mrlkit.unpad"), \
                torch.autocast("cpu", dtype=torch.bfloat16):
            embeddings, _ = _embed_and_grads(minilm, TEXTS[:3])
        if said is None:  # a right kernel passes with MiniLM's real attention too
            assert wrapper.varlen and "flash kernel" not in caplog.text
        else:
            assert said in caplog.text and not wrapper.varlen
        assert torch.isfinite(embeddings).all()  # the batch itself ran
        wrapper.unwrap()  # for the next kernel
