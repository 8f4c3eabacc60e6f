"""Stage 2's scale-out data path: each process and worker reads only its share of the store; one copy per machine.

Data: a synthetic store of ``--gb`` GB (default 2.2) of maps at the full
recipe's pooled 768 x 8 x 8 float16 (98 KB an image), studies of 1 to 4
images, written by the store's own shard writer (row groups of at most 256
rows and shards of at most 1,024, both of whole studies). The number of
studies is a multiple of 2 processes x 32 studies a batch, so an epoch leaves
none for the next one. Built once under benchmarks/out/. An epoch reads about
1 + (processes x lanes - 1) / row groups of the store (a share's boundary
falls inside a row group, which both neighbours read), so the store must hold
many row groups per lane: 2.2 GB is 103 of them, 1.07 x by that count (1 GB,
about 50, would be ~1.14 x before the metadata and footers; the full recipe's
415 GB split on 8 GPUs, 1.03 x).

- streamed epoch with 2 processes x 2 DataLoader workers (``torch.distributed``
  with gloo on the CPU) and with 1 x 1: ``ShardedSource`` -> ``StudyItems`` ->
  ``collate_studies``, 32 studies a batch, the data path alone (no model).
  Bytes read: ``rchar`` of /proc/<pid>/io of every process and of each of its
  workers, from before the store is opened to the end of the epoch, summed
  (it counts every read() including page-cache hits, so a warm cache cannot
  hide a second read of the same bytes). ``read_amplification``: those bytes
  over the size of the store's shard files. ``studies_seen_once``: the study
  indices of every batch, gathered over gloo, hold every study exactly once.
  ``epoch_time_ratio``: 1 x 1 epoch seconds over 2 x 2.
- in memory: 2 processes and then 1 map the split (``FeatureStore.map_split``,
  its Arrow IPC copy written beforehand) and read every map. Memory is the
  proportional set size (Pss, /proc/<pid>/smaps_rollup: a page two processes
  share counts half in each), sampled every 20 ms, its peak summed over the
  processes; RSS would count the shared page-cache copy once in every process,
  the very double count measured here. ``node_memory_ratio``: the 2 processes'
  peak over the 1 process's.

Targets: read_amplification <= 1.15, studies_seen_once, node_memory_ratio <= 1.3. Last line of stdout: one JSON
object.

    python benchmarks/stage2_scaleout.py [--gb 2.2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import support

SHAPE, DTYPE, BATCH, LANES, SHUFFLE_BUFFER = (768, 8, 8), "float16", 32, 4, 256
ROW_GROUP_ROWS, SHARD_ROWS = 256, 1024
TARGETS = {"read_amplification": 1.15, "node_memory_ratio": 1.3}


def build_store(folder: Path, gigabytes: float, processes: int) -> Path:
    """The synthetic store (kept while its manifest exists)."""
    from chexfusion.feature_store import manifest as mf
    from chexfusion.feature_store.schema import shard_table, study_runs
    from chexfusion.feature_store.writer import write_shard_file

    if (folder / mf.MANIFEST_NAME).is_file() and mf.read_manifest(folder).get("row_group_checksums"):
        return folder
    shutil.rmtree(folder, ignore_errors=True)  # absent, or written before row-group checksums
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    width = int(np.prod(SHAPE))
    images = int(gigabytes * 1e9 / (width * 2))
    sizes = rng.integers(1, 5, images)
    studies = int(np.searchsorted(np.cumsum(sizes), images)) // (processes * BATCH) * (processes * BATCH)
    study_of = np.repeat(np.arange(studies), sizes[:studies])
    ids = np.array([f"s{s:07d}" for s in study_of], dtype=object)
    shards = []
    for k, (start, stop) in enumerate(study_runs(ids, SHARD_ROWS)):
        n = stop - start
        columns = {"dicom_id": [f"d{i:08d}" for i in range(start, stop)], "study_id": ids[start:stop],
                   "subject_id": ids[start:stop], "view": ["frontal"] * n, "split": ["train"] * n,
                   "csv_row": np.arange(start, stop)}
        maps = rng.standard_normal((n, width), dtype=np.float32).astype(np.float16)
        name = mf.shard_file_name("train", k)
        written = write_shard_file(shard_table(columns, maps, DTYPE, "binary", SHAPE), folder / name, ROW_GROUP_ROWS)
        shards.append({"file": name, "rows": n, **written, "skipped": []})
    mf.write_manifest(folder, {"format": mf.FORMAT, "format_version": mf.FORMAT_VERSION, "complete": True,
                               "shape": list(SHAPE), "dtype": DTYPE, "layout": "binary", "pool": None,
                               "shard_rows": SHARD_ROWS, "row_group_rows": ROW_GROUP_ROWS, "study_aligned": True,
                               "row_group_checksums": True,
                               "splits": {"train": {"rows": len(ids), "skipped": [], "shards": shards}}})
    return folder


def rchar(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError(f"no rchar in /proc/{pid}/io")


def stream_child(store_path: str, rank: int, world: int, workers: int, port: int, out: str) -> None:
    """One process of the streamed epoch: its share, read by ``workers`` workers; writes its figures to ``out``."""
    import psutil
    import torch
    import torch.distributed as dist

    from chexfusion.feature_store import FeatureStore
    from chexfusion.stage2.studies import ShardedSource, StudyItems, collate_studies

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    read_before = rchar()
    dist.barrier()
    started = time.perf_counter()
    store = FeatureStore(store_path)
    source = ShardedSource(store, "train", seed=0, batch=BATCH, rank=rank, world=world, lanes=LANES,
                           shuffle_buffer=SHUFFLE_BUFFER)
    labels = np.zeros((len(source.layout), 1), np.float32)
    loader = torch.utils.data.DataLoader(StudyItems(source, labels, labels, max_images=16), batch_size=BATCH,
                                         collate_fn=collate_studies, num_workers=workers, drop_last=True,
                                         persistent_workers=workers > 0)
    seen = [int(s) for batch in loader for s in batch["study"]]
    worker_bytes = sum(rchar(child.pid) for child in psutil.Process().children())  # alive: persistent
    dist.barrier()
    seconds = time.perf_counter() - started
    every = [None] * world
    dist.all_gather_object(every, seen)
    if rank == 0:
        studies = [s for part in every for s in part]
        Path(out).write_text(json.dumps({"studies": studies, "num_studies": len(source.layout),
                                         "seconds": seconds}))
    Path(f"{out}.{rank}").write_text(json.dumps({"bytes": rchar() - read_before + worker_bytes}))
    del loader
    dist.destroy_process_group()


def memory_child(store_path: str, hold_seconds: float) -> None:
    """Map the split, read every map, hold it while the parent samples memory."""
    from chexfusion.feature_store import FeatureStore

    split = FeatureStore(store_path).map_split("train")
    total = sum(float(chunk.view(np.uint16).sum(dtype=np.uint64)) for chunk in split.chunks)
    time.sleep(hold_seconds)
    print(total)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child(*argv) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", *map(str, argv)]


def streamed_epoch(store: Path, world: int, workers: int, work: Path) -> dict:
    out, port = work / f"stream-{world}x{workers}.json", free_port()
    procs = [subprocess.Popen(child("stream", store, rank, world, workers, port, out), cwd=support.REPO)
             for rank in range(world)]
    if any(p.wait() for p in procs):
        raise RuntimeError("a streaming process failed")
    found = json.loads(out.read_text())
    found["bytes"] = sum(json.loads(Path(f"{out}.{r}").read_text())["bytes"] for r in range(world))
    return found


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def in_memory_peak_mb(store: Path, processes: int) -> float:
    """Peak of the summed Pss of ``processes`` processes mapping the split at once."""
    procs = [subprocess.Popen(child("memory", store, 3.0), cwd=support.REPO, stdout=subprocess.DEVNULL)
             for _ in range(processes)]
    peak = 0
    while any(p.poll() is None for p in procs):
        peak = max(peak, sum(pss_kb(p.pid) for p in procs))
        time.sleep(0.02)
    if any(p.returncode for p in procs):
        raise RuntimeError("an in-memory process failed")
    return peak / 1024


def measure(store: Path, work: Path) -> dict:
    from chexfusion.feature_store import FeatureStore

    opened = FeatureStore(store)
    size = sum((store / s["file"]).stat().st_size for s in opened.manifest["splits"]["train"]["shards"])
    opened.map_split("train")  # writes the mapped copy once, before the in-memory processes
    runs = {shape: streamed_epoch(store, *shape, work) for shape in ((2, 2), (1, 1))}
    two, one = runs[(2, 2)], runs[(1, 1)]
    seen = two["studies"]
    memory = {p: in_memory_peak_mb(store, p) for p in (1, 2)}
    return {
        "read_amplification": round(two["bytes"] / size, 4),
        "studies_seen_once": bool(len(seen) == len(set(seen)) == two["num_studies"]),
        "node_memory_ratio": round(memory[2] / memory[1], 3),
        "epoch_time_ratio": round(one["seconds"] / two["seconds"], 3),
        "read_amplification_1x1": round(one["bytes"] / size, 4),
        "studies_seen_once_1x1": bool(len(one["studies"]) == len(set(one["studies"])) == one["num_studies"]),
        "epoch_seconds_2x2": round(two["seconds"], 2), "epoch_seconds_1x1": round(one["seconds"], 2),
        "in_memory_peak_pss_mb": {"1": round(memory[1], 1), "2": round(memory[2], 1)},
        "store_gb": round(size / 1e9, 3), "studies": two["num_studies"], "images": opened.split_rows("train"),
        "batch_size_studies": BATCH, "stream_lanes": LANES, "shuffle_buffer": SHUFFLE_BUFFER,
        "row_group_rows": ROW_GROUP_ROWS, "shard_rows": SHARD_ROWS, "map_shape": list(SHAPE), "dtype": DTYPE,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gb", type=float, default=2.2, help="size of the synthetic store's maps")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "stream":
            stream_child(rest[0], int(rest[1]), int(rest[2]), int(rest[3]), int(rest[4]), rest[5])
        else:
            memory_child(rest[0], float(rest[1]))
        return
    work = support.OUT / "stage2_scaleout"
    work.mkdir(parents=True, exist_ok=True)
    store = build_store(work / f"store-{args.gb:g}gb", args.gb, processes=2)
    result = measure(store, work)
    result["meets_target"] = bool(result["read_amplification"] <= TARGETS["read_amplification"]
                                  and result["studies_seen_once"]
                                  and result["node_memory_ratio"] <= TARGETS["node_memory_ratio"])
    result["targets"] = TARGETS
    result["machine"] = support.machine_info()
    print(f"store {result['store_gb']} GB, {result['studies']} studies; streamed epoch 2 processes x 2 workers: "
          f"read {result['read_amplification']}x the store (1 x 1: {result['read_amplification_1x1']}x), every "
          f"study once: {result['studies_seen_once']}, {result['epoch_seconds_2x2']} s (1 x 1: "
          f"{result['epoch_seconds_1x1']} s); in memory, 2 processes hold {result['node_memory_ratio']}x one's")
    support.write_result("stage2_scaleout", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
