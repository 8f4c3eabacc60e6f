"""Helpers shared by the benchmarks: a demo dataset and tiny trained runs, built once under benchmarks/out/,
side-by-side timing, and a description of the machine.

A folder (not a ``benchmarks/*.py`` file) so that ``benchmarks/run_all.py`` and
``make bench`` do not mistake it for a benchmark. The benchmark scripts run as
``python benchmarks/NAME.py``, which puts ``benchmarks/`` on ``sys.path``, so
they import it as ``support``.
"""

from .artifacts import OUT, REPO, demo_data, feature_store, stage1_run, stage2_run, subset_csv, write_result
from .machine import machine_info
from .timing import interleaved, median_rate, set_threads

__all__ = ["OUT", "REPO", "demo_data", "stage1_run", "feature_store", "stage2_run", "subset_csv", "write_result",
           "machine_info", "interleaved", "median_rate", "set_threads"]
