"""Fuzzed inputs for every reader: only ``DataError`` (or a valid array) comes out, quickly, in bounded memory.

Seeds are real small files (PNG, JPEG, a synthetic and a shipped DICOM, NIfTI, npz, CSV,
the shipped kidney ARFF), mutated by hypothesis with byte flips, truncation, inserted
garbage and overwritten runs; plus hand-built headers declaring absurd dimensions, odd
dtypes and NaN/inf pixels. ``bench/fuzz_campaign.py --minutes N`` runs the same
properties far longer (and with atheris when installed).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import resource
import signal
import struct
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fixtures_images import SHARED_DATA, write_dicom, write_nifti, write_png
from medpredict.errors import DataError
from medpredict.readers import MAX_PIXELS, MAX_VOXELS, read_image
from medpredict.readers.medmnist_refs import clear_npz_cache

#: Wall-clock bound for one read of a small (< 100 KB) input.
TIME_LIMIT_S = 10.0
#: Peak Python/numpy allocation bound for one read of a small input whose header lies.
MEMORY_LIMIT = 256 * 1024 * 1024
#: Declared sizes between this and the readers' guards (MAX_PIXELS, MAX_VOXELS) are legitimately
#: decoded (up to gigabytes); the header properties skip them and test small or refused sizes.
SMALL_DECLARED = 1_000_000
#: hypothesis examples per property in the default suite; the campaign raises it.
EXAMPLES = int(os.environ.get("MEDPREDICT_FUZZ_EXAMPLES", "40"))

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # the time bound is ours (TIME_LIMIT_S), so a slow shared CPU does not flake
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=os.environ.get("MEDPREDICT_FUZZ_RANDOM") != "1",
    database=None,
)


class Hang(Exception):
    """A read ran past ``TIME_LIMIT_S``."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def _raise(signum: int, frame: Any) -> None:
        raise Hang(f"read took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


#: Bugs in the readers that fuzzing found and that are not fixed yet, each also pinned by a
#: strict xfail test below. The properties tolerate them so they keep guarding everything
#: else; when one is fixed, its xfail test passes (strict: the suite fails) and its entry here
#: should go. Empty: every bug found so far is fixed and guarded by its test.
KNOWN_BUGS: tuple[tuple[type[BaseException], str], ...] = ()


def _rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _known_bug(exc: BaseException) -> bool:
    return any(isinstance(exc, kind) and text in str(exc) for kind, text in KNOWN_BUGS)


def check_read(
    read: Callable[[], Any],
    allowed: tuple[type[BaseException], ...] = (DataError,),
    *,
    traced_limit: int | None = None,
    tolerate_known: bool = True,
) -> Any:
    """Run ``read``; fail on any exception but ``allowed``, on a hang, or on a memory blow-up.

    Memory is the growth of the process's peak resident set (real memory, what the
    kernel would kill for); ``traced_limit`` additionally bounds what Python and numpy
    *asked* for (tracemalloc), for tests about refusing before allocating.
    Returns the result, or ``None`` when an allowed error (or a known bug) came out.
    """
    before = _rss_peak()
    if traced_limit is not None:
        tracemalloc.start()
    started = time.perf_counter()
    try:
        with time_limit(TIME_LIMIT_S):
            result = read()
    except allowed:
        result = None
    except Exception as exc:
        if not (tolerate_known and _known_bug(exc)):
            raise
        result = None
    finally:
        if traced_limit is not None:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    assert time.perf_counter() - started < TIME_LIMIT_S
    grown = _rss_peak() - before
    assert grown < MEMORY_LIMIT, f"resident memory grew by {grown / 2**20:.0f} MiB"
    if traced_limit is not None:
        assert peak < traced_limit, f"allocated {peak / 2**20:.0f} MiB"
    return result


def check_image(
    path: str | Path, *, traced_limit: int | None = None, tolerate_known: bool = True, **kwargs: Any
) -> np.ndarray | None:
    """``read_image`` gives DataError or an array honouring the reader contract."""
    clear_npz_cache()
    image = check_read(lambda: read_image(path, **kwargs), traced_limit=traced_limit, tolerate_known=tolerate_known)
    if image is not None:
        assert image.dtype == np.float32
        assert image.ndim == 3 and image.shape[0] == 1, image.shape
        assert np.isfinite(image).all()
        assert image.min(initial=0.0) >= 0.0 and image.max(initial=1.0) <= 1.0
    return image


# --------------------------------------------------------------------------- seeds


def _png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


class Seeds(dict):
    """name -> (suffix, bytes); a short repr keeps hypothesis failure reports readable."""

    def __repr__(self) -> str:
        return f"Seeds({sorted(self)})"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, bytes]]:
    """name -> (suffix, bytes) of small valid files of every format."""
    root = tmp_path_factory.mktemp("seeds")
    rng = np.random.default_rng(0)
    grey = (rng.random((24, 20)) * 255).astype(np.uint8)
    rgb = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
    found = Seeds(
        {
            "png_grey": (".png", _png_bytes(grey)),
            "png_rgb16": (".png", write_png(root / "a16.png", (grey.astype(np.uint16) * 257)).read_bytes()),
            "jpeg": (".jpg", _png_bytes(rgb, "JPEG")),
        }
    )
    dicom = write_dicom(
        root / "a.dcm",
        (rng.random((20, 18)) * 4000).astype(np.uint16),
        Modality="CR",
        WindowCenter=2000,
        WindowWidth=4000,
        RescaleSlope=1,
        RescaleIntercept=-1024,
    )
    found["dicom"] = (".dcm", dicom.read_bytes())
    multi = write_dicom(root / "m.dcm", (rng.random((3, 8, 8)) * 200).astype(np.uint8), photometric="MONOCHROME1")
    found["dicom_multiframe"] = (".dcm", multi.read_bytes())
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shipped = SHARED_DATA / "dicom" / "pydicom_wheel" / name
        if shipped.is_file():
            found[name] = (".dcm", shipped.read_bytes())
    volume = rng.random((6, 5, 4)).astype(np.float32)
    found["nifti"] = (".nii", write_nifti(root / "v.nii", volume).read_bytes())
    found["nifti_gz"] = (".nii.gz", write_nifti(root / "v.nii.gz", volume).read_bytes())
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=(rng.random((3, 8, 8)) * 255).astype(np.uint8))
    found["npz"] = (".npz", buffer.getvalue())
    return found


# --------------------------------------------------------------------------- mutations


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` after 1-4 random edits: flips, truncation, insertion, overwritten runs."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(("flip", "truncate", "insert", "overwrite", "duplicate")))
        if not out:
            break
        at = draw(st.integers(0, len(out) - 1))
        if kind == "flip":
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "overwrite":
            fill = draw(st.sampled_from((b"\x00", b"\xff", b"\x7f", b"\x80")))
            out[at : at + draw(st.integers(1, 16))] = fill * draw(st.integers(1, 16))
        else:
            out[at:at] = out[at : at + draw(st.integers(1, 256))]
    return bytes(out)


def _mutated_seed_strategy(seeds: dict[str, tuple[str, bytes]], names: list[str]) -> st.SearchStrategy:
    return st.sampled_from(sorted(names)).flatmap(
        lambda name: st.tuples(st.just(seeds[name][0]), mutated(seeds[name][1]))
    )


IMAGE_SEEDS = [
    "png_grey",
    "png_rgb16",
    "jpeg",
    "dicom",
    "dicom_multiframe",
    "CT_small.dcm",
    "MR_small.dcm",
    "nifti",
    "nifti_gz",
]


@FUZZ
@given(data=st.data())
def test_mutated_image_files_give_data_error_or_a_valid_array(seeds, tmp_path, data) -> None:
    suffix, content = data.draw(_mutated_seed_strategy(seeds, [n for n in IMAGE_SEEDS if n in seeds]))
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(content)
    check_image(path)


@FUZZ
@given(data=st.data())
def test_mutated_dicom_through_read_dicom_3d(seeds, tmp_path, data) -> None:
    from medpredict.readers import read_dicom

    _, content = data.draw(_mutated_seed_strategy(seeds, ["dicom_multiframe", "dicom"]))
    path = tmp_path / "fuzz.dcm"
    path.write_bytes(content)
    result = check_read(lambda: read_dicom(path, spatial_dims=3))
    if result is not None:
        assert np.isfinite(result.pixels).all() and result.pixels.ndim == 4


def test_npz_ref_without_the_file_or_key_is_a_data_error(tmp_path) -> None:
    assert check_image(f"{tmp_path}/absent.npz::x/0") is None
    np.savez(tmp_path / "a.npz", x=np.zeros((2, 4, 4), np.uint8))
    assert check_image(f"{tmp_path}/a.npz::y/0") is None
    assert check_image(f"{tmp_path}/a.npz::x/9") is None


@FUZZ
@given(data=st.data())
def test_mutated_npz_archives(seeds, tmp_path, data) -> None:
    content = data.draw(mutated(seeds["npz"][1]))
    path = tmp_path / "fuzz.npz"
    path.write_bytes(content)
    check_image(f"{path}::x/1")


# --------------------------------------------------------------------------- hostile headers


def _png_with_header(width: int, height: int, depth: int, colour: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@FUZZ
@given(
    width=st.integers(1, 2**31 - 1),
    height=st.integers(1, 2**31 - 1),
    depth=st.sampled_from((1, 2, 4, 8, 16, 3, 0)),
    colour=st.sampled_from((0, 2, 3, 4, 6, 5)),
    idat=st.binary(max_size=256),
)
def test_png_headers_declaring_absurd_sizes(tmp_path, width, height, depth, colour, idat) -> None:
    assume(width * height <= SMALL_DECLARED or width * height > MAX_PIXELS)
    path = tmp_path / "huge.png"
    path.write_bytes(_png_with_header(width, height, depth, colour, zlib.compress(idat)))
    check_image(path)


def test_png_100000_square_with_tiny_data_is_refused_without_allocating(tmp_path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_with_header(100_000, 100_000, 8, 0, zlib.compress(b"\x00" * 100)))
    with pytest.raises(DataError, match="too large"):
        read_image(path)
    check_image(path, traced_limit=16 * 2**20)


@FUZZ
@given(
    rows=st.integers(0, 65535),
    columns=st.integers(0, 65535),
    bits=st.sampled_from((1, 8, 12, 16, 32, 0, 64)),
    samples=st.sampled_from((1, 3, 2, 0)),
    frames=st.one_of(st.none(), st.integers(0, 10**7)),
    photometric=st.sampled_from(("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "HSV")),
    signed=st.sampled_from((0, 1)),
    pixel_bytes=st.integers(0, 4096),
)
def test_dicom_headers_declaring_absurd_sizes(
    tmp_path, rows, columns, bits, samples, frames, photometric, signed, pixel_bytes
) -> None:
    import pydicom

    path = write_dicom(tmp_path / "h.dcm", np.zeros((4, 4), np.uint16))
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored = rows, columns, bits, bits
    ds.HighBit = max(0, bits - 1)
    ds.SamplesPerPixel, ds.PixelRepresentation, ds.PhotometricInterpretation = samples, signed, photometric
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.PixelData = bytes(pixel_bytes + pixel_bytes % 2)
    ds.save_as(path)
    check_image(path)


@pytest.mark.parametrize(
    "values",
    [
        np.array([np.nan, np.inf, -np.inf, 1.0] * 4, np.float32),  # FloatPixelData with every non-finite value
        np.full(16, np.nan, np.float32),  # all NaN
        np.full(16, 3.4e38, np.float32),  # the largest float32
    ],
)
def test_dicom_float_pixels_with_nan_and_inf(tmp_path, values) -> None:
    import pydicom

    path = write_dicom(tmp_path / "f.dcm", np.zeros((4, 4), np.uint16))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.FloatPixelData = values.tobytes()
    ds.save_as(path)
    check_image(path)


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("RescaleSlope", "nan"),  # rescale to NaN: refused (DataError)
        ("RescaleIntercept", "inf"),  # rescale to inf: refused (DataError)
        ("WindowWidth", "0"),  # a window of zero width
        ("WindowCenter", "nan"),  # a NaN window: ignored, percentile scaling instead
        ("VOILUTFunction", "SIGMOID"),  # sigmoid with the huge width below
    ],
)
def test_dicom_display_attributes_with_nan_inf_zero(tmp_path, attribute, value) -> None:
    pixels = (np.arange(64) * 60).reshape(8, 8).astype(np.uint16)
    extra = {"RescaleSlope": "1", "RescaleIntercept": "0", "WindowCenter": "40", "WindowWidth": "1e308"}
    extra[attribute] = value
    path = write_dicom(tmp_path / "w.dcm", pixels, **extra)
    check_image(path, tolerate_known=False)


def test_dicom_colour_without_three_samples_is_a_data_error(tmp_path) -> None:
    import pydicom

    path = write_dicom(tmp_path / "rgb1.dcm", np.zeros((8, 3), np.uint8))
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "RGB"  # colour declared, one sample per pixel stored
    ds.save_as(path)
    check_image(path, tolerate_known=False)


def test_dicom_with_an_unknown_transfer_syntax_is_a_data_error(tmp_path) -> None:
    path = write_dicom(tmp_path / "ts.dcm", np.zeros((8, 8), np.uint16))
    data = path.read_bytes().replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.9\x00")
    path.write_bytes(data)  # same length, so the file still parses; the UID names no transfer syntax
    with pytest.raises(DataError):
        read_image(path)


def test_nifti_with_a_degenerate_affine_is_a_data_error(tmp_path) -> None:
    path = write_nifti(tmp_path / "v.nii", np.ones((4, 4, 4), np.float32))
    header = bytearray(path.read_bytes())
    struct.pack_into("<hh", header, 252, 0, 1)  # qform_code 0, sform_code 1: the sform is used
    struct.pack_into("<12f", header, 280, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0)  # srow_z all zero
    path.write_bytes(bytes(header))
    with pytest.raises(DataError):
        read_image(path)


@FUZZ
@given(
    dims=st.lists(st.integers(-5, 32767), min_size=8, max_size=8),
    datatype=st.sampled_from((2, 4, 8, 16, 64, 256, 512, 768, 1024, 1280, 1536, 32, 128, 1792, 2304, 0, 9999)),
    vox_offset=st.sampled_from((352.0, 0.0, 1e9, -5.0, float("nan"))),
    slope=st.sampled_from((1.0, 0.0, float("nan"), float("inf"), -1e38)),
    gz=st.booleans(),
)
def test_nifti_headers_with_absurd_dims_and_types(tmp_path, dims, datatype, vox_offset, slope, gz) -> None:
    plane, volume = max(dims[1], 1) * max(dims[2], 1), max(dims[1], 1) * max(dims[2], 1) * max(dims[3], 1)
    assume(volume <= SMALL_DECLARED or plane > MAX_PIXELS or volume > MAX_VOXELS)
    path = write_nifti(tmp_path / "v.nii", np.ones((4, 4, 4), np.float32))
    header = bytearray(path.read_bytes())
    struct.pack_into("<8h", header, 40, *dims)
    struct.pack_into("<h", header, 70, datatype)
    struct.pack_into("<f", header, 108, vox_offset)
    struct.pack_into("<f", header, 112, slope)
    target = tmp_path / ("w.nii.gz" if gz else "w.nii")
    target.write_bytes(gzip.compress(bytes(header)) if gz else bytes(header))
    check_image(target)


def _npy_entry(shape: tuple[int, ...], dtype: str = "|u1", payload: bytes = b"\x00" * 16) -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).ljust(117) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + payload


@pytest.mark.parametrize("shape", [(10**12,), (1000, 100_000, 100_000)])
def test_npz_declaring_a_terabyte_array_is_a_data_error(tmp_path, shape) -> None:
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", _npy_entry(shape))
    check_image(f"{path}::x/0", traced_limit=64 * 2**20, tolerate_known=False)


def test_npz_object_arrays_are_refused_never_unpickled(tmp_path) -> None:
    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    np.savez(tmp_path / "obj.npz", x=np.array([Boom(), None], dtype=object))
    with pytest.raises(DataError, match="not a readable npz"):
        read_image(f"{tmp_path}/obj.npz::x/0")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "array",
    [
        np.full((2, 8, 8), np.nan, np.float32),  # all NaN
        np.array([[[np.inf, -np.inf], [0.5, np.nan]]] * 2, np.float64),  # mixed non-finite
        np.full((2, 4, 4), 65504, np.float16),  # float16 at its maximum
        np.ones((2, 4, 4), np.bool_),  # booleans
        np.full((2, 4, 4), -(2**62), np.int64),  # extreme signed integers
        np.zeros((2, 4, 4, 3), np.uint16),  # RGB
    ],
)
def test_npz_numeric_dtypes_and_non_finite_values_give_a_valid_image(tmp_path, array) -> None:
    np.savez(tmp_path / "a.npz", x=array)
    assert check_image(f"{tmp_path}/a.npz::x/1") is not None


@pytest.mark.parametrize(
    "array",
    [
        np.ones((2, 4, 4), np.complex64),  # complex
        np.zeros((2, 4, 4), dtype=[("a", "<i4"), ("b", "<f4")]),  # structured
        np.zeros((2, 4, 4), dtype="datetime64[s]"),  # datetime
    ],
)
def test_npz_non_numeric_dtypes_are_data_errors(tmp_path, array) -> None:
    np.savez(tmp_path / "a.npz", x=array)
    check_image(f"{tmp_path}/a.npz::x/1", tolerate_known=False)


def _ct_small() -> bytes:
    path = SHARED_DATA / "dicom" / "pydicom_wheel" / "CT_small.dcm"
    if not path.is_file():
        pytest.skip("CT_small.dcm is not in the shared data")
    return path.read_bytes()


def test_dicom_with_a_corrupt_vr_in_a_uid_is_a_data_error(tmp_path) -> None:
    data = bytearray(_ct_small())
    study_uid = data.index(b"\x20\x00\x0d\x00UI")  # (0020,000D) Study Instance UID, explicit VR
    data[study_uid + 4 : study_uid + 6] = b"TI"  # a VR that does not exist
    path = tmp_path / "vr.dcm"
    path.write_bytes(bytes(data))
    check_image(path, tolerate_known=False)


def test_dicom_declaring_a_huge_element_length_does_not_allocate_it(tmp_path) -> None:
    data = bytearray(_ct_small())
    version = data.index(b"OB\x00\x00\x02\x00\x00\x00")  # File Meta Information Version, length 2
    data[version + 4] = 3  # one byte longer: the parser drifts into a huge length
    path = tmp_path / "long.dcm"
    path.write_bytes(bytes(data))
    check_image(path, traced_limit=128 * 2**20)


@FUZZ
@given(
    shape=st.lists(st.integers(0, 40), min_size=0, max_size=5).map(tuple),
    dtype=st.sampled_from(("u1", "u2", "i2", "i4", "f2", "f4", "f8", "?", "U3", "S2")),
    fill=st.sampled_from((0.0, 1.0, float("nan"), float("inf"), -1.0, 300.0)),
)
def test_npz_arrays_of_any_shape(tmp_path, shape, dtype, fill) -> None:
    assume(int(np.prod(shape)) <= 200_000)  # the file itself stays small
    with np.errstate(invalid="ignore", over="ignore"):
        array = np.full(shape, fill).astype(dtype) if dtype not in ("U3", "S2") else np.full(shape, "ab", dtype)
    np.savez(tmp_path / "s.npz", x=array)
    check_image(f"{tmp_path}/s.npz::x/0")


# --------------------------------------------------------------------------- tables


@pytest.fixture(scope="module")
def table_seeds() -> dict[str, tuple[str, bytes]]:
    found = Seeds(
        {
            "csv": (".csv", b"patient_id,age,sex,chol,target\np1,63,M,233,1\np2,?,F,,0\np3,41,F,\t204,1\n"),
            "tsv": (".tsv", b"a\tb\n1\t2\n3\t?\n"),
        }
    )
    arff = SHARED_DATA / "tabular" / "uci_chronic_kidney_disease" / "chronic_kidney_disease.arff"
    if arff.is_file():
        found["arff"] = (".arff", arff.read_bytes()[:6000])  # the header and the first rows
    return found


@FUZZ
@given(data=st.data())
def test_mutated_tables_give_data_error_or_a_frame(table_seeds, tmp_path, data) -> None:
    from medpredict.records.tables import load_table, read_table

    suffix, content = data.draw(_mutated_seed_strategy(table_seeds, list(table_seeds)))
    path = tmp_path / f"t{suffix}"
    path.write_bytes(content)
    frame = check_read(lambda: read_table(path))
    if frame is not None:
        assert frame[0].shape[1] >= 1
    check_read(lambda: load_table(path))


@FUZZ
@given(text=st.text(max_size=400), suffix=st.sampled_from((".csv", ".tsv", ".arff", ".data", ".txt")))
def test_random_text_as_a_table(tmp_path, text, suffix) -> None:
    from medpredict.records.tables import load_table

    path = tmp_path / f"t{suffix}"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    check_read(lambda: load_table(path))


@pytest.mark.parametrize("text", ['""', '"",""\n""\n', ",\n,,\n"])
def test_a_table_of_empty_cells_is_a_data_error(tmp_path, text) -> None:
    from medpredict.records.tables import read_table

    path = tmp_path / "empty.csv"
    path.write_text(text)
    check_read(lambda: read_table(path), tolerate_known=False)


def test_huge_header_line_in_a_csv_stays_bounded(tmp_path) -> None:
    from medpredict.records.tables import read_table

    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"c{i}" for i in range(20_000)) + "\n" + ",".join("1" * 20_000) + "\n")
    frame = check_read(lambda: read_table(path))
    assert frame is not None and frame[0].shape == (1, 20_000)
