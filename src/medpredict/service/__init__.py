"""The REST service and web page: ``create_app`` builds the FastAPI app, ``serve`` runs it.

Imported lazily: FastAPI and uvicorn are the ``serve`` extra.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from medpredict.errors import require_extra

        require_extra("fastapi", "serve")
        require_extra("multipart", "serve")
        from medpredict.service import app

        return getattr(app, name)
    raise AttributeError(f"module 'medpredict.service' has no attribute '{name}'")
