"""Feature-store write and read throughput against np.save / np.load, and streaming memory at 10x the size.

Stage 2 reads the whole store once per run (or streams it every epoch when it
is larger than memory), so loading it should cost about what loading a raw
NumPy dump of the same bytes costs, and streaming must not grow with the store.

Data: ``--rows`` images (default 2,000) with their ids, in studies of 1 to 4
images, at two map shapes (float16):

- ``recipe``: 768 x 8 x 8 (98 KB a row), the full recipe's convnext_small map
  pooled 8x8, the store docs/scale.md plans for real data. The targets are
  judged here: this is the size at which a store's speed matters.
- ``demo``: 320 x 4 x 4 (10 KB a row), the laptop demo's convnext_atto at
  128 px; its whole store loads in milliseconds, and its per-row costs (ids,
  DataFrame, study index: ~100 B a row against 10 KB of map) weigh ten times
  more than at the recipe's size. Reported as ``demo_*``.

- write: the store's shard writer (``writer.write_shard_file``: Parquet encode,
  each row group hashed from its Arrow buffers as it is written, write under a
  temporary name, rename) for every shard, plus the manifest; against
  ``np.save`` of the features and an ids array.
  ``write_ratio_without_checksum``: Parquet alone; ``checksum_write_overhead``:
  the shard writer's time over Parquet alone's, minus 1.
- read: ``FeatureStore.load_split`` (the maps as zero-copy views of the decoded
  row groups, the metadata as a DataFrame, the study index; every row group
  checked against its checksums) against ``np.load`` of the two arrays.
- verification: each reader with its checks and without
  (``FeatureStore(path, verify=False)``): stage 2's in-memory reader,
  ``map_split`` writing the split's mapped copy from the shards (its first
  call, the one that reads the store); its streaming reader, ``iter_studies``
  in store order (the split's metadata, then one row group at a time); and
  ``load_split``. ``verified_read_ratio_memory`` / ``_stream`` /
  ``_load_split``: verified speed over unverified. ``load_split`` maps the
  shards and decodes the maps without copying them, so unverified it never
  touches them (their pages are read when used), verified it reads them all:
  its ratio prices that first read, and has no target.
- every timing is one operation in a fresh process, the operations taking turns,
  each after ``os.sync`` (so no write pays for another's writeback), after a
  warm-up on a file of two row groups (``WARM_ROWS``): a store is loaded once per stage-2 run, and timing a loop instead
  measures the allocator (a 20 MB array re-read in a loop lands in memory that
  is already mapped, which no real load gets). Files are in the page cache.
- the ``list`` layout (fixed_size_list<float16>) is measured too, for reference
  (demo shape only: it is ~10x slower).
- memory: ``iter_studies`` (shuffle buffer of 64 studies) over a 1x and a
  ``--scale``x store of the demo shape, each in a fresh process;
  ``memory_growth`` = peak RSS at the larger size / at 1x.

Targets: read_ratio >= 0.8, write_ratio >= 0.5, memory_growth <= 1.2, checksum_write_overhead <= 0.2,
verified_read_ratio_memory >= 0.9, verified_read_ratio_stream >= 0.9 (stage 2's two readers). Each figure
is the fastest of ``--repeats`` fresh processes (see ``timed``). Last line of stdout: one JSON object.

    python benchmarks/feature_store.py [--rows N] [--repeats R] [--scale 10]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from chexfusion.feature_store import FeatureConfig, FeatureStore
from chexfusion.feature_store import manifest as mf
from chexfusion.feature_store.reader import MAPPED_DIR
from chexfusion.feature_store.schema import shard_table, write_parquet

TARGETS = {"read_ratio": 0.8, "write_ratio": 0.5, "memory_growth": 1.2, "checksum_write_overhead": 0.2,
           "verified_read_ratio_memory": 0.9, "verified_read_ratio_stream": 0.9}
AT_MOST = ("memory_growth", "checksum_write_overhead")
SHAPES = {"recipe": (768, 8, 8), "demo": (320, 4, 4)}
# The warm-up input holds two full row groups: a process's first decode of a row-group-sized buffer pays a one-time
# cost (the allocator mapping fresh memory: 20-70 ms here, varying from run to run), which a real epoch over a
# store of the recipe's 100+ GB pays once; warmed on less, the timed read below is mostly that cost, not throughput.
WARM_ROWS = 2 * FeatureConfig().row_group_rows
OPERATIONS = ("write-numpy", "write-store", "write-store-without-checksum", "write-list", "read-numpy",
              "read-store", "read-store-unverified", "map-store", "map-store-unverified", "stream-store",
              "stream-store-unverified", "read-list")
LIST_SHAPES = ("demo",)  # the list layout is measured at the small shape only


def synthetic_split(rows: int, width: int, seed: int) -> tuple[dict, np.ndarray]:
    """Metadata columns (studies of 1-4 images, contiguous) and float16 features [rows, width]."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, size=rows)
    study = np.repeat(np.arange(len(sizes)), sizes)[:rows]
    columns = {
        "dicom_id": np.array([f"{i:08x}-{seed:04x}-dicom" for i in range(rows)], dtype=object),
        "study_id": np.array([f"5{s:07d}" for s in study], dtype=object),
        "subject_id": np.array([f"1{s // 3:07d}" for s in study], dtype=object),
        "view": rng.choice(np.array(["frontal", "lateral", "unknown"], dtype=object), size=rows, p=[.6, .36, .04]),
        "split": np.full(rows, "train", dtype=object),
        "csv_row": np.arange(rows, dtype=np.int32),
    }
    features = np.empty((rows, width), np.float16)
    for start in range(0, rows, 4096):  # in blocks: no float32 copy of a large split
        block = features[start:start + 4096]
        block[:] = rng.standard_normal(block.shape, dtype=np.float32)
    return columns, features


def width_of(shape: tuple[int, int, int]) -> int:
    return int(np.prod(shape))


def write_store(folder: Path, columns: dict, features: np.ndarray, shape: tuple[int, int, int],
                layout: str = "binary", with_checksum: bool = True):
    """A one-split store written shard by shard as the writer writes it, manifest included."""
    from chexfusion.feature_store.writer import write_shard_file  # imports torch: kept out of the read children
    from chexfusion.io import atomic_path

    cfg = FeatureConfig(layout=layout)
    folder.mkdir(parents=True)
    shards = []
    for k, start in enumerate(range(0, len(features), cfg.shard_rows)):
        part = slice(start, start + cfg.shard_rows)
        table = shard_table({c: v[part] for c, v in columns.items()}, features[part], cfg.dtype, layout, shape)
        name = mf.shard_file_name("train", k)
        if with_checksum:
            written = write_shard_file(table, folder / name, cfg.row_group_rows)
        else:  # the shard writer's path, less the hashing
            with atomic_path(folder / name) as tmp:
                write_parquet(table, tmp, cfg.row_group_rows)
            written = {"checksum": ""}
        shards.append({"file": name, "rows": len(table), **written, "skipped": []})
    expected = {"routing": "shared", "unknown_view": None, "backbones": {}, "preprocess": {}, "image_size": 0,
                "feature_shape": list(shape), "pool": None, "shape": list(shape), "dtype": cfg.dtype,
                "splits": {"train": {"csv": "", "csv_sha256": "", "image_root": ""}}}
    manifest = {**mf.new_manifest(expected, cfg), "complete": True}
    manifest["splits"]["train"].update(rows=len(features), images_in_csv=len(features), skipped=[], shards=shards)
    mf.write_manifest(folder, manifest)


def save_numpy(folder: Path, columns: dict, features: np.ndarray) -> None:
    folder.mkdir(parents=True)
    np.save(folder / "features.npy", features)
    np.save(folder / "ids.npy", np.array(columns["dicom_id"].tolist()))  # fixed-width unicode, no pickle


def load_numpy(folder: Path):
    return np.load(folder / "features.npy"), np.load(folder / "ids.npy")


# ---- one timed operation per process -------------------------------------------------------------------------


def child_operation(op: str, work: Path, rows: int, shape: tuple[int, int, int]) -> float:
    """Warm the code path on a small input, then time ``op`` once on the full data; seconds."""
    kind, what = op.split("-", 1)
    if kind == "write":
        columns, features = synthetic_split(rows, width_of(shape), seed=0)
        small = {c: v[:WARM_ROWS] for c, v in columns.items()}, features[:WARM_ROWS]
        writers = {
            "numpy": lambda folder, data: save_numpy(folder, *data),
            "store": lambda folder, data: write_store(folder, *data, shape),
            "store-without-checksum": lambda folder, data: write_store(folder, *data, shape, with_checksum=False),
            "list": lambda folder, data: write_store(folder, *data, shape, layout="list"),
        }
        scratch = Path(tempfile.mkdtemp(dir=work))
        try:
            writers[what](scratch / "warm", small)
            start = time.perf_counter()
            writers[what](scratch / "out", (columns, features))
            return time.perf_counter() - start
        finally:
            shutil.rmtree(scratch)
    readers = {"numpy": load_numpy, "store": lambda folder: FeatureStore(folder).load_split("train"),
               "store-unverified": lambda folder: FeatureStore(folder, verify=False).load_split("train"),
               "list": lambda folder: FeatureStore(folder).load_split("train")}
    if kind == "stream":
        readers = {"store": lambda folder: stream_all(FeatureStore(folder)),
                   "store-unverified": lambda folder: stream_all(FeatureStore(folder, verify=False))}
    if kind == "map":
        readers = {"store": lambda folder: fresh_map(FeatureStore(folder)),
                   "store-unverified": lambda folder: fresh_map(FeatureStore(folder, verify=False))}
    source = {"numpy": "numpy", "store": "store", "store-unverified": "store", "list": "store-list"}[what]
    readers[what](work / f"warm-{source}")
    start = time.perf_counter()
    readers[what](work / source)
    return time.perf_counter() - start


def stream_all(store: FeatureStore) -> int:
    """Every study of the split streamed in store order (the maps are views of each decoded row group)."""
    return sum(len(study.views) for study in store.iter_studies("train"))


def fresh_map(store: FeatureStore):
    """``map_split`` as its first call runs it: the mapped copy written from the shards, then mapped."""
    shutil.rmtree(store.path / MAPPED_DIR, ignore_errors=True)
    return store.map_split("train")


def timed(ops: list[str], work: Path, shape_name: str, args) -> dict[str, float]:
    """Seconds of each of ``ops``: the fastest of ``args.repeats`` fresh processes.

    The fastest, not the median: on this machine the same operation measured 80 to 220 ms from one process to
    the next (the allocator's first mapping of fresh memory, page-cache writeback, a shared host), noise that
    only ever adds time, and a median of five still landed in either mode, so that ratios of medians swung from
    0.2 to 2 between runs of the same code. The operations take turns (one run of each, ``repeats`` times) and
    each starts after ``os.sync``: a file write lands in the page cache, and the kernel slows writers down while
    earlier writes are still dirty, so running one side's repeats after the other's would bill one side for the
    other's writeback.
    """
    times: dict[str, list[float]] = {op: [] for op in ops}
    for _ in range(args.repeats):
        for op in ops:
            os.sync()
            out = subprocess.run([sys.executable, __file__, "--child", op, "--work", str(work), "--rows",
                                  str(args.rows), "--shape", shape_name], capture_output=True, text=True, check=True)
            times[op].append(float(out.stdout.strip().splitlines()[-1]))
    return {op: min(t) for op, t in times.items()}


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over from the parent
    across fork + exec, so a child of a big parent would report the parent's peak."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def stream_child(path: Path, buffer: int) -> dict:
    """Stream every study once; baseline (store opened) and peak RSS in MB."""
    store = FeatureStore(path)
    baseline = peak_rss_mb()
    studies = images = 0
    for study in store.iter_studies("train", shuffle_buffer=buffer, seed=0, epoch=0):
        studies += 1
        images += len(study.dicom_ids)
    return {"baseline_rss_mb": baseline, "peak_rss_mb": peak_rss_mb(), "studies": studies, "images": images,
            "stats": store.last_stream_stats.__dict__}


def stream_peak(path: Path, buffer: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--stream", str(path), "--buffer", str(buffer)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def prepare_inputs(work: Path, rows: int, shape: tuple[int, int, int], with_list: bool) -> None:
    columns, features = synthetic_split(rows, width_of(shape), seed=0)
    save_numpy(work / "numpy", columns, features)
    write_store(work / "store", columns, features, shape)
    small_columns, small_features = synthetic_split(WARM_ROWS, width_of(shape), seed=2)
    save_numpy(work / "warm-numpy", small_columns, small_features)
    write_store(work / "warm-store", small_columns, small_features, shape)
    if with_list:
        write_store(work / "store-list", columns, features, shape, layout="list")
        write_store(work / "warm-store-list", small_columns, small_features, shape, layout="list")
    assert np.array_equal(FeatureStore(work / "store").load_split("train").features, features)


def measure_shape(work: Path, name: str, args) -> dict:
    """MB/s of every operation at map shape ``name`` (fastest of fresh processes), and the ratios."""
    shape, with_list = SHAPES[name], name in LIST_SHAPES
    prepare_inputs(work, args.rows, shape, with_list)
    ops = [op for op in OPERATIONS if with_list or not op.endswith("-list")]
    mb = args.rows * width_of(shape) * 2 / 1e6
    speed = {op: mb / seconds for op, seconds in timed(ops, work, name, args).items()}
    found = {
        "read_ratio": speed["read-store"] / speed["read-numpy"],
        "write_ratio": speed["write-store"] / speed["write-numpy"],
        "write_ratio_without_checksum": speed["write-store-without-checksum"] / speed["write-numpy"],
        "verified_read_ratio_memory": speed["map-store"] / speed["map-store-unverified"],
        "verified_read_ratio_load_split": speed["read-store"] / speed["read-store-unverified"],
        "verified_read_ratio_stream": speed["stream-store"] / speed["stream-store-unverified"],
        "mb": mb, "mb_s": {op: round(v, 1) for op, v in speed.items()},
        "store_file_mb": sum(p.stat().st_size for p in (work / "store").glob("*.parquet")) / 1e6,
    }
    if with_list:
        found["list_layout_read_ratio"] = speed["read-list"] / speed["read-numpy"]
        found["list_layout_write_ratio"] = speed["write-list"] / speed["write-numpy"]
    return found


def explain_misses(result: dict, demo: dict) -> str:
    """Why the targets that were missed were missed (the run's own figures)."""
    machine, notes = result["machine"], []
    if result["write_ratio"] < TARGETS["write_ratio"]:
        notes.append(
            f"pyarrow's Parquet writer alone writes at {result['write_ratio_without_checksum']:.2f} of np.save's "
            f"speed (no compression, dictionary or statistics on the maps; page sizes 1-512 MB, write batches of "
            f"64-4096 values and the system or jemalloc pools measured no faster): its encoder copies every map "
            f"into page buffers and writes those page by page, where np.save hands the array to the kernel as it "
            f"is. The row-group checksums, hashed on a second thread while each row group is encoded, cost "
            f"{result['checksum_write_overhead']:+.0%} on top")
    verified = {k: result[k] for k in ("verified_read_ratio_memory", "verified_read_ratio_stream")}
    if min(verified.values()) < TARGETS["verified_read_ratio_memory"]:
        notes.append(
            f"a verified read hashes every row group it decoded (XXH3, on a second thread while the next row group "
            f"is decoded): verified over unverified {verified['verified_read_ratio_memory']:.2f} in memory "
            f"(map_split), {verified['verified_read_ratio_stream']:.2f} streamed, on {machine['cores']} cores "
            f"(load average {machine['load_average_1min']} at the end)")
    if result["read_ratio"] < TARGETS["read_ratio"] or result["memory_growth"] > TARGETS["memory_growth"]:
        notes.append(f"read {result['read_ratio']:.2f} of np.load, streaming memory growth "
                     f"{result['memory_growth']:.2f}, on {machine['cores']} cores (load average "
                     f"{machine['load_average_1min']} at the end)")
    notes.append(f"at the demo's 10 KB rows, per-row ids and index weigh more: read {demo['read_ratio']:.2f}, "
                 f"write {demo['write_ratio']:.2f}")
    return "; ".join(notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scale", type=int, default=10, help="size of the large store for the memory test")
    parser.add_argument("--buffer", type=int, default=64, help="shuffle buffer (studies) when streaming")
    parser.add_argument("--child", choices=OPERATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="recipe", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stream", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(child_operation(args.child, args.work, args.rows, SHAPES[args.shape]))
        return
    if args.stream:
        print(json.dumps(stream_child(args.stream, args.buffer)))
        return

    shapes = {}
    for name in SHAPES:
        with tempfile.TemporaryDirectory() as tmp:
            shapes[name] = measure_shape(Path(tmp), name, args)
    with tempfile.TemporaryDirectory() as tmp:  # streaming memory, demo shape: 1x and --scale x
        work, shape = Path(tmp), SHAPES["demo"]
        write_store(work / "small", *synthetic_split(args.rows, width_of(shape), seed=0), shape)
        write_store(work / "big", *synthetic_split(args.rows * args.scale, width_of(shape), seed=1), shape)
        small, large = stream_peak(work / "small", args.buffer), stream_peak(work / "big", args.buffer)

    recipe, demo = shapes["recipe"], shapes["demo"]
    result = {
        "read_ratio": recipe["read_ratio"],
        "write_ratio": recipe["write_ratio"],
        "memory_growth": large["peak_rss_mb"] / small["peak_rss_mb"],
        "write_ratio_without_checksum": recipe["write_ratio_without_checksum"],
        "checksum_write_overhead": recipe["write_ratio_without_checksum"] / recipe["write_ratio"] - 1,
        "verified_read_ratio_memory": recipe["verified_read_ratio_memory"],
        "verified_read_ratio_stream": recipe["verified_read_ratio_stream"],
        "verified_read_ratio_load_split": recipe["verified_read_ratio_load_split"],
        "demo_read_ratio": demo["read_ratio"],
        "demo_write_ratio": demo["write_ratio"],
        "demo_write_ratio_without_checksum": demo["write_ratio_without_checksum"],
        "list_layout_read_ratio": demo["list_layout_read_ratio"],
        "list_layout_write_ratio": demo["list_layout_write_ratio"],
        "rows": args.rows, "repeats": args.repeats, "shapes": {k: list(v) for k, v in SHAPES.items()},
        "recipe": recipe, "demo": demo, "stream_1x": small, f"stream_{args.scale}x": large,
    }
    import support  # benchmarks/support: imports torch, so only here in the parent

    result["machine"] = support.machine_info()
    result["targets_met"] = all((result[k] <= v) if k in AT_MOST else (result[k] >= v) for k, v in TARGETS.items())
    if not result["targets_met"]:
        result["note"] = explain_misses(result, demo)
    for name, found in shapes.items():
        speed = found["mb_s"]
        print(f"{name} {SHAPES[name]}: {found['mb']:.1f} MB of float16 maps ({args.rows} rows); fastest of "
              f"{args.repeats} fresh processes")
        print(f"  write: store {speed['write-store']:.0f} MB/s ({speed['write-store-without-checksum']:.0f} without "
              f"checksum), np.save {speed['write-numpy']:.0f} MB/s -> ratio {found['write_ratio']:.2f} "
              f"({found['write_ratio_without_checksum']:.2f})")
        print(f"  read:  store {speed['read-store']:.0f} MB/s ({speed['read-store-unverified']:.0f} unverified), "
              f"np.load {speed['read-numpy']:.0f} MB/s -> ratio {found['read_ratio']:.2f}")
        print(f"  mapped copy: {speed['map-store']:.0f} MB/s ({speed['map-store-unverified']:.0f} unverified); "
              f"streamed: {speed['stream-store']:.0f} MB/s ({speed['stream-store-unverified']:.0f} unverified)")
        print(f"  verified over unverified: in memory (map_split) {found['verified_read_ratio_memory']:.2f}, "
              f"streamed {found['verified_read_ratio_stream']:.2f}, load_split "
              f"{found['verified_read_ratio_load_split']:.2f}")
        if "read-list" in speed:
            print(f"  list layout: write {speed['write-list']:.0f} MB/s, read {speed['read-list']:.0f} MB/s")
    print(f"targets (recipe shape): read >= {TARGETS['read_ratio']}, write >= {TARGETS['write_ratio']}")
    print(f"streaming peak RSS (demo shape): {small['peak_rss_mb']:.0f} MB at 1x, {large['peak_rss_mb']:.0f} MB at "
          f"{args.scale}x -> growth {result['memory_growth']:.3f}; target <= {TARGETS['memory_growth']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
