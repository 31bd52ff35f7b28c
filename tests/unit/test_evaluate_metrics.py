"""MatryoshkaIREvaluator gives sentence-transformers' numbers, from one encoding, with re-normalised truncation."""

from __future__ import annotations

import random

import pytest
import torch
from sentence_transformers.base.evaluation import SequentialEvaluator
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

from mrlkit.evaluate.evaluator import EvaluationError, MatryoshkaIREvaluator
from mrlkit.evaluate.metrics import METRIC_NAMES, ir_metrics, rank_top_k, truncate
from mrlkit.models import load_sentence_transformer

WORDS = ("revenue profit loss asset debt equity cash flow market share growth risk dividend margin "
         "inventory lease goodwill tax segment customer").split()


def ir_fixture(seed: int = 0, n_docs: int = 60, n_queries: int = 25):
    """Small random IR data with the awkward cases: duplicate documents (score ties), a relevant id
    missing from the corpus, several relevant ids per query, and a query with no relevant ids."""
    rng = random.Random(seed)
    corpus = {f"d{i:02d}": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for i in range(n_docs)}
    corpus["d90"] = corpus["d91"] = corpus["d92"] = corpus["d03"]  # exact ties at every dimension
    queries = {f"q{i}": " ".join(rng.choice(WORDS) for _ in range(4)) for i in range(n_queries)}
    relevant = {f"q{i}": set(rng.sample(sorted(corpus), rng.randint(1, 3))) for i in range(n_queries - 1)}
    relevant["q0"] |= {"d92", "not-in-corpus"}
    queries["q-orphan"] = "a query nobody judged"
    return queries, corpus, relevant


def library_metrics(model, queries, corpus, relevant, dim: int) -> dict[str, float]:
    lib = InformationRetrievalEvaluator(
        queries, corpus, relevant, truncate_dim=dim, batch_size=16, name="lib", write_csv=False,
        mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1], precision_recall_at_k=[1, 5, 10, 100], map_at_k=[100],
    )
    scores = lib(model)
    return {m: scores[f"lib_cosine_{m}"] for m in METRIC_NAMES}


@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_metrics_equal_library_evaluator_at_every_dim(which, tiny_model):
    ref, dims = (tiny_model, [32, 16, 8]) if which == "tiny" else ("sentence-transformers/all-MiniLM-L6-v2",
                                                                    [384, 128, 32])
    model = load_sentence_transformer(ref, device="cpu")
    queries, corpus, relevant = ir_fixture()
    ours = MatryoshkaIREvaluator(queries, corpus, relevant, dims, name="fx", batch_size=16)(model)
    assert set(ours) == {f"fx_dim{d}_{m}" for d in dims for m in METRIC_NAMES}
    for d in dims:
        expected = library_metrics(model, queries, corpus, relevant, d)
        for m in METRIC_NAMES:
            assert ours[f"fx_dim{d}_{m}"] == pytest.approx(expected[m], abs=1e-4), (d, m)
    # Not a degenerate fixture: the metrics differ between dims and are neither 0 nor 1 everywhere.
    assert len({round(ours[f"fx_dim{d}_ndcg@10"], 6) for d in dims}) > 1
    assert 0 < ours[f"fx_dim{dims[0]}_ndcg@10"] < 1


def test_encodes_once_for_all_dims(tiny_model):
    model = load_sentence_transformer(tiny_model, device="cpu")
    calls = []
    original = model.encode

    def counting_encode(*args, **kwargs):
        calls.append(len(args[0]) if args else len(kwargs["inputs"]))
        return original(*args, **kwargs)

    model.encode = counting_encode
    queries, corpus, relevant = ir_fixture()
    MatryoshkaIREvaluator(queries, corpus, relevant, [32, 16, 8, 4, 2], batch_size=16)(model)
    assert sorted(calls) == sorted([len(relevant), len(corpus)])  # one query pass, one corpus pass


def test_primary_metric_name_and_trainer_protocol(tiny_model):
    model = load_sentence_transformer(tiny_model, device="cpu")
    queries, corpus, relevant = ir_fixture()
    ev = MatryoshkaIREvaluator(queries, corpus, relevant, [8, 32, 16], name="dev", primary_dim=16)
    assert ev.primary_metric == "dim16_ndcg@10" and ev.greater_is_better
    seq = SequentialEvaluator([ev])
    out = seq(model)
    assert ev.primary_metric == "dev_dim16_ndcg@10"
    assert out["sequential_score"] == out["dev_dim16_ndcg@10"]
    plain = MatryoshkaIREvaluator(queries, corpus, relevant, [8, 32])
    assert plain.primary_metric == "dim32_ndcg@10"
    assert "dim8_map@100" in plain(model)


def test_truncation_renormalises():
    emb = torch.tensor([[3.0, 4.0, 12.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.0]])
    out = truncate(emb, 2)
    assert out.shape == (3, 2)
    assert torch.allclose(out[0], torch.tensor([0.6, 0.8]))
    assert torch.allclose(out[1], torch.tensor([0.0, 1.0]))
    assert torch.equal(out[2], torch.zeros(2))  # a zero prefix stays zero, no NaN
    with pytest.raises(ValueError, match="cannot truncate 3-dim embeddings to 4"):
        truncate(emb, 4)


def test_truncated_ranking_uses_direction_not_norm():
    # At dim 2 doc "a" points the query's way but its prefix is short; "b" is long but 45 degrees off.
    # Dot product of raw prefixes would rank b first; cosine (re-normalised) must rank a first.
    queries, corpus, relevant = {"q": "q"}, {"a": "a", "b": "b"}, {"q": {"a"}}
    ev = MatryoshkaIREvaluator(queries, corpus, relevant, [2, 3])
    q = torch.tensor([[1.0, 0.0, 0.0]])
    docs = torch.tensor([[0.1, 0.0, 0.995], [0.7, 0.7, 0.141]])  # rows in sorted id order: a, b
    scores = ev.score(q, docs)
    assert scores[2]["mrr@10"] == 1.0 and scores[2]["ndcg@10"] == 1.0
    assert (q[:, :2] @ docs[:, :2].T).argmax().item() == 1  # what forgetting to re-normalise would pick


def test_rank_top_k_breaks_ties_by_corpus_order():
    corpus = torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]])
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ranks = rank_top_k(queries, corpus, k=3)
    assert ranks.indices.tolist()[0] == [0, 1, 2]  # five-way tie at the top: lowest rows first
    assert ranks.indices.tolist()[1][0] == 5
    assert ranks.indices.tolist()[1][1:] == [0, 1]  # tied zeros after the hit, still lowest first
    chunked = rank_top_k(queries, corpus, k=3, query_chunk_size=1)
    assert torch.equal(chunked.indices, ranks.indices)


def test_ir_metrics_by_hand():
    # One query, relevant {x, y}; ranking: n1, x, n2, y.
    m = ir_metrics([["n1", "x", "n2", "y"]], [{"x", "y"}])
    dcg = 1 / torch.log2(torch.tensor(3.0)).item() + 1 / torch.log2(torch.tensor(5.0)).item()
    idcg = 1 + 1 / torch.log2(torch.tensor(3.0)).item()
    assert m["ndcg@10"] == pytest.approx(dcg / idcg)
    assert m["mrr@10"] == pytest.approx(0.5)
    assert m["recall@1"] == 0 and m["recall@5"] == 1.0
    assert m["map@100"] == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_bad_arguments_fail_clearly(tiny_model):
    queries, corpus, relevant = ir_fixture()
    with pytest.raises(EvaluationError, match="dims must be a non-empty list"):
        MatryoshkaIREvaluator(queries, corpus, relevant, [])
    with pytest.raises(EvaluationError, match="primary_dim 7 is not one of dims"):
        MatryoshkaIREvaluator(queries, corpus, relevant, [8], primary_dim=7)
    with pytest.raises(EvaluationError, match="no query has a relevant document"):
        MatryoshkaIREvaluator(queries, corpus, {}, [8])
    with pytest.raises(EvaluationError, match="corpus is empty"):
        MatryoshkaIREvaluator(queries, {}, relevant, [8])
    ev = MatryoshkaIREvaluator(queries, corpus, relevant, [64, 32])
    with pytest.raises(EvaluationError, match=r"dims \[64\] are larger than the model's embedding dimension \(32\)"):
        ev(load_sentence_transformer(tiny_model, device="cpu"))
