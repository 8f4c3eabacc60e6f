"""CXR-LT 2026 / PadChest: the challenge CSV joined to PadChest's metadata (convert, inspect), ids kept as text."""

import csv
import json
import math

import pytest
from PIL import Image

from chexfusion.data.cxr_lt import read_cxr_lt
from chexfusion.data.external import read_external
from chexfusion.data.padchest import join_challenge_csv, read_padchest, task_classes, view_of_projection
from chexfusion.errors import UserError

# PadChest's metadata columns (a subset, in the file's order); ids as the real file writes them: long digit
# strings that a default pandas read turns into floats (StudyID 2.16e+44), and PatientIDs that collide as floats.
META_HEADER = ["ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "ViewPosition_DICOM",
               "Projection", "BitsStored_DICOM", "WindowCenter_DICOM", "WindowWidth_DICOM", "Report", "Labels"]
P1, P2 = "839860488694292331637988235681460987", "839860488694292331637988235681460988"  # same float64
S1, S2, S3 = "216840111366964012819207061112010306085429121", "216840111366964012819207061112010306085429122", "1E5"
META_ROWS = [
    # a two-image study: PA + lateral
    ["216840111366964012819207061112010307142602253_04-014-084.png", "0", "20140915", S1, P1, "1950",
     "POSTEROANTERIOR", "PA", "12", "2048", "4096", "cardiomegalia , derrame pleural",
     "['cardiomegaly', 'pleural effusion']"],
    ["216840111366964012819207061112010307142602254_04-014-085.png", "0", "20140915", S1, P1, "1950",
     "LATERAL", "L", "12", "2048", "4096", "cardiomegalia , derrame pleural", "['cardiomegaly', 'pleural effusion']"],
    # one-image studies, every other Projection value
    ["1.5E+3.png", "12", "20150101", S2, P2, "1960", "AP", "AP", "10", "512", "1024", "sin hallazgos", "['normal']"],
    ["0042.png", "12", "20150102", S3, P2, "1960", "AP", "AP_horizontal", "12", "2048", "4096", "",
     "['central venous catheter via jugular vein', 'unchanged']"],
    ["costal.png", "3", "20150103", "777", "555", "1970", "", "COSTAL", "12", "2048", "4096", "",
     "['callus rib fracture']"],
    ["exclude.png", "3", "20150104", "778", "555", "1970", "", "EXCLUDE", "12", "2048", "4096", "", "[]"],
    ["unk.png", "3", "20150105", "779", "556", "1970", "", "UNK", "12", "2048", "4096", "", ""],
]
CLASSES = ["Normal", "cardiomegaly", "pleural effusion"]
TRAIN_HEADER = ["ImageID", "StudyDate_DICOM", "PatientID", *CLASSES]
TRAIN_ROWS = [  # PatientID in the challenge's lossy float form
    [META_ROWS[0][0], "20140915", "8.40E+35", "0", "1", "1"],
    [META_ROWS[1][0], "20140915", "8.40E+35", "0", "1", "1"],
    ["1.5E+3.png", "20150101", "8.40E+35", "1", "0", "0"],
    ["0042.png", "20150102", "8.40E+35", "0", "0", "0"],
    ["costal.png", "20150103", "5.55E+02", "0", "0", "0"],
    ["exclude.png", "20150104", "5.55E+02", "0", "0", "0"],
    ["unk.png", "20150105", "5.56E+02", "0", "0", "0"],
]


def write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def files(tmp_path):
    root = tmp_path / "images"
    for row in META_ROWS:
        (root / row[1]).mkdir(parents=True, exist_ok=True)
        Image.new("I;16", (16, 16), 1000).save(root / row[1] / row[0])
    return {"meta": write_csv(tmp_path / "meta.csv", META_HEADER, META_ROWS),
            "train": write_csv(tmp_path / "train.csv", TRAIN_HEADER, TRAIN_ROWS),
            "root": root, "tmp": tmp_path}


def convert(run_cli, files, *extra, labels=None):
    out = files["tmp"] / "out.csv"
    code, stdout, err = run_cli("convert", "--format", "cxr-lt-2026", "--labels", labels or files["train"],
                                "--padchest-metadata", files["meta"], "--image-root", files["root"], "--out", out,
                                *extra)
    return code, stdout, err, out


def test_projection_table_decides_every_value():
    views = {p: view_of_projection(p) for p in ("PA", "AP", "AP_horizontal", "L", "COSTAL", "EXCLUDE", "UNK", "")}
    assert views == {"PA": "frontal", "AP": "frontal", "AP_horizontal": "frontal", "L": "lateral",
                     "COSTAL": "unknown", "EXCLUDE": "unknown", "UNK": "unknown", "": "unknown"}


def test_class_lists_are_the_official_ones_in_order():
    one, two = task_classes("1"), task_classes("2")
    assert len(one) == 30 and one[:3] == ["Normal", "aortic elongation", "cardiomegaly"]
    assert one[-1] == "calcified densities" and "pneumoperitoneo" in one
    assert two == ["Scoliosis", "Osteopenia", "Bulla", "Infarction", "Adenopathy", "goiter"]
    with pytest.raises(UserError, match="tasks 1 and 2"):
        task_classes("3")


def test_convert_joins_studies_views_and_exact_ids(run_cli, files):
    code, stdout, err, out = convert(run_cli, files, "--json")
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary == {"images": 7, "studies": 6, "views": {"frontal": 3, "lateral": 1, "unknown": 3},
                       "removed": 0, "unmatched": 0}
    rows = list(csv.DictReader(open(out)))
    assert [r["dicom_id"] for r in rows] == [r[0] for r in TRAIN_ROWS]
    assert rows[0]["study_id"] == rows[1]["study_id"] == S1  # never 2.1684011136696402e+44
    assert rows[2]["study_id"] == S2 and rows[3]["study_id"] == "1E5"
    assert rows[2]["subject_id"] == P2 and rows[0]["subject_id"] == P1  # the metadata's string, not 8.40E+35
    assert rows[2]["dicom_id"] == "1.5E+3.png" and rows[3]["fpath"] == "12/0042.png"
    assert [r["ViewPosition"] for r in rows] == ["PA", "L", "AP", "AP_horizontal", "COSTAL", "EXCLUDE", "UNK"]
    assert [r["Normal"] for r in rows] == ["0", "0", "1", "0", "0", "0", "0"]
    table = read_cxr_lt(out)  # reads back as an ordinary CXR-LT CSV, views and all
    assert table.classes == CLASSES
    assert table.frame["view"].tolist() == ["frontal", "lateral", "frontal", "frontal", "unknown", "unknown", "unknown"]
    assert table.frame["study_id"].nunique() == 6


def test_convert_drops_and_counts_the_removal_list(run_cli, files):
    removal = write_csv(files["tmp"] / "Removal.csv", ["ImageID"], [["0042.png"], ["unk.png"], ["not-in-labels.png"]])
    code, stdout, err, out = convert(run_cli, files, "--removal", removal, "--json")
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["removed"] == 2 and summary["images"] == 5
    assert "0042.png" not in open(out).read()


def test_unmatched_ids_are_an_error_or_kept_as_unknown_one_image_studies(run_cli, files):
    labels = write_csv(files["tmp"] / "test.csv", ["ImageID", "StudyDate_DICOM", "PatientID"],
                       [[META_ROWS[0][0], "20140915", "8.40E+35"], ["9.9E+9.png", "20160101", "1.00E+01"],
                        ["zz.png", "20160101", "1.00E+01"]])
    code, _, err, out = convert(run_cli, files, labels=labels)
    assert code == 2 and not out.exists()
    assert len(err.strip().splitlines()) == 1
    assert "2 ImageIDs not in" in err and "9.9E+9.png, zz.png" in err and "--allow-unmatched" in err
    code, stdout, err, out = convert(run_cli, files, "--allow-unmatched", "--json", labels=labels)
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary == {"images": 3, "studies": 3, "views": {"frontal": 1, "lateral": 0, "unknown": 2},
                       "removed": 0, "unmatched": 2}
    rows = list(csv.DictReader(open(out)))
    assert rows[1] == {"dicom_id": "9.9E+9.png", "subject_id": "", "study_id": "9.9E+9.png", "ViewPosition": "",
                       "fpath": "9.9E+9.png"}
    assert "not under" in err  # the unmatched images are not in the image root: said, not fatal
    assert list(rows[0]) == ["dicom_id", "subject_id", "study_id", "ViewPosition", "fpath"]  # no class columns


@pytest.mark.parametrize("case, message", [
    ("no_id", "missing required column 'ImageID'"),
    ("duplicate", "duplicate ImageID '0042.png' on line 5 and line 9"),
    ("bad_label", "line 3, column 'cardiomegaly': label value 'yes'"),
    ("meta_duplicate", "meta.csv: duplicate ImageID"),
])
def test_bad_input_is_one_line_exit_2(run_cli, files, case, message):
    rows = [list(r) for r in TRAIN_ROWS]
    header = list(TRAIN_HEADER)
    if case == "no_id":
        header[0] = "Image"
    elif case == "duplicate":
        rows.append(list(TRAIN_ROWS[3]))
    elif case == "bad_label":
        rows[1][4] = "yes"
    elif case == "meta_duplicate":
        write_csv(files["meta"], META_HEADER, META_ROWS + [META_ROWS[2]])
    labels = write_csv(files["tmp"] / "labels.csv", header, rows)
    code, _, err, _ = convert(run_cli, files, labels=labels)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_padchest_metadata_alone_is_a_labelled_set(files):
    table = read_padchest(files["meta"])
    assert table.classes == task_classes("1") + task_classes("2")
    values = dict(zip(table.classes, table.raw_labels[0].tolist()))
    assert values["cardiomegaly"] == 1 and values["pleural effusion"] == 1 and values["Normal"] == 0
    cvc = dict(zip(table.classes, table.raw_labels[3].tolist()))
    assert cvc["central venous catheter"] == 1 and cvc["Support Devices"] == 0 and cvc["cardiomegaly"] == 0
    assert dict(zip(table.classes, table.raw_labels[4].tolist()))["fracture"] == 1  # callus rib fracture
    assert table.raw_labels[5].tolist() == [0.0] * len(table.classes)  # [] : a report with no finding named
    assert all(math.isnan(v) for v in table.raw_labels[6].tolist())  # blank Labels: unlabelled
    assert table.frame["study_id"].tolist()[:3] == [S1, S1, S2]
    assert table.frame["fpath"].iat[2] == "12/1.5E+3.png"
    as_external = read_external("padchest", files["meta"], ["cardiomegaly", "Kyphosis"])
    assert as_external.raw_labels[:2].tolist() == [[1.0, 0.0], [1.0, 0.0]]


def test_inspect_reads_both_layouts(run_cli, files):
    code, out, err = run_cli("inspect", "--format", "cxr-lt-2026", "--csv", files["train"], "--image-root",
                             files["root"], "--padchest-metadata", files["meta"], "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["studies"] == 6 and report["views"] == {"frontal": 3, "lateral": 1, "unknown": 3}
    assert report["study_sizes"] == {"1": 5, "2": 1} and report["classes"]["cardiomegaly"] == 2
    code, out, err = run_cli("inspect", "--format", "padchest", "--csv", files["meta"], "--image-root",
                             files["root"], "--json")
    assert code == 0, err
    assert json.loads(out)["classes"]["central venous catheter"] == 1
    code, _, err = run_cli("inspect", "--format", "cxr-lt-2026", "--csv", files["train"], "--image-root", files["root"])
    assert code == 2 and "needs --padchest-metadata" in err


def test_join_keeps_label_blanks_and_values(files):
    rows = [list(r) for r in TRAIN_ROWS]
    rows[0][3] = ""
    labels = write_csv(files["tmp"] / "blank.csv", TRAIN_HEADER, rows)
    table = join_challenge_csv(labels, files["meta"]).table
    assert math.isnan(table.raw_labels[0, 0]) and table.raw_labels[2].tolist() == [1.0, 0.0, 0.0]
