"""Writing a feature store: plan the shards, extract the missing ones, then write the manifest.

Determinism: a split's images are put in *store order* -- studies in order of
first appearance in the CSV, each study's images in canonical order (frontal,
lateral, unknown; ties by dicom_id), the order ``predict`` uses too -- and that
order is cut into shards of at most ``shard_rows`` rows, and each shard into row
groups of at most ``row_group_rows``, never inside a study (minus unreadable
images when ``skip_bad_images``). What a shard holds therefore depends on the
data alone, never on timing or on the number of processes.

Resume and atomicity: a shard is written under a temporary name (each row
group hashed as it is written, ``checksums.py``) and renamed; then a sidecar
``_progress/<shard>.json`` records the checksums. A re-run keeps
every shard whose file matches its sidecar and writes only the others; the
manifest is written last, from the sidecars, and ``_progress`` removed, so an
interrupted-then-resumed store equals an uninterrupted one byte for byte.
A store whose manifest says it was made from other backbones, CSVs or settings
is rebuilt (the reason is printed).

Multi-process (``accelerate launch``): rank ``r`` writes the shards ``j`` with
``j % world_size == r`` (``j`` counts the shards of all splits); the main
process writes the manifest after every rank is done. Ranks share the store
folder, so it must be on a file system they all see.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io import atomic_path, atomic_write_json
from ..progress import tqdm
from . import checksums, integrity
from . import manifest as mf
from .config import FeatureConfig
from .reader import MAPPED_DIR
from .schema import META_COLUMNS, NUMPY_DTYPES, shard_table, study_runs, write_parquet

PROGRESS_DIR = "_progress"
# Test hook, for the resume test only: the process SIGKILLs itself after writing the temporary file of its
# N-th shard (0-based), before the rename -- the worst moment for a crash.
KILL_HOOK_ENV = "CHEXFUSION_TEST_KILL_AT_SHARD"
_shards_written = 0


@dataclass
class SplitPlan:
    name: str
    table: object  # CxrLtTable
    image_root: str
    order: np.ndarray  # table rows in store order


@dataclass
class ShardJob:
    split: str
    index: int
    rows: np.ndarray  # table rows of this shard, in store order

    @property
    def file_name(self) -> str:
        return mf.shard_file_name(self.split, self.index)


def plan_split(name: str, csv: str, image_root: str) -> SplitPlan:
    from ..data.cxr_lt import read_cxr_lt
    from .routing import study_ordered_rows

    table = read_cxr_lt(csv, classes=[])  # labels are not needed to extract features
    return SplitPlan(name, table, str(image_root), study_ordered_rows(table.frame))


def shard_jobs(plans: dict[str, SplitPlan], shard_rows: int) -> list[ShardJob]:
    """Each split's store order cut into shards of at most ``shard_rows`` rows of whole studies."""
    jobs = []
    for name, plan in plans.items():
        study_ids = plan.table.frame["study_id"].to_numpy(dtype=object)[plan.order]
        for k, (start, stop) in enumerate(study_runs(study_ids, shard_rows)):
            jobs.append(ShardJob(name, k, plan.order[start:stop]))
    return jobs


# ---- files of a store ----------------------------------------------------------------------------------


def _sidecar(store: Path, file_name: str) -> Path:
    return store / PROGRESS_DIR / (file_name + ".json")


def _own_files(store: Path) -> list[Path]:
    """Every file this writer may have created in ``store`` (never anything else)."""
    found = [p for p in store.glob("part-*.parquet")]
    found += [p for p in store.glob(".part-*.tmp")] + [p for p in store.glob(f".{mf.MANIFEST_NAME}.*.tmp")]
    manifest = store / mf.MANIFEST_NAME
    return found + ([manifest] if manifest.exists() else [])


def _remove_store_files(store: Path) -> None:
    manifest = store / mf.MANIFEST_NAME
    if manifest.exists():  # first, so a kill during the clean-up never leaves a 'complete' store behind
        manifest.unlink()
    for path in _own_files(store):
        path.unlink(missing_ok=True)
    shutil.rmtree(store / PROGRESS_DIR, ignore_errors=True)
    shutil.rmtree(store / MAPPED_DIR, ignore_errors=True)


def prepare_store(store: Path, header: dict, log) -> bool:
    """Main process, before any rank writes: True if the store is already complete and current.

    Removes temporary files a killed run left behind; starts over when the
    store was made from something else.
    """
    store.mkdir(parents=True, exist_ok=True)
    for tmp in list(store.glob(".part-*.tmp")) + list(store.glob(f".{mf.MANIFEST_NAME}.*.tmp")):
        tmp.unlink(missing_ok=True)
    try:
        current = mf.read_manifest(store)
    except UserError:
        current = None  # unreadable: rebuilt below
    if current is not None:
        why = mf.first_difference(current, header, mf.STORAGE_KEYS + mf.CONTENT_KEYS)
        if why is None and current.get("complete"):
            shutil.rmtree(store / PROGRESS_DIR, ignore_errors=True)  # a kill may fall just after the manifest
            problems = integrity.listing_problems(store, current) + integrity.checksum_problems(store, current)
            if not problems:
                return True
            for name, what in problems:
                log(f"feature store {store}: shard {name} {what}: rewriting it")
            reopen_damaged(store, current, {name for name, _ in problems})
            return False
        if why is None:
            return False  # resume: keep the shards and their sidecars
        log(f"feature store {store} was made differently ({why}): rebuilding it")
        _remove_store_files(store)
    elif _own_files(store) or (store / PROGRESS_DIR).exists():
        log(f"feature store {store} has shards but no manifest: rebuilding it")
        _remove_store_files(store)
    mf.write_manifest(store, header)
    return False


def reopen_damaged(store: Path, manifest: dict, damaged: set[str]) -> None:
    """Turn a complete store with damaged shards into an interrupted one that lacks them: the good shards get
    their sidecars back from the manifest, the damaged (and unlisted) files go, and the resume writes them."""
    for name, shard in integrity.listed_shards(manifest).items():
        if name not in damaged:
            atomic_write_json(_sidecar(store, name), {"file": name, "rows": shard["rows"],
                                                      "checksum": mf.recorded_checksum(shard),
                                                      "row_groups": shard.get("row_groups"),
                                                      "skipped": shard["skipped"], "skipped_errors": []})
    for name in damaged:
        (store / name).unlink(missing_ok=True)
    mf.write_manifest(store, {**manifest, "complete": False})


def shard_is_done(store: Path, job: ShardJob) -> bool:
    """The shard file exists and has the checksum its sidecar recorded when it was written."""
    sidecar, path = _sidecar(store, job.file_name), store / job.file_name
    if not (sidecar.is_file() and path.is_file()):
        return False
    try:
        recorded = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(recorded, dict) and mf.shard_matches(path, recorded)


def _test_kill_hook() -> None:
    global _shards_written
    target = os.environ.get(KILL_HOOK_ENV)
    if target is not None and _shards_written == int(target):
        os.kill(os.getpid(), signal.SIGKILL)
    _shards_written += 1


def write_shard_file(table, path: Path, row_group_rows: int) -> dict:
    """Write one shard atomically; return its ``checksum`` and ``row_groups`` records for the manifest.

    Each row group is hashed from the Arrow buffers handed to the Parquet writer, as it is written
    (``checksums.py``), so the file is never read back. Hashing the bytes pyarrow writes would need them in Python,
    and pyarrow hands a Python file object a copy of every write (pyarrow 26: ``bytes``, even behind a large
    ``pa.output_stream`` buffer), one more copy of every map.
    """
    with atomic_path(path) as tmp:
        records = write_parquet(table, tmp, row_group_rows, record=checksums.row_group_record)
        _test_kill_hook()
    return {"checksum": checksums.shard_checksum(records), "row_groups": records}


def _shard_columns(plan: SplitPlan, rows: np.ndarray) -> dict:
    frame = plan.table.frame
    columns = {name: frame[name].to_numpy(dtype=object)[rows] for name in ("dicom_id", "study_id", "subject_id",
                                                                           "view")}
    columns["split"] = np.full(len(rows), plan.name, dtype=object)
    columns["csv_row"] = rows.astype(np.int32)
    assert set(columns) == set(META_COLUMNS)
    return columns


def _shard_batches(jobs: list[ShardJob], batch_size: int) -> list[list[int]]:
    """Positions into the concatenated rows of ``jobs``, batched without crossing a shard boundary."""
    batches, offset = [], 0
    for job in jobs:
        n = len(job.rows)
        batches += [list(range(offset + s, offset + min(s + batch_size, n))) for s in range(0, n, batch_size)]
        offset += n
    return batches


def _extract_split_shards(store: Path, cfg: FeatureConfig, header: dict, plan: SplitPlan, jobs: list[ShardJob],
                          extractor, bar) -> None:
    """Extract and write the given shards of one split, one shard file as soon as its images are done."""
    rows = np.concatenate([job.rows for job in jobs])
    width = int(np.prod(header["shape"]))
    batches = extractor.batches(plan.table, plan.image_root, rows, _shard_batches(jobs, cfg.batch_size),
                                cfg.num_workers, cfg.skip_bad_images)
    dicom_ids = plan.table.frame["dicom_id"].to_numpy(dtype=object)
    try:
        for job in jobs:
            kept, maps, skipped, seen = [], [], [], 0
            while seen < len(job.rows):
                batch = next(batches)
                kept.append(batch.rows)
                maps.append(batch.maps)
                skipped += batch.skipped
                seen += len(batch.rows) + len(batch.skipped)
                bar.update(len(batch.rows) + len(batch.skipped))
            kept_rows = np.concatenate(kept) if kept else np.zeros(0, np.int64)
            features = np.concatenate(maps) if maps else np.zeros((0, width), NUMPY_DTYPES[cfg.dtype])
            table = shard_table(_shard_columns(plan, kept_rows), features, cfg.dtype, cfg.layout,
                                tuple(header["shape"]))
            written = write_shard_file(table, store / job.file_name, cfg.row_group_rows)
            atomic_write_json(_sidecar(store, job.file_name), {
                "file": job.file_name, "rows": len(kept_rows), **written,
                "skipped": [str(dicom_ids[r]) for r, _ in skipped], "skipped_errors": [e for _, e in skipped]})
    finally:
        batches.close()  # stops DataLoader workers, also when a shard fails


def finish_manifest(store: Path, header: dict, plans: dict[str, SplitPlan], jobs: list[ShardJob]) -> dict:
    """Main process, after every rank is done: the complete manifest from the shard sidecars."""
    splits = {}
    for name, entry in header["splits"].items():
        shards, skipped = [], []
        for job in (j for j in jobs if j.split == name):
            record = json.loads(_sidecar(store, job.file_name).read_text())
            shards.append({"file": record["file"], "rows": record["rows"], "checksum": mf.recorded_checksum(record),
                           "row_groups": record["row_groups"], "skipped": record["skipped"]})
            skipped += record["skipped"]
        splits[name] = {**entry, "images_in_csv": int(len(plans[name].order)),
                        "rows": int(sum(s["rows"] for s in shards)), "skipped": skipped, "shards": shards}
    manifest = {**header, "complete": True, "splits": splits}
    mf.write_manifest(store, manifest)
    shutil.rmtree(store / PROGRESS_DIR, ignore_errors=True)
    return manifest


def _first_errors(store: Path, jobs: list[ShardJob]) -> dict[str, str]:
    errors = {}
    for job in jobs:
        sidecar = _sidecar(store, job.file_name)
        if job.split not in errors and sidecar.is_file():
            found = json.loads(sidecar.read_text()).get("skipped_errors") or []
            if found:
                errors[job.split] = found[0]
    return errors


def _default_accelerator():
    """Full precision (the maps must equal what predict computes); on a machine without a GPU, cpu=True, which
    is what lets accelerate run several CPU processes (gloo) under ``accelerate launch`` / ``torchrun``."""
    import torch

    from ..training import OptimConfig, make_accelerator

    return make_accelerator(OptimConfig(mixed_precision="no", cpu=not torch.cuda.is_available()))


def build_store(cfg: FeatureConfig, splits: dict[str, tuple[str, str]], accelerator=None,
                progress: bool = True) -> Path:
    """Write (or finish) the store ``cfg.store`` for ``splits`` (name -> (CSV path, image root)); return its path."""
    if not splits:
        raise UserError("no splits to extract features for")
    expected = mf.expected_from_config(cfg, splits)
    header = mf.new_manifest(expected, cfg)
    accelerator = accelerator or _default_accelerator()
    log = accelerator.print
    store = Path(cfg.store)
    complete = prepare_store(store, header, log) if accelerator.is_main_process else False
    accelerator.wait_for_everyone()
    if complete or (mf.read_manifest(store) or {}).get("complete"):
        log(f"feature store {store} is complete and matches the config (delete it to rebuild)")
        return store

    plans = {name: plan_split(name, csv, root) for name, (csv, root) in splits.items()}
    jobs = shard_jobs(plans, cfg.shard_rows)
    mine = jobs[accelerator.process_index::accelerator.num_processes]
    pending = [job for job in mine if not shard_is_done(store, job)]
    log(f"feature store {store}: {sum(len(p.order) for p in plans.values())} images in {len(jobs)} shards, "
        f"{len(mine) - len(pending)} already written; maps {header['shape']} {cfg.dtype}, {cfg.routing} routing, "
        f"device={accelerator.device}, processes={accelerator.num_processes}")
    if pending:
        from .extract import FeatureExtractor

        extractor = FeatureExtractor(expected, accelerator.device)
        total = sum(len(job.rows) for job in pending)
        with tqdm(total=total, desc="features", unit="img",
                  disable=not (progress and accelerator.is_local_main_process)) as bar:
            for name, plan in plans.items():
                split_jobs = [job for job in pending if job.split == name]
                if split_jobs:
                    _extract_split_shards(store, cfg, header, plan, split_jobs, extractor, bar)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        errors = _first_errors(store, jobs)
        manifest = finish_manifest(store, header, plans, jobs)
        for name, entry in manifest["splits"].items():
            line = f"  {name}: {entry['rows']} images in {len(entry['shards'])} shards"
            if entry["skipped"]:
                line += f", {len(entry['skipped'])} unreadable images skipped (first: {errors.get(name, '?')})"
            log(line)
    accelerator.wait_for_everyone()
    return store
