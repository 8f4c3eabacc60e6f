import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline  # noqa: E402  (tests/pipeline.py: the tiny end-to-end pipeline)

# Tests never touch the network: model hubs are offline for the whole session.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def run_cli(capsys):
    """Run the command line in-process; return (exit code, stdout, stderr)."""
    from chexfusion.cli import main

    def _run(*argv):
        code = main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return _run


@pytest.fixture(scope="session")
def repo_root():
    return Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """The synthetic demo dataset, small (see tests/pipeline.py)."""
    return pipeline.make_data(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="session")
def tiny_stage1(tiny_data, tmp_path_factory, repo_root):
    """A trained (one epoch) stage-1 run folder on the tiny data."""
    with _chdir(repo_root):
        return pipeline.train_stage1(tiny_data, tmp_path_factory.mktemp("stage1"))


@pytest.fixture(scope="session")
def tiny_store(tiny_data, tiny_stage1, tmp_path_factory, repo_root):
    runs = tmp_path_factory.mktemp("stage2")
    with _chdir(repo_root):
        return pipeline.build_features(tiny_data, runs, runs / "store", tiny_stage1)


@pytest.fixture(scope="session")
def grouped_store(tiny_data, tiny_stage1, tmp_path_factory, repo_root):
    """The tiny store in small shards and row groups (pipeline.SMALL_GROUPS)."""
    runs = tmp_path_factory.mktemp("grouped")
    with _chdir(repo_root):
        return pipeline.build_features(tiny_data, runs, runs / "store", tiny_stage1, **pipeline.SMALL_GROUPS)


@pytest.fixture(scope="session")
def tiny_stage2(tiny_data, tiny_stage1, tiny_store, repo_root):
    """A trained stage-2 run folder (self-contained: it carries its backbone)."""
    with _chdir(repo_root):
        return pipeline.train_stage2(tiny_data, tiny_store.parent, tiny_store, tiny_stage1)


@contextmanager
def _chdir(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)
