import json
import re
from dataclasses import replace

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from kzlib.classify.dataset import CropDataset, cap_targets
from kzlib.classify.model import Classifier
from kzlib.classify.predict import page_logits
from kzlib.detailed import read_detailed
from kzlib.classify.train import accumulate_gradients, train
from kzlib.training import Optimisation
from kzlib.data import SEG_FP, DataError, parse_labels, read_labels_csv
from kzlib.metric import read_submission
from kzlib.pages import Page
from kzlib.runs import RunStateError
from kzlib.weights import WeightsError
from helpers import run_main, tiny_classify
from kzlib.classify.__main__ import main as classify_cli
from kzlib.metric import main as metric_cli

A, B, C = "U+3042", "U+3044", "U+3046"
TINY = tiny_classify()


def write_oof(data_dir, path, jitter_seed=0, fakes=2):
    """OOF boxes as a detector would give them: true boxes moved by a pixel or two, plus boxes on
    blank paper labelled seg_fp."""
    rng = np.random.default_rng(jitter_seed)
    rows = []
    for image_id, labels in read_labels_csv(data_dir / "train.csv").itertuples(index=False):
        codes, boxes = parse_labels(labels, image_id=image_id)
        for c, (x, y, w, h) in zip(codes, boxes):
            dx, dy = rng.integers(-1, 2, 2)
            rows.append((image_id, x + dx, y + dy, w, h, 0.9, c))
        rows += [(image_id, 3 + 12 * k, 3, 10, 10, 0.6, SEG_FP) for k in range(fakes)]
    pd.DataFrame(rows, columns=["image_id", "x", "y", "w", "h", "score", "true"]).to_csv(path, index=False)
    return path


def write_test_boxes(data_dir, path):
    rows = []
    for image_id, labels in read_labels_csv(data_dir / "test_labels.csv").itertuples(index=False):
        _, boxes = parse_labels(labels, image_id=image_id)
        rows += [(image_id, x, y, w, h, 0.9) for x, y, w, h in boxes]
    pd.DataFrame(rows, columns=["image_id", "x", "y", "w", "h", "score"]).to_csv(path, index=False)
    return path


def test_model_shapes_and_frozen_start(tmp_path):
    import timm

    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="frozen_start.*no pretrained"):
        replace(TINY, frozen_start=True)
    cfg = replace(TINY, frozen_start=True, pretrained=str(tmp_path / "r18.pth"))
    model = Classifier(cfg, n_classes=7)
    images = torch.rand(2, 3, 128, 96)
    boxes = [torch.tensor([[10.0, 10, 30, 40], [50, 60, 70, 90]]), torch.tensor([[0.0, 0, 20, 20]])]
    model.train()
    assert model(images, boxes).shape == (3, 7)
    assert model.roi_features(images, boxes).shape == (3, (128 + 256) * 9)  # layer2 + layer3, 3x3 each
    assert not model.trunk.bn1.training and not model.trunk.layer1.training and model.trunk.layer2.training
    assert not any(p.requires_grad for p in model.trunk.layer1.parameters())
    assert all(p.requires_grad for p in model.trunk.layer2.parameters())
    assert model.reductions == (8, 16)
    model.eval()
    assert model(images, [torch.zeros(0, 4), boxes[1]]).shape == (1, 7)


def test_pretrained_weights_load_from_a_local_file(tmp_path):
    import timm

    full = timm.create_model("resnet18", pretrained=False)
    torch.save(full.state_dict(), tmp_path / "r18.pth")
    model = Classifier(replace(TINY, pretrained=str(tmp_path / "r18.pth")), 3)
    assert torch.equal(model.trunk.layer3[0].conv1.weight, full.layer3[0].conv1.weight)
    with pytest.raises(WeightsError, match="nope.pth not found; put that file there yourself"):
        Classifier(replace(TINY, pretrained=str(tmp_path / "nope.pth")), 3)
    with pytest.raises(ValueError, match="unknown backbone"):
        Classifier(replace(TINY, backbone="resnet_9000"), 3)


def test_crops_keep_boxes_and_classes_aligned(tmp_path):
    rng = np.random.default_rng(0)
    page = np.full((1000, 700, 3), 255, np.uint8)
    boxes, labels = [], []
    for _ in range(80):
        x, y = int(rng.integers(0, 660)), int(rng.integers(0, 960))
        w, h = int(rng.integers(15, 40)), int(rng.integers(15, 40))
        if any(abs(x - bx) < 45 and abs(y - by) < 45 for bx, by, _, _ in boxes):
            continue
        k = len(boxes) % 4
        page[y: y + h, x: x + w] = 40 * k  # the class is written in the rectangle's grey level
        boxes.append((x, y, w, h))
        labels.append(k)
    path = tmp_path / "p.png"
    cv2.imwrite(str(path), page)
    cfg = replace(TINY, page_size=500, crop_width=192, crop_height=256, crops_per_page=15, hsv_aug=(0, 0, 0),
                  brightness_contrast=0.0, gamma_aug=(100, 100), min_visibility=0.9)
    ds = CropDataset([Page("p_1", path, np.array(boxes, float))], [np.array(labels)], cfg)
    seen = 0
    for i in range(len(ds)):
        image, b, y = ds[i]
        assert image.shape == (3, 256, 192) and len(b) == len(y)
        gray = image.mean(0).numpy() * 255
        for (x0, y0, x1, y1), k in zip(b.round().int().tolist(), y.tolist()):
            core = gray[y0 + 2: y1 - 2, x0 + 2: x1 - 2]
            assert abs(np.median(core) - 40 * k) < 12
            seen += 1
    assert seen > 30


def test_max_targets_cap_keeps_pairs_and_multiples_of_32():
    boxes = [torch.arange(n * 4, dtype=torch.float32).view(n, 4) + 1000 * i for i, n in enumerate((50, 70, 30))]
    labels = [b[:, 0].long() for b in boxes]  # a box's label is its own first coordinate
    g = torch.Generator().manual_seed(0)
    cb, cl = cap_targets(boxes, labels, 96, g)
    assert sum(len(b) for b in cb) == 96
    assert all(torch.equal(b[:, 0].long(), y) for b, y in zip(cb, cl))
    cb, _ = cap_targets(boxes, labels, 256, g)  # 150 boxes: rounded down to 128
    assert sum(len(b) for b in cb) == 128
    few = [boxes[0][:20]]
    assert cap_targets(few, [labels[0][:20]], 32, g)[0][0].shape[0] == 20  # under 32: untouched
    assert sum(len(b) for b in cap_targets(boxes, labels, 0, g)[0]) == 150  # 0: no cap
    with pytest.raises(ValueError, match="multiple of 32"):
        replace(TINY, max_targets=100)


def test_gradient_accumulation_equals_one_big_step():
    torch.manual_seed(0)
    model = Classifier(TINY, n_classes=5).eval()  # no dropout, fixed BatchNorm: the gradients must agree
    images = torch.rand(4, 3, 64, 64)
    boxes = [torch.tensor([[4.0, 4, 30, 30]] * (i + 1)) + i for i in range(4)]  # 1, 2, 3 and 4 boxes
    labels = [torch.randint(0, 5, (i + 1,)) for i in range(4)]
    opt = Optimisation(model, TINY, torch.device("cpu"), 1)  # fp32: no scaler

    def grads(micro):
        model.zero_grad()
        accumulate_gradients(model, micro, torch.device("cpu"), opt)
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    big = grads([(images, boxes, labels)])
    small = grads([(images[:1], boxes[:1], labels[:1]), (images[1:], boxes[1:], labels[1:])])
    assert len(big) == len(small)
    for a, b in zip(big, small):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_tta_averages_the_scales(tiny):
    torch.manual_seed(0)
    model = Classifier(TINY, n_classes=4).eval()
    codes, boxes = parse_labels(read_labels_csv(tiny / "train.csv")["labels"][0])
    page = Page("p", next((tiny / "train_images").iterdir()), boxes.astype(float), list(codes))
    dev = torch.device("cpu")
    a, b = page_logits(model, page, [256], dev, TINY), page_logits(model, page, [320], dev, TINY)
    both = page_logits(model, page, [256, 320], dev, TINY)
    assert both.shape == (len(boxes), 4)
    torch.testing.assert_close(both, (a + b) / 2)
    assert not torch.allclose(a, b)


def _weights(run):
    return torch.load(run / "checkpoint.pth", weights_only=False)["model"]


def test_train_resume_predict_end_to_end(tiny, tmp_path):
    oof = write_oof(tiny, tmp_path / "oof_boxes.csv")
    straight = tmp_path / "straight"
    result = train(tiny, oof, straight, TINY, fold=0)
    assert result["epochs_done"] == 2
    for name in ("config.json", "split.json", "checkpoint.pth", "best.pth", "log.csv", "curves.png"):
        assert (straight / name).exists(), name
    state = torch.load(straight / "best.pth", weights_only=False)
    classes = state["classes"]
    assert classes[-1] == SEG_FP and len(classes) == len(set(classes))
    assert len(pd.read_csv(straight / "log.csv")) == 2

    resumed = tmp_path / "resumed"
    train(tiny, oof, resumed, TINY, fold=0, max_epochs=1)
    with pytest.raises(RunStateError, match="holds a checkpoint; use --resume"):
        train(tiny, oof, resumed, TINY, fold=0)
    with pytest.raises(RunStateError, match=r"started with lr 0.01 \(asked 99.0\)"):
        train(tiny, oof, resumed, TINY, fold=0, mode="resume", given={"lr": 99.0})  # a conflicting flag
    train(tiny, oof, resumed, replace(TINY, lr=99.0), fold=0, mode="resume")  # the run keeps its own config
    a, b = _weights(straight), _weights(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    assert len(pd.read_csv(resumed / "log.csv")) == 2

    # predict through the CLI: detailed files and submissions that the metric CLI reads
    split = json.loads((straight / "split.json").read_text())
    run = ["predict", straight, tiny]
    code, _, err = run_main(classify_cli, *run, "--boxes", oof, "--split", "valid", "--n-tta", "2")
    assert code == 0, err
    detailed = read_detailed(straight / "detailed.csv.gz")
    oof_rows = pd.read_csv(oof, dtype={"image_id": str})
    assert list(detailed["image_id"].unique()) == split["val_ids"]
    assert len(detailed) == oof_rows["image_id"].isin(split["val_ids"]).sum()
    assert detailed["top_k_classes"].str.split().str.len().eq(3).all()
    logits = detailed["top_k_logits"].str.split(expand=True).astype(float).to_numpy()
    assert (np.diff(logits, axis=1) <= 0).all()  # sorted best first
    assert (detailed["pred"] == detailed["top_k_classes"].str.split().str[0]).all()
    scores = json.loads((straight / "scores.json").read_text())
    assert {"f1", "accuracy", "detector_fp", "detector_fp_removed"} <= set(scores)
    solution = read_labels_csv(tiny / "train.csv")
    solution[solution["image_id"].isin(split["val_ids"])].to_csv(tmp_path / "solution.csv", index=False)
    code, out, err = run_main(metric_cli, straight / "submission.csv", tmp_path / "solution.csv")
    assert code == 0, err
    assert json.loads(out)["f1"] == pytest.approx(scores["f1"])

    test_boxes = write_test_boxes(tiny, tmp_path / "test_boxes.csv")
    code, _, err = run_main(classify_cli, *run, "--boxes", test_boxes, "--split", "test", "--n-tta", "1",
                            "--out", tmp_path / "pred")
    assert code == 0, err
    test_detailed = read_detailed(tmp_path / "pred" / "test_detailed.csv.gz")
    assert (test_detailed["true"] == "").all() and len(test_detailed) == len(pd.read_csv(test_boxes))
    sub = read_submission(tmp_path / "pred" / "test_submission.csv")
    assert sub["image_id"].tolist() == read_labels_csv(tiny / "sample_submission.csv")["image_id"].tolist()


def test_fine_tune_from_a_checkpoint_and_its_class_list(tiny, tmp_path):
    oof = write_oof(tiny, tmp_path / "oof_boxes.csv")
    base = tmp_path / "base"
    train(tiny, oof, base, replace(TINY, epochs=1), fold=0)
    tuned = tmp_path / "tuned"
    train(tiny, oof, tuned, replace(TINY, epochs=1, init_from=str(base / "best.pth")), fold=1)
    assert torch.load(tuned / "best.pth", weights_only=False)["classes"] == \
        torch.load(base / "best.pth", weights_only=False)["classes"]
    # a class the checkpoint never saw
    df = pd.read_csv(oof, dtype=str)
    df.loc[5, "true"] = "U+9999"
    df.to_csv(tmp_path / "odd.csv", index=False)
    with pytest.raises(DataError, match=r"U\+9999 is not in the model's class list"):
        train(tiny, tmp_path / "odd.csv", tmp_path / "odd", replace(TINY, epochs=1, init_from=str(base / "best.pth")))


@pytest.mark.parametrize("change, message", [
    (lambda df: df.assign(image_id=df["image_id"].where(df.index != 3, "nope_1")), r"row 5: image 'nope_1' is not in train.csv"),
    (lambda df: df.assign(x=df["x"].where(df["image_id"] != df["image_id"][0], 90000)), r"row 2: box 90000 .* does not fit its"),
    (lambda df: df.assign(x=df["x"].where(df["image_id"] != df["image_id"][0], -df["w"] - 1)), r"row 2: every box of image .* lies outside the page"),
    (lambda df: df.assign(w=df["w"].where(df.index != 1, float("inf"))), r"row 3: w must be a finite positive number, got 'inf'"),
    (lambda df: df.assign(w=df["w"].where(df.index != 1, 1e12)), r"row 3: box .* does not fit its"),
    (lambda df: df.assign(w=df["w"].where(df.index != 0, -3)), r"row 2: w must be a finite positive number"),
    (lambda df: df.drop(columns="true"), r"missing column\(s\) true"),
])
def test_bad_boxes_files_fail_with_one_line(tiny, tmp_path, change, message):
    oof = write_oof(tiny, tmp_path / "oof_boxes.csv")
    change(pd.read_csv(oof, dtype={"image_id": str})).to_csv(tmp_path / "bad.csv", index=False)
    code, _, err = run_main(classify_cli, "train", tiny, "--boxes", tmp_path / "bad.csv", "--out", tmp_path / "run",
                            "--base", "resnet18", "--pretrained", "", "--device", "cpu")
    assert code == 1
    assert err.count("\n") == 1 and "bad.csv" in err
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()


def test_true_boxes_the_detector_missed_join_the_training_boxes():
    from kzlib.classify.train import add_missed

    truth = Page("p", None, np.array([[0, 0, 10, 10], [50, 50, 10, 10], [100, 0, 10, 10]], float), [A, B, C])
    found = Page("p", None, np.array([[1, 1, 10, 10], [200, 200, 5, 5]], float), [A, SEG_FP])
    out = add_missed(found, truth)
    assert out.codes == [A, SEG_FP, B, C]
    np.testing.assert_array_equal(out.boxes[2:], truth.boxes[1:])
    assert add_missed(Page("p", None, np.empty((0, 4)), []), truth).codes == [A, B, C]


def test_a_time_budget_chooses_the_epochs_and_keeps_the_training(tiny, tmp_path, capsys):
    oof = write_oof(tiny, tmp_path / "oof_boxes.csv")
    plain, budget = tmp_path / "plain", tmp_path / "budget"
    train(tiny, oof, plain, replace(TINY, epochs=1), fold=0)
    capsys.readouterr()
    assert train(tiny, oof, budget, replace(TINY, epochs=4, time_budget_s=0.001), fold=0)["epochs_done"] == 1
    assert "1 of the preset's 4 epochs fit" in capsys.readouterr().out
    assert json.loads((budget / "config.json").read_text())["epochs"] == 1
    a, b = _weights(plain), _weights(budget)
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
