"""``kill -9`` at 20+ points of ``pixbin process`` and ``pixbin build``: every re-run resumes, and
the final outputs equal those of a run that was never interrupted.

The spikes come from the ground-truth phy import (no sorter), so every output is deterministic
and can be compared value by value (provenance and timings aside).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from pixbin.simulate import simulate_session, write_ground_truth_phy

SID = "240101_KILL"
PIXBIN = [sys.executable, "-m", "pixbin.cli"]
#: when each run of process is killed, as fractions of the uninterrupted run's wall time on this
#: machine (a loaded or a quiet machine moves every kill with it), in turn: each re-run resumes
#: where the killed one stopped, so short delays land all along the work (the earliest during
#: start-up), up to 24 kills
KILL_AT = tuple(np.linspace(0.08, 0.3, 7))
#: a build is all or nothing (it never resumes half-way): kills spread over one build, in order,
#: short of its end (later builds run warm, a little faster than the timed one)
BUILD_KILL_AT = tuple(np.linspace(0.25, 0.85, 14))


def _run(args: list[str], data: Path, kill_after: float | None = None) -> int | None:
    """Run ``pixbin <args>``; with ``kill_after``, SIGKILL it then (None if it had finished)."""
    env = {**os.environ, "CI": "1"}
    proc = subprocess.Popen([*PIXBIN, *args, "--data", str(data)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    if kill_after is None:
        return proc.wait(timeout=900)
    try:
        return proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the process and anything it started
        proc.wait()
        return None


def _values(path: Path):
    """What a file holds, without what differs from run to run (provenance, times, run ids)."""
    if path.suffix == ".npy":
        return np.load(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".h5":
        out = {}
        with h5py.File(path) as f:
            f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                         if isinstance(obj, h5py.Dataset) else None)
        return out
    if path.suffix == ".json":
        # checksums of files that hold their own provenance differ run to run (checked against
        # the files instead: test_the_manifests_describe_the_files_beside_them)
        volatile = {"provenance", "duration_s", "run_time_s", "seconds", "started", "run_id",
                    "created", "pixbin", "sha256", "size_bytes", "source"}

        def strip(o):
            if isinstance(o, dict):
                return {k: strip(v) for k, v in o.items() if k not in volatile}
            return [strip(v) for v in o] if isinstance(o, list) else o

        return strip(json.loads(path.read_text()))
    return path.read_bytes()


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    if isinstance(a, pd.DataFrame):
        return a.equals(b)
    if isinstance(a, dict) and a and all(isinstance(v, np.ndarray) for v in a.values()):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _outputs(data: Path) -> dict[str, Path]:
    files = {}
    for sub in ("processed", "binned"):
        for p in (data / sub).rglob("*"):
            rel = p.relative_to(data)
            if p.is_file() and ".records" not in rel.parts and "report" not in rel.parts \
                    and p.name != "sessions.parquet":
                files[str(rel)] = p
    return files


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    clean, killed = root / "clean", root / "killed"
    raw = simulate_session(clean, session_id=SID, duration_s=15, seed=3, n_units=6,
                           write_ap=False)
    phy = write_ground_truth_phy(raw, root / "phy")
    shutil.copytree(clean / "raw", killed / "raw")
    config = root / "pipeline.yaml"
    config.write_text(f"sync: {{train_within_probe: true}}\nspikes:\n  phy_folders: {{imec0: '{phy}'}}\n")
    process = ["process", "--serial", "--no-save", "--config", str(config)]
    build = ["build", "--no-save"]
    process_s, build_s = _timed(process, clean), _timed(build, clean)
    kills = {"process": _kill_until_done(process, killed, [f * process_s for f in KILL_AT]),
             "build": 0}
    for fraction in BUILD_KILL_AT:
        kills["build"] += _run(build, killed, kill_after=fraction * build_s) is None
    assert _run(build, killed) == 0
    return {"clean": clean, "killed": killed, "kills": kills}


def _timed(args: list[str], data: Path) -> float:
    """Wall time of an uninterrupted ``pixbin <args>``, which must succeed."""
    t0 = time.perf_counter()
    assert _run(args, data) == 0, f"pixbin {args[0]} failed"
    return time.perf_counter() - t0


def _kill_until_done(args: list[str], data: Path, delays: list[float], max_kills: int = 24) -> int:
    """Start ``pixbin <args>`` and kill it after each delay in turn, up to ``max_kills`` times or
    until a run ends by itself; then one run without a kill must finish the work. Returns the
    number of kills."""
    for attempt in range(max_kills):
        rc = _run(args, data, kill_after=delays[attempt % len(delays)])
        if rc is not None:
            assert rc == 0, f"pixbin {args[0]} failed after {attempt} kills"
            return attempt
    assert _run(args, data) == 0, f"pixbin {args[0]} failed after {max_kills} kills"
    return max_kills


def test_twenty_kills_happened(runs):
    kills = runs["kills"]
    assert kills["process"] >= 6 and kills["build"] >= 14 and sum(kills.values()) >= 20, kills


def test_after_the_kills_every_output_equals_the_uninterrupted_run(runs):
    clean, killed = _outputs(runs["clean"]), _outputs(runs["killed"])
    assert sorted(clean) == sorted(killed)
    differ = [rel for rel in clean if not _same(_values(clean[rel]), _values(killed[rel]))]
    assert differ == []


def test_no_temporary_is_left_and_every_stage_is_done(runs):
    data = runs["killed"]
    assert not [p for p in data.rglob("*") if ".tmp-" in p.name]
    from pixbin.pipeline import status_table

    row = status_table(data).set_index("session").loc[SID]
    assert set(row.values) == {"done"}


def test_the_manifests_describe_the_files_beside_them(runs):
    """No manifest left by a killed build names a file that is not the one beside it."""
    import hashlib

    binned = runs["killed"] / "binned"
    manifests = [binned / "manifest.json", *(binned / "sessions").glob("*/manifest.json")]
    checked = 0
    for manifest in manifests:
        for entry in json.loads(manifest.read_text())["actions"].values():
            path = binned / entry["file"]  # manifests name files relative to binned/
            assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], path
            checked += 1
    assert checked >= 2
