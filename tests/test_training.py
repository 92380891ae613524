import time

import pytest

from kzlib.training import Epochs, epochs_within, lr_factor


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


def test_the_memory_fit_finds_the_split_and_leaves_the_model_as_it_was():
    """Trial steps that run out of memory below 4 micro-batches: 4 chosen (from a checkpoint's 2 as
    well), the BatchNorm statistics the trials moved put back."""
    import torch

    from kzlib.training import fit_memory_split

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tried = []

    def step(split: int) -> None:
        tried.append(split)
        model(torch.randn(8, 3) * 5 + 3)  # moves the running statistics
        if split < 4:
            raise torch.OutOfMemoryError("CUDA out of memory (a test)")

    assert fit_memory_split(model, step, 8, None, torch.device("cpu"), "test: ") == 4 and tried == [1, 2, 4]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    tried.clear()
    assert fit_memory_split(model, step, 8, {"micro_split": 2}, torch.device("cpu"), "test: ") == 4 and tried == [2, 4]
