"""Fuzzing the REST service's inputs: hostile uploads, names, content types and records get 4xx, never 5xx.

Also checks that an upload's file name is never used as a path: after every request the
working folder and the temporary folder hold nothing new; and, on a record model, that odd
and deeply nested JSON records are answered 200 or 422 naming a field, each one audited.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from fixtures_images import write_dicom  # noqa: E402
from medpredict.service.app import ServiceSettings, create_app  # noqa: E402

KEY = "fuzz-key-0123456789"
H = {"X-API-Key": KEY}
LIMIT = 64 * 1024
EXAMPLES = int(os.environ.get("MEDPREDICT_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=os.environ.get("MEDPREDICT_FUZZ_RANDOM") != "1",
    database=None,
)


@pytest.fixture(scope="module")
def predictor(tiny_run: Path):
    from medpredict.inference.predictor import Predictor

    return Predictor.from_bundle(tiny_run)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A private working folder and temporary folder, to see whether a request creates files."""
    root = tmp_path_factory.mktemp("sandbox")
    folders = {"cwd": root / "cwd", "tmp": root / "tmp", "audit": root / "audit"}
    for folder in folders.values():
        folder.mkdir()
    return folders


@pytest.fixture(scope="module")
def client(predictor, sandbox):
    settings_ = ServiceSettings(
        api_key=KEY, max_upload_bytes=LIMIT, audit_path=str(sandbox["audit"] / "audit.sqlite"), max_batch=3
    )
    previous_cwd, previous_tmp = Path.cwd(), tempfile.tempdir
    os.chdir(sandbox["cwd"])
    tempfile.tempdir = str(sandbox["tmp"])
    try:
        with TestClient(create_app(predictor, settings_), raise_server_exceptions=False) as test_client:
            yield test_client
    finally:
        os.chdir(previous_cwd)
        tempfile.tempdir = previous_tmp


def _png(side: int = 16, seed: int = 0) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((side, side)) * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def valid_uploads(tmp_path_factory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("uploads")
    pixels = (np.random.default_rng(3).random((32, 32)) * 4000).astype(np.uint16)
    return {"png": _png(), "dicom": write_dicom(root / "x.dcm", pixels, Modality="CR").read_bytes()}


def _assert_no_files_created(sandbox: dict[str, Path], name: str = "") -> None:
    for key in ("cwd", "tmp"):
        leftovers = [str(p.relative_to(sandbox[key])) for p in sandbox[key].rglob("*")]
        assert leftovers == [], f"files left in the {key} folder: {leftovers[:5]}"
    # Names long and odd enough not to occur by chance in hashes, UUIDs and timestamps.
    if len(name) >= 12 and not set(name) <= set("0123456789abcdef-:.TZ+ "):
        audit_blob = b"".join(p.read_bytes() for p in sandbox["audit"].glob("audit.sqlite*"))
        assert name.encode("utf-8", "surrogatepass") not in audit_blob


def _multipart(filename: bytes, content: bytes, content_type: bytes = b"image/png") -> tuple[bytes, dict[str, str]]:
    """A hand-built multipart body, so names can hold bytes (NUL, quotes) a client library would refuse."""
    boundary = b"fuzzboundary7b3c"
    body = (
        b"--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
        b"Content-Type: " + content_type + b"\r\n\r\n" + content + b"\r\n--" + boundary + b"--\r\n"
    )
    return body, {**H, "Content-Type": "multipart/form-data; boundary=" + boundary.decode()}


def _ok(status: int, *, allow_200: bool = True) -> bool:
    return (allow_200 and status == 200) or 400 <= status < 500


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            break
        at = draw(st.integers(0, len(out) - 1))
        kind = draw(st.sampled_from(("flip", "truncate", "insert")))
        if kind == "flip":
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del out[at:]
        else:
            out[at:at] = draw(st.binary(min_size=1, max_size=32))
    return bytes(out)


MAGIC = st.sampled_from((b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\x00" * 128 + b"DICM", b"GIF89a"))


@FUZZ
@given(prefix=MAGIC, tail=st.binary(max_size=2048), explain=st.booleans())
def test_random_bytes_upload_is_4xx(client, sandbox, prefix, tail, explain) -> None:
    res = client.post(
        f"/api/v1/predict?explain={str(explain).lower()}", files={"file": ("x.png", prefix + tail)}, headers=H
    )
    assert _ok(res.status_code, allow_200=False), (res.status_code, res.text[:300])
    _assert_no_files_created(sandbox)


@FUZZ
@given(data=st.data())
def test_mutated_valid_uploads_are_200_or_4xx(client, sandbox, valid_uploads, data) -> None:
    kind = data.draw(st.sampled_from(sorted(valid_uploads)))
    content = data.draw(mutated(valid_uploads[kind]))
    res = client.post("/api/v1/predict", files={"file": ("x", content)}, headers=H)
    assert _ok(res.status_code), (res.status_code, res.text[:300])
    if res.status_code == 200:
        assert 0.0 <= res.json()["prediction"]["score"] <= 1.0
    _assert_no_files_created(sandbox)


NAMES = st.one_of(
    st.sampled_from(
        [
            "../../../../tmp/pwned.png",  # path traversal
            "..\\..\\windows\\system32\\x.png",  # Windows traversal
            "/etc/passwd",  # absolute path
            "a\x00.png",  # NUL byte
            "x" * 5000 + ".png",  # longer than any file system allows
            "",  # empty
            "./.",  # dots only
            'q"uote.png',  # a quote inside the header
            "\u202etxt.png",  # right-to-left override
        ]
    ),
    st.text(max_size=300),
)


@FUZZ
@given(name=NAMES, content_type=st.sampled_from([b"image/png", b"application/octet-stream", b"text/html", b""]))
def test_upload_file_names_are_never_used_as_paths(client, sandbox, name, content_type) -> None:
    body, headers = _multipart(name.encode("utf-8", "surrogatepass"), _png(), content_type)
    res = client.post("/api/v1/predict?explain=false", content=body, headers=headers)
    assert res.status_code == 200 or 400 <= res.status_code < 500, (res.status_code, res.text[:300])
    _assert_no_files_created(sandbox, name)
    assert not Path("/tmp/pwned.png").exists()


@FUZZ
@given(
    content_type=st.one_of(
        st.sampled_from(
            [
                "application/json",  # JSON where a form is expected
                "multipart/form-data",  # no boundary
                "multipart/form-data; boundary=",  # empty boundary
                "multipart/form-data; boundary=" + "b" * 5000,  # absurd boundary
                "application/x-www-form-urlencoded",
                "text/plain; charset=utf-999",
            ]
        ),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80),
    ),
    body=st.binary(max_size=1024),
    route=st.sampled_from(["/api/v1/predict", "/api/v1/predict/batch", "/api/v1/predict/record"]),
)
def test_wrong_content_types_and_bodies_are_4xx(client, sandbox, content_type, body, route) -> None:
    headers = {**H, "Content-Type": content_type.replace("\r", "").replace("\n", "")}
    res = client.post(route, content=body, headers=headers)
    assert _ok(res.status_code, allow_200=False), (res.status_code, res.text[:300])
    _assert_no_files_created(sandbox)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(
    record=st.one_of(JSON_VALUES.map(json.dumps), st.text(max_size=200), st.just('{"age": NaN}')),
    with_image=st.booleans(),
)
def test_malformed_records_are_4xx(client, sandbox, record, with_image) -> None:
    files = {"file": ("x.png", _png())} if with_image else None
    res = client.post("/api/v1/predict", files=files, data={"record": record}, headers=H)
    # An image model refuses every record; an empty record with an image is a plain prediction.
    assert _ok(res.status_code, allow_200=with_image and record in ("", '""', "null")), (
        res.status_code,
        res.text[:300],
    )
    payload = {"record": json.loads(record) if _is_json(record) else record}
    res = client.post("/api/v1/predict/record", content=json.dumps(payload).encode(), headers=H)
    assert _ok(res.status_code, allow_200=False), (res.status_code, res.text[:300])


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]),
    path=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/._-%", max_size=60),
    key=st.sampled_from([KEY, "", "wrong-key-000000", KEY + "x"]),
)
def test_random_routes_methods_and_keys_are_never_5xx(client, method, path, key) -> None:
    res = client.request(method, "/" + path.lstrip("/"), headers={"X-API-Key": key} if key else {})
    assert res.status_code < 500, (method, path, res.status_code)
    if key != KEY and not _public(res.request.url.path):  # the path as sent, after URL normalisation
        assert res.status_code in (401, 404, 405), (method, path, res.status_code)


def _public(clean: str) -> bool:
    return clean == "/health"  # every other route needs the key (the page and docs too, without --public-docs)


@pytest.mark.parametrize("declared", [True, False])  # with Content-Length, and streamed without it
def test_oversized_bodies_are_413_before_being_read(client, declared) -> None:
    big = b"\x89PNG\r\n\x1a\n" + bytes(4 * LIMIT)
    if declared:
        res = client.post("/api/v1/predict", files={"file": ("big.png", big)}, headers=H)
    else:

        def chunks():
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
            for _ in range(64):
                yield bytes(8192)

        res = client.post(
            "/api/v1/predict", content=chunks(), headers={**H, "Content-Type": "multipart/form-data; boundary=b"}
        )
    assert res.status_code == 413


def _png_bomb(side: int) -> bytes:
    """A valid grey PNG of side x side zeros: tens of KB on the wire, side² bytes decoded."""
    import struct

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = zlib.compress(b"\x00" * ((side + 1) * side), 9)
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_an_upload_larger_than_max_side_is_refused_before_decoding(predictor) -> None:
    strict = ServiceSettings(api_key=KEY, max_upload_bytes=1024 * 1024, max_side=1024)
    bomb = _png_bomb(4000)
    assert len(bomb) < 64 * 1024
    with TestClient(create_app(predictor, strict), raise_server_exceptions=False) as small:
        tracemalloc.start()
        res = small.post("/api/v1/predict", files={"file": ("b.png", bomb)}, headers=H)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert res.status_code == 422
    assert peak < 32 * 2**20, f"decoding the refused upload allocated {peak / 2**20:.0f} MiB"


# --------------------------------------------------------------------------- a record model


@pytest.fixture(scope="module")
def record_client(tmp_path_factory):
    from medpredict.inference.predictor import Predictor
    from test_service import record_run

    run = record_run(tmp_path_factory)
    audit = tmp_path_factory.mktemp("record-audit") / "audit.sqlite"
    settings_ = ServiceSettings(api_key=KEY, audit_path=str(audit))
    with TestClient(create_app(Predictor.from_bundle(run), settings_), raise_server_exceptions=False) as test_client:
        yield test_client


FIELDS = ("age", "chol", "sex")
#: Values as JSON text: odd numbers (NaN, infinities, overflow, huge integers, booleans), numeric and
#: missing-value text, categories in other spellings, nested containers.
ODD_VALUES = st.one_of(
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 400, "true", "false", "null"]),
    st.sampled_from(['"sixty"', '" 63 "', '"63"', '"?"', '"N/A"', '""', '"M"', '" m "', '"F"', '"female"']),
    st.just('"\\u0000"'),
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    JSON_VALUES.map(json.dumps),
    st.integers(1, 3000).map(lambda depth: "[" * depth + "]" * depth),
)


@st.composite
def records(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A record body as JSON text, and its field names: the model's fields (some absent) and others."""
    names = draw(st.lists(st.sampled_from(FIELDS) | st.text(max_size=12), max_size=6, unique=True))
    if draw(st.booleans()):  # half the records name every field, so that the values get checked
        names = list(dict.fromkeys([*FIELDS, *names]))
    items = [f"{json.dumps(name)}: {draw(ODD_VALUES)}" for name in names]
    return '{"record": {' + ", ".join(items) + "}}", names


#: A 422 about the record as a whole rather than one field.
RECORD_LEVEL = ("nested too deeply", "lacks field(s) the model needs", "non-empty JSON object")


@FUZZ
@given(drawn=records())
def test_odd_records_are_200_or_422_naming_the_field_and_always_audited(record_client, drawn) -> None:
    body, names = drawn
    before = len(record_client.app.state.audit.recent(10**6))
    res = record_client.post("/api/v1/predict/record", content=body.encode(), headers=H)
    assert res.status_code in (200, 422), (res.status_code, res.text[:300])
    if res.status_code == 422:
        detail = res.json()["detail"]
        assert any(f"field '{n}'" in detail for n in names) or any(r in detail for r in RECORD_LEVEL), detail
    else:
        answer = res.json()
        assert sum(answer["prediction"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert set(answer["record_check"]["imputed"]) <= set(FIELDS)
    assert len(record_client.app.state.audit.recent(10**6)) == before + 1


@FUZZ
@given(
    depth=st.integers(1, 100_000),
    opener=st.sampled_from(["[", '{"a":', '{"record":', '{"record": {"age":']),
    closed=st.booleans(),
)
def test_deeply_nested_bodies_are_4xx(record_client, depth, opener, closed) -> None:
    closer = {"[": "]", '{"a":': "}", '{"record":': "}", '{"record": {"age":': "}"}[opener]
    body = opener * depth + ("0" + closer * depth if closed else "")
    res = record_client.post("/api/v1/predict/record", content=body.encode(), headers=H)
    assert 400 <= res.status_code < 500, (depth, res.status_code, res.text[:200])
