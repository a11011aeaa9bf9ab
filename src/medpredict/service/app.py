"""The FastAPI app: health, model card, predictions for images and records, and the web page.

Routes (every one needs the API key except ``/health``; see :mod:`medpredict.service.auth`
for how a browser sends it, and ``public_docs`` for opening the page and docs):

* ``GET  /health``                 liveness and model version.
* ``GET  /api/v1/model``           the model card, identity, labels, threshold, input kind.
* ``POST /api/v1/predict``         multipart: ``file`` (PNG/JPEG/DICOM) and/or ``record``
  (a JSON object as a form field); ``?explain=false`` skips the heat map and pictures,
  ``?fhir=true`` adds a FHIR R4 Bundle.
* ``POST /api/v1/predict/record``  JSON body ``{"record": {...}}`` for record models.
* ``POST /api/v1/predict/batch``   multipart: several ``files``; no heat maps.
* ``GET  /``                       the web page, in the server's language or ``?lang=en|zh``
  (:mod:`medpredict.service.page`); ``/docs`` (Swagger UI, served offline) and
  ``/openapi.json`` the API docs (:mod:`medpredict.service.docs`).

An answer holds ``prediction`` (the prediction contract, its ``source`` naming the file
and, for DICOM, the series and study description), ``model`` (the identity, with its
``text``), ``input`` (format, modality, original size) for images, ``record_check``
(``imputed`` and ``clipped`` fields, see :mod:`medpredict.service.records`) for records,
and with an explanation ``explanation`` (the map's caption; ``explanation_of`` its ``method``
and ``class_label``) and display-sized PNGs
``image_png``, ``heatmap_png`` and ``overlay_png``.

Safety: bodies are counted while they stream in (413 past the limit); prediction requests
beyond the worker pool and its queue get 503 with ``Retry-After`` before their body is read
(:mod:`medpredict.service.pool`); uploads are identified by their bytes, decoded to bounded
memory (:mod:`medpredict.service.pipeline`), and their names only shown, never used as
paths; records are checked against the model's schema (422 naming the field); input errors
answer 4xx with a reason; every prediction request, refused or not, is written to the audit
log (:mod:`medpredict.service.audit`) with an input hash only; ``serve`` runs uvicorn with
header and body deadlines (:mod:`medpredict.service.server`) after a warm-up prediction.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# This module is the service: FastAPI is imported here, at the top, because the route
# signatures need its types at definition time. ``medpredict.service`` imports this module
# only on first use, after checking that the ``serve`` extra is installed.
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from medpredict.errors import ConfigError, MedpredictError, require_extra
from medpredict.service.audit import AuditLog, input_digest
from medpredict.service.auth import ApiKeyMiddleware
from medpredict.service.docs import add_offline_docs
from medpredict.service.page import HTML_LANG, check_language, render_index
from medpredict.service.pipeline import Inputs, Pipeline, Upload, jsonable, warm_up
from medpredict.service.pool import AdmissionMiddleware, Busy, WorkerPool
from medpredict.service.server import ConnectionLimits
from medpredict.service.uploads import BodyLimitMiddleware, UnsupportedUpload

logger = logging.getLogger(__name__)

API_KEY_ENV = "MEDPREDICT_API_KEY"
STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD = 20 * 1024 * 1024
_KEY_HELP = f"set the {API_KEY_ENV} environment variable or pass --api-key."


@dataclass(frozen=True)
class ServiceSettings:
    """How the service behaves.

    Attributes:
        api_key: the shared secret (``X-API-Key``, ``Authorization: Bearer``, or a Basic password).
        max_upload_bytes: the largest request body accepted; larger ones get 413.
        max_batch: the most files in one batch request.
        min_side / max_side: accepted image sizes in pixels (after reading).
        overlay_side: the longest side of the returned pictures.
        audit_path: the SQLite audit log; ``None`` keeps it in memory.
        modalities: DICOM modalities the model accepts (e.g. ``("CR", "DX")``); empty accepts all.
        ignore_intended_use: answer inputs whose DICOM tags contradict the model's intended use
            (by default they are refused with 422).
        workers: prediction requests worked on at once (each may hold a decoded image).
        queue: prediction requests admitted to wait for a worker; more get 503.
        queue_wait_s: the longest an admitted request waits for a worker before 503.
        public_docs: serve the web page, its files and the API docs without the key.
        decode_memory_mb: memory the workers' decoded images may take together; a large image
            waits for it (one larger than all of it decodes alone).
        lang: the web page's language unless its address asks for another (``"en"`` or ``"zh"``).
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
    workers: int = 2
    queue: int = 8
    queue_wait_s: float = 30.0
    public_docs: bool = False
    decode_memory_mb: int = 768
    lang: str = "en"

    def __post_init__(self) -> None:
        if not self.api_key or len(self.api_key) < 8:
            raise ConfigError(f"The API key must be at least 8 characters; {_KEY_HELP}")
        if self.max_upload_bytes < 1024:
            raise ConfigError(f"max_upload_bytes = {self.max_upload_bytes} is too small; use at least 1024.")
        if not 1 <= self.max_batch <= 256:
            raise ConfigError(f"max_batch = {self.max_batch} is out of range; use 1 to 256.")
        if not 1 <= self.workers <= 64 or not 0 <= self.queue <= 4096:
            raise ConfigError(f"workers = {self.workers} and queue = {self.queue}: use 1 to 64 workers, 0 to 4096.")
        if self.decode_memory_mb < 16:
            raise ConfigError(f"decode_memory_mb = {self.decode_memory_mb} is too small; use at least 16.")
        if not self.queue_wait_s > 0:
            raise ConfigError(f"queue_wait_s = {self.queue_wait_s} must be positive.")
        check_language(self.lang)


class _Service:
    """What the routes share: the pipeline, the worker pool, the audit log, the model's identity."""

    def __init__(self, predictor: Any, settings: ServiceSettings) -> None:
        self.predictor = predictor
        self.settings = settings
        self.pipeline = Pipeline(predictor, settings)
        self.identity = self.pipeline.identity
        self.pool = WorkerPool(settings.workers, settings.queue, settings.queue_wait_s)
        self.audit = AuditLog(settings.audit_path or ":memory:")

    async def answer(self, route: str, inputs: Inputs, *, explain: bool, fhir: bool, batch: bool) -> dict[str, Any]:
        """Run the pipeline on a worker and audit the outcome, whatever it is.

        Raises:
            HTTPException: 415/422 for bad inputs, 503 (``Retry-After``) when no worker is free.
        """
        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        try:
            work = functools.partial(
                self.pipeline.run, inputs, explain=explain, fhir=fhir, batch=batch, request_id=request_id
            )
            body = await self.pool.run(work)
        except (Busy, MedpredictError) as exc:
            status = 503 if isinstance(exc, Busy) else 415 if isinstance(exc, UnsupportedUpload) else 422
            self._audit(request_id, route, inputs, started, status=status, error=type(exc).__name__)
            headers = {"X-Request-ID": request_id}
            if isinstance(exc, Busy):
                headers["Retry-After"] = str(exc.retry_after_s)
            raise HTTPException(status_code=status, detail=str(exc), headers=headers) from None
        except Exception as exc:
            self._audit(request_id, route, inputs, started, status=500, error=type(exc).__name__)
            raise
        outputs = [r["prediction"] for r in body["results"]] if batch else body["prediction"]
        latency = self._audit(request_id, route, inputs, started, status=200, output=outputs)
        return {
            "request_id": request_id,
            "model": self.identity.to_dict(),
            "latency_ms": round(latency, 1),
            **body,
        }

    def _audit(self, request_id: str, route: str, inputs: Inputs, started: float, **outcome: Any) -> float:
        latency = (time.perf_counter() - started) * 1e3
        self.audit.record(
            request_id=request_id,
            route=route,
            model_name=self.identity.name,
            model_version=self.identity.version,
            input_sha256=inputs.digest(),
            input_kind=inputs.kind(),
            latency_ms=latency,
            **outcome,
        )
        return latency

    def audit_refusal(self, path: str) -> None:
        """Audit a request the pool refused before reading it (503)."""
        self.audit.record(
            request_id=uuid.uuid4().hex,
            route=path.removeprefix("/api/v1/"),
            model_name=self.identity.name,
            model_version=self.identity.version,
            input_sha256=input_digest(),
            input_kind="not read",
            status=503,
            error="Busy",
        )


def create_app(predictor: Any, settings: ServiceSettings) -> Any:
    """Build the FastAPI app around one loaded predictor.

    Args:
        predictor: a :class:`~medpredict.inference.predictor.Predictor`, an ONNX bundle
            predictor or an :class:`~medpredict.inference.onnx.OnnxPredictor` (the same surface).
        settings: see :class:`ServiceSettings`.
    """
    service = _Service(predictor, settings)
    app = FastAPI(
        title="medpredict",
        version=service.identity.version,
        description=f"Predictions from model **{service.identity.text()}**. Decision support only.",
        docs_url=None,  # served offline by add_offline_docs
        redoc_url=None,  # ReDoc would load its script from a CDN: not offered
    )
    app.state.audit = service.audit
    app.state.predictor = predictor
    app.state.settings = settings
    app.state.pool = service.pool
    app.state.pipeline = service.pipeline

    @app.exception_handler(MedpredictError)
    async def medpredict_error(request: Request, exc: MedpredictError) -> Any:
        status = 415 if isinstance(exc, UnsupportedUpload) else 422
        return JSONResponse({"detail": str(exc)}, status_code=status)

    _add_model_routes(app, service)
    _add_predict_routes(app, service)
    _add_page_routes(app, settings.lang)
    add_offline_docs(app)
    # Added innermost first: a request meets the key check, then the body limit (a declared
    # oversize is 413 at once), then admission to the worker pool (503 when full).
    app.add_middleware(AdmissionMiddleware, pool=service.pool, on_refused=service.audit_refusal)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key, public_docs=settings.public_docs)
    return app


def _add_model_routes(app: Any, service: _Service) -> None:
    predictor, settings, identity = service.predictor, service.settings, service.identity

    @app.get("/health", tags=["service"])
    def health() -> dict[str, Any]:
        """Liveness; needs no key."""
        return {"status": "ok", "model_version": identity.version}

    @app.get("/api/v1/model", tags=["model"])
    def model_card() -> dict[str, Any]:
        """The model card and what the model takes and returns."""
        return {
            "name": identity.name,
            "version": identity.version,
            "identity": identity.text(),
            "labels": list(getattr(predictor, "labels", [])),
            "task": getattr(predictor, "task", None),
            "input_kind": service.pipeline.input_kind,
            "threshold": getattr(predictor, "threshold", None),
            "positive_label": getattr(predictor, "positive_label", None),
            "accepts": {
                "image_formats": ["png", "jpeg", "dicom"],
                "modalities": list(settings.modalities),
                "max_upload_bytes": settings.max_upload_bytes,
                "max_batch": settings.max_batch,
                "record_fields": list(getattr(service.pipeline.cleaner, "columns_", {}) or {}),
            },
            "card": jsonable(getattr(predictor, "card", {}) or {}),
        }


def _add_predict_routes(app: Any, service: _Service) -> None:
    settings = service.settings

    @app.post("/api/v1/predict", tags=["predict"])
    async def predict(
        file: UploadFile | None = File(default=None, description="PNG, JPEG or DICOM image"),  # noqa: B008
        record: str | None = Form(default=None, description="clinical record as a JSON object"),  # noqa: B008
        explain: bool = True,
        fhir: bool = False,
    ) -> dict[str, Any]:
        """Predict for one image, one record, or both (fusion models)."""
        uploads = [Upload(file.filename, file.file)] if file is not None else []
        return await service.answer("predict", Inputs(uploads, record), explain=explain, fhir=fhir, batch=False)

    @app.post("/api/v1/predict/record", tags=["predict"])
    async def predict_record(request: Request, fhir: bool = True) -> dict[str, Any]:
        """Predict for a clinical record sent as JSON ``{"record": {...}}``; FHIR included by default."""
        inputs = Inputs(record=await request.body(), record_is_body=True)
        return await service.answer("predict/record", inputs, explain=False, fhir=fhir, batch=False)

    @app.post("/api/v1/predict/batch", tags=["predict"])
    async def predict_batch(
        files: list[UploadFile] = File(..., description="images"),  # noqa: B008
        fhir: bool = False,
    ) -> dict[str, Any]:
        """Predict for several images at once (no heat maps)."""
        if len(files) > settings.max_batch:
            raise HTTPException(
                status_code=422, detail=f"{len(files)} files; a batch holds at most {settings.max_batch}."
            )
        inputs = Inputs([Upload(f.filename, f.file) for f in files])
        return await service.answer("predict/batch", inputs, explain=False, fhir=fhir, batch=True)


def _add_page_routes(app: Any, default_lang: str) -> None:
    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Any:
        return Response(status_code=204)

    @app.get("/", include_in_schema=False)
    def index(lang: str | None = None) -> Any:
        """The page in ``lang`` (en or zh), else the server's language; another language is 422."""
        chosen = check_language(lang) if lang else default_lang
        return HTMLResponse(render_index(chosen), headers={"Content-Language": HTML_LANG[chosen]})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


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
    workers: int = 2,
    queue: int = 8,
    public_docs: bool = False,
    limits: ConnectionLimits | None = None,
    warm: bool = True,
    lang: str = "en",
) -> None:
    """Load ``model`` (run folder, bundle or BYO-model YAML), warm it up, and serve it with uvicorn.

    The key comes from ``api_key`` or the ``MEDPREDICT_API_KEY`` environment variable. The
    audit log defaults to ``audit.sqlite`` beside the model. Unless ``warm`` is False, one
    prediction with an explanation runs before the server accepts requests, so the first
    request is not slow. ``limits`` are the connection deadlines (:class:`ConnectionLimits`).
    ``lang`` is the web page's language unless its address asks for another (``/?lang=zh``).

    Raises:
        ConfigError: no API key, a port outside 1-65535, or a host that is not a loopback
            address while ``MEDPREDICT_ALLOW_REMOTE`` is unset.
    """
    require_extra("uvicorn", "serve")
    import uvicorn

    from medpredict.inference.loader import load_predictor
    from medpredict.service.server import server_config

    key = api_key or os.environ.get(API_KEY_ENV, "")
    if not key:
        raise ConfigError(f"No API key: {_KEY_HELP}")
    if not 1 <= int(port) <= 65535:
        raise ConfigError(f"Port {port} is out of range; use 1 to 65535 (e.g. 8000).")
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
        workers=workers,
        queue=queue,
        public_docs=public_docs,
        lang=lang,
    )
    app = create_app(predictor, settings)
    if warm:
        logger.info("Warm-up prediction with explanation took %.2f s", warm_up(app.state.pipeline))
        render_index(lang)  # a Chinese page subsets its font once, here rather than on the first visit
    logger.info("Serving %s on http://%s:%d (audit log %s)", predictor.identity.text(), host, port, audit)
    uvicorn.Server(server_config(app, host=host, port=port, limits=limits or ConnectionLimits())).run()
