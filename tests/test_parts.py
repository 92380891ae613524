"""Predictions in resumable parts: a session that ends midway keeps the finished parts."""

import pickle
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
    assert calls == [["p0", "p1", "p2"]] and (tmp_path / "parts" / "test-00000.parquet").exists()
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


class _Payload:
    """Unpickling it opens (creates) a file: what a planted part would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_parts_hold_no_pickle_and_a_planted_or_damaged_part_runs_nothing(tmp_path):
    """Parts are parquet (data only): a pickle planted under a part's name is never unpickled, a
    damaged part is said and made again, and an older kit's .pkl parts are removed unread."""
    ids = ["a", "b", "c"]
    marker = tmp_path / "PWNED"
    rows = lambda part: pd.DataFrame({"image_id": part, "x": [1.5] * len(part), "true": [""] * len(part)})
    folder = tmp_path / "parts"
    folder.mkdir()
    parts = PagesInParts(folder, "test", ids, size=2)
    first, second = (p for p, _ in parts.parts())
    frame = rows(["a", "b"])
    frame.attrs["ids"] = ["a", "b"]
    (folder / "test-00000.pkl").write_bytes(pickle.dumps(_Payload(marker)))  # an older kit's name
    first.write_bytes(pickle.dumps(_Payload(marker)))  # a pickle under the parquet part's name
    said = []
    out = parts.run(rows, log=said.append)
    assert not marker.exists() and out["image_id"].tolist() == ids
    assert len(said) == 1 and said[0].startswith(f"warning: {first}: a damaged part") and "made again" in said[0]
    assert pd.read_parquet(first).attrs["ids"] == ["a", "b"] and second.suffix == ".parquet"
    parts.clean()
    assert not folder.exists() and not marker.exists()
