"""The FastAPI app: health, model card, predictions for images and records, and the web page.

Routes (all under the API key except ``/health``, the page and its static files, and the
OpenAPI docs, which hold no data; ``/docs`` serves Swagger UI from the ``swagger-ui-bundle``
package, so it works without internet, and the OpenAPI description declares the API key
and the 401/413/415/422 answers):

* ``GET  /health``                 liveness and model version.
* ``GET  /api/v1/model``           the model card, labels, threshold, input kind.
* ``POST /api/v1/predict``         multipart: ``file`` (PNG/JPEG/DICOM) and/or ``record``
  (a JSON object as a form field); ``?explain=false`` skips the heat map, ``?fhir=true``
  adds a FHIR R4 Bundle.
* ``POST /api/v1/predict/record``  JSON body ``{"record": {...}}`` for record models.
* ``POST /api/v1/predict/batch``   multipart: several ``files``; no heat maps.
* ``GET  /``                       the web page.

Safety: the key is compared in constant time; request bodies are counted while they
stream in and cut off with 413 past the limit (before the whole body is read); uploaded
file names are never used; uploads are identified by their bytes (magic numbers), not by
their names or content types; input errors answer 4xx with a reason; each request is
written to the audit log (:mod:`medpredict.service.audit`) with an input hash only.
"""

from __future__ import annotations

import base64
import hmac
import io
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# This module is the service: FastAPI is imported here, at the top, because the route
# signatures need its types at definition time. ``medpredict.service`` imports this module
# only on first use, after checking that the ``serve`` extra is installed.
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from medpredict.errors import ConfigError, DataError, MedpredictError, require_extra
from medpredict.service.audit import AuditLog, input_digest
from medpredict.service.uploads import (
    BodyLimitMiddleware,
    UnsupportedUpload,
    decode_upload,
    parse_record,
)

logger = logging.getLogger(__name__)

API_KEY_ENV = "MEDPREDICT_API_KEY"
STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD = 20 * 1024 * 1024
_PUBLIC_PATHS = ("/health", "/", "/favicon.ico", "/docs", "/openapi.json")
_DOCS_ASSETS = "/docs-assets"


@dataclass(frozen=True)
class ServiceSettings:
    """How the service behaves.

    Attributes:
        api_key: the shared secret clients send as ``X-API-Key`` (or ``Authorization: Bearer``).
        max_upload_bytes: the largest request body accepted; larger ones get 413.
        max_batch: the most files in one batch request.
        min_side / max_side: accepted image sizes in pixels (after reading).
        overlay_side: the longest side of the returned overlay PNG.
        audit_path: the SQLite audit log; ``None`` keeps it in memory.
        modalities: DICOM modalities the model accepts (e.g. ``("CR", "DX")``); empty accepts all.
        ignore_intended_use: answer inputs whose DICOM tags contradict the model's intended use
            (by default they are refused with 422).
    """

    api_key: str
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD
    max_batch: int = 16
    min_side: int = 16
    max_side: int = 8192
    overlay_side: int = 512
    audit_path: str | None = None
    modalities: tuple[str, ...] = ()
    ignore_intended_use: bool = False

    def __post_init__(self) -> None:
        if not self.api_key or len(self.api_key) < 8:
            raise ConfigError(f"The API key must be at least 8 characters; set {API_KEY_ENV} or pass --api-key.")
        if self.max_upload_bytes < 1024:
            raise ConfigError(f"max_upload_bytes = {self.max_upload_bytes} is too small; use at least 1024.")
        if not 1 <= self.max_batch <= 256:
            raise ConfigError(f"max_batch = {self.max_batch} is out of range; use 1 to 256.")


# --------------------------------------------------------------------------- the app


def create_app(predictor: Any, settings: ServiceSettings) -> Any:
    """Build the FastAPI app around one loaded predictor.

    Args:
        predictor: a :class:`~medpredict.inference.predictor.Predictor` or an
            :class:`~medpredict.inference.onnx.OnnxPredictor` (the same surface).
        settings: see :class:`ServiceSettings`.
    """
    identity = predictor.identity
    name, version = identity.name, identity.version
    audit = AuditLog(settings.audit_path or ":memory:")
    lock = threading.Lock()  # Grad-CAM hooks the model: one prediction at a time
    channels = _channels(predictor)
    input_kind = str(getattr(predictor, "input_kind", "image"))

    app = FastAPI(
        title="medpredict",
        version=version,
        description=f"Predictions from model **{identity.text()}**. Decision support only.",
        docs_url=None,  # served below from local assets
        redoc_url=None,  # ReDoc would load its script from a CDN: not offered
    )
    app.state.audit = audit
    app.state.predictor = predictor
    app.state.settings = settings

    @app.middleware("http")
    async def require_key(request: Request, call_next: Any) -> Any:
        path = request.url.path
        if request.method == "OPTIONS" or path in _PUBLIC_PATHS or path.startswith(("/static/", _DOCS_ASSETS)):
            return await call_next(request)
        if not _key_ok(request.headers, settings.api_key):
            return JSONResponse(
                {"detail": "Missing or wrong API key; send it as the X-API-Key header."},
                status_code=401,
                headers={"WWW-Authenticate": "ApiKey"},
            )
        return await call_next(request)

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)

    @app.exception_handler(MedpredictError)
    async def medpredict_error(request: Request, exc: MedpredictError) -> Any:
        status = 415 if isinstance(exc, UnsupportedUpload) else 422
        return JSONResponse({"detail": str(exc)}, status_code=status)

    run = _runner(predictor, settings, audit, lock, channels, input_kind, identity)
    _add_info_routes(app, predictor, settings, input_kind, version, name)
    _add_prediction_routes(app, settings, run)
    _add_page_routes(app)
    _offline_docs(app)
    return app


Runner = Any  # run(route, images, record, *, explain, fhir, batch=False) -> response body


def _runner(
    predictor: Any,
    settings: ServiceSettings,
    audit: AuditLog,
    lock: threading.Lock,
    channels: int,
    input_kind: str,
    identity: Any,
) -> Runner:
    """The function every prediction route calls: predict, audit, and shape the response."""
    name, version = identity.name, identity.version

    def run(
        route: str,
        images: list[bytes],
        record: dict[str, Any] | None,
        *,
        explain: bool,
        fhir: bool,
        batch: bool = False,
    ) -> dict[str, Any]:
        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        record_bytes = json.dumps(record, sort_keys=True).encode() if record is not None else b""
        digest = input_digest(*images, record_bytes)
        kind = "+".join(k for k, present in (("image", images), ("record", record is not None)) if present)
        try:
            body = _predict(
                predictor,
                lock,
                settings,
                channels,
                input_kind,
                images,
                record,
                explain=explain,
                fhir=fhir,
                batch=batch,
                identity=identity,
                request_id=request_id,
            )
        except MedpredictError as exc:
            status = 415 if isinstance(exc, UnsupportedUpload) else 422
            audit.record(
                request_id=request_id,
                route=route,
                model_name=name,
                model_version=version,
                input_sha256=digest,
                input_kind=kind or "none",
                status=status,
                error=type(exc).__name__,
                latency_ms=(time.perf_counter() - started) * 1e3,
            )
            raise HTTPException(status_code=status, detail=str(exc), headers={"X-Request-ID": request_id}) from None
        latency = (time.perf_counter() - started) * 1e3
        outputs = [r["prediction"] for r in body["results"]] if batch else body["prediction"]
        audit.record(
            request_id=request_id,
            route=route,
            model_name=name,
            model_version=version,
            input_sha256=digest,
            input_kind=kind,
            status=200,
            output=outputs,
            latency_ms=latency,
        )
        return {
            "request_id": request_id,
            "model": identity.to_dict(),
            "latency_ms": round(latency, 1),
            **body,
        }

    return run


def _add_info_routes(app: FastAPI, predictor: Any, settings: ServiceSettings, input_kind: str, version: str,
                     name: str) -> None:
    """``/health`` and ``/api/v1/model``."""

    @app.get("/health", tags=["service"])
    def health() -> dict[str, Any]:
        """Liveness; needs no key."""
        return {"status": "ok", "model_version": version}

    @app.get("/api/v1/model", tags=["model"])
    def model_card() -> dict[str, Any]:
        """The model card and what the model takes and returns."""
        return {
            "name": name,
            "version": version,
            "labels": list(getattr(predictor, "labels", [])),
            "task": getattr(predictor, "task", None),
            "input_kind": input_kind,
            "threshold": getattr(predictor, "threshold", None),
            "positive_label": predictor.positive_label,
            "accepts": {
                "image_formats": ["png", "jpeg", "dicom"],
                "modalities": list(settings.modalities),
                "max_upload_bytes": settings.max_upload_bytes,
                "max_batch": settings.max_batch,
            },
            "card": _jsonable(getattr(predictor, "card", {}) or {}),
        }


def _add_prediction_routes(app: FastAPI, settings: ServiceSettings, run: Runner) -> None:
    """The three prediction routes: one input, a JSON record, a batch of images."""

    @app.post("/api/v1/predict", tags=["predict"])
    def predict(
        file: UploadFile | None = File(default=None, description="PNG, JPEG or DICOM image"),  # noqa: B008
        record: str | None = Form(default=None, description="clinical record as a JSON object"),  # noqa: B008
        explain: bool = True,
        fhir: bool = False,
    ) -> dict[str, Any]:
        """Predict for one image, one record, or both (fusion models)."""
        images = [file.file.read()] if file is not None else []
        if images and not images[0]:
            raise HTTPException(status_code=422, detail="The uploaded file is empty.")
        return run("predict", images, parse_record(record), explain=explain, fhir=fhir)

    @app.post("/api/v1/predict/record", tags=["predict"])
    async def predict_record(request: Request, fhir: bool = True) -> Any:
        """Predict for a clinical record sent as JSON ``{"record": {...}}``; FHIR included by default."""
        raw = await request.body()
        try:
            payload = json.loads(raw or b"null")
        except ValueError:
            raise HTTPException(status_code=422, detail='The body is not JSON; send {"record": {...}}.') from None
        if not isinstance(payload, dict) or "record" not in payload:
            raise HTTPException(status_code=422, detail='Send a JSON object {"record": {...}}.')
        record = parse_record(payload["record"]) if isinstance(payload["record"], dict) else None
        if record is None:
            raise HTTPException(status_code=422, detail='"record" must be a JSON object of column name to value.')
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(run, "predict/record", [], record, explain=False, fhir=fhir)

    @app.post("/api/v1/predict/batch", tags=["predict"])
    def predict_batch(
        files: list[UploadFile] = File(..., description="images"),  # noqa: B008
        fhir: bool = False,
    ) -> dict[str, Any]:
        """Predict for several images at once (no heat maps)."""
        if len(files) > settings.max_batch:
            raise HTTPException(
                status_code=422, detail=f"{len(files)} files; a batch holds at most {settings.max_batch}."
            )
        images = [f.file.read() for f in files]
        return run("predict/batch", images, None, explain=False, fhir=fhir, batch=True)


def _add_page_routes(app: FastAPI) -> None:
    """The web page, its static files and an empty favicon."""

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Any:
        from fastapi.responses import Response

        return Response(status_code=204)

    @app.get("/", include_in_schema=False)
    def index() -> Any:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def _offline_docs(app: Any) -> None:
    """``/docs`` with Swagger UI's own files served from here, and the key and errors in the description."""
    try:
        import swagger_ui_bundle
    except ImportError:
        logger.warning("swagger-ui-bundle is not installed: /docs is off (pip install 'medpredict[serve]')")
    else:
        from fastapi.openapi.docs import get_swagger_ui_html

        assets = Path(swagger_ui_bundle.swagger_ui_path)
        app.mount(_DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")

        @app.get("/docs", include_in_schema=False)
        def docs() -> Any:
            return get_swagger_ui_html(
                openapi_url="/openapi.json",
                title="medpredict API",
                swagger_js_url=f"{_DOCS_ASSETS}/swagger-ui-bundle.js",
                swagger_css_url=f"{_DOCS_ASSETS}/swagger-ui.css",
                swagger_favicon_url=f"{_DOCS_ASSETS}/favicon-32x32.png",
            )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            app.openapi_schema = describe_security(schema)
        return dict(app.openapi_schema)

    app.openapi = openapi


_ERRORS = {
    "401": "Missing or wrong API key (send it as the X-API-Key header, or Authorization: Bearer).",
    "413": "The request body is larger than the service's upload limit.",
    "415": "The upload is not a PNG, JPEG or DICOM image (recognised by its bytes, not its name).",
    "422": "The input cannot be used: unreadable, wrong size or modality, or not what this model takes.",
}


def describe_security(schema: dict[str, Any]) -> dict[str, Any]:
    """Declare the API key (header ``X-API-Key`` or a bearer token) and the error answers in ``schema``."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(
        {
            "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "Bearer": {"type": "http", "scheme": "bearer"},
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
            operation["security"] = [{"ApiKey": []}, {"Bearer": []}]
            codes = ["401", "422"] + (["413", "415"] if method == "post" else [])
            responses = operation.setdefault("responses", {})
            for code in codes:
                responses.setdefault(code, {"description": _ERRORS[code], "content": error})
    return schema


def _predict(
    predictor: Any,
    lock: threading.Lock,
    settings: ServiceSettings,
    channels: int,
    input_kind: str,
    images: list[bytes],
    record: dict[str, Any] | None,
    *,
    explain: bool,
    fhir: bool,
    batch: bool,
    identity: Any,
    request_id: str,
) -> dict[str, Any]:
    if not images and record is None:
        raise DataError("Send an image file, a record, or both.")
    if input_kind == "image" and record is not None:
        raise DataError("This model reads images only; leave the record out.")
    if input_kind == "table" and images:
        raise DataError("This model reads clinical records only; send a record, not an image.")
    if input_kind == "fusion" and (not images or record is None):
        raise DataError("This model needs both an image and a record.")
    decoded = [
        decode_upload(
            data,
            channels=channels,
            min_side=settings.min_side,
            max_side=settings.max_side,
            modalities=settings.modalities,
        )
        for data in images
    ]
    pixels = [d.pixels for d in decoded] or None
    records = None if record is None else [record] * max(1, len(decoded))
    want_map = explain and bool(decoded) and not batch and input_kind == "image"
    with lock:
        if input_kind == "image":
            predictions = predictor.predict(
                images=pixels, tags=[d.tags for d in decoded], explain=want_map,
                ignore_intended_use=settings.ignore_intended_use,
            )
        else:
            predictions = predictor.predict(images=pixels, records=records)
    rows = [_prediction_dict(p) for p in predictions]
    results = []
    for i, row in enumerate(rows):
        item: dict[str, Any] = {"prediction": row}
        if fhir:
            from medpredict.deploy import fhir as fhir_out

            item["fhir"] = fhir_out.prediction_resources(
                row,
                identity=identity,
                input_kind=input_kind,
                positive_label=predictor.positive_label,
                request_id=f"{request_id}-{i}",
            )
        if decoded:
            item["input"] = {
                "format": decoded[i].fmt,
                "modality": decoded[i].modality,
                "size": list(decoded[i].pixels.shape[-2:]),
            }
        results.append(item)
    if batch:
        return {"results": results}
    body = results[0]
    explanation = getattr(predictions[0], "explanation", None)
    if explanation is not None:
        body["overlay_png"] = _overlay_data_url(decoded[0].pixels, explanation.heatmap, settings.overlay_side)
        body["explanation"] = explanation.caption()
    return body


def _prediction_dict(prediction: Any) -> dict[str, Any]:
    values = prediction.to_dict() if hasattr(prediction, "to_dict") else dict(prediction)
    return _jsonable(values)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _overlay_data_url(pixels: np.ndarray, heat: np.ndarray, side: int) -> str:
    from PIL import Image

    from medpredict.explain.maps import overlay

    rgb = overlay(pixels, heat)
    picture = Image.fromarray(rgb, mode="RGB")
    scale = min(1.0, side / max(picture.size))
    if scale < 1.0:
        picture = picture.resize(
            (max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
            Image.Resampling.LANCZOS,
        )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _key_ok(headers: Any, expected: str) -> bool:
    given = headers.get("x-api-key") or ""
    auth = headers.get("authorization") or ""
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _channels(predictor: Any) -> int:
    """Channels the predictor's images are read with (1 when it does not say, e.g. record models)."""
    try:
        channels = getattr(predictor, "channels", None)
    except (KeyError, ValueError):  # a record model's bundle has no image preprocessing
        channels = None
    if channels in (1, 3):
        return int(channels)
    shapes = getattr(predictor, "input_shapes", None)
    if shapes and shapes[0] and shapes[0][0] in (1, 3):
        return int(shapes[0][0])
    return 1


def serve(
    model: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_upload_mb: float = 20.0,
    audit_path: str | os.PathLike[str] | None = None,
    modalities: tuple[str, ...] = (),
    backend: str | None = None,
    ignore_intended_use: bool = False,
) -> None:
    """Load ``model`` (run folder, bundle or BYO-model YAML) and serve it with uvicorn.

    The key comes from ``api_key`` or the ``MEDPREDICT_API_KEY`` environment variable. The
    audit log defaults to ``audit.sqlite`` beside the model.

    Raises:
        ConfigError: no API key, or a host that is not a loopback address while
            ``MEDPREDICT_ALLOW_REMOTE`` is unset.
    """
    require_extra("uvicorn", "serve")
    import uvicorn

    from medpredict.inference.loader import load_predictor

    key = api_key or os.environ.get(API_KEY_ENV, "")
    if not key:
        raise ConfigError(f"No API key: set the {API_KEY_ENV} environment variable or pass --api-key.")
    if host not in ("127.0.0.1", "localhost", "::1") and os.environ.get("MEDPREDICT_ALLOW_REMOTE") != "1":
        raise ConfigError(
            f"Refusing to listen on '{host}': serve on 127.0.0.1 behind your hospital's TLS proxy, "
            "or set MEDPREDICT_ALLOW_REMOTE=1 if that is intended."
        )
    base = Path(model)
    audit = Path(audit_path) if audit_path is not None else (base if base.is_dir() else base.parent) / "audit.sqlite"
    predictor = load_predictor(model, backend=backend or "torch")
    settings = ServiceSettings(
        api_key=key,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        audit_path=str(audit),
        modalities=tuple(modalities),
        ignore_intended_use=ignore_intended_use,
    )
    app = create_app(predictor, settings)
    logger.info("Serving %s on http://%s:%d (audit log %s)", predictor.identity.text(), host, port, audit)
    uvicorn.run(app, host=host, port=int(port), log_level="info", access_log=False)
