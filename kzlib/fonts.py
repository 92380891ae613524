"""Japanese fonts: discovery (fontconfig, then the font shipped by matplotlib-fontja), glyph
coverage and cached PIL font objects. Used by kzlib.synth (pages) and kzlib.viz (labels)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from dataclasses import dataclass

from kzlib.errors import EnvironmentProblem
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from PIL import ImageFont

DEBIAN_PACKAGES = (
    "fonts-kouzan-mouhitsu fonts-aoyagi-kouzan-t fonts-aoyagi-soseki "
    "fonts-yozvox-yozfont-antique fonts-ipaexfont-mincho"
)
FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".otc")
# A few kana and kanji every usable Japanese font covers.
_PROBE = "あいうのにしてとは人大日"


class FontError(EnvironmentProblem):
    """No usable Japanese font."""


@dataclass(frozen=True)
class Font:
    path: Path
    family: str
    typeface: str  # group key: the folder (≈ Debian package / designer); fonts in it look alike

    def __str__(self) -> str:
        return f"{self.family} ({self.path.name})"


def _fontconfig_files() -> list[tuple[str, str]]:
    if shutil.which("fc-list") is None:
        return []
    out = subprocess.run(
        ["fc-list", ":lang=ja", "--format", "%{file}\t%{family[0]}\n"],
        capture_output=True, text=True, check=False,
    ).stdout
    rows = [line.split("\t", 1) for line in out.splitlines() if "\t" in line]
    return sorted({(f, fam) for f, fam in rows if f.lower().endswith(FONT_SUFFIXES)})


def bundled_font() -> Path | None:
    """The IPAexGothic file shipped by the PyPI package matplotlib-fontja (not imported)."""
    spec = importlib.util.find_spec("matplotlib_fontja")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "fonts" / "ipaexg.ttf"
    return path if path.is_file() else None


def _candidates(paths: Sequence[str | Path] = ()) -> list[tuple[str, str]]:
    """(file, family) of the fonts given as files, else of the system's Japanese fonts, else of
    the bundled fallback; nothing read yet."""
    if paths:
        for p in map(Path, paths):
            if not p.is_file():
                raise FontError(f"{p}: no such font file")
        return [(str(p), p.stem) for p in map(Path, paths)]
    candidates = _fontconfig_files()
    if not candidates and (b := bundled_font()) is not None:
        candidates = [(str(b), "IPAexGothic")]
    return candidates


def _usable(candidates: Sequence[tuple[str, str]]):
    """Fonts of the candidates that cover common kana and kanji, each file once (symlinks
    resolved), in order, lazily: a caller that needs one reads one font's character map."""
    seen = set()
    for file, family in candidates:
        real = Path(file).resolve()
        if real in seen or not covers(real, _PROBE):
            continue
        seen.add(real)
        yield Font(real, family, real.parent.name)


def _no_font() -> FontError:
    return FontError(
        "no usable Japanese font found: install the Debian packages "
        f"{DEBIAN_PACKAGES} (apt-get install ...), or `pip install matplotlib-fontja`, "
        "or pass --font FILE"
    )


def find_fonts(paths: Sequence[str | Path] = ()) -> list[Font]:
    """Fonts given as files, else the system's Japanese fonts, else the bundled fallback.

    Fonts that resolve to the same file (symlinks) are listed once; fonts that lack common kana
    and kanji are skipped. Raises FontError with the packages to install when none is usable."""
    fonts = list(_usable(_candidates(paths)))
    if not fonts:
        raise _no_font()
    return fonts


@lru_cache(maxsize=None)
def coverage(path: Path) -> frozenset[int]:
    """Code points the font maps to a glyph."""
    from fontTools.ttLib import TTFont

    try:
        with TTFont(str(path), fontNumber=0, lazy=True) as f:
            cmap = f.getBestCmap() or {}
    except Exception as e:  # fontTools raises many kinds for a broken file
        raise FontError(f"{path}: unreadable font ({e})") from None
    return frozenset(cmap)


def covers(path: Path, chars: str) -> bool:
    try:
        cov = coverage(Path(path))
    except FontError:
        return False
    return all(ord(c) in cov for c in chars)


@lru_cache(maxsize=256)
def pil_font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size=size)


def label_font(size: int) -> ImageFont.FreeTypeFont:
    """A font to write recognised characters on pictures: the first usable Mincho or Gothic,
    else the first usable font. Reads the character maps of the fonts it tries only (one, where
    a plain font comes first), not of every installed font."""
    candidates = _candidates()
    plain = [c for c in candidates if "mincho" in c[1].lower() or "gothic" in c[1].lower()]
    font = next(_usable(plain), None) or next(_usable(candidates), None)
    if font is None:
        raise _no_font()
    return pil_font(font.path, size)
