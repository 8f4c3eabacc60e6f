"""Hostile input, as a new user would give it: each case is one error line on stderr (besides the progress bar of a
command that had started reading images), exit 2, no traceback, and leaves the disk as it found it (nothing
half-written, no run folder, nothing trained).

Each case is a row of a table: a name, a function that prepares the damage in a fresh folder and returns the
command line, and a piece of the one line the user must see. docs/reliability.md lists the same cases.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pipeline
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from test_images import png_header_only

from chexfusion.io import file_sha256


@dataclass
class World:
    """What a case may use: a fresh folder to damage, and the session's tiny dataset and trained runs."""

    tmp: Path
    data: Path
    stage1: Path
    monkeypatch: pytest.MonkeyPatch

    def file(self, name: str, text: str = "x\n") -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def folder(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def unwritable(self, name: str) -> Path:
        """A folder the user cannot write into (root writes anywhere, so there the permission check is told so)."""
        path = self.folder(name)
        path.chmod(0o500)
        if os.geteuid() == 0:
            real = os.access
            self.monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == path else real(p, mode,
                                                                                                          **kw))
        return path

    def binary(self, name: str, data: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(data)
        return path

    def empty_csv(self) -> Path:
        header = (self.data / "test.csv").read_text().splitlines()[0]
        return self.file("empty.csv", header + "\n")

    def predict(self, out, csv=None, model=None) -> list:
        return ["predict", "--model", model or self.stage1, "--csv", csv or self.data / "test.csv",
                "--image-root", self.data, "--out", out]


def _evaluate(w: World, out) -> list:
    return ["evaluate", "--pred", w.data / "test.csv", "--labels", w.data / "test.csv", "--out", out]


def _compare(w: World, out) -> list:
    return ["compare", "--pred", w.data / "test.csv", "--pred", w.data / "test.csv", "--labels", w.data / "test.csv",
            "--out", out]


def _explain(w: World, out) -> list:
    return ["explain", "--model", w.stage1, "--csv", w.data / "test.csv", "--image-root", w.data, "--out", out]


def _convert(w: World, out) -> list:
    return ["convert", "--format", "cxr-lt-2026", "--labels", w.data / "test.csv", "--padchest-metadata",
            w.data / "test.csv", "--image-root", w.data, "--out", out]


def _zero_shot(w: World, out) -> list:
    return ["zero-shot", "--vlm", "open_clip:none", "--csv", w.data / "test.csv", "--image-root", w.data,
            "--classes", "Cardiomegaly", "--out", out]


def _synth(w: World, out) -> list:
    return ["synth", "--out", out, "--studies", 20, "--image-size", 32]


def _export(w: World, out) -> list:
    return ["export", "--model", w.stage1, "--out", out]


def _stage1(w: World, out) -> list:
    return ["stage1", "--config", "stage1/config.yaml",
            *pipeline.stage1_overrides(w.data, out.parent, out.name)]


# command -> (command line for an output path, whether that output is a file or a folder)
WRITERS: dict[str, tuple[Callable, str]] = {
    "predict": (lambda w, out: w.predict(out), "file"),
    "predict --submission": (lambda w, out: w.predict(out) + ["--submission", "cxr-lt-2026-task1"], "file"),
    "zero-shot": (_zero_shot, "file"),
    "convert": (_convert, "file"),
    "evaluate": (_evaluate, "folder"),
    "compare": (_compare, "folder"),
    "explain": (_explain, "folder"),
    "synth": (_synth, "folder"),
    "export": (_export, "folder"),
    "stage1": (_stage1, "folder"),
}


def _bad_outputs(kind: str) -> dict[str, tuple[Callable, str]]:
    """The three ways an output path fails, for a command that writes a ``kind`` (file or folder)."""
    wrong_type = (lambda w: w.folder("taken"), "is a folder") if kind == "file" else \
        (lambda w: w.file("taken"), "exists and is not a folder")
    return {"exists as the wrong type": wrong_type,
            "under a file": (lambda w: w.file("a_file") / "out", "is a file, not a folder"),
            "in an unwritable folder": (lambda w: w.unwritable("locked") / "out", "cannot write into the folder")}


@dataclass
class Case:
    name: str
    argv: Callable[[World], list]
    expect: str


def _output_cases() -> list[Case]:
    cases = []
    for command, (argv, kind) in WRITERS.items():
        for how, (make_out, expect) in _bad_outputs(kind).items():
            cases.append(Case(f"{command} --out {how}", lambda w, a=argv, m=make_out: a(w, m(w)), expect))
    return cases


def _csv_edit(w: World, edit: Callable[[list[str]], list[str]], name: str = "edited.csv") -> Path:
    """The tiny test split's CSV with its lines edited."""
    lines = (w.data / "test.csv").read_text().splitlines()
    return w.file(name, "\n".join(edit(lines)) + "\n")


def _without_column(lines: list[str], column: str) -> list[str]:
    index = lines[0].split(",").index(column)
    return [",".join(c for i, c in enumerate(line.split(",")) if i != index) for line in lines]


def _with_cell(lines: list[str], row: int, column: str, value: str) -> list[str]:
    cells = lines[row].split(",")
    cells[lines[0].split(",").index(column)] = value
    return [*lines[:row], ",".join(cells), *lines[row + 1:]]


def _latin1_csv(w: World) -> Path:
    """A one-row CSV whose dicom_id starts with a Latin-1 byte."""
    data = _csv_edit(w, lambda lines: lines[:2]).read_bytes()
    start = data.index(b"\n") + 1
    return w.binary("latin1.csv", data[:start] + b"\xc9" + data[start:])


def _image_csv(w: World, image: Path) -> Path:
    """A one-row CSV pointing at ``image`` (absolute)."""
    return _csv_edit(w, lambda lines: _with_cell(lines[:2], 1, "fpath", str(image)))


def _run_copy(w: World, damage: Callable[[Path], None]) -> Path:
    run = Path(shutil.copytree(w.stage1, w.tmp / "run"))
    damage(run)
    return run


def _edit_info(run: Path, edit: Callable[[dict], None]) -> None:
    info = json.loads((run / "run.json").read_text())
    edit(info)
    (run / "run.json").write_text(json.dumps(info))


def _reorder_classes(info: dict) -> None:
    info["classes"], info["train_prevalence"] = info["classes"][::-1], info["train_prevalence"][::-1]


def _pickle_weights(run: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, run / "model.safetensors")  # a pickle under the weights' name
    _edit_info(run, lambda info: info.update(weights_sha256=file_sha256(run / "model.safetensors")))


def _predict_with(damage: Callable[[Path], None]) -> Callable[[World], list]:
    return lambda w: ["predict", "--model", _run_copy(w, damage), "--csv", w.data / "test.csv", "--image-root",
                      w.data, "--out", w.tmp / "p.csv"]


def _stage2(w: World, *overrides: str) -> list:
    return ["stage2", "--config", "stage2/config.yaml",
            *pipeline.stage2_overrides(w.data, w.tmp / "runs", w.tmp / "store", w.stage1), *overrides]


CASES = _output_cases() + [
    # CSVs
    Case("predict of a CSV with a header and no rows", lambda w: w.predict(w.tmp / "p.csv", w.empty_csv()),
         "a header and no rows"),
    Case("stage1 on a training CSV with a header and no rows",
         lambda w: _stage1(w, w.tmp / "runs" / "empty") + [f"data.train_csv={w.empty_csv()}"], "a header and no rows"),
    Case("predict of a CSV without the fpath column",
         lambda w: w.predict(w.tmp / "p.csv", _csv_edit(w, lambda lines: _without_column(lines, "fpath"))),
         "missing required column 'fpath'"),
    Case("stage1 on a training CSV with a label 'yes'",
         lambda w: _stage1(w, w.tmp / "runs" / "yes") + [
             f"data.train_csv={_csv_edit(w, lambda lines: _with_cell(lines, 3, 'Edema', 'yes'))}"],
         "line 4, column 'Edema': label value 'yes' is not 1, 0, -1 or blank"),
    Case("predict of a CSV listing an image twice",
         lambda w: w.predict(w.tmp / "p.csv", _csv_edit(w, lambda lines: [*lines, lines[1]])), "dicom_id"),
    Case("predict of a CSV that is not UTF-8", lambda w: w.predict(w.tmp / "p.csv", _latin1_csv(w)), "UTF-8"),
    # images
    Case("predict of a missing image", lambda w: w.predict(w.tmp / "p.csv", _image_csv(w, w.tmp / "absent.jpg")),
         "file not found"),
    Case("predict of a corrupt JPEG",
         lambda w: w.predict(w.tmp / "p.csv", _image_csv(w, w.file("bad.jpg", "\xff\xd8\xff not a jpeg"))),
         "cannot read image"),
    Case("predict of a 12000 x 12000 PNG (no PIL warning first)",
         lambda w: w.predict(w.tmp / "p.csv", _image_csv(w, w.binary("huge.png", png_header_only(12000, 12000)))),
         "12000 x 12000 = 144000000 pixels is above the limit"),
    # run folders
    Case("predict with a folder that is not a run", lambda w: w.predict(w.tmp / "p.csv", model=w.folder("empty")),
         "not a finished chexfusion run"),
    Case("predict with run.json that is not JSON",
         _predict_with(lambda run: (run / "run.json").write_text("{not json")), "is not valid JSON"),
    Case("predict with run.json holding a JSON list",
         _predict_with(lambda run: (run / "run.json").write_text("[1, 2]")), "JSON list, not an object"),
    Case("predict with run.json without weights_sha256",
         _predict_with(lambda run: _edit_info(run, lambda info: info.pop("weights_sha256"))),
         "key 'weights_sha256' is missing"),
    Case("predict with the classes reordered in run.json",
         _predict_with(lambda run: _edit_info(run, _reorder_classes)),
         "'classes' is not what model.safetensors was trained with"),
    Case("predict with weights of random bytes",
         _predict_with(lambda run: (run / "model.safetensors").write_bytes(os.urandom(256))),
         "does not match the hash"),
    Case("predict with a pickle for weights (hash updated)", _predict_with(_pickle_weights),
         "not a readable safetensors file"),
    # configs: refused before any folder is made
    Case("stage1 with train.epochs=-1", lambda w: _stage1(w, w.tmp / "runs" / "e") + ["train.epochs=-1"],
         "train.epochs"),
    Case("stage1 with train.batch_size=0", lambda w: _stage1(w, w.tmp / "runs" / "b") + ["train.batch_size=0"],
         "train.batch_size"),
    Case("stage1 with an unknown key", lambda w: _stage1(w, w.tmp / "runs" / "u") + ["train.learning_rate=1"],
         "train.learning_rate"),
    Case("stage2 with model.layers=0", lambda w: _stage2(w, "model.layers=0"), "'model.layers' must be at least 1"),
    Case("stage1 with model.decoder_dropout=1", lambda w: _stage1(w, w.tmp / "runs" / "d") + [
        "model.decoder_dropout=1"], "'model.decoder_dropout' must be in [0, 1), got 1"),
    Case("stage1 with a config file that is not YAML",
         lambda w: ["stage1", "--config", w.file("bad.yaml", "train: [unclosed\n")], "not valid YAML"),
]


PROGRESS_LINE = re.compile(r"^[^:]*: +\d+%\|")  # a progress bar's line (images are read as they are scored)


def _snapshot(folder: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture
def world(tmp_path, tiny_data, tiny_stage1, monkeypatch, repo_root):
    monkeypatch.chdir(repo_root)  # stage1/config.yaml
    yield World(tmp_path, tiny_data, tiny_stage1, monkeypatch)
    for path in tmp_path.rglob("*"):  # let pytest clean up the unwritable folders
        if path.is_dir():
            path.chmod(0o700)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_is_one_line_exit_2_and_writes_nothing(case, world, run_cli):
    argv = case.argv(world)
    before, run_before = _snapshot(world.tmp), _snapshot(world.stage1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # a second line PIL would print
        code, _, err = run_cli(*argv)
    assert code == 2, err
    assert "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if line.strip() and not PROGRESS_LINE.match(line)]
    assert line.startswith("chexfusion: error: ") and case.expect in line, err
    assert _snapshot(world.tmp) == before, "something was written"
    assert _snapshot(world.stage1) == run_before, "the trained run was changed"


def test_an_absent_output_folder_is_created_by_the_write(tmp_path):
    """Folders that do not exist yet are not an error: the atomic write makes them."""
    from chexfusion.io import atomic_write_text, check_output_file, check_output_folder

    target = check_output_file(tmp_path / "new" / "deeper" / "p.csv")
    check_output_folder(tmp_path / "new" / "reports")
    atomic_write_text(target, "ok\n")
    assert target.read_text() == "ok\n"


# ---- property tests: a valid CSV and a valid config, mutated ------------------------------------------------

VALID_CSV = """dicom_id,subject_id,study_id,ViewPosition,fpath,Cardiomegaly,Edema,Pleural Effusion
d1,p1,s1,PA,img/d1.png,1,0,
d2,p1,s1,LATERAL,img/d2.png,0,-1,1
d3,p2,s2,AP,img/d3.png,,1,0
d4,p3,s3,PA,img/d4.png,0,0,1
"""


@pytest.fixture(scope="module")
def csv_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("property")
    (folder / "img").mkdir()
    for name in ("d1", "d2", "d3", "d4"):
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(folder / "img" / f"{name}.png")
    return folder


def _cli(*argv) -> tuple[int, str]:
    """The command line in-process (hypothesis reruns a test body many times: no function-scoped capsys)."""
    from chexfusion.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


def _one_line_or_result(code: int, err: str) -> None:
    assert "Traceback" not in err, err
    assert code in (0, 2), (code, err)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("chexfusion: error: "), err


@st.composite
def mutated_text(draw, text: str) -> bytes:
    """``text`` after one to three edits a broken export or a hand edit makes: lines lost or doubled, a cell
    replaced with anything, the file cut short, stray bytes, columns swapped."""
    lines = text.splitlines()
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["drop", "double", "cell", "cut", "bytes", "swap"]))
        i = draw(st.integers(0, len(lines) - 1)) if lines else 0
        if kind == "drop" and lines:
            del lines[i]
        elif kind == "double" and lines:
            lines.insert(i, lines[i])
        elif kind == "cell" and lines:
            cells = lines[i].split(",")
            cells[draw(st.integers(0, len(cells) - 1))] = draw(st.text(max_size=12))
            lines[i] = ",".join(cells)
        elif kind == "swap" and lines:
            cells = lines[0].split(",")
            a, b = draw(st.integers(0, len(cells) - 1)), draw(st.integers(0, len(cells) - 1))
            cells[a], cells[b] = cells[b], cells[a]
            lines[0] = ",".join(cells)
    data = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.binary(max_size=8)) + data[cut:]
    return data


@settings(max_examples=25, deadline=None)
@given(data=mutated_text(VALID_CSV))
def test_a_mutated_csv_is_inspected_or_refused_in_one_line(csv_folder, data):
    path = csv_folder / "mutated.csv"
    path.write_bytes(data)
    _one_line_or_result(*_cli("inspect", "--csv", path, "--image-root", csv_folder, "--json", "--workers", 1))


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_a_mutated_config_loads_or_is_refused_in_one_line(stage, data, repo_root, tmp_path_factory):
    """The config loader (what every stage runs before it makes a folder): a config object or a UserError whose
    message is one line."""
    from chexfusion.config import load_config
    from chexfusion.errors import UserError
    from chexfusion.stage1.config import Stage1Config
    from chexfusion.stage2.config import Stage2Config

    text = (repo_root / stage / "config.yaml").read_text()
    path = tmp_path_factory.getbasetemp() / f"mutated-{stage}.yaml"
    path.write_bytes(data.draw(mutated_yaml(text)))
    try:
        load_config(Stage1Config if stage == "stage1" else Stage2Config, path)
    except UserError as exc:
        assert "\n" not in str(exc) and str(exc), str(exc)


VALUES = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=8), st.booleans(),
                   st.none(), st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=4),
                                                                                      st.integers(), max_size=2))


@st.composite
def mutated_yaml(draw, text: str) -> bytes:
    """A config with a key's value replaced by anything, a key removed or added, or the text itself mutated."""
    config = yaml.safe_load(text)
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(sorted(k for k, v in config.items() if isinstance(v, dict))))
        keys = sorted(config[section])
        kind = draw(st.sampled_from(["value", "drop", "add", "section"]))
        if kind == "value" and keys:
            config[section][draw(st.sampled_from(keys))] = draw(VALUES)
        elif kind == "drop" and keys:
            del config[section][draw(st.sampled_from(keys))]
        elif kind == "add":
            config[section][draw(st.text(min_size=1, max_size=8))] = draw(VALUES)
        elif kind == "section":
            config[section] = draw(VALUES)
    dumped = yaml.safe_dump(config)
    return draw(mutated_text(dumped)) if draw(st.booleans()) else dumped.encode()
