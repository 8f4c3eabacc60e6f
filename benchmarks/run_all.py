"""Run every benchmark and write benchmarks/RESULTS.md: one table of figures, targets, met or not and why.

Runs each ``benchmarks/*.py`` (but this file) in its own process, in name order
with ``scale_plan.py`` last (it reads the others' results), and takes the last
line of each one's stdout as its JSON result (kept as benchmarks/out/NAME.json).
The target comes from the script's own docstring (its ``Target:`` or
``Targets:`` sentence) and met / not met from its ``meets_target`` (or
``targets_met``) field; when a target is missed, the benchmark's ``note`` says
why. Ratios are measured side by side inside each benchmark, so the table
holds on a machine that other jobs share; the machine and its load are
recorded with the date.

Exit status 1 when a benchmark crashed (the table still lists it), else 0,
whether or not every target was met: the table says which were not.

    python benchmarks/run_all.py [--only NAME ...] [--skip NAME ...] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import support

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
LAST = ("scale_plan",)  # read the results of the others
# needs a CUDA device and its own data at 1024 px: `make gpu-check`, its figures go to RESULTS.md by hand with the GPU
SEPARATE = ("gpu_check",)
MAX_FIGURES = 6


def benchmark_names() -> list[str]:
    names = sorted(p.stem for p in HERE.glob("*.py") if p.stem != Path(__file__).stem and p.stem not in SEPARATE)
    return [n for n in names if n not in LAST] + [n for n in LAST if n in names]


def declared_target(name: str) -> str | None:
    """The ``Target: ...`` / ``Targets: ...`` sentence of a benchmark's module docstring."""
    doc = ast.get_docstring(ast.parse((HERE / f"{name}.py").read_text())) or ""
    match = re.search(r"Targets?:\s*(.+?)\.(?:\s|$)", " ".join(doc.split()))
    return match.group(1) if match else None


def run_one(name: str, timeout: int) -> dict:
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(HERE / f"{name}.py")], cwd=support.REPO, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"name": name, "error": f"timed out after {timeout} s", "seconds": time.perf_counter() - started}
    seconds = time.perf_counter() - started
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"name": name, "error": f"exit {proc.returncode}: {tail}", "seconds": seconds}
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"name": name, "error": "last stdout line is not JSON", "seconds": seconds}
    support.write_result(name, result)
    return {"name": name, "result": result, "seconds": seconds}


def _number(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def headline_figures(result: dict, target: str | None) -> list[str]:
    """The figures a target names first, then the other top-level ratios and rates; scalars only."""
    scalars = {k: v for k, v in result.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "target"}
    named = [k for k in scalars if target and re.search(rf"\b{re.escape(k)}\b", target)]
    others = [k for k in scalars if k not in named and ("ratio" in k or k.endswith("_per_s") or k.endswith("_gb")
                                                       or k.endswith("_hours_1gpu") or k.endswith("_8gpu"))]
    return [f"{k} {_number(scalars[k])}" for k in (named + others)[:MAX_FIGURES]]


def missed_clauses(result: dict, target: str | None) -> list[str]:
    """The ``name >= value`` / ``name <= value`` clauses of a target that the result misses."""
    missed = []
    for key, op, bound in re.findall(r"\b(\w+)\s*(>=|<=)\s*(-?[\d.]+)", target or ""):
        value = result.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            ok = value >= float(bound) if op == ">=" else value <= float(bound)
            if not ok:
                missed.append(f"{key} {_number(value)} (target {op} {bound})")
    return missed


def verdict(result: dict) -> str:
    met = result.get("meets_target", result.get("targets_met"))
    return "n/a" if met is None else ("met" if met else "**not met**")


def render(rows: list[dict], machine: dict, started: dt.datetime, load_end: float | None) -> str:
    out = ["# Benchmark results", "",
           f"Run {started:%Y-%m-%d %H:%M} UTC by `benchmarks/run_all.py` (`make bench`); regenerated on every run.",
           "",
           f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gb']} GB RAM; Python "
           f"{machine['python']}, torch {machine['torch']}, timm {machine['timm']}. Load average (1 min) "
           f"{machine['load_average_1min']} at the start, {load_end} at the end: the cores are shared with other "
           "jobs, so each benchmark measures its two sides alternately in one process and reports ratios of medians.",
           "",
           "| benchmark | figures | target | result | why / notes |",
           "|---|---|---|---|---|"]
    for row in rows:
        name = row["name"]
        target = declared_target(name) or "-"
        if "error" in row:
            out.append(f"| {name} | - | {target} | **failed** | {row['error']} |")
            continue
        result = row["result"]
        figures = "; ".join(headline_figures(result, target)) or "-"
        notes = result.get("note", "")
        if result.get("meets_target", result.get("targets_met")) is False:
            missed = "; ".join(missed_clauses(result, target))
            notes = f"{missed}: {notes}" if notes else (missed or "see the benchmark's output")
        if name == "scale_plan":
            notes = f"writes {result.get('doc', 'docs/scale.md')}"
        out.append(f"| {name} | {figures} | {target} | {verdict(result)} | {notes} |".replace("\n", " "))
    out += ["", "Wall time per benchmark: " + ", ".join(f"{r['name']} {r['seconds']:.0f} s" for r in rows) + ".",
            "", "Raw results: `benchmarks/out/NAME.json` (git-ignored); each script's docstring says what it measures.",
            ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="run only these benchmarks")
    parser.add_argument("--skip", nargs="*", default=[], help="do not run these benchmarks")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per benchmark")
    args = parser.parse_args(argv)

    names = [n for n in benchmark_names() if (args.only is None or n in args.only) and n not in args.skip]
    unknown = set(args.only or []) - set(benchmark_names())
    if unknown:
        parser.error(f"no benchmark called {', '.join(sorted(unknown))} (have: {', '.join(benchmark_names())})")
    started, machine = dt.datetime.now(dt.timezone.utc), support.machine_info()
    rows = []
    for name in names:
        print(f"== {name}", flush=True)
        row = run_one(name, args.timeout)
        rows.append(row)
        print(f"   {row.get('error') or verdict(row['result'])} ({row['seconds']:.0f} s)", flush=True)
    load_end = support.machine_info()["load_average_1min"]
    from chexfusion.io import atomic_write_text

    atomic_write_text(RESULTS, render(rows, machine, started, load_end))
    print(f"wrote {RESULTS.relative_to(support.REPO)}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
