"""One human-readable identity for a model, the same in every output.

The web page, the API, the audit log, the DICOM SR and overlay, FHIR resources and the
report all name a model with :class:`ModelIdentity`: its name (the run's), its version
(the first 12 hex digits of the weights' SHA-256, so two different weights never share a
version) and its architecture. ``str(identity)`` is the one line people read, e.g.
``"pneumonia-demo v3f2a9c1b7d0e (tiny-resnet)"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: DICOM LO (Long String) holds 64 characters; identities are kept within it.
MAX_TEXT = 64


@dataclass(frozen=True)
class ModelIdentity:
    """Name, version and architecture of a model.

    Attributes:
        name: the run's name, e.g. ``"pneumonia-demo"``.
        version: 12 hex digits of the weights' SHA-256 (``"unversioned"`` when unknown).
        architecture: the network, e.g. ``"tiny-resnet"``; ``"onnx"`` for an outside model.
        weights_sha256: the full digest, for audit records (empty when unknown).
    """

    name: str
    version: str
    architecture: str = ""
    weights_sha256: str = ""

    def __str__(self) -> str:
        return self.text()

    def text(self, limit: int | None = None) -> str:
        """``"name vVERSION (architecture)"``, shortened to ``limit`` characters by trimming the name."""
        tail = f" v{self.version}" + (f" ({self.architecture})" if self.architecture else "")
        name = self.name
        if limit is not None and len(name) + len(tail) > limit:
            name = name[: max(1, limit - len(tail) - 3)] + "..."  # ASCII: DICOM's default character set
        return f"{name}{tail}"

    def to_dict(self) -> dict[str, str]:
        """JSON-safe form (the API and audit log)."""
        return {
            "name": self.name,
            "version": self.version,
            "architecture": self.architecture,
            "weights_sha256": self.weights_sha256,
            "text": self.text(),
        }

    @classmethod
    def from_bundle_meta(cls, meta: dict[str, Any], weights_sha256: str) -> ModelIdentity:
        """The identity of a medpredict bundle from its ``bundle.json`` and the weights' digest."""
        model = meta.get("model") or {}
        architecture = str(model.get("name") or model.get("kind") or "")
        if int(model.get("members") or 1) > 1:  # the fold models of small-data mode
            architecture += f" x{int(model['members'])} ensemble"
        return cls(
            name=str(meta.get("name") or "model"),
            version=weights_sha256[:12] if weights_sha256 else "unversioned",
            architecture=architecture,
            weights_sha256=weights_sha256,
        )
