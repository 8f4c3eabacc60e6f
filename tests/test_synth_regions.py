"""Where synth says each finding was drawn (regions.csv + masks) matches where the image shows it."""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from chexfusion.cli import main
from chexfusion.data.synth.radiograph import RadiographSpec, render
from chexfusion.data.synth.regions import REGION_COLUMNS, finding_regions


def spec_with(findings: tuple, view: str = "frontal", study: int = 7) -> RadiographSpec:
    return RadiographSpec(seed=3, patient_key=(10, study), study_key=(11, study), image_key=(14, study), view=view,
                          portable=False, sex="F", age=60.0, findings=findings, size=128)


def visible_change(spec: RadiographSpec, name: str) -> np.ndarray:
    """Pixels of the final 8-bit image that change by more than 8 grey levels when ``name`` is left out.

    The noise and exposure draws belong to the image, not to the findings, so both renders share them."""
    without = replace(spec, findings=tuple(f for f in spec.findings if f != name))
    return np.abs(render(spec).astype(int) - render(without).astype(int)) > 8


@pytest.mark.parametrize("name", ["Nodule", "Mass", "Pleural Effusion", "Cardiomegaly", "Pneumothorax"])
def test_region_covers_what_the_finding_changed_in_the_image(name):
    spec = spec_with(("Support Devices", name, "Lung Opacity"))
    regions = finding_regions(spec)
    changed = visible_change(spec, name)
    region = regions[name]
    assert changed.sum() > 0
    # what the finding visibly changed lies in its region (up to the image's blur, two pixels) ...
    near_region = ndimage.binary_dilation(region, iterations=2)
    assert (changed & ~near_region).sum() <= 0.02 * changed.sum()
    # ... and the region is not much larger than what shows (the threshold is at the noise level)
    assert region.sum() <= 4 * changed.sum() + 20
    # and the other findings' regions lie elsewhere: they are not this finding's
    other = regions["Support Devices"]
    assert (other & region).sum() < 0.5 * other.sum()


def test_a_finding_outside_its_views_has_no_region():
    frontal_only = spec_with(("Pneumothorax", "Pleural Effusion"), view="lateral")
    regions = finding_regions(frontal_only)
    assert "Pneumothorax" not in regions and "Pleural Effusion" in regions
    assert finding_regions(spec_with(())) == {}


def test_regions_csv_and_masks_match_the_dataset(tmp_path):
    out = tmp_path / "d"
    args = ["synth", "--out", str(out), "--studies", "60", "--image-size", "48", "--seed", "5",
            "--external-images", "0", "--workers", "1"]
    assert main(args) == 0
    images, regions = {}, []
    for split in ("train", "development", "test"):
        with open(out / f"{split}.csv", newline="") as f:
            split_images = {row["dicom_id"]: row for row in csv.DictReader(f)}
        with open(out / f"{split}_regions.csv", newline="") as f:
            reader = csv.DictReader(f)
            assert reader.fieldnames == REGION_COLUMNS
            split_regions = list(reader)
        assert {r["dicom_id"] for r in split_regions} <= set(split_images)  # each split's file names its images
        images.update(split_images)
        regions.extend(split_regions)
    assert len(regions) > len(images) // 2
    for region in regions:
        image = images[region["dicom_id"]]
        assert image[region["class"]] == "1"  # a drawn finding is a labelled one (no --label-noise)
        mask = np.asarray(Image.open(out / region["mask"]))
        assert mask.shape == (48, 48) and set(np.unique(mask)) <= {0, 255}
        ys, xs = np.nonzero(mask)
        box = [int(region[k]) for k in ("x_min", "y_min", "x_max", "y_max")]
        assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert int(region["area"]) == len(xs)
    # a frontal-only finding has regions on frontal images only
    ptx = [images[r["dicom_id"]]["ViewPosition"] for r in regions if r["class"] == "Pneumothorax"]
    assert ptx and not {"LATERAL", "LL"} & set(ptx)
