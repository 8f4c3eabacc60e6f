"""Hostile input, as a new user would give it: each case is one line on stderr, exit 2, and leaves the disk as it
found it (nothing half-written, no run folder, nothing trained).

Each case is a row of a table: a name, a function that prepares the damage in a fresh folder and returns the
command line, and a piece of the one line the user must see. docs/reliability.md lists the same cases.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pipeline
import pytest


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

    def empty_csv(self) -> Path:
        header = (self.data / "test.csv").read_text().splitlines()[0]
        return self.file("empty.csv", header + "\n")

    def predict(self, out, csv=None) -> list:
        return ["predict", "--model", self.stage1, "--csv", csv or self.data / "test.csv", "--image-root", self.data,
                "--out", out]


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


CASES = _output_cases() + [
    Case("predict of a CSV with a header and no rows", lambda w: w.predict(w.tmp / "p.csv", w.empty_csv()),
         "a header and no rows"),
    Case("stage1 on a training CSV with a header and no rows",
         lambda w: _stage1(w, w.tmp / "runs" / "empty") + [f"data.train_csv={w.empty_csv()}"], "a header and no rows"),
]


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
    code, _, err = run_cli(*argv)
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert case.expect in err, err
    assert _snapshot(world.tmp) == before, "something was written"
    assert _snapshot(world.stage1) == run_before, "the trained run was changed"


def test_an_absent_output_folder_is_created_by_the_write(tmp_path):
    """Folders that do not exist yet are not an error: the atomic write makes them."""
    from chexfusion.io import atomic_write_text, check_output_file, check_output_folder

    target = check_output_file(tmp_path / "new" / "deeper" / "p.csv")
    check_output_folder(tmp_path / "new" / "reports")
    atomic_write_text(target, "ok\n")
    assert target.read_text() == "ok\n"

