"""kzlib.pages: how crops are cut — glyph-height normalisation and log-uniform zoom — and the
page sizes inference uses with them."""

from dataclasses import replace

import cv2
import numpy as np
import pytest

from kzlib.classify.dataset import CropDataset
from kzlib.classify.predict import page_sizes
from kzlib.config import ConfigError
from kzlib.pages import Page, glyph_zoom
from helpers import tiny_classify

TINY = tiny_classify()


def _page_of_squares(path, side, n=40, size=(900, 600)):
    """A white page with ``n`` black squares of ``side`` px on a grid; their xywh boxes."""
    page = np.full((*size, 3), 255, np.uint8)
    boxes = []
    step = int(side * 1.8)
    for k in range(n):
        x, y = 10 + (k % (size[1] // step - 1)) * step, 10 + (k // (size[1] // step - 1)) * step
        if y + side >= size[0]:
            break
        page[y: y + side, x: x + side] = 0
        boxes.append((x, y, side, side))
    cv2.imwrite(str(path), page)
    return np.array(boxes, float)


def test_glyph_height_brings_every_book_to_one_glyph_size(tmp_path):
    """glyph_height: pages whose glyphs are 2x apart give crops (and inference sizes) with glyphs of
    the same size; without it they keep their 2x."""
    small, big = tmp_path / "s.png", tmp_path / "b.png"
    pages = [Page("s_1", small, _page_of_squares(small, 20)), Page("b_1", big, _page_of_squares(big, 40))]
    labels = [np.zeros(len(p.boxes), np.int64) for p in pages]
    base = replace(TINY, page_size=900, crop_width=192, crop_height=256, crops_per_page=6, scale_aug=0.0,
                   hsv_aug=(0, 0, 0), brightness_contrast=0.0, gamma_aug=(100, 100), min_visibility=0.9)

    def crop_heights(cfg):
        """Median box height in the crops of each page (crop i is cut from page i mod 2)."""
        ds = CropDataset(pages, labels, cfg)
        heights = {p.image_id: [] for p in pages}
        for i in range(len(ds)):
            b = ds.crop(i)[1]
            heights[pages[i % 2].image_id] += list(b[:, 3] - b[:, 1])
        return {k: np.median(v) for k, v in heights.items()}

    plain = crop_heights(base)
    assert plain["b_1"] == pytest.approx(2 * plain["s_1"], rel=0.1)
    normed = crop_heights(replace(base, glyph_height=30))
    assert normed["s_1"] == pytest.approx(30, rel=0.1) and normed["b_1"] == pytest.approx(30, rel=0.1)
    cfg = replace(base, test_size=900, glyph_height=30)
    assert page_sizes(pages[0], [900], cfg) == pytest.approx([900 * 1.5])
    assert page_sizes(pages[1], [900, 1000], cfg) == pytest.approx([900 * 0.75, 1000 * 0.75])
    assert page_sizes(pages[1], [900], base) == [900]


def test_glyph_zoom_limits_and_pages_without_boxes():
    assert glyph_zoom(np.empty((0, 4)), 0.5, 30) == 0.5
    assert glyph_zoom(np.array([[0, 0, 10, 60]] * 3), 0.5, 30) == 0.5
    assert glyph_zoom(np.array([[0, 0, 10, 60]]), 0.5, 0) == 0.5
    assert glyph_zoom(np.array([[0, 0, 10, 600]]), 0.5, 30) == pytest.approx(0.5 * 0.4)  # at most 2.5x smaller
    assert glyph_zoom(np.array([[0, 0, 10, 1]]), 0.5, 30) == pytest.approx(0.5 * 2.5)


def test_zoom_range_draws_magnifications_log_uniformly(tmp_path):
    path = tmp_path / "p.png"
    page = Page("p_1", path, _page_of_squares(path, 20, n=200, size=(1600, 1000)))
    cfg = replace(TINY, page_size=1600, crop_width=160, crop_height=160, crops_per_page=300, zoom_range=(0.5, 2.0),
                  hsv_aug=(0, 0, 0), brightness_contrast=0.0, gamma_aug=(100, 100), min_visibility=0.99)
    ds = CropDataset([page], [np.zeros(len(page.boxes), np.int64)], cfg)
    h = np.array([np.median(b[:, 3] - b[:, 1]) for b in (ds.crop(i)[1] for i in range(len(ds))) if len(b)])
    z = np.log(h / 20)  # log magnification: uniform in [log 0.5, log 2]
    assert z.min() > np.log(0.5) - 0.1 and z.max() < np.log(2.0) + 0.1
    assert abs(np.median(z)) < 0.15 and np.mean(z < 0) == pytest.approx(0.5, abs=0.1)
    with pytest.raises(ConfigError, match="zoom_range"):
        replace(TINY, zoom_range=(2.0, 1.0))


def test_cached_pages_give_the_same_crops_and_are_decoded_once(tmp_path, monkeypatch):
    """cache_pages: every page is decoded once per JPEG reduction, the crops are those without the
    cache, and nothing can change a cached page in place."""
    import kzlib.pages

    path = tmp_path / "p.jpg"
    boxes = _page_of_squares(tmp_path / "p.png", 20)
    cv2.imwrite(str(path), cv2.imread(str(tmp_path / "p.png")))
    pages = [Page("p_1", path, boxes)]
    labels = [np.zeros(len(boxes), np.int64)]
    cfg = replace(TINY, crops_per_page=12, scale_aug=0.2)
    decodes = []
    real = kzlib.pages.read_image
    monkeypatch.setattr(kzlib.pages, "read_image", lambda *a, **k: decodes.append(k) or real(*a, **k))
    plain = [CropDataset(pages, labels, cfg).crop(i) for i in range(12)]
    assert len(decodes) == 12
    decodes.clear()
    cached = CropDataset(pages, labels, replace(cfg, cache_pages=True))
    again = [cached.crop(i) for i in range(12)]
    assert 1 <= len(decodes) == len(cached.cache) < 12
    for (a, b, y), (a2, b2, y2) in zip(plain, again):
        assert np.array_equal(a, a2) and np.array_equal(b, b2) and np.array_equal(y, y2)
    image = next(iter(cached.cache.values()))
    with pytest.raises(ValueError, match="read-only"):
        image[0, 0] = 0
