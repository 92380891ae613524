import time

import pytest

from kzlib.training import Epochs, lr_factor


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
