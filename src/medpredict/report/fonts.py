"""A CJK font for Chinese pages and plots: found on the system, subset and embedded.

A Chinese report must render on any machine, including one with no CJK font (every
character a box otherwise). Pages therefore carry their own font: Noto Sans CJK SC
(Debian ``fonts-noto-cjk``, SIL Open Font Licence) subset with fontTools to exactly the
CJK characters of the page, as a base64 WOFF in an ``@font-face`` whose
``unicode-range`` limits it to those characters (Latin text keeps the reader's font).
matplotlib draws the Chinese plot texts with the same font file; the plots are PNGs, so
nothing more is embedded for them.

Without the font, :func:`font_face_css` and :func:`plot_font_family` log a warning once
and return nothing: the page is still written (it names CJK fonts the reader may have)
and the plots keep English texts, which render everywhere.

"CJK character" here means a character of East Asian width W or F (ideographs, kana,
hangul, full-width punctuation such as ``，：（）``), the same rule the tests use.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
import unicodedata
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: The family name pages and plots use for the embedded subset.
EMBEDDED_FAMILY = "medpredict CJK"
#: The face used for Simplified Chinese inside the Noto Sans CJK collection.
FACE = "Noto Sans CJK SC"
#: Where Debian, Ubuntu and Fedora put Noto Sans CJK (first found wins).
CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJKsc-Regular.otf",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc",
)
_MISSING = (
    "No CJK font found (looked for Noto Sans CJK SC; on Debian/Ubuntu: apt-get install fonts-noto-cjk). "
    "The Chinese page embeds no font and relies on the reader's; plot texts stay in English."
)


@dataclass(frozen=True)
class CjkFont:
    """A font file and the index of the Simplified Chinese face inside it (0 for a plain OTF)."""

    path: Path
    index: int


def is_cjk(char: str) -> bool:
    """True for a character of East Asian width W or F (ideographs, kana, full-width punctuation)."""
    return unicodedata.east_asian_width(char) in ("W", "F")


def cjk_characters(text: str) -> str:
    """The distinct CJK characters of ``text``, sorted by code point."""
    return "".join(sorted({c for c in text if is_cjk(c)}))


@functools.cache
def find_cjk_font() -> CjkFont | None:
    """Noto Sans CJK SC on this machine, or None (the result is cached for the process)."""
    for candidate in CANDIDATES:
        path = Path(candidate)
        if path.is_file():
            index = _face_index(path)
            if index is not None:
                return CjkFont(path, index)
    try:  # elsewhere: ask fontconfig's view as matplotlib sees it
        from matplotlib import font_manager

        found = font_manager.findfont(font_manager.FontProperties(family=FACE), fallback_to_default=False)
    except (ValueError, OSError):
        found = None
    if found:
        index = _face_index(Path(found))
        if index is not None:
            return CjkFont(Path(found), index)
    return None


def _face_index(path: Path) -> int | None:
    """The index of :data:`FACE` in a collection, 0 for a single font that is it, else None."""
    from fontTools.ttLib import TTCollection, TTFont, TTLibError

    try:
        if path.suffix.lower() == ".ttc":
            collection = TTCollection(str(path), lazy=True)
            for i, font in enumerate(collection.fonts):
                if font["name"].getDebugName(1) == FACE:
                    return i
            return None
        font = TTFont(str(path), lazy=True)
        return 0 if font["name"].getDebugName(1) == FACE else None
    except (OSError, TTLibError, KeyError):
        return None


@functools.cache
def _warn_missing() -> None:
    log.warning(_MISSING)


@functools.lru_cache(maxsize=16)
def subset_woff(characters: str) -> bytes | None:
    """The CJK font reduced to ``characters``, as WOFF bytes; None without the font.

    Layout tables (GSUB/GPOS) are dropped: horizontal Chinese needs none, and dropping
    them halves the size and the time (about 2-4 s and 100 kB for 600 characters).
    """
    font_file = find_cjk_font()
    if font_file is None:
        _warn_missing()
        return None
    from fontTools import subset
    from fontTools.ttLib import TTFont

    # bounding boxes are not recomputed: the full font's are valid for a subset, and recomputing
    # them draws every glyph (a quarter of the time)
    font = TTFont(str(font_file.path), fontNumber=font_file.index, recalcBBoxes=False)
    options = subset.Options()
    options.layout_features = []
    options.hinting = False
    options.drop_tables += ["GSUB", "GPOS", "BASE", "VORG", "vhea", "vmtx", "DSIG"]
    options.notdef_outline = True
    subsetter = subset.Subsetter(options)
    subsetter.populate(text=characters)
    subsetter.subset(font)
    font.flavor = "woff"
    buffer = io.BytesIO()
    font.save(buffer)
    return buffer.getvalue()


def _unicode_range(characters: str) -> str:
    """``U+4E00-4E03, U+4E09`` for the code points of ``characters`` (runs merged)."""
    points = sorted({ord(c) for c in characters})
    runs: list[list[int]] = []
    for point in points:
        if runs and point == runs[-1][1] + 1:
            runs[-1][1] = point
        else:
            runs.append([point, point])
    return ", ".join(f"U+{a:X}" if a == b else f"U+{a:X}-{b:X}" for a, b in runs)


def font_face_css(text: str) -> str:
    """An ``@font-face`` rule embedding the CJK characters of ``text``; ``""`` when none or no font."""
    characters = cjk_characters(text)
    if not characters:
        return ""
    woff = subset_woff(characters)
    if woff is None:
        return ""
    data = base64.b64encode(woff).decode("ascii")
    return (f'@font-face {{ font-family: "{EMBEDDED_FAMILY}"; src: url(data:font/woff;base64,{data}) '
            f'format("woff"); unicode-range: {_unicode_range(characters)}; font-display: block; }}')


@functools.cache
def plot_font_family() -> tuple[str, ...] | None:
    """matplotlib font families that draw Latin and Chinese plot texts, or None without the font.

    The font file is registered with matplotlib's font manager (once per process);
    matplotlib falls back glyph by glyph along the returned families.
    """
    font_file = find_cjk_font()
    if font_file is None:
        _warn_missing()
        return None
    from matplotlib import font_manager

    font_manager.fontManager.addfont(str(font_file.path))
    return ("DejaVu Sans", FACE)
