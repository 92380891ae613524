import cv2
import numpy as np
import pandas as pd

from helpers import run_main
from kzlib.viz import draw_labels, main as viz_cli, parse_any


def test_parse_any_tells_boxes_from_points():
    codes, c = parse_any("U+3042 1 2 3 4 U+3044 5 6 7 8 U+3046 9 10 11 12")
    assert codes == ["U+3042", "U+3044", "U+3046"] and c.shape == (3, 4)
    codes, c = parse_any("U+3042 1 2 U+3044 5 6")
    assert codes == ["U+3042", "U+3044"] and c.shape == (2, 2)
    assert parse_any(None)[1].shape == (0, 4)


def test_draw_labels_marks_the_boxes():
    img = np.full((100, 100, 3), 255, np.uint8)
    out = draw_labels(img, ["U+3042"], np.array([[10, 10, 30, 30]]))
    assert out.shape == img.shape
    assert (out[10, 20] != 255).any() and (out[60, 60] == 255).all()


def test_cli_draws_fixture_page_and_submission(tiny, tmp_path):
    image_id = pd.read_csv(tiny / "train.csv")["image_id"].iloc[0]
    out = tmp_path / "page.png"
    code, _, err = run_main(viz_cli, tiny, image_id, "--out", out, "--height", "200")
    assert code == 0, err
    assert cv2.imread(str(out)).shape[0] == 200
    sub = tmp_path / "sub.csv"
    sub.write_text(f"image_id,labels\n{image_id},U+3042 50 60\n")
    code, _, err = run_main(viz_cli, tiny, image_id, "--out", out, "--labels", sub)
    assert code == 0, err
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(f"image_id,x,y,w,h,score\n{image_id},10,10,40,40,0.9\n")
    code, _, err = run_main(viz_cli, tiny, image_id, "--out", out, "--boxes", boxes, "--height", "400")
    assert code == 0, err
    picture = cv2.imread(str(out))[:, :, ::-1]
    assert tuple(picture[10, 25]) == (0, 160, 60)  # the detector's box edge, in green
    code, _, err = run_main(viz_cli, tiny, "nope_1", "--out", tmp_path / "n.png")
    assert code == 1 and "nope_1" in err and not (tmp_path / "n.png").exists()
