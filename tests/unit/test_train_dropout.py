"""train.dropout: one probability for every dropout layer of the model in training, the config untouched."""

from __future__ import annotations

import pytest

from mrlkit.config import load_config
from mrlkit.errors import ConfigError
from mrlkit.train.dropout import set_dropout


def training_forward(model, texts):
    import torch

    features = model.tokenize(texts)
    with torch.no_grad():
        return model(features)["sentence_embedding"]


def test_dropout_zero_makes_the_training_forward_pass_deterministic(tiny_model):
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_model, device="cpu")
    model.train()
    texts = ["what was the revenue in 2023?", "net income rose by a tenth"]
    torch.manual_seed(0)
    assert not torch.equal(training_forward(model, texts), training_forward(model, texts))  # BERT's own 0.1

    layers = set_dropout(model, 0.0)
    # 2 layers x (attention probabilities, attention output, feed-forward output) + the embeddings
    assert layers == 7
    assert torch.equal(training_forward(model, texts), training_forward(model, texts))
    config = model[0].auto_model.config
    assert (config.hidden_dropout_prob, config.attention_probs_dropout_prob) == (0.1, 0.1)  # exports as the base


def test_a_float_attention_dropout_is_set_too():
    import torch

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attention_dropout = 0.1  # Llama-style: a float handed to the attention kernel
            self.proj = torch.nn.Linear(4, 4)

    model = torch.nn.Sequential(Attention(), torch.nn.Dropout(0.2))
    assert set_dropout(model, 0.05) == 2
    assert model[0].attention_dropout == 0.05 and model[1].p == 0.05


def test_a_model_without_dropout_reports_that_nothing_was_set():
    import torch

    assert set_dropout(torch.nn.Sequential(torch.nn.Linear(4, 4)), 0.0) == 0


@pytest.mark.parametrize("value", ["1", "-0.1", "1.5"])
def test_a_dropout_outside_zero_to_one_is_refused(value):
    with pytest.raises(ConfigError, match=r"train.dropout: must be in \[0, 1\)"):
        load_config(None, ["name=x", f"train.dropout={value}"])


def test_unset_keeps_the_models_own_dropout():
    assert load_config(None, ["name=x"]).train.dropout is None
    assert load_config(None, ["name=x", "train.dropout=0"]).train.dropout == 0.0
