"""What comes into the service: body size limit, upload decoding, the name a result is shown under.

Everything here treats the request as hostile: the body is counted while it streams
(413 past the limit, before it is all read); an upload is recognised by its bytes, never
by its name or declared type; it is decoded by medpredict's readers from a temporary file
whose name we choose. The client's file name is used for one thing only, to tell the user
which file a result belongs to (:func:`source_name`): reduced to its base name, without
control characters, never written anywhere. Records are parsed in
:mod:`medpredict.service.records`.
"""

from __future__ import annotations

import io
import json
import logging
import re
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medpredict.errors import DataError, MedpredictError

logger = logging.getLogger(__name__)


class _TooLarge(Exception):
    """The request body passed the upload limit while streaming."""


class BodyLimitMiddleware:
    """ASGI middleware answering 413 when a body exceeds ``max_bytes``, counted as it streams."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_413(send, self.max_bytes)
            return
        received = 0
        started = too_large = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _TooLarge
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if too_large:
                # The form parser turns our exception into its own 400; answer 413 instead.
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _send_413(send, self.max_bytes)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            if not started:
                await _send_413(send, self.max_bytes)


async def _send_413(send: Any, limit: int) -> None:
    body = json.dumps({"detail": f"Upload too large: the limit is {limit} bytes."}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def sniff_format(data: bytes) -> str | None:
    """``png``, ``jpeg`` or ``dicom`` from the first bytes, or ``None``."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) > 132 and data[128:132] == b"DICM":
        return "dicom"
    return None


@dataclass
class DecodedImage:
    """An upload read through the readers: ``(C, H, W)`` float32 in [0, 1] and its format."""

    pixels: np.ndarray
    fmt: str
    modality: str | None
    #: descriptive DICOM tags (Modality, BodyPartExamined, ViewPosition, descriptions); empty for PNG/JPEG
    tags: dict[str, str] = field(default_factory=dict)


def decode_upload(
    data: bytes, *, channels: int, min_side: int = 16, max_side: int = 8192, modalities: tuple[str, ...] = ()
) -> DecodedImage:
    """Read uploaded bytes with medpredict's readers (never trusting the client's name or type).

    Raises:
        UnsupportedUpload: not PNG, JPEG or DICOM.
        DataError: unreadable, wrong modality or out-of-range size.
    """
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedUpload("The upload is not a PNG, JPEG or DICOM file (checked by its content).")
    suffix = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm"}[fmt]
    modality = None
    tags: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="medpredict-upload-") as tmp:
        path = Path(tmp) / f"upload{suffix}"  # our own name: the client's file name is never used
        path.write_bytes(data)
        declared = declared_shape(data)
        if declared is not None and max(declared[:2]) > max_side:
            raise DataError(
                f"Image size {declared[0]}x{declared[1]} is outside the accepted range {min_side}..{max_side} "
                "pixels per side."
            )
        try:
            if fmt == "dicom":
                from medpredict.readers.images import read_image_and_tags

                pixels, tags = read_image_and_tags(path, channels=channels)
                modality = tags.get("Modality")
            else:
                from medpredict.readers.images import read_image

                pixels = read_image(path, channels=channels)
        except MedpredictError as exc:
            # The reader names the file; ours is a temporary path the client never chose.
            raise type(exc)(str(exc).replace(f"'{path}'", "The upload").replace(str(path), "the upload")) from None
        except Exception as exc:  # noqa: BLE001 - decoders raise many types on hostile bytes
            logger.info("Upload could not be decoded (%s)", type(exc).__name__)
            raise DataError(f"The {fmt.upper()} upload could not be decoded ({type(exc).__name__}).") from None
    if modalities and fmt == "dicom" and modality not in modalities:
        raise DataError(
            f"This model accepts DICOM modalities {list(modalities)}; the upload is '{modality or 'unknown'}'."
        )
    height, width = pixels.shape[-2:]
    if min(height, width) < min_side or max(height, width) > max_side:
        raise DataError(
            f"Image size {height}x{width} is outside the accepted range {min_side}..{max_side} pixels per side."
        )
    return DecodedImage(pixels=pixels, fmt=fmt, modality=modality, tags=tags)


def declared_shape(data: bytes) -> tuple[int, int, int] | None:
    """``(height, width, samples per pixel)`` as the upload's header declares them, without decoding pixels.

    Lets a huge declared image be refused, or wait for memory, before it costs any; ``None``
    when the header cannot be read (decoding then reports the problem).
    """
    fmt = sniff_format(data)
    try:
        if fmt == "dicom":
            import pydicom

            header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
            return int(header.Rows), int(header.Columns), int(getattr(header, "SamplesPerPixel", 1) or 1)
        if fmt in ("png", "jpeg"):
            from PIL import Image

            with Image.open(io.BytesIO(data)) as image:  # lazy: reads the header only
                width, height = image.size
                return int(height), int(width), len(image.getbands())
    except Exception:  # noqa: BLE001 - hostile headers raise many types; decoding reports them
        return None
    return None


class UnsupportedUpload(DataError):
    """The upload is not a file type the service reads (answered with 415)."""


#: The longest file name or description shown with a result.
MAX_NAME = 120


def source_name(filename: str | None, tags: dict[str, str] | None = None) -> str | None:
    """What a result is shown under: the upload's base name, and a DICOM's series and study description.

    Only the last path component of ``filename`` is kept (either slash), without control
    or bidirectional-override characters, at most :data:`MAX_NAME` characters. From a DICOM
    header only ``SeriesDescription`` and ``StudyDescription`` are used; they describe the
    examination, not the patient. ``None`` when there is nothing to show. For example
    ``"ward3/chest.dcm"`` with series "PA" and study "CHEST" gives
    ``"chest.dcm (series 'PA', study 'CHEST')"``.
    """
    name = _clean_text(re.split(r"[\\/]", filename or "")[-1])
    if name in (".", ".."):
        name = ""
    described = [
        f"{label} '{_clean_text(tags[key])}'"
        for key, label in (("SeriesDescription", "series"), ("StudyDescription", "study"))
        if tags and _clean_text(tags.get(key, ""))
    ]
    if described:
        name = f"{name} ({', '.join(described)})" if name else ", ".join(described)
    return name or None


def _clean_text(text: str) -> str:
    kept = "".join(ch for ch in str(text) if unicodedata.category(ch)[0] not in ("C", "Z") or ch == " ")
    kept = " ".join(kept.split())
    return kept if len(kept) <= MAX_NAME else kept[: MAX_NAME - 1] + "…"
