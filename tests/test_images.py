"""Page images: formats made RGB, the reduced decode, damaged files, the pixel limit."""

import cv2
import numpy as np
import pytest
from PIL import Image

from kzlib import images
from kzlib.images import ImageError


def _write(path, img, ext_params=()):
    assert cv2.imwrite(str(path), img, list(ext_params))
    return path


def test_read_image_rgb_and_formats(tmp_path):
    rgb = np.zeros((64, 48, 3), np.uint8)
    rgb[:, :, 0] = 200  # red
    jpg = _write(tmp_path / "a.jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])
    out = images.read_image(jpg)
    assert out.dtype == np.uint8 and out.shape == (64, 48, 3)
    assert out[..., 0].mean() > 190 and out[..., 2].mean() < 10  # RGB order, not BGR

    gray = _write(tmp_path / "g.png", np.full((30, 20), 77, np.uint8))
    g = images.read_image(gray)
    assert g.shape == (30, 20, 3) and (g == 77).all()

    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[:, :5] = (0, 0, 0, 255)  # opaque black left half, transparent right half
    out = images.read_image(_write(tmp_path / "t.png", rgba))
    assert (out[:, :5] == 0).all() and (out[:, 5:] == 255).all()  # transparent -> white

    deep = _write(tmp_path / "d.png", np.full((8, 8, 3), 40000, np.uint16))
    assert images.read_image(deep).dtype == np.uint8 and images.read_image(deep).max() == 40000 >> 8


def test_read_image_reduced_decode_matches_full_decode(tmp_path):
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 255, (800, 600, 3), dtype=np.uint8), (0, 0), 6)
    path = _write(tmp_path / "p.jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    for height in (400, 200, 100, 90, 300):
        small = images.read_image(path, height=height)
        assert small.shape == (height, round(600 * height / 800), 3)
        ref = cv2.resize(images.read_image(path), small.shape[1::-1], interpolation=cv2.INTER_AREA)
        assert np.abs(small.astype(int) - ref.astype(int)).mean() < 3


def test_read_image_uses_reduced_decode_when_asked_for_half(tmp_path, monkeypatch):
    path = _write(tmp_path / "p.jpg", np.zeros((400, 300, 3), np.uint8))
    flags = []
    real = cv2.imdecode
    monkeypatch.setattr(images.cv2, "imdecode", lambda b, f: flags.append(f) or real(b, f))
    images.read_image(path, height=100)
    images.read_image(path, height=300)
    assert flags[0] & ~cv2.IMREAD_IGNORE_ORIENTATION == cv2.IMREAD_REDUCED_COLOR_4
    assert flags[1] & ~cv2.IMREAD_IGNORE_ORIENTATION == cv2.IMREAD_COLOR


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(ImageError, match="missing.jpg: no such image file"):
        images.read_image(tmp_path / "missing.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all" * 10)
    with pytest.raises(ImageError, match="bad.jpg"):
        images.read_image(bad)
    good = _write(tmp_path / "ok.jpg", np.full((200, 200, 3), 128, np.uint8))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageError, match=r"cut.jpg: damaged image \(Premature end of JPEG file\)"):
        images.read_image(cut)


def _textured_jpeg(path, shape=(600, 400)):
    rng = np.random.default_rng(0)
    return _write(path, cv2.GaussianBlur((rng.random((*shape, 3)) * 255).astype(np.uint8), (9, 9), 3))


def test_damaged_jpegs_are_caught_and_trailing_bytes_are_not(tmp_path, monkeypatch):
    good = _textured_jpeg(tmp_path / "good.jpg")
    data_ = good.read_bytes()
    zeroed = bytearray(data_)
    zeroed[len(data_) // 2: len(data_) // 2 + 2048] = bytes(2048)  # a zeroed block mid-file: the end marker survives
    (tmp_path / "zeroed.jpg").write_bytes(bytes(zeroed))
    with pytest.raises(ImageError, match=r"zeroed.jpg: damaged image \(Corrupt JPEG data"):
        images.read_image(tmp_path / "zeroed.jpg", height=150)  # the reduced decode sees it too
    (tmp_path / "trailing.jpg").write_bytes(data_ + bytes(5000) + b"trailer" * 300)  # valid, with bytes after the end
    assert images.read_image(tmp_path / "trailing.jpg").shape == (600, 400, 3)
    monkeypatch.setenv("KZLIB_MAX_PIXELS", "100000")
    with pytest.raises(ImageError, match=r"good.jpg: 400x600 = 240,000 pixels, more than the limit of 100,000"):
        images.image_size(good)
    monkeypatch.delenv("KZLIB_MAX_PIXELS")
    pillow_limit = Image.MAX_IMAGE_PIXELS
    huge = bytearray(data_)  # a header that claims 20000 x 20000 (PIL's decompression-bomb check)
    sof = huge.find(b"\xff\xc0")
    huge[sof + 5: sof + 9] = (20000).to_bytes(2, "big") * 2
    (tmp_path / "huge.jpg").write_bytes(bytes(huge))
    with pytest.raises(ImageError, match="huge.jpg: 20000x20000 = 400,000,000 pixels, more than the limit of 200,000,000"):
        images.read_image(tmp_path / "huge.jpg")
    assert Image.MAX_IMAGE_PIXELS == pillow_limit  # Pillow's own limit is back for everything else
