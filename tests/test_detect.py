import json
import re
from dataclasses import replace
from functools import partial

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from kzlib.data import DataError
from kzlib.detect.config import DetectConfig
from kzlib.detect.dataset import CropDataset
from kzlib.detect.model import build_model, overlap_box_iou
from kzlib.detect.config import TestBoxRule
from kzlib.detect.predict import SEG_FP, combine_test_boxes, match_true, merge_oof, merge_test, round_boxes
from kzlib.detect.train import train
from kzlib.pages import Page, split_pages
from kzlib.runs import RunStateError
from kzlib.config import config_from_dict
from helpers import run_main, tiny_detect
from kzlib.detect.__main__ import main as detect_cli

TINY = tiny_detect(epochs=2)


def test_crops_keep_boxes_aligned(tmp_path):
    rng = np.random.default_rng(0)
    page = np.full((1000, 700, 3), 255, np.uint8)
    boxes = []
    for _ in range(60):
        x, y = int(rng.integers(0, 660)), int(rng.integers(0, 960))
        w, h = int(rng.integers(15, 40)), int(rng.integers(15, 40))
        if any(abs(x - bx) < 45 and abs(y - by) < 45 for bx, by, _, _ in boxes):
            continue
        page[y: y + h, x: x + w] = 0
        boxes.append((x, y, w, h))
    path = tmp_path / "p.jpg"
    cv2.imwrite(str(path), page, [cv2.IMWRITE_JPEG_QUALITY, 98])
    cfg = replace(TINY, page_size=500, crop_width=256, crop_height=192, crops_per_page=20, scale_aug=0.3)
    ds = CropDataset([Page("p_1", path, np.array(boxes))], cfg)
    n_boxes = 0
    for i in range(len(ds)):
        image, target = ds[i]
        gray = image.mean(0).numpy()
        inside = np.zeros_like(gray, dtype=bool)
        for x0, y0, x1, y1 in target["boxes"].round().int().tolist():
            assert gray[y0:y1, x0:x1].mean() < 0.35  # the box sits on its dark rectangle
            inside[y0:y1, x0:x1] = True
            n_boxes += 1
        # dark pixels that no box covers: only rectangles cut by the crop (min_visibility) and edges
        assert (gray[~inside] < 0.3).mean() < 0.03
    assert n_boxes > 20


def test_crops_are_reproducible_per_epoch_and_index(tiny):
    train_pages, _ = split_pages(tiny, 0, 3)
    ds = CropDataset(train_pages, TINY)
    a, b = ds[1], ds[1]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], a[0])


def test_match_rule():
    gt = np.array([[0, 0, 10, 10], [20, 0, 10, 10]])
    codes = ["U+3042", "U+3044"]
    pred = np.array([
        [1, 0, 10, 10],    # IoU 0.82 with box 0
        [0, 0, 10, 4],     # IoU 0.4: none
        [18, 0, 10, 10],   # overlaps box 1 most
        [50, 50, 5, 5],    # nothing
    ])
    assert match_true(pred, gt, codes) == ["U+3042", SEG_FP, "U+3044", SEG_FP]
    assert match_true(pred, np.empty((0, 4)), []) == [SEG_FP] * 4
    assert match_true(np.empty((0, 4)), gt, codes) == []
    # exactly 0.5 counts
    assert match_true(np.array([[0, 0, 10, 5]]), gt[:1], codes[:1]) == ["U+3042"]


def test_split_pages_errors_and_the_by_page_fallback(tiny):
    # 3 books in 5 folds: the folds are made by page, so fold 4 still holds out a page
    tr, va = split_pages(tiny, 4, 5)
    assert len(va) == 1 and len(tr) == 5
    with pytest.raises(DataError, match="fold 5 is outside 0..4"):
        split_pages(tiny, 5, 5)
    with pytest.raises(DataError, match="6 labelled pages cannot fill 7 folds"):
        split_pages(tiny, 0, 7)
    with pytest.raises(DataError, match="not in train.csv: nope"):
        split_pages(tiny, 0, 5, ["nope"])
    ids = pd.read_csv(tiny / "train.csv")["image_id"].tolist()
    tr, va = split_pages(tiny, 0, 5, ids[:1])
    assert [p.image_id for p in va] == ids[:1] and len(tr) == len(ids) - 1


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="unknown key"):
        config_from_dict(DetectConfig, {"backbone": "resnet18", "bakcbone": "x"})
    with pytest.raises(ValueError, match="backbone"):
        DetectConfig(backbone="vgg16")


def test_empty_page_trains(tmp_path):
    path = tmp_path / "e.jpg"
    cv2.imwrite(str(path), np.full((300, 200, 3), 230, np.uint8))
    from kzlib.detect.model import build_model, overlap_box_iou

    ds = CropDataset([Page("e_1", path, np.empty((0, 4)))], TINY)
    image, target = ds[0]
    assert target["boxes"].shape == (0, 4)
    model = build_model(TINY).train()
    losses = model([image], [target])
    sum(losses.values()).backward()
    assert losses["loss_box_reg"].item() == 0.0


def _params(run):
    return torch.load(run / "checkpoint.pth", weights_only=False)


def test_resume_continues_exactly(trained_detector, tmp_path):
    tiny, straight = trained_detector  # two epochs of TINY on fold 0, straight through
    split = tmp_path / "b"
    train(tiny, split, TINY, fold=0, max_epochs=1)  # "killed" after epoch 1
    with pytest.raises(RunStateError, match="--resume"):
        train(tiny, split, TINY, fold=0)
    train(tiny, split, TINY, fold=0, mode="resume")
    a, b = _params(straight), _params(split)
    assert a["epoch"] == b["epoch"] == 1
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), atol=1e-6), k
    la, lb = pd.read_csv(straight / "log.csv"), pd.read_csv(split / "log.csv")
    assert la["epoch"].tolist() == lb["epoch"].tolist() == [0, 1]
    assert np.allclose(la["loss"], lb["loss"])
    assert (straight / "curves.png").stat().st_size > 0


def test_train_predict_cli_end_to_end(tiny, tmp_path):
    run = tmp_path / "run"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"backbone": "resnet18", "fpn_channels": 16, "pretrained": "", "page_side": "height", "page_size": 256, "crop_width": 160,
                               "crop_height": 128, "crops_per_page": 1, "batch_size": 2, "workers": 0,
                               "anchor_sizes": [8, 16, 32, 64, 128], "device": "cpu", "score_threshold": 0.0}))
    cli = lambda *a: run_main(detect_cli, *a)
    code, _, err = cli("train", tiny, "--fold", "1", "--n-folds", "3", "--out", run, "--config", cfg, "--epochs", "1")
    assert code == 0, err
    saved = json.loads((run / "config.json").read_text())
    assert saved["epochs"] == 1 and saved["fpn_channels"] == 16  # flag over file over defaults
    split = json.loads((run / "split.json").read_text())
    code, _, err = cli("predict", run, tiny, "--split", "oof")
    assert code == 0, err
    oof = pd.read_csv(run / "oof_boxes.csv", dtype={"image_id": str})
    assert list(oof.columns) == ["image_id", "x", "y", "w", "h", "score", "true"]
    assert set(oof["image_id"]) <= set(split["val_ids"]) and len(oof) > 0
    classes = set(pd.read_csv(tiny / "unicode_translation.csv")["Unicode"]) | {SEG_FP}
    assert set(oof["true"]) <= classes
    code, _, err = cli("predict", run, tiny, "--split", "test", "--out", tmp_path / "t.csv")
    assert code == 0, err
    test = pd.read_csv(tmp_path / "t.csv", dtype={"image_id": str})
    assert list(test.columns) == ["image_id", "x", "y", "w", "h", "score"]
    assert set(test["image_id"]) <= set(pd.read_csv(tiny / "sample_submission.csv")["image_id"])

    # a corrupt test image: one-line error naming the file, nothing written
    bad = sorted((tiny / "test_images").iterdir())[0]
    bad.write_bytes(b"broken")
    code, _, err = cli("predict", run, tiny, "--split", "test", "--out", tmp_path / "t2.csv")
    assert code == 1 and bad.name in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t2.csv").exists()


def _fake_run(path, val_ids, data_dir, rows):
    path.mkdir()
    (path / "split.json").write_text(json.dumps({"val_ids": val_ids, "data_dir": str(data_dir), "fold": 0, "n_folds": 2,
                                                 "val_images_given": True, "train_ids": []}))
    pd.DataFrame(rows, columns=["image_id", "x", "y", "w", "h", "score", "true"]).to_csv(path / "oof_boxes.csv", index=False)


def test_merge_oof_checks_every_page_once(tiny, tmp_path):
    ids = pd.read_csv(tiny / "train.csv")["image_id"].tolist()
    _fake_run(tmp_path / "r0", ids[:3], tiny, [[ids[0], 1, 2, 3, 4, 0.9, "U+3042"]])
    _fake_run(tmp_path / "r1", ids[3:], tiny, [[ids[4], 1, 2, 3, 4, 0.8, SEG_FP], [ids[5], 1, 2, 3, 4, 0.7, SEG_FP]])
    df = merge_oof([tmp_path / "r0", tmp_path / "r1"], tmp_path / "all.csv")
    assert len(df) == 3 and pd.read_csv(tmp_path / "all.csv").shape == (3, 7)
    with pytest.raises(DataError, match="held out by no run"):
        merge_oof([tmp_path / "r0"], tmp_path / "x.csv")
    _fake_run(tmp_path / "r2", ids[2:4], tiny, [])
    with pytest.raises(DataError, match="held out by several runs"):
        merge_oof([tmp_path / "r0", tmp_path / "r1", tmp_path / "r2"], tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_init_from_another_run(trained_detector, tmp_path):
    tiny, first = trained_detector
    warm = tmp_path / "warm"
    train(tiny, warm, replace(TINY, init_from=str(first / "checkpoint.pth"), epochs=1), fold=0)
    loss = lambda run: pd.read_csv(run / "log.csv")["loss"].iloc[0]
    assert loss(warm) < loss(first)  # starts where the first run ended, not from scratch
    with pytest.raises(ValueError, match="cannot start from this checkpoint"):
        train(tiny, tmp_path / "bad", replace(TINY, fpn_channels=32, init_from=str(first / "checkpoint.pth")), fold=0)


def test_boxes_that_round_to_no_width_or_height_are_dropped(tmp_path):
    """An untrained detector at 192 px wrote a box of w=0.0 into test_boxes.csv, which the
    classifier then refused: the boxes files hold no box without a width and a height."""
    xywh = np.array([[10, 10, 0.04, 8], [10, 10, 5, 6], [3, 3, 7, 0.0], [1, 1, 0.06, 0.06], [2, 2, 4, -1]])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], dtype=np.float32)
    boxes, kept = round_boxes(xywh, scores)
    assert boxes.tolist() == [[10, 10, 5, 6], [1, 1, 0.1, 0.1]] and kept.tolist() == pytest.approx([0.8, 0.6])
    assert combine_test_boxes([(xywh, scores)], TestBoxRule("fold0"))[0].tolist() == boxes.tolist()
    pd.DataFrame({"image_id": "p", "x": [1.0, 5.0], "y": [1.0, 5.0], "w": [0.0, 3.0], "h": [4.0, 3.0],
                  "score": [0.9, 0.8]}).to_csv(tmp_path / "t.csv", index=False)  # as an older kit wrote it
    assert merge_test([tmp_path / "t.csv"], tmp_path / "m.csv", TestBoxRule("fold0"))["w"].tolist() == [3.0]


@pytest.mark.parametrize("match", ["centre", "iou"])
def test_vote_boxes_keeps_majority_clusters_and_averages_them(match):
    from kzlib.detect.predict import vote_boxes

    vote_boxes = partial(vote_boxes, match=match)
    a = np.array([[10, 10, 20, 20], [100, 100, 20, 20], [300, 300, 10, 10]], float)
    b = np.array([[12, 10, 20, 20], [100, 102, 20, 20]], float)
    c = np.array([[10, 12, 20, 20], [500, 500, 10, 10]], float)
    s = [np.array([0.9, 0.8, 0.7]), np.array([0.6, 0.9]), np.array([0.9, 0.5])]
    boxes, scores = vote_boxes([a, b, c], s, min_votes=2)
    order = np.argsort(boxes[:, 0])
    np.testing.assert_allclose(boxes[order], [[32 / 3, 32 / 3, 20, 20], [100, 101, 20, 20]])
    np.testing.assert_allclose(scores[order], [(0.9 + 0.6 + 0.9) / 3, (0.8 + 0.9) / 3])
    assert len(vote_boxes([a, b, c], s, min_votes=1)[0]) == 4  # every cluster
    assert len(vote_boxes([a, np.empty((0, 4)), c], [s[0], np.empty(0), s[2]], min_votes=3)[0]) == 0
    one, _ = vote_boxes([a], [s[0]], 1)
    np.testing.assert_array_equal(one, a)


def test_the_centre_vote_takes_two_folds_boxes_of_one_glyph_as_one():
    """Two folds' boxes of one glyph that overlap by less than IoU 0.5 (one box the glyph's top
    half) were kept both by the IoU vote: the metric then counts the second as a false positive."""
    from kzlib.detect.predict import vote_boxes

    f0 = np.array([[0, 0, 20, 40], [0, 50, 20, 20], [200, 200, 20, 40], [200, 205, 20, 20],
                   [300, 300, 20, 20], [300, 318, 20, 20], [400, 400, 10, 10]], float)
    f1 = np.array([[0, 0, 20, 18], [0, 72, 20, 20], [300, 305, 20, 24], [400, 400, 40, 40]], float)
    s0, s1 = np.array([0.9, 0.9, 0.9, 0.8, 0.8, 0.9, 0.9]), np.array([0.7, 0.9, 0.5, 0.5])
    boxes, scores = vote_boxes([f0, f1], [s0, s1], min_votes=1, match="centre")
    got = {tuple(b): sc for b, sc in zip(boxes.tolist(), scores.tolist())}
    assert len(got) == 8
    assert got[(0, 0, 20, 29)] == pytest.approx((0.9 + 0.7) / 2)  # one glyph: the mean of both boxes
    assert (0, 50, 20, 20) in got and (0, 72, 20, 20) in got  # neighbours: neither centre inside the other
    assert (200, 200, 20, 40) in got and (200, 205, 20, 20) in got  # one detector's boxes are never merged
    assert (300, 302.5, 20, 22) in got and (300, 318, 20, 20) in got  # the nearest of two candidate glyphs
    assert (400, 400, 25, 25) in got  # the first box's centre inside the later one's is enough
    assert len(vote_boxes([f0, f1], [s0, s1], min_votes=1, match="iou")[0]) == 10  # IoU 0.45: both kept
    assert len(vote_boxes([f0, f1], [s0, s1], min_votes=2, match="centre")[0]) == 3
    with pytest.raises(ValueError, match="'center' is not one of centre, iou"):
        vote_boxes([f0, f1], [s0, s1], min_votes=1, match="center")


def test_merge_test_votes_by_iou_unless_told_centres(tmp_path):
    boxes = lambda rows: pd.DataFrame(rows, columns=["x", "y", "w", "h", "score"]).assign(image_id="p")
    boxes([[0, 0, 20, 40, 0.9], [0, 50, 20, 20, 0.8]]).to_csv(tmp_path / "f0.csv", index=False)
    boxes([[0, 0, 20, 18, 0.7]]).to_csv(tmp_path / "f1.csv", index=False)  # the top half of glyph 1: IoU 0.45
    for flags, n in [([], 3), (["--test-match", "centre"], 2)]:
        code, out, err = run_main(detect_cli, "merge-test", tmp_path / "f0.csv", tmp_path / "f1.csv",
                                  "--out", tmp_path / "m.csv", "--test-votes", "1", *flags)
        assert code == 0 and f"{n} boxes of 1 pages" in out, err
        assert len(pd.read_csv(tmp_path / "m.csv")) == n


def test_a_time_budget_chooses_the_epochs_and_keeps_the_training(tiny, tmp_path, capsys):
    """A budget too small for more than one epoch: one epoch, said on the console and recorded; the
    timing steps leave no trace (the same weights as a one-epoch run); asked again, the run is done."""
    plain, budget = tmp_path / "plain", tmp_path / "budget"
    train(tiny, plain, replace(TINY, epochs=1), fold=0)
    asked = replace(TINY, epochs=3, time_budget_s=0.001)
    capsys.readouterr()
    assert train(tiny, budget, asked, fold=0)["epochs_done"] == 1
    assert re.search(r"time budget 0 s: a step takes [\d.]+ s here \(\d+ steps an epoch\), a validation \d+ s: "
                     r"1 of the preset's 3 epochs fit", capsys.readouterr().out)
    saved = json.loads((budget / "config.json").read_text())
    assert saved["epochs"] == 1 and saved["time_budget_s"] == 0.001
    a, b = _params(plain)["model"], _params(budget)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    train(tiny, budget, asked, fold=0, mode="auto")
    assert len(pd.read_csv(budget / "log.csv")) == 1


def test_validate_every_skips_the_validations_between(tiny, tmp_path):
    """validate_every=2 over 3 epochs: validated after the second and the last, not the first."""
    train(tiny, tmp_path / "run", replace(TINY, epochs=3, validate_every=2), fold=0)
    log = pd.read_csv(tmp_path / "run" / "log.csv")
    assert log["f1"].isna().tolist() == [True, False, False]


def test_validate_every_0_never_validates_and_keeps_the_last_epoch(tiny, tmp_path):
    """validate_every=0 (the demo: its held-out pages are scored by detect-oof anyway): no
    validation in any epoch, and best.pth is the last epoch's model, as a run without held-out pages."""
    run = tmp_path / "run"
    train(tiny, run, replace(TINY, epochs=2, validate_every=0), fold=0)
    log = pd.read_csv(run / "log.csv")
    assert len(log) == 2 and ("f1" not in log or log["f1"].isna().all())
    best, last = torch.load(run / "best.pth", weights_only=False), _params(run)
    assert best["epoch"] == last["epoch"] == 1
    for k in last["model"]:
        torch.testing.assert_close(best["model"][k], last["model"][k], msg=k)


def test_roi_sampling_ratio_reaches_the_box_head():
    """The box head's roi_align takes the config's sampling points (torchvision's 2 by default, as
    upstream and the demo; 1 is the measured cheaper option)."""
    assert build_model(TINY).roi_heads.box_roi_pool.sampling_ratio == 2
    assert build_model(replace(TINY, roi_sampling_ratio=1)).roi_heads.box_roi_pool.sampling_ratio == 1


class _GlyphsOf54px:
    """A stand-in detector for a page whose glyphs are 54 px high (of 1000): on an input of height H
    it finds 10 boxes of 54 H / 1000 px (scores 0.9) and 10 small ones (scores 0.2), and notes H."""

    def __init__(self):
        self.heights = []

    def __call__(self, images):
        h = images[0].shape[1]
        self.heights.append(h)
        g = 54 * h / 1000
        sure = [[10.0, 10 + 60 * i * h / 1000, 10 + g, 10 + 60 * i * h / 1000 + g] for i in range(10)]
        faint = [[100.0, 10.0 + 5 * i, 104.0, 14.0 + 5 * i] for i in range(10)]
        return [{"boxes": torch.tensor(sure + faint, dtype=torch.float32),
                 "scores": torch.tensor([0.9] * 10 + [0.2] * 10)}]


def test_glyph_height_reads_a_page_again_at_the_size_of_its_glyphs(tmp_path):
    """With glyph_height, a page whose glyphs are larger than the training books' is read a second
    time so that its boxes' median (above the score threshold) is glyph_height pixels high; boxes
    come back in page pixels either way. Off, or with too few sure boxes, one pass at page_size."""
    from kzlib.detect.predict import detect_page
    path = tmp_path / "p.jpg"
    cv2.imwrite(str(path), np.full((1000, 700, 3), 255, np.uint8))
    cfg = replace(TINY, page_size=800, page_side="height", score_threshold=0.5, device="cpu")
    cpu = torch.device("cpu")

    model = _GlyphsOf54px()
    xywh, scores = detect_page(model, path, replace(cfg, glyph_height=23.0), cpu)
    assert model.heights == [800, 426]  # 1000 * 23 / 54
    assert np.median(xywh[scores >= 0.5, 3]) == pytest.approx(54, abs=0.2)  # page pixels

    model = _GlyphsOf54px()
    detect_page(model, path, replace(cfg, glyph_height=0.0), cpu)
    assert model.heights == [800]
    model = _GlyphsOf54px()
    detect_page(model, path, replace(cfg, glyph_height=43.0), cpu)  # 54 * 0.8 = 43.2: less than 5% to move
    assert model.heights == [800]
    model = _GlyphsOf54px()
    detect_page(model, path, replace(cfg, glyph_height=23.0, score_threshold=0.95), cpu)  # no sure box
    assert model.heights == [800]


def test_glyph_height_scales_training_pages_by_their_true_boxes(tiny):
    train_pages, _ = split_pages(tiny, 0, 3)
    ds = CropDataset(train_pages, replace(TINY, glyph_height=20.0))
    assert ds.scales == pytest.approx([20.0 / np.median(p.boxes[:, 3]) for p in train_pages])
    assert CropDataset(train_pages, TINY).scales != ds.scales


def boxes_of(rows):
    t = torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)
    return torch.cat([t[:, :2], t[:, :2] + t[:, 2:]], 1)  # x y w h -> x1 y1 x2 y2


# coordinates on a coarse grid as well as anywhere: boxes that share edges, touch, repeat
coord = st.one_of(st.integers(0, 60).map(float), st.floats(0, 60, width=32))
size = st.one_of(st.integers(0, 40).map(float), st.floats(0, 90, width=32))
xywh = st.tuples(coord, coord, size, size)


@settings(max_examples=200, deadline=None)
@given(st.lists(xywh, max_size=12), st.lists(xywh, max_size=60))
def test_overlap_box_iou_is_torchvisions_bit_for_bit(rows1, rows2):
    b1, b2 = boxes_of(rows1), boxes_of(rows2)
    got, want = overlap_box_iou(b1, b2), box_iou(b1, b2)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert torch.equal(got.nan_to_num(-1.0), want.nan_to_num(-1.0))  # zero-area boxes: 0/0 alike


def test_overlap_box_iou_on_anchors_and_odd_input():
    """The RPN's case (a crop's anchors, 5 sizes, against its characters), float64, and the input it
    hands to torchvision (not finite, negative widths, no height, half precision, not on the CPU)."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * torch.tensor([512.0, 384.0])
    chars = torch.cat([xy, xy + 8 + torch.rand(300, 2, generator=g) * 40], 1)
    rpn = build_model(tiny_detect(), load_pretrained=False).rpn  # its anchors on a 512x384 crop, levels 4-64 px
    feats = [torch.zeros(1, 1, 384 // s, 512 // s) for s in (4, 8, 16, 32, 64)]
    anchors = rpn.anchor_generator(ImageList(torch.zeros(1, 3, 384, 512), [(384, 512)]), feats)[0]
    want = box_iou(chars, anchors)
    assert (want > 0).sum() > 10_000 and torch.equal(overlap_box_iou(chars, anchors), want)
    assert torch.equal(overlap_box_iou(chars.double(), anchors.double()), box_iou(chars.double(), anchors.double()))
    odd = chars[:5].clone()
    odd[0, 2] = odd[0, 0] - 3  # negative width
    odd[1, 1] = float("nan")
    odd[2, 3] = odd[2, 1]  # no height
    for a, b in [(odd, anchors), (chars.half(), anchors.half())]:
        assert torch.equal(overlap_box_iou(a, b).nan_to_num(-1.0), box_iou(a, b).nan_to_num(-1.0))
    meta = overlap_box_iou(chars.to("meta"), anchors.to("meta"))  # off the CPU: torchvision's, untouched
    assert meta.device.type == "meta" and meta.shape == want.shape
    assert overlap_box_iou(chars[:0], anchors).shape == (0, len(anchors))
    assert overlap_box_iou(chars, anchors[:0]).shape == (len(chars), 0)


def test_detector_matches_anchors_with_overlap_box_iou():
    """The detector's RPN uses it, and a training step's losses equal those with torchvision's
    box_iou exactly."""
    model = build_model(TINY)
    assert model.rpn.box_similarity is overlap_box_iou
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 192, 256, generator=g) for _ in range(2)]
    xy = torch.rand(40, 2, generator=g) * 150
    targets = [{"boxes": torch.cat([xy[k::2], xy[k::2] + 12 + torch.rand(20, 2, generator=g) * 20], 1),
                "labels": torch.ones(20, dtype=torch.int64)} for k in range(2)]
    losses = []
    for similarity in (overlap_box_iou, box_iou):
        model.rpn.box_similarity = similarity
        torch.manual_seed(0)
        model.train()
        losses.append({k: v.item() for k, v in model(images, targets).items()})
    assert losses[0] == losses[1]
