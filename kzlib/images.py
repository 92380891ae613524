"""Page images, read right: headers without decoding, OpenCV's reduced JPEG decode, any mode made
RGB, damaged files caught by libjpeg's own warnings, a pixel limit, and decoding ahead in a
background thread."""

from __future__ import annotations

import faulthandler
import os
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from kzlib.errors import DataError
from kzlib.io import atomic_path


class ImageError(DataError):
    """A missing, corrupt or truncated image; the message names the file."""


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    with open_header(Path(path)) as im:
        return im.size


def jpeg_reduction(h0: int, target: int) -> int:
    """The strongest JPEG decode reduction (8, 4, 2 or 1) of a page ``h0`` rows high that keeps at
    least ``target`` rows."""
    if target <= 0:
        raise ValueError(f"height must be positive, got {target}")
    return next((f for f in (8, 4, 2) if h0 >= f * target), 1)


def read_image(path: str | Path, height: int | None = None, min_height: int | None = None) -> np.ndarray:
    """Read a page as RGB uint8 [H, W, 3]; grayscale, RGBA (composited on white), 16-bit and PNG
    handled. With ``height``, the result is resized to exactly that height (aspect kept); when
    that is at most half the original, JPEGs use OpenCV's reduced decode (1/2, 1/4, 1/8) first.
    With ``min_height`` instead, the page is only decoded at the strongest JPEG reduction that
    keeps at least that many rows, and not resized (callers that crop before resizing).
    """
    path = Path(path)
    if _prefetched is not None:
        img = _prefetched.pop((str(path), height, min_height), None)
        if img is not None:
            return img
    with open_header(path) as im:
        (w0, h0), fmt, mode = im.size, im.format, im.mode
    target = height if height is not None else min_height
    factor = 1 if target is None else jpeg_reduction(h0, target)
    simple = fmt == "JPEG" and mode in ("RGB", "L", "CMYK")
    if simple:
        flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                 8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
    else:
        flags = cv2.IMREAD_UNCHANGED
    img, messages = _decode_checked(path, flags | cv2.IMREAD_IGNORE_ORIENTATION)
    damaged = [m for m in messages if m.startswith(_DAMAGE_WORDS)]
    if damaged:
        raise ImageError(f"{path}: damaged image ({damaged[0].strip()})")
    if img is None:
        raise ImageError(f"{path}: cannot decode image")
    img = _to_rgb8(img)
    if height is not None and img.shape[0] != height:
        width = max(1, round(w0 * height / h0))
        interp = cv2.INTER_AREA if height < img.shape[0] else cv2.INTER_LINEAR
        img = cv2.resize(img, (width, height), interpolation=interp)
    return img


def max_pixels() -> int:
    """Pages larger than this many pixels are refused (``$KZLIB_MAX_PIXELS``; real scans are ~10 M)."""
    return int(os.environ.get("KZLIB_MAX_PIXELS", 200_000_000))


_PILLOW_LIMIT = threading.Lock()  # Image.MAX_IMAGE_PIXELS is process-wide; read's decoder thread opens pages too


def open_header(path: Path) -> Image.Image:
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    with _PILLOW_LIMIT:  # Pillow's own bomb check off while the header is read: the kit's limit follows
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            im = Image.open(path)
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"{path}: not a readable image ({e})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    w, h = im.size
    if w * h > max_pixels():
        im.close()
        raise ImageError(f"{path}: {w}x{h} = {w * h:,} pixels, more than the limit of {max_pixels():,} "
                         "($KZLIB_MAX_PIXELS); is this a page scan?")
    return im


# libjpeg's warnings for data it could not decode (it decodes on, filling the rest with grey)
_DAMAGE_WORDS = ("Corrupt JPEG data", "Premature end of JPEG", "JPEG datastream contains no image",
                 "Invalid JPEG file structure", "Bogus", "Unsupported marker")
# the other warnings libjpeg writes (any of them starts a line of the capture)
_LIBJPEG_WORDS = _DAMAGE_WORDS + ("Warning: unknown JFIF", "Corrupt JPEG", "Inconsistent progression", "Invalid SOS",
                                  "Unsupported JPEG process", "Application transferred", "Caution:", "Adobe APP14",
                                  "JFIF", "Ignoring", "Unknown APP", "Unknown Adobe", "Warning:", "libpng warning")
_capture = None
_real_stderr = None               # the process's stderr while fd 2 points at the capture (crash reports)
_capture_lock = threading.Lock()
_console_lock = threading.Lock()  # the C-level stderr is one per process
_prefetched: dict | None = None   # (path, height, min_height) -> image, filled by ``prefetch``


@contextmanager
def prefetch_images():
    """Inside this block, ``prefetch(path, heights)`` decodes pages in a background thread (OpenCV
    releases the GIL) and ``read_image`` takes them from there: decoding overlaps inference, and
    the images are exactly those ``read_image`` would have made. At most the pages asked for ahead
    are held."""
    global _prefetched
    from concurrent.futures import ThreadPoolExecutor

    _prefetched = {}
    pool = ThreadPoolExecutor(1, thread_name_prefix="kzlib-decode")

    def work(path: Path, heights):
        for h in heights:
            try:
                img = read_image(path, height=h)
            except Exception:  # the reader will meet the error itself, on its own thread
                return
            if _prefetched is not None:
                _prefetched[(str(path), h, None)] = img

    def ask(path: Path, heights) -> None:
        pool.submit(work, Path(path), list(heights))

    try:
        yield ask
    finally:
        pool.shutdown(wait=True)
        _prefetched = None


def _decode_checked(path: Path, flags: int) -> tuple[np.ndarray | None, list[str]]:
    """Decode the file's bytes (``cv2.imdecode``: any file name works, also one that is not UTF-8,
    which ``cv2.imread`` cannot take) with what libjpeg writes to the C-level stderr captured: a JPEG
    with damaged data (a zeroed block, a truncated file) decodes without an error, and only these
    warnings tell. Valid files with bytes after the end marker decode without warnings. While fd 2
    points at the capture, a crash report (faulthandler) goes to the real stderr, not into it."""
    global _capture
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror or e})") from None
    if data.size == 0:
        raise ImageError(f"{path}: empty file")
    with _capture_lock:
        if _capture is None:
            _capture = tempfile.TemporaryFile()
        real = console()
        sys.stderr.flush()
        saved = os.dup(2)
        _capture.seek(0)
        _capture.truncate()
        handler_was_on = faulthandler.is_enabled()
        faulthandler.enable(file=real, all_threads=True)
        try:
            os.dup2(_capture.fileno(), 2)
            img = cv2.imdecode(data, flags)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if handler_was_on:
                faulthandler.enable(file=sys.__stderr__, all_threads=True)
            else:
                faulthandler.disable()
        _capture.seek(0)
        text = _capture.read().decode("utf-8", "replace")
    messages = text.splitlines()
    others = [m for m in messages if not m.startswith(_LIBJPEG_WORDS)]
    if others:  # another thread's output that reached fd 2 while it pointed here: passed on
        console().write("\n".join(others) + "\n")
    if img is None and bytes(data[:2]) == b"\xff\xd8" and bytes(data[-2:]) != b"\xff\xd9":
        # libjpeg's file reader says so and decodes the rest as grey; from memory OpenCV gives up silently
        messages.append("Premature end of JPEG file")
    return img, messages


def console():
    """Where to write lines for the person at the console while pages may be decoding on another
    thread: the process's stderr itself (fd 2 may point at a decoder's capture for a moment)."""
    global _real_stderr
    with _console_lock:
        if _real_stderr is None:
            sys.stderr.flush()
            _real_stderr = os.fdopen(os.dup(2), "w", buffering=1)
    return _real_stderr


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """An RGB picture as a PNG, atomically (encoded in memory: any file name works)."""
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ImageError(f"{path}: could not encode the picture")
    with atomic_path(path) as tmp:
        tmp.write_bytes(png.tobytes())


def to_8bit(a: np.ndarray) -> np.ndarray:
    """Deeper pixels as 8 bits, one rule for every file type: scaled from the fewest bits that hold
    the image's largest value (at least 8), so 12-bit data in a 16-bit PNG or TIFF fills 0..255 as
    16-bit data does (``>> 8`` left it nearly black)."""
    a = np.asarray(a)
    top = int(a.max()) if a.size else 0
    bits = max(8, top.bit_length())
    if bits == 8 and a.dtype == np.uint8:
        return a
    return np.rint(a.astype(np.float64) * (255.0 / (2 ** bits - 1))).clip(0, 255).astype(np.uint8)


def frame_count(path: str | Path) -> int:
    """How many images a file holds (the pages of a multi-page TIFF); 1 for other files."""
    with open_header(Path(path)) as im:
        return int(getattr(im, "n_frames", 1) or 1)


def _to_rgb8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint16:
        img = to_8bit(img)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        alpha = img[:, :, 3:4].astype(np.float32) / 255.0
        bgr = img[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return cv2.cvtColor(np.clip(bgr + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_BGR2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
