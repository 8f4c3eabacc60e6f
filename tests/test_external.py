"""External sets for self-training: NIH, CheXpert and VinDr-CXR mapped onto the project's classes."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from chexfusion.data.classes import label_set, zero_shot_classes
from chexfusion.data.external import (
    EXTERNAL_FORMATS,
    labelled_classes,
    read_chexpert,
    read_external,
    read_nih,
    read_vindr,
)
from chexfusion.data.padchest import task_classes
from chexfusion.errors import UserError
from chexfusion.resources import read_table

NAN = math.nan
# A project class list with classes every source labels, some only one does, the normal class, and one nobody has.
CLASSES = ["Cardiomegaly", "Pleural Effusion", "Pleural Thickening", "Nodule", "Mass", "Lung Opacity",
           "Support Devices", "Normal", "Fracture", "Kyphosis"]


def labels_of(table, row):
    """{class: value} of one row, NaN kept as the string 'nan' so dicts compare."""
    return {c: ("nan" if math.isnan(v) else v) for c, v in zip(table.classes, table.raw_labels[row].tolist())}


def write(path, text):
    path.write_text(text)
    return path


# ---- NIH ---------------------------------------------------------------------------------------------------

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
NIH_ROWS = [
    "00000001_000.png,Cardiomegaly|Effusion,0,1,58,M,PA,2682,2749,0.143,0.143",
    "00000001_001.png,No Finding,1,1,58,M,AP,2894,2729,0.143,0.143",
    "00000002_000.png,Pleural_Thickening,0,2,81,F,PA,2500,2048,0.168,0.168",
]


def test_nih_multi_label_no_finding_and_unlabelled_classes(tmp_path):
    table = read_nih(write(tmp_path / "Data_Entry_2017.csv", "\n".join([NIH_HEADER, *NIH_ROWS]) + "\n"), CLASSES)
    assert table.classes == CLASSES
    unknown = {c: "nan" for c in ("Lung Opacity", "Support Devices", "Fracture", "Kyphosis")}
    # Cardiomegaly|Effusion: both positive, every other NIH finding negative, a finding rules out Normal.
    assert labels_of(table, 0) == {"Cardiomegaly": 1.0, "Pleural Effusion": 1.0, "Pleural Thickening": 0.0,
                                   "Nodule": 0.0, "Mass": 0.0, "Normal": 0.0, **unknown}
    # No Finding: NIH's 14 findings negative; Normal unknown (NIH does not label devices, fractures, ...).
    assert labels_of(table, 1) == {"Cardiomegaly": 0.0, "Pleural Effusion": 0.0, "Pleural Thickening": 0.0,
                                   "Nodule": 0.0, "Mass": 0.0, "Normal": "nan", **unknown}
    assert labels_of(table, 2)["Pleural Thickening"] == 1.0
    frame = table.frame
    assert frame["dicom_id"].tolist() == ["00000001_000.png", "00000001_001.png", "00000002_000.png"]
    assert frame["fpath"].tolist()[0] == "images/00000001_000.png"
    assert frame["subject_id"].tolist() == ["1", "1", "2"]
    assert frame["study_id"].tolist() == ["1_0", "1_1", "2_0"]
    assert frame["ViewPosition"].tolist() == ["PA", "AP", "PA"] and set(frame["view"]) == {"frontal"}
    assert table.line_of(2) == 4


def test_nih_default_classes_are_its_fourteen_findings_and_trailing_commas_are_read(tmp_path):
    # The released Data_Entry_2017.csv ends every line with a comma.
    text = "\n".join(line + "," for line in [NIH_HEADER, *NIH_ROWS]) + "\n"
    table = read_nih(write(tmp_path / "Data_Entry_2017.csv", text))
    assert len(table.classes) == 14 and "Pleural Effusion" in table.classes and "Effusion" not in table.classes
    assert table.positives()[table.classes.index("Pleural Effusion")] == 1
    assert not np.isnan(table.raw_labels).any()


@pytest.mark.parametrize("labels, fragment", [("Cardiomegaly|Effusionn", "unknown NIH label 'Effusionn'"),
                                              ("No Finding|Mass", "'No Finding' together with findings")])
def test_nih_bad_labels_name_the_line(tmp_path, labels, fragment):
    rows = [*NIH_ROWS, f"00000003_000.png,{labels},0,3,40,F,PA,2500,2048,0.168,0.168"]
    csv = write(tmp_path / "Data_Entry_2017.csv", "\n".join([NIH_HEADER, *rows]) + "\n")
    with pytest.raises(UserError, match="line 5") as info:
        read_nih(csv)
    assert fragment in str(info.value)


def test_nih_missing_column_and_duplicate_image_are_refused(tmp_path):
    with pytest.raises(UserError, match="missing required column 'View Position'"):
        read_nih(write(tmp_path / "a.csv", "Image Index,Finding Labels,Patient ID\nx.png,Mass,1\n"))
    csv = write(tmp_path / "b.csv", "\n".join([NIH_HEADER, NIH_ROWS[0], NIH_ROWS[0]]) + "\n")
    with pytest.raises(UserError, match="duplicate Image Index '00000001_000.png' on line 2 and line 3"):
        read_nih(csv)


# ---- CheXpert ----------------------------------------------------------------------------------------------

CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
                   "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
                   "Pleural Effusion,Pleural Other,Fracture,Support Devices")
CHEXPERT_ROWS = [
    # 1 and -1 and blanks; a device present
    "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,,,1.0,,,,,,,0.0,-1.0,,,1.0",
    # the lateral of the same study, every finding explicitly negative
    "CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg,Female,68,Lateral,,1.0,0.0,0.0,0.0,0.0,0.0,0.0,"
    "0.0,0.0,0.0,0.0,0.0,0.0,0.0",
    # only uncertain findings
    "CheXpert-v1.0-small/train/patient00002/study3/view1_frontal.jpg,Male,40,Frontal,PA,,,-1.0,,,,,,,,,,-1.0,",
]


def test_chexpert_one_zero_uncertain_and_blank(tmp_path):
    csv = write(tmp_path / "train.csv", "\n".join([CHEXPERT_HEADER, *CHEXPERT_ROWS]) + "\n")
    table = read_chexpert(csv, CLASSES + ["No Finding"])
    first = labels_of(table, 0)
    assert first["Cardiomegaly"] == 1.0 and first["Support Devices"] == 1.0
    assert first["Pleural Effusion"] == -1.0  # uncertain stays -1 for the label policy
    assert first["Lung Opacity"] == "nan" and first["Fracture"] == "nan"  # blank: not mentioned
    assert first["Normal"] == 0.0  # a finding (here a device) rules Normal out
    assert first["Nodule"] == "nan" and first["Kyphosis"] == "nan"  # CheXpert has no such label
    second = labels_of(table, 1)
    assert second["No Finding"] == 1.0 and second["Cardiomegaly"] == 0.0 and second["Fracture"] == 0.0
    assert second["Normal"] == "nan"  # every CheXpert finding absent still says nothing of Kyphosis & co.
    third = labels_of(table, 2)
    assert third["Cardiomegaly"] == -1.0 and third["Fracture"] == -1.0 and third["Normal"] == "nan"
    frame = table.frame
    assert frame["subject_id"].tolist() == ["patient00001", "patient00001", "patient00002"]
    assert frame["study_id"].tolist() == ["patient00001/study1"] * 2 + ["patient00002/study3"]
    assert frame["view"].tolist() == ["frontal", "lateral", "frontal"]
    assert frame["fpath"].iat[0] == frame["dicom_id"].iat[0] == CHEXPERT_ROWS[0].split(",")[0]
    assert table.uncertain_counts()[table.classes.index("Cardiomegaly")] == 1


def test_chexpert_bad_value_unknown_column_and_bad_path_are_one_line_errors(tmp_path):
    bad_value = CHEXPERT_ROWS[2].replace(",-1.0,", ",yes,", 1)
    with pytest.raises(UserError, match=r"line 3, column 'Cardiomegaly': label value 'yes'"):
        read_chexpert(write(tmp_path / "a.csv", "\n".join([CHEXPERT_HEADER, CHEXPERT_ROWS[0], bad_value]) + "\n"))
    with pytest.raises(UserError, match="column 'Hernia' is neither CheXpert metadata nor a CheXpert label"):
        read_chexpert(write(tmp_path / "b.csv", "Path,Frontal/Lateral,Hernia\np/patient1/study1/v.jpg,Frontal,1\n"))
    with pytest.raises(UserError, match="line 2: Path 'images/x.jpg' is not"):
        read_chexpert(write(tmp_path / "c.csv", "Path,Frontal/Lateral,Edema\nimages/x.jpg,Frontal,1\n"))


# ---- VinDr-CXR ---------------------------------------------------------------------------------------------

VINDR_HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"
VINDR_ROWS = [
    # img1: three readers; two mark Cardiomegaly (R1 with two boxes), one sees nothing; one marks Nodule/Mass.
    "img1,Cardiomegaly,3,R1,10,10,50,50",
    "img1,Cardiomegaly,3,R1,12,10,52,50",
    "img1,Cardiomegaly,3,R2,11,11,51,51",
    "img1,Nodule/Mass,8,R2,5,5,9,9",
    "img1,No finding,14,R3,,,,",
    # img2: three readers agree there is nothing.
    "img2,No finding,14,R1,,,,",
    "img2,No finding,14,R4,,,,",
    "img2,No finding,14,R5,,,,",
    # img3: one reader, a Lung Opacity and an unmapped label.
    "img3,Lung Opacity,7,R9,1,1,2,2",
    "img3,Aortic enlargement,0,R9,1,1,2,2",
]


@pytest.mark.parametrize("rule, cardiomegaly, normal", [("any", 1.0, 0.0), ("majority", 1.0, 0.0),
                                                        ("all", -1.0, "nan")])
def test_vindr_agreement_rules_with_disagreeing_readers(tmp_path, rule, cardiomegaly, normal):
    csv = write(tmp_path / "annotations_train.csv", "\n".join([VINDR_HEADER, *VINDR_ROWS]) + "\n")
    table = read_vindr(csv, CLASSES, agreement_rule=rule)
    assert table.frame["dicom_id"].tolist() == ["img1", "img2", "img3"]
    first = labels_of(table, 0)
    assert first["Cardiomegaly"] == cardiomegaly  # 2 of 3 readers: enough for any / majority, uncertain for all
    # Nodule/Mass cannot say which of the two it is: marked (by enough readers or not) -> both unknown.
    assert first["Nodule"] == first["Mass"] == "nan"
    assert first["Pleural Effusion"] == 0.0 and first["Support Devices"] == "nan"
    assert first["Normal"] == normal  # an agreed finding rules Normal out; uncertain ones do not


def test_vindr_no_finding_implies_and_ids(tmp_path):
    csv = write(tmp_path / "annotations_train.csv", "\n".join([VINDR_HEADER, *VINDR_ROWS]) + "\n")
    table = read_vindr(csv, CLASSES, image_suffix=".png")
    nothing = labels_of(table, 1)
    assert nothing["Cardiomegaly"] == nothing["Nodule"] == nothing["Mass"] == nothing["Pleural Effusion"] == 0.0
    assert nothing["Lung Opacity"] == "nan"  # VinDr marks Lung Opacity only when nothing more specific fits
    assert nothing["Normal"] == "nan" and nothing["Kyphosis"] == "nan"
    opacity = labels_of(table, 2)
    assert opacity["Lung Opacity"] == 1.0 and opacity["Normal"] == 0.0 and opacity["Cardiomegaly"] == 0.0
    assert table.frame["fpath"].tolist() == ["img1.png", "img2.png", "img3.png"]
    assert table.frame["study_id"].tolist() == table.frame["subject_id"].tolist() == ["img1", "img2", "img3"]
    assert [table.line_of(i) for i in range(3)] == [2, 7, 10]


def test_vindr_unknown_label_and_rule_are_refused(tmp_path):
    csv = write(tmp_path / "a.csv", "\n".join([VINDR_HEADER, VINDR_ROWS[0], "img1,Cardiomegally,3,R2,1,1,2,2"]) + "\n")
    with pytest.raises(UserError, match="line 3, column 'class_name': unknown VinDr label 'Cardiomegally'"):
        read_vindr(csv)
    with pytest.raises(UserError, match="agreement rule must be one of any, majority, all"):
        read_vindr(write(tmp_path / "b.csv", "\n".join([VINDR_HEADER, *VINDR_ROWS]) + "\n"), agreement_rule="most")


# ---- the mapping table and the command line ---------------------------------------------------------------


def test_mapping_table_names_only_real_classes_and_every_format_maps_something():
    known = ({c.name for s in ("cxr-lt-2024", "cxr-lt-2023") for c in label_set(s)} | set(zero_shot_classes())
             | set(task_classes("1")) | set(task_classes("2")))
    rows = read_table("external_label_map.csv")
    assert {r["source"] for r in rows} == set(EXTERNAL_FORMATS)
    for row in rows:
        assert not row["class"] or row["class"] in known, row
        assert row["if_present"] in ("", "0", "1") and row["if_absent"] in ("", "0", "1"), row
    for fmt in EXTERNAL_FORMATS:
        assert len(labelled_classes(fmt)) >= 10
    with pytest.raises(UserError, match="unknown external format 'mimic'"):
        read_external("mimic", "x.csv")


def test_inspect_reads_every_external_format_with_the_same_report_keys(tmp_path, run_cli):
    reports = {}
    cases = {
        "nih": ("\n".join([NIH_HEADER, *NIH_ROWS]), [r.split(",")[0] for r in NIH_ROWS], "images/"),
        "chexpert": ("\n".join([CHEXPERT_HEADER, *CHEXPERT_ROWS]), [r.split(",")[0] for r in CHEXPERT_ROWS], ""),
        "vindr": ("\n".join([VINDR_HEADER, *VINDR_ROWS]), ["img1.dicom", "img3.dicom"], ""),
    }
    for fmt, (text, images, prefix) in cases.items():
        root = tmp_path / fmt
        for name in images:
            (root / (prefix + name)).parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (16, 16), 90).save(root / (prefix + name), format="PNG")
        csv = write(tmp_path / f"{fmt}.csv", text + "\n")
        code, out, err = run_cli("inspect", "--format", fmt, "--csv", csv, "--image-root", root, "--json")
        reports[fmt] = json.loads(out)
        assert reports[fmt]["format"] == fmt
        if fmt == "vindr":  # img2 was not written: reported, exit 2
            assert code == 2 and reports[fmt]["missing_images"] == 1 and "img2.dicom" in err
        else:
            assert code == 0, err
    Image.new("L", (16, 16), 90).save(tmp_path / "d1.png")
    cxr_lt = write(tmp_path / "x.csv", "dicom_id,study_id,fpath,Edema\nd1,s1,d1.png,1\n")
    code, out, _ = run_cli("inspect", "--csv", cxr_lt, "--image-root", tmp_path, "--json")
    assert code == 0
    assert all(set(r) == set(json.loads(out)) for r in reports.values())
    assert reports["nih"]["classes"]["Pleural Effusion"] == 1 and reports["nih"]["views"]["frontal"] == 3
    assert reports["chexpert"]["uncertain_labels"]["Cardiomegaly"] == 1
    assert reports["chexpert"]["studies"] == 2 and reports["chexpert"]["views"]["lateral"] == 1
    assert reports["vindr"]["images"] == 3 and reports["vindr"]["uncertain_labels"]["Cardiomegaly"] == 0
