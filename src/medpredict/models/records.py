"""Networks for clinical tables: an MLP with categorical embeddings and a small transformer.

Every model takes the :class:`~medpredict.records.cleaning.TableCleaner` output ``(N, F)``
float32 — ``n_continuous`` float columns, then one integer code per categorical column
(0 = missing/unseen) — and returns ``(N, num_classes)`` logits (``num_classes=1`` for
regression; binary tasks use 2 logits with softmax, as the image models do).

Each model is an *encoder* (``model.encoder``, returning an embedding ``(N, d)``, with
``encoder.embedding_dim``) and a linear head, so a fusion model or the clustering code
can reuse the encoder alone. ``model.hparams`` holds the constructor arguments; the
bundle saves them and :func:`build_record_model` rebuilds the model from them::

    build_record_model(name, **hparams)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from medpredict.errors import ConfigError, unknown_choice


def _embedding_size(cardinality: int) -> int:
    """A small embedding per category column: grows slowly with the number of levels."""
    return int(min(16, max(2, round(1.6 * cardinality**0.56))))


def _split(
    x: torch.Tensor, n_continuous: int, cardinalities: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    if x.ndim != 2 or x.shape[1] != n_continuous + len(cardinalities):
        raise ConfigError(
            f"Tabular input must be (N, {n_continuous + len(cardinalities)}) as the cleaner makes it; "
            f"got {tuple(x.shape)}. Transform the records with the model's own cleaner."
        )
    continuous = x[:, :n_continuous]
    codes = x[:, n_continuous:].round().long()
    if cardinalities:
        limit = torch.tensor(cardinalities, device=x.device) - 1
        codes = torch.where((codes < 0) | (codes > limit), torch.zeros_like(codes), codes)  # unknown -> 0
    return continuous, codes


class RecordEncoder(nn.Module):
    """MLP body: categorical embeddings concatenated with the continuous columns.

    Args:
        n_continuous: leading float columns of the input.
        cardinalities: levels + 1 per categorical code column.
        hidden: widths of the hidden layers; the last is ``embedding_dim``.
        dropout: dropout after every hidden layer.
    """

    def __init__(
        self,
        n_continuous: int,
        cardinalities: Sequence[int],
        *,
        hidden: Sequence[int] = (64, 32),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if not hidden:
            raise ConfigError("hidden must list at least one layer width, e.g. (64, 32).")
        self.n_continuous = int(n_continuous)
        self.cardinalities = [int(c) for c in cardinalities]
        self.embeddings = nn.ModuleList(nn.Embedding(c, _embedding_size(c)) for c in self.cardinalities)
        self.input_width = self.n_continuous + sum(_embedding_size(c) for c in self.cardinalities)
        width = self.input_width
        layers: list[nn.Module] = []
        for size in hidden:
            layers += [nn.Linear(width, int(size)), nn.SiLU(), nn.Dropout(dropout)]
            width = int(size)
        self.body = nn.Sequential(*layers)
        self.embedding_dim = width

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, F)`` cleaner output -> ``(N, input_width)``: continuous columns + category embeddings."""
        continuous, codes = _split(x, self.n_continuous, self.cardinalities)
        parts = [continuous] + [emb(codes[:, i]) for i, emb in enumerate(self.embeddings)]
        return torch.cat(parts, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, F)`` cleaner output -> ``(N, embedding_dim)``."""
        return self.body(self.inputs(x))


class TransformerEncoder(nn.Module):
    """Feature-tokenising transformer body (after FT-Transformer, Gorishniy et al. 2021).

    Each continuous column becomes a token ``x_j · w_j + b_j``, each categorical column
    a learned embedding; a [CLS] token is prepended and its output is the embedding.

    Args:
        n_continuous, cardinalities: as :class:`RecordEncoder`.
        d_token: token width, which is also ``embedding_dim``.
        n_layers, n_heads: transformer depth and heads (``d_token % n_heads == 0``).
        dropout: attention and feed-forward dropout.
    """

    def __init__(
        self,
        n_continuous: int,
        cardinalities: Sequence[int],
        *,
        d_token: int = 32,
        n_layers: int = 2,
        n_heads: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if d_token % n_heads:
            raise ConfigError(f"d_token ({d_token}) must be divisible by n_heads ({n_heads}).")
        self.n_continuous = int(n_continuous)
        self.cardinalities = [int(c) for c in cardinalities]
        self.weight = nn.Parameter(torch.randn(self.n_continuous, d_token) * d_token**-0.5)
        self.bias = nn.Parameter(torch.zeros(self.n_continuous, d_token))
        self.embeddings = nn.ModuleList(nn.Embedding(c, d_token) for c in self.cardinalities)
        self.cls = nn.Parameter(torch.zeros(1, 1, d_token))
        layer = nn.TransformerEncoderLayer(
            d_token, n_heads, dim_feedforward=2 * d_token, dropout=dropout, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_token)
        self.embedding_dim = int(d_token)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, F)`` cleaner output -> ``(N, d_token)``."""
        continuous, codes = _split(x, self.n_continuous, self.cardinalities)
        tokens = [continuous.unsqueeze(-1) * self.weight + self.bias]
        tokens += [emb(codes[:, i]).unsqueeze(1) for i, emb in enumerate(self.embeddings)]
        sequence = torch.cat([self.cls.expand(x.shape[0], -1, -1), *tokens], dim=1)
        return self.norm(self.blocks(sequence)[:, 0])


class RecordNetwork(nn.Module):
    """An encoder plus a linear head: ``(N, F) -> (N, num_classes)`` logits."""

    def __init__(
        self, encoder: RecordEncoder | TransformerEncoder, num_classes: int, hparams: dict[str, Any]
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(int(encoder.embedding_dim), int(num_classes))
        self.hparams = dict(hparams)
        self.embedding_dim = int(encoder.embedding_dim)
        self.num_classes = int(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The learned patient embedding ``(N, embedding_dim)``, as image models' ``features``."""
        return self.encoder(x)


def record_mlp(
    n_continuous: int,
    cardinalities: Sequence[int],
    num_classes: int,
    *,
    hidden: Sequence[int] = (32, 16),
    dropout: float = 0.3,
) -> RecordNetwork:
    """MLP with categorical embeddings (SiLU, dropout); the default record network.

    Small and strongly regularised on purpose: the shipped tables have 300-700 rows.
    """
    hparams = {
        "name": "mlp",
        "n_continuous": n_continuous,
        "cardinalities": list(cardinalities),
        "num_classes": num_classes,
        "hidden": list(hidden),
        "dropout": dropout,
    }
    encoder = RecordEncoder(n_continuous, cardinalities, hidden=hidden, dropout=dropout)
    return RecordNetwork(encoder, num_classes, hparams)


def record_transformer(
    n_continuous: int,
    cardinalities: Sequence[int],
    num_classes: int,
    *,
    d_token: int = 32,
    n_layers: int = 2,
    n_heads: int = 4,
    dropout: float = 0.1,
) -> RecordNetwork:
    """Feature-tokenising transformer; slower than the MLP, rarely better on small tables."""
    hparams = {
        "name": "transformer",
        "n_continuous": n_continuous,
        "cardinalities": list(cardinalities),
        "num_classes": num_classes,
        "d_token": d_token,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "dropout": dropout,
    }
    encoder = TransformerEncoder(
        n_continuous, cardinalities, d_token=d_token, n_layers=n_layers, n_heads=n_heads, dropout=dropout
    )
    return RecordNetwork(encoder, num_classes, hparams)


RECORD_MODELS: dict[str, Callable[..., RecordNetwork]] = {
    "mlp": record_mlp,
    "transformer": record_transformer,
}


def build_record_model(
    name: str, *, n_continuous: int, cardinalities: Sequence[int], num_classes: int, **hparams: Any
) -> RecordNetwork:
    """Build a record network by name; ``build_record_model(**model.hparams)`` rebuilds one.

    Raises:
        ConfigError: unknown name (with a suggestion) or unknown hyper-parameter.
    """
    if name not in RECORD_MODELS:
        raise unknown_choice("record model", name, RECORD_MODELS)
    try:
        return RECORD_MODELS[name](n_continuous, cardinalities, num_classes, **hparams)
    except TypeError as exc:
        raise ConfigError(f"Bad hyper-parameters for record model '{name}': {exc}.") from None
