import time
from dataclasses import replace

import pytest
import torch

from kzlib import fit
from kzlib.config import validates, validations
from kzlib.errors import EnvironmentProblem
from kzlib.fit import epochs_within, fit_memory
from kzlib.training import TRAINING_AUTOTUNE, Epochs, lr_factor
from test_precision import CLS, DET

CPU = torch.device("cpu")


def test_epochs_stop_before_the_deadline():
    ran = []
    epochs = Epochs(0, 5, deadline=time.time() + 0.25)
    for epoch in epochs:
        time.sleep(0.1)
        ran.append(epoch)
    assert ran == [0, 1] and epochs.stopped_early and epochs.done == 2
    epochs = Epochs(2, 4)
    assert list(epochs) == [2, 3] and not epochs.stopped_early


def test_lr_factor_warmup_then_step_or_cosine():
    kw = dict(iters_per_epoch=10, epochs=4, warmup_iters=5, steps=(2,), gamma=0.1)
    assert lr_factor(0, schedule="step", **kw) == pytest.approx(1e-3)
    assert lr_factor(5, schedule="step", **kw) == 1.0
    assert lr_factor(25, schedule="step", **kw) == pytest.approx(0.1)
    assert lr_factor(20, schedule="cosine", **kw) == pytest.approx(0.5)
    assert lr_factor(40, schedule="cosine", **kw) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor(0, schedule="linear", **kw)


def test_epochs_within_a_budget_count_training_and_validations():
    # 10 s an epoch, 5 s a validation after every epoch: 3 epochs take 45 s
    assert epochs_within(45, 8, 10, 5) == 3
    assert epochs_within(44.9, 8, 10, 5) == 2
    # validating every 4 epochs and after the last: 6 epochs = 60 s + 2 validations
    assert epochs_within(70, 8, 10, 5, validate_every=4) == 6
    assert epochs_within(1e9, 8, 10, 5) == 8  # never more than asked
    assert epochs_within(1, 8, 10, 5) == 1  # never fewer than one
    assert epochs_within(60, 8, 10, 5, validate_every=0) == 6  # no validations at all


def test_validations_every_k_epochs_and_after_the_last_or_never():
    assert [k for k in range(10) if validates(k, 10, 4)] == [3, 7, 9]
    assert [k for k in range(3) if validates(k, 3, 1)] == [0, 1, 2]
    assert not any(validates(k, 10, 0) for k in range(10))
    assert (validations(10, 4), validations(10, 10), validations(10, 0)) == (3, 1, 0)


def test_the_memory_fit_warms_up_then_finds_the_split_and_leaves_the_model_as_it_was():
    """A warm-up step in one-crop micro-batches (cuBLAS/cuDNN handles made while memory is free), then
    trial steps that run out of memory below 4 micro-batches — as torch, cuBLAS or cuDNN say it: 4
    chosen (from a checkpoint's 2 as well), the BatchNorm statistics the trials moved put back; an
    error that is not about memory goes through, and a warm-up that does not fit is one line."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tried = []
    errors = iter([torch.OutOfMemoryError("CUDA out of memory (a test)"),
                   RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")] * 2)

    def step(model, batch, opt) -> None:  # as the optimizer's step runs out (the forward's OOM the step handles)
        tried.append(opt.split)
        model(batch)  # moves the running statistics
        if opt.split < 4:
            raise next(errors)

    x = torch.randn(8, 3) * 5 + 3
    assert fit_memory(model, step, x, CLS, CPU, 8, None, "test: ") == 4 and tried == [8, 1, 2, 4]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    tried.clear()
    assert fit_memory(model, step, x, CLS, CPU, 8, {"micro_split": 2}, "test: ") == 4 and tried == [8, 2, 4]

    def broken(model, batch, opt) -> None:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        fit_memory(model, broken, x, CLS, CPU, 8, None, "test: ")

    def too_big(model, batch, opt) -> None:
        raise RuntimeError("cuDNN error: CUDNN_STATUS_NOT_INITIALIZED")

    with pytest.raises(EnvironmentProblem, match="test: out of GPU memory even with one crop a micro-batch"):
        fit_memory(model, too_big, x, CLS, CPU, 8, None, "test: ")


def test_in_a_distributed_run_the_fit_keeps_room_for_ddps_buckets(monkeypatch):
    """The model is wrapped in DDP only after the fit: the trials hold the gradient buckets' bytes."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    model[1].weight.requires_grad_(False)
    assert fit.ddp_bucket_bytes(model) == (12 + 4 + 4) * 4  # the trainable parameters, float32
    seen = []

    def holding(nbytes, device):
        seen.append(nbytes)
        return fit_held(nbytes, device)

    fit_held = fit.held
    monkeypatch.setattr(fit, "held", holding)
    fit_memory(model, lambda *_: None, None, CLS, CPU, 8, None, "")
    monkeypatch.setattr(fit.distributed, "size", lambda: 2)
    fit_memory(model, lambda *_: None, None, CLS, CPU, 8, None, "")
    assert seen == [0, 80]
    with fit.held(80, CPU) as block:
        assert block.numel() == 80


@pytest.mark.parametrize("stage", ["classify", "detect"])
def test_the_memory_fits_trial_step_includes_the_optimizer_step(stage, tiny, monkeypatch):
    """SGD's momentum buffers (0.31 GB for ResNeXt-101) are allocated at the first optimizer step:
    a trial without it fits a split that the training's first step then runs out of memory in."""
    steps = []
    real = torch.optim.SGD.step
    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, *a, **k: (steps.append(1), real(self, *a, **k))[1])
    cpu = torch.device("cpu")
    if stage == "classify":
        from functools import partial

        from kzlib.classify.dataset import CropDataset, class_index, pages_from_boxes, read_boxes
        from kzlib.classify.model import Classifier
        from kzlib.classify.train import one_batch, step
        from kzlib.data import labels_table, read_labels_csv
        from kzlib.pages import split_pages

        train_pages, _ = split_pages(tiny, 0, 3, None)
        t = labels_table(read_labels_csv(tiny / "train.csv")).rename(columns={"code": "true"}).assign(score=1.0)
        t[["image_id", "x", "y", "w", "h", "score", "true"]].to_csv(tiny / "b.csv", index=False)
        pages = pages_from_boxes(read_boxes(tiny / "b.csv", list(t["image_id"].unique()), need_true=True),
                                 [p.image_id for p in train_pages], {p.image_id: p.path for p in train_pages})
        classes = sorted({c for p in pages for c in p.codes})
        model = Classifier(CLS, len(classes), load_pretrained=False)
        cfg = CLS
        dataset = CropDataset(pages, class_index(pages, classes, "b.csv"), cfg)
        batch, step = [one_batch(dataset, cfg)], partial(step, device=cpu)
    else:
        from kzlib.detect.dataset import CropDataset
        from kzlib.detect.model import build_model
        from kzlib.detect.train import one_batch, step
        from kzlib.pages import split_pages

        cfg = replace(DET, batch_size=2)
        model = build_model(cfg, load_pretrained=False)
        batch = one_batch(CropDataset(split_pages(tiny, 0, 3, None)[0], cfg), cfg, cpu)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert fit_memory(model, step, batch, cfg, cpu, cfg.batch_size, None, "") == 1
    assert len(steps) == 2  # the warm-up's and the trial's
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # and the trials left no trace


def test_the_time_budgets_trial_steps_run_with_the_trainings_autotuner_setting():
    """The budget times the algorithms the training will run: cuDNN's autotuner as in training."""
    model = torch.nn.Linear(2, 2)
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = not TRAINING_AUTOTUNE
    seen = []
    try:
        fit.fit_budget(replace(CLS, time_budget_s=100.0, epochs=5), model,
                       lambda m, b, o: seen.append(torch.backends.cudnn.benchmark), lambda k: None, lambda: None, 0, 10,
                       CPU, 1, "")
    finally:
        torch.backends.cudnn.benchmark = before
    assert seen and all(s == TRAINING_AUTOTUNE for s in seen)
