"""The demo dataset and the tiny trained runs the benchmarks measure, built once under benchmarks/out/ and reused.

Everything is made with the ``chexfusion`` command line in a child process
(exactly what a user runs; the benchmark process keeps its own thread settings
and imports). A finished artifact is reused: the dataset when its stamp names
the current generator version, a run when the CLI says it is complete, a store
when ``chexfusion features`` finds it current. A run folder that the CLI
refuses (made with another configuration after the configs changed) is deleted
and trained again. Logs of every build go to ``benchmarks/out/logs/``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "benchmarks" / "out"
STAGE1_CONFIG = REPO / "stage1" / "config.yaml"
STAGE2_CONFIG = REPO / "stage2" / "config.yaml"


def _chexfusion(*argv, log_name: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m chexfusion ARGV`` from the repository root; output kept in benchmarks/out/logs/."""
    logs = OUT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-m", "chexfusion", *map(str, argv)], cwd=REPO, capture_output=True,
                            text=True)
    (logs / f"{log_name}.log").write_text(f"$ chexfusion {' '.join(map(str, argv))}\n{result.stdout}\n{result.stderr}")
    if check and result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"chexfusion {argv[0]} failed ({result.returncode}): {tail[0]}; see {logs / log_name}.log")
    return result


def demo_data(studies: int = 300, image_size: int = 256, seed: int = 0) -> Path:
    """``chexfusion synth`` output (CXR-LT CSVs + JPEGs) in benchmarks/out/, built on first use."""
    from chexfusion.data.synth import GENERATOR_VERSION

    folder = OUT / f"demo-{studies}studies-{image_size}px-seed{seed}"
    stamp = folder / ".complete"
    if stamp.is_file() and stamp.read_text().strip() == GENERATOR_VERSION:
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    _chexfusion("synth", "--out", folder, "--studies", studies, "--image-size", image_size, "--seed", seed,
                log_name=f"synth-{folder.name}")
    stamp.write_text(GENERATOR_VERSION + "\n")
    return folder


def data_overrides(data: Path) -> list[str]:
    return [f"data.image_root={data}", f"data.train_csv={data / 'train.csv'}",
            f"data.val_csv={data / 'development.csv'}", f"data.test_csv={data / 'test.csv'}"]


def _train(command: str, config: Path, run_dir: Path, overrides: list[str]) -> Path:
    argv = [command, "--config", config, f"name={run_dir.name}", f"output_dir={run_dir.parent}", *overrides]
    result = _chexfusion(*argv, log_name=f"{command}-{run_dir.name}", check=False)
    if result.returncode == 2 and "was made with" in result.stderr:  # the configs changed since: train afresh
        shutil.rmtree(run_dir)
        result = _chexfusion(*argv, log_name=f"{command}-{run_dir.name}", check=False)
    if result.returncode != 0:
        raise RuntimeError(f"chexfusion {command} failed: {result.stderr.strip()[-500:]}")
    return run_dir


def stage1_run(data: Path, epochs: int = 1) -> Path:
    """A stage-1 run of the demo config (convnext_atto, 128 px) on ``data``; weights only need to exist."""
    return _train("stage1", STAGE1_CONFIG, OUT / "stage1" / f"{data.name}-e{epochs}",
                  data_overrides(data) + [f"train.epochs={epochs}"])


def _stage2_overrides(data: Path, store: Path, stage1: Path) -> list[str]:
    return data_overrides(data) + [f"features.store={store}", f"features.shared_backbone={stage1}"]


def feature_store(data: Path, stage1: Path) -> Path:
    """The demo config's feature store of ``stage1``'s backbone over every split of ``data``."""
    store = OUT / "features" / stage1.name
    _chexfusion("features", "--config", STAGE2_CONFIG, *_stage2_overrides(data, store, stage1),
                log_name=f"features-{stage1.name}")
    return store


def stage2_run(data: Path, stage1: Path, store: Path, epochs: int = 1) -> Path:
    """A stage-2 run of the demo config on ``store``: self-contained, so ``predict`` runs it on raw images."""
    return _train("stage2", STAGE2_CONFIG, OUT / "stage2" / f"{stage1.name}-e{epochs}",
                  _stage2_overrides(data, store, stage1) + [f"train.epochs={epochs}"])


def subset_csv(source: Path, rows: int, dest: Path) -> Path:
    """The header and the first ``rows`` rows of a CXR-LT CSV (a smaller epoch of the same data)."""
    import csv

    with open(source, newline="") as fh:
        lines = list(csv.reader(fh))
    if rows > len(lines) - 1:
        raise SystemExit(f"{source} has only {len(lines) - 1} rows, {rows} asked for")
    with open(dest, "w", newline="") as fh:
        csv.writer(fh).writerows(lines[: rows + 1])
    return dest


def write_result(name: str, result: dict) -> Path:
    """Keep a benchmark's JSON result as benchmarks/out/NAME.json (scale_plan.py reads them)."""
    from chexfusion.io import atomic_write_json

    path = OUT / f"{name}.json"
    atomic_write_json(path, json.loads(json.dumps(result)))
    return path
