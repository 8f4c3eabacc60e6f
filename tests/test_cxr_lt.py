import numpy as np
import pytest

from chexfusion.data.cxr_lt import METADATA_COLUMNS, read_cxr_lt
from chexfusion.data.labels import LabelPolicy
from chexfusion.errors import UserError

HEADER = "dicom_id,subject_id,study_id,ViewPosition,ViewCodeSequence_CodeMeaning,fpath"


def write(tmp_path, text, name="labels.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def csv_text(rows, classes=("Atelectasis", "Edema"), header=HEADER):
    head = ",".join([header, *classes]) if classes else header
    return "\n".join([head, *rows]) + "\n"


GOOD = csv_text([
    "d1,10000032,50414267,PA,postero-anterior,files/p10/d1.jpg,1,0",
    "d2,10000032,50414267,LATERAL,lateral,files/p10/d2.jpg,-1,",
    "d3,10000033,50414268,,,files/p10/d3.jpg,0,1.0",
])


def test_reads_metadata_as_text_and_labels_as_numbers(tmp_path):
    table = read_cxr_lt(write(tmp_path, GOOD))
    assert len(table) == 3
    assert table.classes == ["Atelectasis", "Edema"]
    assert table.frame["study_id"].tolist() == ["50414267", "50414267", "50414268"]
    assert table.frame["subject_id"].tolist() == ["10000032", "10000032", "10000033"]
    assert table.frame["view"].tolist() == ["frontal", "lateral", "unknown"]
    assert table.frame["ViewPosition"].tolist() == ["PA", "LATERAL", ""]
    assert table.raw_labels.dtype == np.float32
    np.testing.assert_array_equal(table.raw_labels, [[1, 0], [-1, np.nan], [0, 1]])
    assert table.lines.tolist() == [2, 3, 4]


def test_ids_are_kept_exactly_as_written_but_stripped(tmp_path):
    text = csv_text([" 00123 ,007,1e5,AP,, a.jpg ,1,0", "4.50,008,50000000000000001,AP,,b.jpg,0,0"])
    frame = read_cxr_lt(write(tmp_path, text)).frame
    assert frame["dicom_id"].tolist() == ["00123", "4.50"]
    assert frame["subject_id"].tolist() == ["007", "008"]
    assert frame["study_id"].tolist() == ["1e5", "50000000000000001"]
    assert frame["fpath"].tolist() == ["a.jpg", "b.jpg"]


def test_label_spellings_accepted(tmp_path):
    text = csv_text(["a,1,1,AP,,a.jpg,1.0,-1.0", "b,1,1,AP,,b.jpg, 1 , 0.0 ", "c,1,1,AP,,c.jpg,,-1"])
    raw = read_cxr_lt(write(tmp_path, text)).raw_labels
    np.testing.assert_array_equal(raw, [[1, -1], [1, 0], [np.nan, -1]])


@pytest.mark.parametrize("column", ["dicom_id", "study_id", "fpath"])
def test_missing_required_column_names_file_and_column(tmp_path, column):
    header = ",".join(c for c in METADATA_COLUMNS if c != column)
    rows = [",".join("x" for _ in header.split(",")) + ",1,0"]
    path = write(tmp_path, csv_text(rows, header=header))
    with pytest.raises(UserError) as err:
        read_cxr_lt(path)
    assert str(err.value) == f"{path}: missing required column '{column}'"


def test_subject_view_and_meaning_columns_are_optional(tmp_path):
    path = write(tmp_path, "dicom_id,study_id,fpath,Edema\nd1,s1,a.jpg,1\n")
    table = read_cxr_lt(path)
    assert table.classes == ["Edema"]
    assert table.frame["subject_id"].tolist() == [""]
    assert table.frame["view"].tolist() == ["unknown"]


def test_duplicate_dicom_id_names_id_and_both_lines(tmp_path):
    text = csv_text(["d1,1,1,AP,,a.jpg,1,0", "d2,1,1,AP,,b.jpg,1,0", "d1,1,1,AP,,c.jpg,1,0"])
    path = write(tmp_path, text)
    with pytest.raises(UserError) as err:
        read_cxr_lt(path)
    assert str(err.value) == f"{path}: duplicate dicom_id 'd1' on line 2 and line 4"


def test_duplicate_after_whitespace_is_still_a_duplicate(tmp_path):
    text = csv_text(["d1,1,1,AP,,a.jpg,1,0", " d1 ,1,1,AP,,b.jpg,1,0"])
    with pytest.raises(UserError, match="duplicate dicom_id 'd1' on line 2 and line 3"):
        read_cxr_lt(write(tmp_path, text))


@pytest.mark.parametrize("column, row", [
    ("dicom_id", " ,1,1,AP,,a.jpg,1,0"),
    ("study_id", "d2,1,,AP,,a.jpg,1,0"),
    ("fpath", "d2,1,1,AP,,  ,1,0"),
])
def test_empty_id_or_path_names_the_line(tmp_path, column, row):
    path = write(tmp_path, csv_text(["d1,1,1,AP,,a.jpg,1,0", row]))
    with pytest.raises(UserError) as err:
        read_cxr_lt(path)
    assert str(err.value) == f"{path} line 3: empty '{column}'"


@pytest.mark.parametrize("value", ["yes", "2", "0.5", "nan", "1,5"])
def test_bad_label_value_names_file_line_column_and_value(tmp_path, value):
    quoted = f'"{value}"' if "," in value else value
    text = csv_text(["d1,1,1,AP,,a.jpg,1,0", "d2,1,1,AP,,b.jpg,0,1", f"d3,1,1,AP,,c.jpg,0,{quoted}"])
    path = write(tmp_path, text)
    with pytest.raises(UserError) as err:
        read_cxr_lt(path)
    assert str(err.value) == f"{path} line 4, column 'Edema': label value '{value}' is not 1, 0, -1 or blank"


def test_first_bad_label_in_file_order_is_reported(tmp_path):
    text = csv_text(["d1,1,1,AP,,a.jpg,1,x", "d2,1,1,AP,,b.jpg,y,0"])
    with pytest.raises(UserError, match="line 2, column 'Edema': label value 'x'"):
        read_cxr_lt(write(tmp_path, text))


def test_given_class_list_selects_columns_and_ignores_others(tmp_path):
    text = csv_text(["d1,1,1,AP,,a.jpg,1,0,7"], classes=("Atelectasis", "Edema", "Comment"))
    table = read_cxr_lt(write(tmp_path, text), classes=["Edema", "Atelectasis"])
    assert table.classes == ["Edema", "Atelectasis"]
    np.testing.assert_array_equal(table.raw_labels, [[0, 1]])
    assert "Comment" not in table.frame


def test_given_class_missing_from_csv_names_class_and_file(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(UserError) as err:
        read_cxr_lt(path, classes=["Atelectasis", "Pneumothorax"])
    assert str(err.value) == f"{path}: missing class column 'Pneumothorax'"


def test_classes_from_header_exclude_metadata_and_extra_metadata(tmp_path):
    text = csv_text(["d1,1,1,AP,,a.jpg,train,1,0"], classes=("split", "Atelectasis", "Edema"))
    table = read_cxr_lt(write(tmp_path, text), extra_metadata=("split",))
    assert table.classes == ["Atelectasis", "Edema"]
    assert table.frame["split"].tolist() == ["train"]


def test_any_number_of_classes_in_header_order(tmp_path):
    names = [f"Finding {k}" for k in range(26)]
    row = "d1,1,1,AP,,a.jpg," + ",".join("1" if k % 2 else "0" for k in range(26))
    table = read_cxr_lt(write(tmp_path, csv_text([row], classes=names)))
    assert table.classes == names
    assert table.raw_labels.shape == (1, 26)


def test_unlabelled_csv_reads_without_classes(tmp_path):
    table = read_cxr_lt(write(tmp_path, csv_text(["d1,1,1,AP,,a.jpg"], classes=())))
    assert table.classes == [] and table.raw_labels is None and not table.has_labels
    with pytest.raises(UserError, match="has no label columns"):
        table.targets()


def test_require_labels_refuses_an_unlabelled_csv(tmp_path):
    path = write(tmp_path, csv_text(["d1,1,1,AP,,a.jpg"], classes=()))
    with pytest.raises(UserError, match=f"{path}: no label columns"):
        read_cxr_lt(path, require_labels=True)


def test_blank_view_position_falls_back_to_code_meaning(tmp_path):
    text = csv_text(["d1,1,1,,antero-posterior,a.jpg,1,0", "d2,1,1,,left lateral,b.jpg,1,0",
                     "d3,1,1, ,,c.jpg,1,0", "d4,1,1,pa,lateral,d.jpg,1,0"])
    table = read_cxr_lt(write(tmp_path, text))
    assert table.frame["view"].tolist() == ["frontal", "lateral", "unknown", "frontal"]
    assert table.frame["ViewPosition"].tolist() == ["", "", "", "pa"]


def test_row_with_wrong_number_of_fields_names_its_line(tmp_path):
    path = write(tmp_path, csv_text(["d1,1,1,AP,,a.jpg,1,0", "d2,1,1,AP,,b.jpg,1", "d3,1,1,AP,,c.jpg,1,0,0"]))
    with pytest.raises(UserError) as err:
        read_cxr_lt(path)
    assert str(err.value) == f"{path} line 3: 7 fields where the header has 8"


def test_line_numbers_count_blank_lines_and_multiline_fields(tmp_path):
    text = (HEADER + ",Edema\n"
            "d1,1,1,AP,\"two\nlines\",a.jpg,1\n"
            "\n"
            "   \n"
            "d2,1,1,AP,,b.jpg,bad\n")
    path = write(tmp_path, text)
    with pytest.raises(UserError, match=r"line 6, column 'Edema'"):
        read_cxr_lt(path)
    table = read_cxr_lt(write(tmp_path, text.replace("bad", "1"), name="ok.csv"))
    assert len(table) == 2 and table.lines.tolist() == [2, 6]


def test_header_only_csv_is_refused(tmp_path):
    """Nothing to train on or predict: a truncated export, not a result of 0 rows (predict wrote "0 predictions")."""
    with pytest.raises(UserError, match="a header and no rows"):
        read_cxr_lt(write(tmp_path, HEADER + ",Edema\n"))


@pytest.mark.parametrize("header, message", [
    (HEADER + ",Edema,Edema", "column 'Edema' appears twice in the header"),
    ("," + HEADER + ",Edema", "column 1 has an empty name"),
])
def test_bad_header_is_refused(tmp_path, header, message):
    path = write(tmp_path, header + "\n" + ",".join(["1"] * len(header.split(","))) + "\n")
    with pytest.raises(UserError, match=message):
        read_cxr_lt(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(UserError, match="CSV file not found: .*nope.csv"):
        read_cxr_lt(tmp_path / "nope.csv")
    with pytest.raises(UserError, match="empty file"):
        read_cxr_lt(write(tmp_path, ""))


def test_study_with_two_subjects_is_refused(tmp_path):
    text = csv_text(["d1,p1,s1,AP,,a.jpg,1,0", "d2,p2,s1,AP,,b.jpg,1,0"])
    with pytest.raises(UserError, match="study_id 's1' has two subject_ids, 'p1' on line 2 and 'p2' on line 3"):
        read_cxr_lt(write(tmp_path, text))


def test_utf8_bom_is_not_part_of_the_first_column_name(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert read_cxr_lt(path).frame["dicom_id"].tolist() == ["d1", "d2", "d3"]


def test_targets_prevalence_and_counts(tmp_path):
    table = read_cxr_lt(write(tmp_path, GOOD))
    targets, mask = table.targets(LabelPolicy(uncertain="one", blank="ignore"))
    np.testing.assert_array_equal(targets, [[1, 0], [1, 0], [0, 1]])
    np.testing.assert_array_equal(mask, [[1, 1], [1, 0], [1, 1]])
    np.testing.assert_allclose(table.prevalence(), [1 / 3, 1 / 3])
    np.testing.assert_allclose(table.prevalence(LabelPolicy(uncertain="ignore", blank="ignore")), [1 / 2, 1 / 2])
    assert table.positives().tolist() == [1, 1]
    assert table.uncertain_counts().tolist() == [1, 0]
    assert table.blank_counts().tolist() == [0, 1]


def test_select_keeps_rows_labels_and_lines_together(tmp_path):
    table = read_cxr_lt(write(tmp_path, GOOD)).select([2, 0])
    assert table.frame["dicom_id"].tolist() == ["d3", "d1"]
    np.testing.assert_array_equal(table.raw_labels, [[0, 1], [1, 0]])
    assert [table.line_of(0), table.line_of(1)] == [4, 2]


def test_image_paths_join_root_and_fpath(tmp_path):
    table = read_cxr_lt(write(tmp_path, GOOD))
    assert table.image_paths(tmp_path)[0] == str(tmp_path / "files/p10/d1.jpg")
