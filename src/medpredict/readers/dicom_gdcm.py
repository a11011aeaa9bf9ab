"""A pydicom decoding plugin: 12-bit JPEG Extended frames through GDCM, for files libjpeg refuses.

pydicom's own GDCM plugin refuses JPEG Extended (1.2.840.10008.1.2.4.51) above 8 bits, and
``pylibjpeg-libjpeg`` refuses a stream whose scan header breaks the sequential-mode rules (scan
start 0, stop 63), which some old encoders wrote — the NEMA WG04 sample ``NM1_JPLY``
(pydicom's ``JPEG-lossy.dcm``) is one. GDCM's 12-bit IJG decoder reads such streams; on
pydicom's corpus its pixels are within 1 of libjpeg's decoding of the repaired file, which is
what two conforming IDCTs may differ by (``tests/test_readers_dicom_codecs.py`` checks it).

``medpredict.readers.dicom`` adds this module to pydicom's JPEG Extended decoder under the label
:data:`LABEL`, tried after every other plugin. The module follows pydicom's plugin contract
(``is_available``, ``DECODER_DEPENDENCIES`` and the frame function); nothing runs at import
beyond checking that ``gdcm`` imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydicom.uid import JPEGExtended12Bit

if TYPE_CHECKING:
    from pydicom.pixels.decoders.base import DecodeRunner

try:
    import gdcm

    HAVE_GDCM = True
except ImportError:  # python-gdcm is a core dependency, but a broken install must not break reading
    HAVE_GDCM = False

#: The plugin's label in pydicom's JPEG Extended decoder.
LABEL = "gdcm-12bit"
DECODER_DEPENDENCIES = {JPEGExtended12Bit: ("python-gdcm>=3.0.10",)}


def is_available(uid: str) -> bool:
    """Whether this plugin can decode transfer syntax ``uid`` here (pydicom's plugin contract)."""
    return HAVE_GDCM and uid == JPEGExtended12Bit


def decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """Decode one JPEG Extended frame of more than 8 bits; pydicom reshapes and sign-converts it.

    Raises:
        NotImplementedError: The frame is 8-bit (pydicom's own plugins read those).
        RuntimeError: GDCM could not decode the stream.
    """
    if runner.bits_stored <= 8:
        raise NotImplementedError("the GDCM 12-bit plugin only reads JPEG Extended above 8 bits")
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())

    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((runner.columns, runner.rows, 1))
    image.SetDataElement(element)
    kind = gdcm.PhotometricInterpretation.GetPIType(runner.photometric_interpretation)
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(kind))
    if runner.samples_per_pixel > 1:
        image.SetPlanarConfiguration(runner.planar_configuration)
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGExtendedProcess2_4))
    bits = runner.bits_stored
    image.SetPixelFormat(
        gdcm.PixelFormat(runner.samples_per_pixel, 16, bits, bits - 1, runner.pixel_representation)
    )
    runner.set_option("bits_allocated", 16)
    buffer = image.GetBuffer()
    if buffer is None:
        raise RuntimeError("GDCM could not decode the JPEG Extended stream")
    # GDCM's Python binding returns the frame's bytes as a str; this reverses that exactly.
    frame: bytes = buffer.encode("utf-8", "surrogateescape")
    return frame
