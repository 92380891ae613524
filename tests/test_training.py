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
