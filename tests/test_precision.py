"""The CUDA training logic on the CPU: fp16 autocast with GradScaler("cpu") (scaled steps, a
skipped overflow step, gradient accumulation and micro-batches equal to the whole batch), the
scaler's state saved and resumed across a change of device or precision, an out-of-memory error
as cuBLAS and cuDNN report it injected (the step's batch is cut into micro-batches, said once, kept
on resume), the detector's frozen BatchNorm and box decoding in fp16."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision

from kzlib.classify.train import accumulate_gradients, split_micro
from kzlib.data import labels_table, read_labels_csv
from kzlib.devices import Precision
from kzlib.training import Optimisation, chunks, next_split, out_of_memory
from helpers import tiny_classify, tiny_detect


ROOT = Path(__file__).resolve().parents[1]
FP16 = dict(amp_cpu=True, amp_cpu_dtype="fp16")
CLS = tiny_classify(page_size=128, test_size=128, crop_width=64, crop_height=96, hidden=16, validate_every=100,
                    add_missed_truth=False)
DET = tiny_detect(page_size=128, crop_width=96, crop_height=64, epochs=2, box_batch_per_image=32, warmup_epochs=0.0)


class BoxModel(torch.nn.Module):
    """A classifier without BatchNorm (images, boxes) -> logits per box: micro-batches then give
    exactly the gradient of the whole batch."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 5)

    def forward(self, images, boxes):
        return self.linear(torch.cat(boxes) / 64 + images.mean() * 0)


def batch(n=4, boxes_per_image=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 8, 8, generator=g)
    boxes = [torch.rand(boxes_per_image, 4, generator=g) * 64 for _ in range(n)]
    labels = [torch.randint(0, 5, (boxes_per_image,), generator=g) for _ in range(n)]
    return images, boxes, labels


def test_micro_batches_give_the_whole_batch_gradient_through_the_scaler():
    grads = {}
    for split in (1, 2, 4):
        torch.manual_seed(0)
        model = BoxModel()
        opt = Optimisation(model, replace(CLS, **FP16), torch.device("cpu"), 10)
        assert opt.scaler.is_enabled() and opt.precision.scaled
        images, boxes, labels = batch()
        accumulate_gradients(model, split_micro(images, boxes, labels, split), torch.device("cpu"), opt)
        opt.scaler.unscale_(opt.optimizer)
        grads[split] = model.linear.weight.grad.clone()
    for split in (2, 4):  # the same within fp16's rounding (the logits are fp16)
        assert torch.allclose(grads[1], grads[split], rtol=1e-2, atol=5e-4), split
    assert [len(c) for c in chunks(10, 3)] == [3, 4, 3] and [len(c) for c in chunks(2, 8)] == [1, 1]
    # a part with fewer than two boxes joins its neighbour (the head's BatchNorm needs two)
    images, boxes, labels = batch(n=3, boxes_per_image=1)
    assert [len(p[2]) for p in split_micro(images, boxes, labels, 3)] == [2, 1] or \
        [sum(len(y) for y in p[2]) for p in split_micro(images, boxes, labels, 3)] == [3]


def test_a_scaled_step_then_an_overflow_step_is_skipped_and_the_scale_lowered(capsys):
    torch.manual_seed(0)
    model = BoxModel()
    opt = Optimisation(model, replace(CLS, **FP16), torch.device("cpu"), 10)
    scale = opt.scaler.get_scale()
    images, boxes, labels = batch()
    before = model.linear.weight.detach().clone()
    accumulate_gradients(model, [(images, boxes, labels)], torch.device("cpu"), opt)
    opt.step()
    assert not torch.equal(model.linear.weight, before) and opt.scaler.get_scale() == scale
    # an fp16 forward that overflows: the step is skipped, the scale halved, the run goes on
    after_good = model.linear.weight.detach().clone()
    opt.optimizer.zero_grad()
    with torch.no_grad():
        model.linear.bias.fill_(7e4)  # beyond fp16's range: the logits overflow to inf
    loss, n, _ = accumulate_gradients(model, [(images, boxes, labels)], torch.device("cpu"), opt)
    opt.step()
    assert n == 0 and opt.skipped == 1 and opt.scaler.get_scale() == scale / 2
    assert torch.equal(model.linear.weight, after_good)
    assert "warning: training loss is" in capsys.readouterr().out
    # in fp32 (no scaler) the same is fatal, at once
    fp32 = Optimisation(model, CLS, torch.device("cpu"), 10)
    with pytest.raises(FloatingPointError, match="training loss is"):
        fp32.loss_not_finite(float("inf"), "a batch")


def test_out_of_memory_halves_the_micro_batches_then_gives_up(capsys):
    assert next_split(1, 12, torch.OutOfMemoryError("CUDA out of memory"), "fold 0: ") == 2
    out = capsys.readouterr().out
    assert "warning: fold 0: out of GPU memory at 12 crops a micro-batch; now 6 (2 micro-batches a step" in out
    assert next_split(8, 12, torch.OutOfMemoryError("x")) == 12
    with pytest.raises(Exception, match="out of GPU memory even with one crop a micro-batch"):
        next_split(12, 12, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))


def test_out_of_memory_is_torchs_error_or_a_cublas_cudnn_allocation_failure():
    assert out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    for said in ("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
                 "CUDA error: CUBLAS_STATUS_NOT_INITIALIZED when calling `cublasLtMatmul(...)`",
                 "cuDNN error: CUDNN_STATUS_NOT_INITIALIZED", "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
                 "cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED", "CUDA error: out of memory"):
        assert out_of_memory(RuntimeError(said)), said
    for said in ("cuDNN error: CUDNN_STATUS_BAD_PARAM", "CUDA error: an illegal memory access was encountered",
                 "mat1 and mat2 shapes cannot be multiplied"):
        assert not out_of_memory(RuntimeError(said)), said
    assert not out_of_memory(ValueError("CUBLAS_STATUS_ALLOC_FAILED"))


def _boxes(data: Path, path: Path) -> Path:
    t = labels_table(read_labels_csv(data / "train.csv")).rename(columns={"code": "true"}).assign(score=1.0)
    t[["image_id", "x", "y", "w", "h", "score", "true"]].to_csv(path, index=False)
    return path


def test_classifier_fp16_with_an_injected_oom_then_resumed_on_another_precision(tiny, tmp_path, monkeypatch, capsys):
    """Both ways across precision: fp32 -> fp16 (an empty scaler state into an enabled scaler used
    to crash) and fp16 -> fp32; an out-of-memory error at more than one crop a forward cuts the
    step into micro-batches, once, and the resumed run keeps that."""
    from kzlib.classify import model as cls_model
    from kzlib.classify.train import train

    boxes = _boxes(tiny, tmp_path / "b.csv")
    real = cls_model.Classifier.forward

    def small_gpu(self, images, b):  # as cuBLAS says it near full memory: a RuntimeError, not OutOfMemoryError
        if self.training and images.shape[0] > 1:
            raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
        return real(self, images, b)

    run = tmp_path / "run"
    train(tiny, boxes, run, CLS, fold=0, max_epochs=1)  # fp32, epoch 1
    assert json.loads(json.dumps(torch.load(run / "checkpoint.pth", weights_only=False)["scaler"])) == {}
    monkeypatch.setattr(cls_model.Classifier, "forward", small_gpu)
    fp16 = replace(CLS, **FP16)
    train(tiny, boxes, run, fp16, fold=0, mode="resume", given=FP16, max_epochs=1)  # raises before the fix
    out = capsys.readouterr().out
    assert "out of GPU memory at 3 crops a micro-batch; now 2" in out and "now 1 (3 micro-batches" in out
    state = torch.load(run / "checkpoint.pth", weights_only=False)
    assert state["micro_split"] == 3 and state["scaler"]["scale"] > 0 and state["epoch"] == 1
    log = pd.read_csv(run / "log.csv")
    assert log["micro_split"].tolist() == [1, 3]
    monkeypatch.setattr(cls_model.Classifier, "forward", real)
    cfg3 = replace(fp16, epochs=3)
    train(tiny, boxes, tmp_path / "run3", cfg3, fold=0, max_epochs=0)
    shutil.rmtree(tmp_path / "run3")
    # back to fp32 from the fp16 checkpoint, one more epoch: keeps the fitted split
    config = json.loads((run / "config.json").read_text())
    config["epochs"] = 3
    (run / "config.json").write_text(json.dumps(config))
    train(tiny, boxes, run, replace(CLS, epochs=3), fold=0, mode="auto")
    out = capsys.readouterr().out
    assert "3 micro-batches a step, as fitted earlier" in out
    assert pd.read_csv(run / "log.csv")["micro_split"].tolist() == [1, 3, 3]


def test_detector_fp16_two_epochs_with_an_injected_oom(tiny, tmp_path, monkeypatch, capsys):
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    from kzlib.detect.train import train

    real = GeneralizedRCNN.forward

    def small_gpu(self, images, targets=None):  # cuDNN's handle or workspace near full memory
        if self.training and len(images) > 1:
            raise RuntimeError("cuDNN error: CUDNN_STATUS_NOT_INITIALIZED")
        return real(self, images, targets)

    monkeypatch.setattr(GeneralizedRCNN, "forward", small_gpu)
    result = train(tiny, tmp_path / "det", replace(DET, **FP16), fold=0)
    assert result["epochs_done"] == 2
    out = capsys.readouterr().out
    assert "out of GPU memory at 2 crops a micro-batch; now 1 (2 micro-batches" in out
    assert "fp16 autocast + GradScaler" in out
    state = torch.load(tmp_path / "det" / "checkpoint.pth", weights_only=False)
    assert state["micro_split"] == 2 and state["scaler"]["scale"] > 0


def test_frozen_batchnorm_keeps_fp16_and_saves_less_than_fp32():
    """torchvision's frozen BatchNorm returns fp32 under fp16 autocast, so the activations between
    the convolutions are kept in fp32 as well; the kit's returns its input's dtype (ResNet-18 layer1
    and layer2: tensors saved for backward 8.4 MB in fp16 against 11.6 MB, 16.8 MB in fp32)."""
    from torchvision.ops.misc import FrozenBatchNorm2d as TorchvisionFrozen

    from kzlib.detect.model import FrozenBatchNorm2d

    def saved_bytes(norm, dtype):
        torch.manual_seed(0)
        resnet = torchvision.models.resnet18(norm_layer=norm)
        net = torch.nn.Sequential(resnet.layer1, resnet.layer2)
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t
        x = torch.rand(1, 64, 64, 64, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), Precision(torch.device("cpu"), dtype).autocast():
            out = net(x)
        return total[0], out.dtype

    fp32, _ = saved_bytes(FrozenBatchNorm2d, None)
    kit, dtype = saved_bytes(FrozenBatchNorm2d, torch.float16)
    theirs, their_dtype = saved_bytes(TorchvisionFrozen, torch.float16)
    assert dtype == torch.float16 and their_dtype == torch.float32
    assert kit <= 0.5 * fp32 and theirs > 0.65 * fp32  # saved for backward: half of fp32, against 69%


def test_detector_boxes_in_fp16_are_not_snapped_to_whole_pixels():
    """Above 1024 px fp16 has no fractions: the kit decodes boxes in fp32."""
    from kzlib.detect.model import build_model

    torch.manual_seed(0)
    model = build_model(replace(DET, score_threshold=0.0, max_detections=300)).eval()
    image = torch.rand(3, 96, 1280)
    with torch.no_grad(), Precision(torch.device("cpu"), torch.float16).autocast():
        boxes = model([image])[0]["boxes"]
    assert boxes.dtype == torch.float32
    far = boxes[boxes[:, 2] > 1040]
    assert len(far) > 10 and (far[:, 2] != far[:, 2].round()).float().mean() > 0.5
