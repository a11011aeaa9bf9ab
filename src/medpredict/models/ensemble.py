"""Several image networks as one: the mean of their logits (the fold models of small-data mode).

:class:`EnsembleNet` keeps the image-model interface (``docs/CONTRACTS.md``), so every path
that takes one network takes an ensemble unchanged — the predictor, ONNX export (one graph
that averages the members), the input guard and Grad-CAM:

* ``forward(x)`` — the mean of the members' logits ``(N, K)``. Calibration fitted on the
  members' out-of-fold logits applies to it as to one network's logits.
* ``features(x)`` — the members' pooled features side by side ``(N, k * D)``: what the
  ensemble's head classifies, so the input guard scores exactly what the decision rests on.
* ``head`` — maps those features to the mean logits (each member's head on its slice), so
  ``head(features(x)) == forward(x)``.
* Grad-CAM — :func:`medpredict.explain.maps.gradcam` averages the members' maps.

Members are stored as ``members.<i>.<the member's own keys>`` in one state dict.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medpredict.errors import ConfigError


class EnsembleHead(nn.Module):
    """The mean of the members' heads, each on its own slice of the concatenated features.

    It holds the members' heads without owning them (they stay in the members' state), so the
    ensemble's state dict lists every weight once.
    """

    def __init__(self, heads: Sequence[nn.Module], widths: Sequence[int]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.widths = [int(w) for w in widths]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        parts = torch.split(features, self.widths, dim=1)
        return torch.stack([head(part) for head, part in zip(self.heads, parts, strict=True)]).mean(0)


class EnsembleNet(nn.Module):
    """The mean of ``members``' logits; see the module docstring.

    Args:
        members: image networks with ``features``, ``embedding_dim``, ``num_classes`` and a
            ``head`` (directly or inside a normalising wrapper's ``net``), the same number of
            classes each.

    Raises:
        ConfigError: fewer than two members, or members that disagree on the classes.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ConfigError(f"An ensemble needs at least two members; got {len(members)}.")
        classes = {getattr(m, "num_classes", None) for m in members}
        if len(classes) != 1:
            raise ConfigError(f"Ensemble members disagree on the number of classes: {sorted(map(str, classes))}.")
        self.members = nn.ModuleList(members)
        self.num_classes = classes.pop()
        self.widths = [_width(m) for m in members]
        self.embedding_dim = sum(self.widths)
        # Grad-CAM of an ensemble is the mean of its members' maps (explain.maps.gradcam); the
        # layer named here is the first member's, for code that needs one spatial layer.
        self.gradcam_layer = f"members.0.{members[0].gradcam_layer}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(0)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([member.features(x) for member in self.members], dim=1)  # type: ignore[operator]

    @property
    def head(self) -> EnsembleHead:
        """The classifier over :meth:`features` (built on access; it owns no weights)."""
        heads = [_member_head(member) for member in self.members]
        return EnsembleHead(heads, self.widths)


def _width(member: nn.Module) -> int:
    width = getattr(member, "embedding_dim", None)
    if not isinstance(width, int):
        raise ConfigError(f"Ensemble member {type(member).__name__} does not say its feature width (embedding_dim).")
    return width


def _member_head(member: nn.Module) -> nn.Module:
    net = getattr(member, "net", member)  # through InputNormalised
    head = getattr(net, "head", None)
    if not isinstance(head, nn.Module):
        raise ConfigError(f"Ensemble member {type(member).__name__} has no classifier head.")
    return head
