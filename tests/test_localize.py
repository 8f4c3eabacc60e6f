"""Localisation scores on hand-made cases, region files (synth, boxes, VinDr-CXR) and the two commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from chexfusion.errors import UserError
from chexfusion.explain.maps_file import read_maps
from chexfusion.explain.regions import image_size_of, model_frame_mask, read_regions
from chexfusion.explain.scores import RANDOM, Tally, energy_inside, pointing_hit, random_pointing, widened

VINDR_ROWS = """image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
9a5094b2563a1ef3ff50dc5c7ff71345,Cardiomegaly,3,R10,691.0,1375.0,1653.0,1831.0
9a5094b2563a1ef3ff50dc5c7ff71345,Cardiomegaly,3,R9,775.0,1396.0,1680.0,1879.0
9a5094b2563a1ef3ff50dc5c7ff71345,Aortic enlargement,0,R10,1264.0,743.0,1611.0,1019.0
9a5094b2563a1ef3ff50dc5c7ff71345,Nodule/Mass,8,R8,400.0,500.0,460.0,560.0
50a418190bc3fb1ef1633bf9678929b3,No finding,14,R11,,,,
"""


def test_scores_on_a_hand_made_case():
    region = np.zeros((10, 10), dtype=bool)
    region[2:4, 2:4] = True  # 4 of 100 pixels
    heat = np.zeros((10, 10))
    heat[3, 3], heat[8, 8] = 3.0, 1.0
    assert pointing_hit(heat, region) and energy_inside(heat, region) == pytest.approx(0.75)
    heat[8, 8] = 5.0  # the peak moves out of the region
    assert not pointing_hit(heat, region)
    assert pointing_hit(heat, widened(region, 7.1))  # (8, 8) is sqrt(32) ~ 5.7 px from (3, 3)
    assert not pointing_hit(heat, widened(region, 5.0))
    assert not pointing_hit(np.zeros((10, 10)), region) and energy_inside(np.zeros((10, 10)), region) == 0.0

    tally = Tally()
    tally.add("gradcam", "Nodule", 1.0, 0.75)
    tally.add("gradcam", "Nodule", 0.0, 0.25)
    tally.add("gradcam", "Mass", 1.0, 1.0)
    tally.add_random("Mass", region, widened(region, 1.0))
    summary = tally.summary()
    assert list(summary) == ["gradcam", RANDOM]
    assert summary["gradcam"]["pointing_game"] == {"overall": pytest.approx(2 / 3),
                                                  "per_class": {"Mass": 1.0, "Nodule": 0.5}}
    assert summary["gradcam"]["energy_inside"]["overall"] == pytest.approx(2 / 3)
    assert summary["gradcam"]["n"] == {"Mass": 1, "Nodule": 2}
    # a uniform random map: peak anywhere (hit rate = widened share: 4 + 8 edge neighbours), energy = area share
    assert summary[RANDOM]["pointing_game"]["overall"] == pytest.approx(12 / 100)
    assert summary[RANDOM]["energy_inside"]["overall"] == pytest.approx(4 / 100)


def test_a_coarse_map_points_from_the_centre_of_its_peak_cell_and_the_random_map_is_on_the_same_grid():
    import torch

    from chexfusion.explain.cam import upsample

    coarse = torch.zeros(4, 4)
    coarse[0, 3], coarse[2, 1] = 1.0, 0.9  # the peak in a border cell (cells of 16 px at 64 px)
    heat = upsample(coarse[None], (64, 64))[0].numpy()
    region = np.zeros((64, 64), dtype=bool)
    region[5:12, 53:60] = True  # around the peak cell's centre (8, 56)
    # bilinear upsampling holds the border cell flat over its outer half: argmax takes the plateau's first
    # pixel, (0, 56) on the image's edge, 5 px from the region, where the map says nothing in particular
    assert np.unravel_index(int(heat.argmax()), heat.shape) == (0, 56) and not pointing_hit(heat, region)
    assert pointing_hit(heat, region, (4, 4)) and not pointing_hit(heat, np.flipud(region), (4, 4))
    # a random map on the 4x4 grid peaks in each cell alike: 1 of 16 cell centres is in the region
    assert random_pointing(region, (4, 4)) == pytest.approx(1 / 16)
    assert random_pointing(region) == pytest.approx(49 / 64 ** 2)
    tally = Tally()
    tally.add_map("gradcam", "Mass", heat, region, region, (4, 4))
    tally.add_random("Mass", region, region, (4, 4))
    summary = tally.summary()
    assert summary["gradcam"]["pointing_game"]["overall"] == 1.0
    assert summary[RANDOM]["pointing_game"]["overall"] == pytest.approx(1 / 16)


class BrightnessModel:
    """A stage-1-like model whose finding is brightness anywhere: one feature channel per cell's mean (a map
    that keeps where things are), the logit their sum. Its Grad-CAM is the brightness of each cell."""

    per_image, max_images, grid = True, None, 8

    def feature_maps(self, images, views):
        import torch.nn.functional as F

        return F.avg_pool2d(images.mean(dim=1, keepdim=True), images.shape[-1] // self.grid)

    def logits_from_maps(self, maps, views):
        return maps.sum(dim=(2, 3))


@pytest.mark.parametrize("resize", ["squash", "letterbox"])
def test_a_map_and_its_region_land_in_the_same_place_through_the_demo_preprocessing(tmp_path, resize):
    """A wide image, bright only in its top-right box: read as localize reads images (squashed or letterboxed to
    the model's square input), the box's region by the same resize, the map's peak is on it, not its mirror."""
    import types

    import pandas as pd

    from chexfusion.data.images import Preprocess
    from chexfusion.explain.cam import grad_cam
    from chexfusion.explain.studies import read_unit

    pixels = np.full((64, 96), 20, dtype=np.uint8)  # height 64, width 96
    pixels[8:24, 64:88] = 250
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    pre = Preprocess(image_size=64, resize=resize)
    table = types.SimpleNamespace(frame=pd.DataFrame({"view": ["frontal"]}))
    unit = read_unit(table, [str(tmp_path / "wide.png")], [0], pre)
    heat = grad_cam(BrightnessModel(), unit.images, unit.views, 0)[0].numpy()
    size = image_size_of(tmp_path / "wide.png")
    region = model_frame_mask([("box", 64, 8, 88, 24)], size, 64, resize)
    mirrored = model_frame_mask([("box", 8, 40, 32, 56)], size, 64, resize)  # flipped both ways
    near = widened(region, 64 * 15 / 224)
    assert pointing_hit(heat, near, (8, 8)) and energy_inside(heat, region) > 0.4
    assert not pointing_hit(heat, widened(mirrored, 64 * 15 / 224), (8, 8)) and energy_inside(heat, mirrored) < 0.05
    assert unit.gray[0][region].mean() > 0.8 and unit.gray[0][mirrored].mean() < 0.2  # the region is on the box


def test_vindr_boxes_are_read_as_regions_of_the_mapped_classes(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(VINDR_ROWS)
    images = ["9a5094b2563a1ef3ff50dc5c7ff71345", "50a418190bc3fb1ef1633bf9678929b3"]
    regions = read_regions(path, images, ["Cardiomegaly", "Nodule", "Mass", "Pneumothorax"])
    first = regions.shapes[images[0]]
    assert sorted(first) == ["Cardiomegaly", "Mass", "Nodule"]  # Nodule/Mass marks both
    assert first["Cardiomegaly"] == [("box", 691.0, 1375.0, 1653.0, 1831.0), ("box", 775.0, 1396.0, 1680.0, 1879.0)]
    assert regions.classes_of(images[1]) == []
    assert regions.skipped == {"no box": 1, "label 'Aortic enlargement' maps to no class of the model": 1}
    # the two readers' boxes are united, then scaled like the image (squash to 128 px of a 2000 x 2500 image)
    mask = model_frame_mask(first["Cardiomegaly"], (2000, 2500), 128, "squash")
    ys, xs = np.nonzero(mask)
    assert xs.min() == pytest.approx(691 * 128 / 2000, abs=1) and xs.max() + 1 == pytest.approx(1680 * 128 / 2000,
                                                                                                abs=1)
    assert ys.min() == pytest.approx(1375 * 128 / 2500, abs=1) and ys.max() + 1 == pytest.approx(1879 * 128 / 2500,
                                                                                                 abs=1)
    # letterbox: the 2000-wide image is 102 px wide in the frame, centred
    boxed = model_frame_mask([("box", 0.0, 0.0, 2000.0, 2500.0)], (2000, 2500), 128, "letterbox")
    assert boxed[:, 13:115].all() and not boxed[:, :12].any() and not boxed[:, 116:].any()


def test_vindr_unknown_label_and_unknown_image_are_errors(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(VINDR_ROWS.replace("Aortic enlargement", "Dragon"))
    with pytest.raises(UserError, match="line 4.*unknown VinDr label 'Dragon'"):
        read_regions(path, ["9a5094b2563a1ef3ff50dc5c7ff71345", "50a418190bc3fb1ef1633bf9678929b3"], ["Cardiomegaly"])
    path.write_text(VINDR_ROWS)
    with pytest.raises(UserError, match="image '50a418190bc3fb1ef1633bf9678929b3' is not in the --csv"):
        read_regions(path, ["9a5094b2563a1ef3ff50dc5c7ff71345"], ["Cardiomegaly"])


def test_image_size_is_read_from_the_header(tmp_path):
    Image.new("L", (40, 30)).save(tmp_path / "a.png")
    assert image_size_of(tmp_path / "a.png") == (40, 30)


@pytest.fixture(scope="module")
def test_regions(tiny_data):
    return tiny_data / "test_regions.csv"


def test_localize_scores_every_method_on_both_stages(run_cli, tiny_data, tiny_stage1, tiny_stage2, test_regions):
    import csv
    from collections import Counter

    with open(test_regions, newline="") as f:
        common = [c for c, _ in Counter(row["class"] for row in csv.DictReader(f)).most_common(2)]
    for run in (tiny_stage1, tiny_stage2):
        code, out, err = run_cli("localize", "--model", run, "--csv", tiny_data / "test.csv", "--image-root",
                                 tiny_data, "--regions", test_regions, "--classes", ",".join(common),
                                 "--max-studies", 2, "--json")
        assert code == 0, err
        result = json.loads(out.strip().splitlines()[-1])
        assert list(result["methods"]) == ["attention", "gradcam", "groupcam", "hirescam", "random"]
        for scores in result["methods"].values():
            assert set(scores["n"]) <= set(common) and sum(scores["n"].values()) >= 2
            for key in ("pointing_game", "energy_inside"):
                assert 0 <= scores[key]["overall"] <= 1
                assert set(scores[key]["per_class"]) == set(scores["n"])
        assert result["studies"] == 2 and result["skipped"]["findings not in --classes"] > 0
        assert len(result["grid"]) == 2 and min(result["grid"]) >= 1  # the cells the pointing game reads
        assert "overall" in out


def test_region_file_naming_an_unknown_image_or_class_is_a_one_line_error(run_cli, tiny_data, tiny_stage1,
                                                                          test_regions, tmp_path):
    lines = test_regions.read_text().splitlines()
    header, first = lines[0], lines[1].split(",")
    bad_class = tiny_data / "regions-bad-class.csv"
    bad_class.write_text("\n".join([header, ",".join([first[0], "Dragon"] + first[2:])]) + "\n")
    bad_image = tiny_data / "regions-bad-image.csv"
    bad_image.write_text("\n".join([header, ",".join(["not-an-image"] + first[1:])]) + "\n")
    for path, message in ((bad_class, "class 'Dragon' is not one of the model's classes"),
                          (bad_image, "image 'not-an-image' is not in the --csv")):
        code, out, err = run_cli("localize", "--model", tiny_stage1, "--csv", tiny_data / "test.csv", "--image-root",
                                 tiny_data, "--regions", path)
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"{path} line 2" in err and message in err


def test_explain_writes_overlays_and_raw_maps(run_cli, tiny_data, tiny_stage2, tmp_path):
    import csv

    with open(tiny_data / "test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    study = rows[0]["study_id"]
    small = tmp_path / "one-study.csv"
    with open(small, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["study_id"] == study)
    n_images = sum(r["study_id"] == study for r in rows)
    out = tmp_path / "maps"
    code, _, err = run_cli("explain", "--model", tiny_stage2, "--csv", small, "--image-root", tiny_data, "--out", out,
                           "--method", "groupcam", "--method", "attention", "--top", 2)
    assert code == 0, err
    maps = read_maps(out / "maps.parquet")
    assert len(maps) == n_images * 2 * 2
    assert {m["method"] for m in maps} == {"groupcam", "attention"}
    for m in maps:
        assert m["map"].shape == (64, 64) and (m["map"] >= 0).all()
        png = out / "overlays" / m["dicom_id"] / m["method"]
        assert len(list(png.glob("*.png"))) == 2
    code, _, err = run_cli("explain", "--model", tiny_stage2, "--csv", small, "--image-root", tiny_data, "--out", out,
                           "--classes", "Dragon")
    assert code == 2 and "'Dragon' is not a class of the model" in err
