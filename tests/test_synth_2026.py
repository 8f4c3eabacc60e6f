"""``synth --label-set cxr-lt-2026``: the demo in the CXR-LT 2026 / PadChest layout, read back by convert."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from chexfusion.data.cxr_lt import read_cxr_lt
from chexfusion.data.padchest import read_padchest, task_classes
from chexfusion.data.synth import cxr_lt_2026 as layout


def rows(path):
    return list(csv.DictReader(open(path, newline="")))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from chexfusion.cli import main

    out = tmp_path_factory.mktemp("synth2026") / "data"
    assert main(["synth", "--out", str(out), "--studies", "40", "--label-set", "cxr-lt-2026", "--image-size", "48",
                 "--workers", "1"]) == 0
    return out


def test_writes_the_challenge_files_with_the_official_class_lists(demo):
    train = rows(demo / layout.TRAIN_CSV)
    assert list(train[0]) == ["ImageID", "StudyDate_DICOM", "PatientID", *task_classes("1")]
    assert list(rows(demo / layout.TEST_CSVS["1"])[0]) == ["ImageID", "StudyDate_DICOM", "PatientID"]
    assert list(rows(demo / layout.HELD_LABELS["2"])[0])[3:] == task_classes("2")
    assert (demo / layout.CLASS_FILES["2"]).read_text().split("\n")[:6] == task_classes("2")
    assert all("E+" in r["PatientID"] for r in train)  # the lossy float form, as the challenge writes it
    removed = {r["ImageID"] for r in rows(demo / layout.REMOVAL_CSV)}
    assert removed and removed <= {r["ImageID"] for r in train}
    meta = json.loads((demo / "synth_meta.json").read_text())
    assert meta["label_set"] == "cxr-lt-2026" and meta["layout_2026"]["removed"] == len(removed)


def test_images_are_16_bit_pngs_with_12_or_10_bits_under_imagedir_folders(demo):
    metadata = rows(demo / layout.METADATA_CSV)
    for row in metadata[:12]:
        image = Image.open(demo / layout.IMAGE_FOLDER / row["ImageDir"] / row["ImageID"])
        pixels = np.asarray(image)
        assert image.mode == "I;16" and pixels.dtype == np.uint16
        bits = int(row["BitsStored_DICOM"])
        assert 2 ** (bits - 2) < pixels.max() < 2**bits
    assert {r["Projection"] for r in metadata} <= {"PA", "AP", "AP_horizontal", "L", "COSTAL", "EXCLUDE", "UNK"}
    assert {"PA", "L"} <= {r["Projection"] for r in metadata}


def test_converts_into_multi_image_studies_and_metadata_labels_agree(demo, run_cli, tmp_path):
    out = tmp_path / "train.csv"
    code, stdout, err = run_cli("convert", "--format", "cxr-lt-2026", "--labels", demo / layout.TRAIN_CSV,
                                "--padchest-metadata", demo / layout.METADATA_CSV, "--removal",
                                demo / layout.REMOVAL_CSV, "--image-root", demo / layout.IMAGE_FOLDER, "--out", out,
                                "--json")
    assert code == 0 and "not under" not in err, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    train = rows(demo / layout.TRAIN_CSV)
    assert summary["images"] == len(train) - summary["removed"] and summary["studies"] < summary["images"]
    table = read_cxr_lt(out)
    assert table.frame["view"].value_counts()["lateral"] > 0
    # PadChest's Labels lists, mapped by the shipped table, give back the challenge CSV's labels
    padchest = read_padchest(demo / layout.METADATA_CSV, task_classes("1"))
    by_id = dict(zip(padchest.frame["dicom_id"], padchest.raw_labels))
    for k, image in enumerate(table.frame["dicom_id"]):
        assert by_id[image].tolist() == table.raw_labels[k].tolist(), image
