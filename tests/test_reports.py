"""Study reports for image-text training: synth's reports.csv (deterministic, negations and hedges that agree with
the labels, normal studies described as normal) and the MIMIC-CXR report reader."""

import csv

import pandas as pd
import pytest

from chexfusion.data.reports import read_mimic_reports, read_reports_csv, report_sections
from chexfusion.errors import UserError
from chexfusion.text.reports import NEGATIVE, NORMAL_IMPRESSION, report_rng, study_report
from chexfusion.text.synonyms import synonyms

CLASSES = ["Atelectasis", "Cardiomegaly", "Edema", "Normal", "Pleural Effusion", "Pneumothorax"]


def _negated_phrases(report: str) -> list[str]:
    """The findings a report says are absent (by the NEGATIVE templates)."""
    found = []
    for sentence in report.replace("\n", " ").split(". "):
        sentence = sentence.strip().rstrip(".").lower()
        for template in NEGATIVE:
            head, tail = template.rstrip(".").lower().split("{}")
            if sentence.startswith(head) and sentence.endswith(tail) and (head or tail):
                found.append(sentence[len(head): len(sentence) - len(tail)])
    return found


def test_a_negated_finding_is_never_one_the_study_has():
    for seed in range(200):
        positive = ["Pleural Effusion", "Cardiomegaly"] if seed % 2 else ["Edema"]
        said_absent = _negated_phrases(study_report(positive, CLASSES, "Normal", report_rng(0, seed)))
        names = {p.lower() for c in positive for p in [c, *synonyms(c)]}
        assert not names & set(said_absent), said_absent
    assert any(_negated_phrases(study_report(["Edema"], CLASSES, "Normal", report_rng(0, s))) for s in range(20))


def test_normal_studies_are_described_as_normal_and_findings_are_named():
    normal = study_report(["Normal"], CLASSES, "Normal", report_rng(3, 1))
    assert normal.startswith("FINDINGS: ") and any(impression in normal for impression in NORMAL_IMPRESSION)
    texts = [study_report(["Cardiomegaly"], CLASSES, "Normal", report_rng(3, s)).lower() for s in range(50)]
    phrases = {p.lower() for p in ["Cardiomegaly", *synonyms("Cardiomegaly")]}
    assert all(any(p in t for p in phrases) for t in texts)
    assert len(set(texts)) > 10  # varied phrasing
    assert any(word in t for t in texts for word in ("possible", "cannot be excluded", "may represent"))


def test_synth_writes_one_deterministic_report_per_study(tmp_path, run_cli):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert run_cli("synth", "--out", tmp_path / name, "--studies", 40, "--image-size", 64, "--seed", seed,
                       "--external-images", 0)[0] == 0
    a = (tmp_path / "a" / "reports.csv").read_text()
    assert a == (tmp_path / "b" / "reports.csv").read_text() != (tmp_path / "c" / "reports.csv").read_text()
    reports = read_reports_csv(tmp_path / "a" / "reports.csv")
    studies = set()
    for split in ("train", "development", "test"):
        studies |= set(pd.read_csv(tmp_path / "a" / f"{split}.csv")["study_id"].astype(str))
    assert set(reports.text) == studies


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_mimic_reports_are_read_by_study_from_the_image_paths(tmp_path):
    _write(tmp_path / "files/p10/p10000032/s50414267.txt",
           "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n INDICATION:  cough\n"
           " FINDINGS:\n There is a small left pleural effusion.\n No pneumothorax.\n\n IMPRESSION:\n Small left\n"
           " effusion.\n")
    _write(tmp_path / "files/p10/p10000032/s53189527.txt", "FINAL REPORT\n Stable chest, no acute process.\n")
    frame = pd.DataFrame({"study_id": ["50414267", "50414267", "53189527"],
                          "fpath": ["files/p10/p10000032/s50414267/a.jpg", "files/p10/p10000032/s50414267/b.jpg",
                                    "files/p10/p10000032/s53189527/c.jpg"]})
    reports = read_mimic_reports(tmp_path, frame)
    assert reports.text["50414267"] == ("FINDINGS: There is a small left pleural effusion. No pneumothorax.\n"
                                        "IMPRESSION: Small left effusion.")
    assert reports.text["53189527"] == "FINAL REPORT Stable chest, no acute process." and reports.whole == ["53189527"]
    frame.loc[3] = ["59999999", "files/p10/p10000032/s59999999/d.jpg"]
    with pytest.raises(UserError, match="s59999999.txt: no report for study 59999999"):
        read_mimic_reports(tmp_path, frame)
    assert report_sections("IMPRESSION: only this.") == "IMPRESSION: only this."


def test_a_bad_reports_csv_is_a_one_line_error(tmp_path):
    path = tmp_path / "reports.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["study_id", "report"], ["1", "No acute process."], ["1", "Again."]])
    with pytest.raises(UserError, match="line 3: study 1 has a second report"):
        read_reports_csv(path)
    path.write_text("study,text\n1,x\n")
    with pytest.raises(UserError, match="needs columns study_id and report"):
        read_reports_csv(path)
    with pytest.raises(UserError, match="cannot read"):
        read_reports_csv(tmp_path / "none.csv")
