"""Predictions in resumable parts: a session that ends midway keeps the finished parts."""

import time

import pandas as pd
import pytest

from kzlib.runs import PagesInParts, Stopped


def test_parts_resume_and_stop_before_the_deadline(tmp_path):
    ids = [f"p{i}" for i in range(7)]
    calls = []

    def rows(part):
        calls.append(list(part))
        time.sleep(0.05)
        return pd.DataFrame({"image_id": part, "v": [i.upper() for i in part]})

    parts = PagesInParts(tmp_path / "parts", "test", ids, size=3)
    with pytest.raises(Stopped):  # the first part takes ~0.05 s, the deadline leaves less after it
        parts.run(rows, deadline=time.time() + 0.07, log=lambda *_: None)
    assert calls == [["p0", "p1", "p2"]] and (tmp_path / "parts" / "test-00000.pkl").exists()
    out = parts.run(rows)
    assert calls[1:] == [["p3", "p4", "p5"], ["p6"]]  # the finished part was not redone
    assert out["image_id"].tolist() == ids and out["v"].tolist() == [i.upper() for i in ids]
    parts.clean()
    assert not (tmp_path / "parts").exists()
    # a part made for other pages is made again
    PagesInParts(tmp_path / "parts", "test", ["x", "y", "z"], size=3).run(rows)
    calls.clear()
    PagesInParts(tmp_path / "parts", "test", ids, size=3).run(rows)
    assert calls[0] == ["p0", "p1", "p2"]
