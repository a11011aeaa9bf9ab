"""medpredict: medical images and clinical records to prediction models a hospital can trust.

The public surface is small and imported lazily, so ``import medpredict`` stays cheap and
has no side effects (no device probing, no seeding, no warning filters).
"""

from __future__ import annotations

__version__ = "0.1.0"
