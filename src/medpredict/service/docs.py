"""The API docs: Swagger UI served offline, and the key and error answers declared in the OpenAPI description.

``/docs`` serves Swagger UI from the ``swagger-ui-bundle`` package's own files (under
``/docs-assets``), so it works without internet; ReDoc, which loads its script from a CDN,
is not offered. Like every route but ``/health``, the docs and their files need the key
(a browser is asked for it), unless the service runs with ``public_docs``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi.staticfiles import StaticFiles

logger = logging.getLogger(__name__)

DOCS_ASSETS = "/docs-assets"

_ERRORS = {
    "401": "Missing or wrong API key (send it as the X-API-Key header, as Authorization: Bearer, or as the "
    "password of HTTP Basic authentication).",
    "413": "The request body is larger than the service's upload limit.",
    "415": "The upload is not a PNG, JPEG or DICOM image (recognised by its bytes, not its name).",
    "422": "The input cannot be used: unreadable, wrong size or modality, a record value that breaks the model's "
    "schema (the field is named), or not what this model takes.",
    "503": "Busy: more prediction requests than workers and queue; retry after the Retry-After header's seconds.",
}


def add_offline_docs(app: Any) -> None:
    """``/docs`` with Swagger UI's own files served from here, and the key and errors in the description."""
    try:
        import swagger_ui_bundle
    except ImportError:
        logger.warning("swagger-ui-bundle is not installed: /docs is off (pip install 'medpredict[serve]')")
    else:
        from fastapi.openapi.docs import get_swagger_ui_html

        assets = Path(swagger_ui_bundle.swagger_ui_path)
        app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")

        @app.get("/docs", include_in_schema=False)
        def docs() -> Any:
            return get_swagger_ui_html(
                openapi_url="/openapi.json",
                title="medpredict API",
                swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
            )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            app.openapi_schema = describe_security(schema)
        return dict(app.openapi_schema)

    app.openapi = openapi


def describe_security(schema: dict[str, Any]) -> dict[str, Any]:
    """Declare the API key (``X-API-Key``, a bearer token or HTTP Basic) and the error answers in ``schema``."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(
        {
            "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "Bearer": {"type": "http", "scheme": "bearer"},
            "Basic": {"type": "http", "scheme": "basic", "description": "any user name; the API key as password"},
        }
    )
    components.setdefault("schemas", {})["Error"] = {
        "type": "object",
        "properties": {"detail": {"type": "string"}},
        "required": ["detail"],
    }
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if not path.startswith("/api/"):
                operation["security"] = []  # public: liveness
                continue
            operation["security"] = [{"ApiKey": []}, {"Bearer": []}, {"Basic": []}]
            codes = ["401", "422"] + (["413", "415", "503"] if method == "post" else [])
            responses = operation.setdefault("responses", {})
            for code in codes:
                responses.setdefault(code, {"description": _ERRORS[code], "content": error})
    return schema
