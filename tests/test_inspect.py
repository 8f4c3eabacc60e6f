import json

import pytest
from PIL import Image

HEADER = "dicom_id,subject_id,study_id,ViewPosition,ViewCodeSequence_CodeMeaning,fpath,Edema,Fracture,Nodule"
# 3 studies of 1, 2 and 5 images, 2 subjects; every kind of view code; labels with -1 and blanks.
ROWS = [
    "d1,p1,s1,PA,,img/d1.jpg,1,0,0",
    "d2,p1,s2,AP,,img/d2.png,1,-1,0",
    "d3,p1,s2,LATERAL,,img/d3.png,0,,0",
    "d4,p2,s3,LL,,img/d4.jpg,1,1,",
    "d5,p2,s3,,,img/d5.jpg,-1,0,0",
    "d6,p2,s3,AP,,img/d6.jpg,0,0,0",
    "d7,p2,s3,,lateral,img/d7.jpg,0,0,0",
    "d8,p2,s3,PA,,img/d8.jpg,0,0,0",
]


def make_dataset(root, rows=ROWS, header=HEADER):
    (root / "img").mkdir(exist_ok=True)
    for row in rows:
        fpath = row.split(",")[5]
        Image.new("L", (30, 40), 100).save(root / fpath)
    csv = root / "train.csv"
    csv.write_text("\n".join([header, *rows]) + "\n")
    return csv


def assert_one_error_line(err, *fragments):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("chexfusion: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_json_counts_match_the_csv(tmp_path, run_cli):
    csv = make_dataset(tmp_path)
    code, out, err = run_cli("inspect", "--csv", csv, "--image-root", tmp_path, "--decode", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["images"] == 8 and report["studies"] == 3 and report["subjects"] == 2
    assert report["views"] == {"frontal": 4, "lateral": 3, "unknown": 1}
    assert report["view_codes"] == {"PA": 2, "AP": 2, "": 2, "LATERAL": 1, "LL": 1}
    assert report["study_sizes"] == {"1": 1, "2": 1, "5": 1}
    assert report["classes"] == {"Edema": 3, "Fracture": 1, "Nodule": 0}
    assert report["uncertain_labels"] == {"Edema": 1, "Fracture": 1, "Nodule": 0}
    assert report["blank_labels"] == {"Edema": 0, "Fracture": 1, "Nodule": 1}
    assert report["prevalence"]["Edema"] == pytest.approx(3 / 8)
    assert report["prevalence_groups"] == {"Edema": "head", "Fracture": "head", "Nodule": "tail"}
    assert report["missing_images"] == 0 and report["unreadable_images"] == 0


def test_text_report_is_the_default(tmp_path, run_cli):
    csv = make_dataset(tmp_path)
    code, out, _ = run_cli("inspect", "--csv", csv, "--image-root", tmp_path)
    assert code == 0
    assert "images     8" in out and "studies    3" in out
    assert "views      frontal 4, lateral 3, unknown 1" in out
    assert "(blank) 2" in out and "1: 1, 2: 1, 5: 1" in out
    assert "unreadable images: not checked (add --decode)" in out
    edema = next(line for line in out.splitlines() if line.startswith("Edema"))
    assert edema.split() == ["Edema", "3", "37.50%", "head", "1", "0"]


def test_unlabelled_csv_is_reported(tmp_path, run_cli):
    rows = [",".join(r.split(",")[:6]) for r in ROWS]
    csv = make_dataset(tmp_path, rows, header=",".join(HEADER.split(",")[:6]))
    code, out, _ = run_cli("inspect", "--csv", csv, "--image-root", tmp_path, "--json")
    assert code == 0 and json.loads(out)["classes"] == {}


def test_csv_without_fpath_is_one_line_naming_it(tmp_path, run_cli):
    header = HEADER.replace(",fpath", "")
    rows = [",".join(p for k, p in enumerate(r.split(",")) if k != 5) for r in ROWS]
    csv = tmp_path / "nofpath.csv"
    csv.write_text("\n".join([header, *rows]) + "\n")
    code, out, err = run_cli("inspect", "--csv", csv, "--image-root", tmp_path, "--json")
    assert code == 2 and out == ""
    assert_one_error_line(err, str(csv), "missing required column 'fpath'")


def test_missing_image_exits_2_naming_it_after_the_report(tmp_path, run_cli):
    csv = make_dataset(tmp_path)
    (tmp_path / "img" / "d3.png").unlink()
    code, out, err = run_cli("inspect", "--csv", csv, "--image-root", tmp_path, "--json")
    assert code == 2
    report = json.loads(out)
    assert report["missing_images"] == 1
    assert report["missing_examples"] == [{"line": 4, "path": str(tmp_path / "img" / "d3.png")}]
    assert_one_error_line(err, "1 image file missing", "line 4", str(tmp_path / "img" / "d3.png"))


def test_unreadable_image_with_decode_exits_2_naming_it(tmp_path, run_cli):
    csv = make_dataset(tmp_path)
    (tmp_path / "img" / "d6.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, out, err = run_cli("inspect", "--csv", csv, "--image-root", tmp_path, "--decode")
    assert code == 2
    assert "unreadable images: 1" in out
    assert_one_error_line(err, "1 image unreadable", "line 7", "d6.jpg")
    code, _, _ = run_cli("inspect", "--csv", csv, "--image-root", tmp_path)
    assert code == 0  # without --decode only existence is checked


@pytest.mark.parametrize("bad_row, fragments", [
    ("d1,p9,s9,PA,,img/d1.jpg,1,0,0", ["duplicate dicom_id 'd1' on line 2 and line 10"]),
    ("d9,p9,s9,PA,,img/d1.jpg,1,yes,0", ["line 10, column 'Fracture'", "'yes'"]),
])
def test_structural_errors_are_one_line(tmp_path, run_cli, bad_row, fragments):
    csv = make_dataset(tmp_path, ROWS + [bad_row])
    code, out, err = run_cli("inspect", "--csv", csv, "--image-root", tmp_path)
    assert code == 2 and out == ""
    assert_one_error_line(err, str(csv), *fragments)


def test_missing_image_root_and_unknown_format(tmp_path, run_cli):
    csv = make_dataset(tmp_path)
    code, _, err = run_cli("inspect", "--csv", csv, "--image-root", tmp_path / "nowhere")
    assert code == 2
    assert_one_error_line(err, "image root is not a folder", "nowhere")
    with pytest.raises(SystemExit) as exit_info:
        run_cli("inspect", "--csv", csv, "--image-root", tmp_path, "--format", "no-such-format")
    assert exit_info.value.code == 2
