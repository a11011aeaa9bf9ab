"""One contract test over every record network in RECORD_MODELS."""

from __future__ import annotations

import pytest
import torch

from medpredict.errors import ConfigError
from medpredict.models.records import RECORD_MODELS, build_record_model

N_CONT, CARDS = 5, [4, 3]


def _inputs(n: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    continuous = torch.randn(n, N_CONT, generator=g)
    codes = torch.stack([torch.randint(0, c, (n,), generator=g) for c in CARDS], dim=1).float()
    return torch.cat([continuous, codes], dim=1)


@pytest.mark.parametrize("name", sorted(RECORD_MODELS))
@pytest.mark.parametrize("num_classes", [1, 2, 3])
def test_contract(name, num_classes):
    torch.manual_seed(0)
    model = build_record_model(name, n_continuous=N_CONT, cardinalities=CARDS, num_classes=num_classes)
    model.eval()
    x = _inputs()
    logits = model(x)
    assert logits.shape == (8, num_classes) and torch.isfinite(logits).all()
    embedding = model.features(x)
    assert embedding.shape == (8, model.encoder.embedding_dim) == (8, model.embedding_dim)
    rebuilt = build_record_model(**model.hparams)  # what the predictor does from bundle.json
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    torch.testing.assert_close(rebuilt(x), logits)


@pytest.mark.parametrize("name", sorted(RECORD_MODELS))
def test_unknown_and_out_of_range_codes_are_unknown(name):
    model = build_record_model(name, n_continuous=N_CONT, cardinalities=CARDS, num_classes=2).eval()
    x = _inputs(2)
    wild = x.clone()
    wild[:, N_CONT:] = 99.0  # a code the embedding table does not have
    zero = x.clone()
    zero[:, N_CONT:] = 0.0
    torch.testing.assert_close(model(wild), model(zero))


@pytest.mark.parametrize("name", sorted(RECORD_MODELS))
def test_wrong_width_is_a_clear_error(name):
    model = build_record_model(name, n_continuous=N_CONT, cardinalities=CARDS, num_classes=2)
    with pytest.raises(ConfigError, match=r"\(N, 7\)"):
        model(torch.zeros(2, 6))


def test_unknown_name_and_bad_hparams():
    with pytest.raises(ConfigError, match="Did you mean 'mlp'"):
        build_record_model("mlpp", n_continuous=1, cardinalities=[], num_classes=2)
    with pytest.raises(ConfigError, match="hyper-parameters"):
        build_record_model("mlp", n_continuous=1, cardinalities=[], num_classes=2, depth=3)


def test_encoder_gets_gradients_through_embeddings():
    model = build_record_model("mlp", n_continuous=N_CONT, cardinalities=CARDS, num_classes=2)
    model(_inputs()).sum().backward()
    assert all(e.weight.grad is not None and e.weight.grad.abs().sum() > 0 for e in model.encoder.embeddings)
