"""Benchmark pixbin.sync.run_sync on a synthetic 1 h session: wall time and peak memory.

Usage: ``.venv/bin/python benchmarks/bench_sync.py [--duration-s 3600] [--workdir DIR] [--keep]
[--out PATH]``

Inputs written by :func:`pixbin.synthetic.write_sync_session` to a temporary folder (removed
afterwards unless ``--keep``):

- an LF ``.bin`` of 385 int16 channels at 2500.0 Hz (calibrated-style rate 29999.94/12): 6.9 GB
  for 1 h. It is created sparse (``truncate``) and only the rows where SY bit 6 is high are
  written (a 1 Hz, 50 % duty square wave), so about half the file is real data on disk;
- the matching ``.ap.meta``/``.lf.meta`` (no AP ``.bin``);
- a behaviour TDMS at 25 kHz with ``NpxlSync_Signal`` and ``Back_Sensor`` (0/5 V + noise, 1 s
  segments like LabVIEW's), starting 5 s before the probe, running 37 ppm fast, 3 dropped pulses.

Each measured run is a fresh ``python`` process calling ``run_sync`` (so imports count and the
peak RSS is that of the sync alone: ``ru_maxrss`` of the child process). Runs:
warm page cache with and without the QC figure, and with the LF and TDMS evicted from the page
cache first (``posix_fadvise(DONTNEED)`` on these files only), i.e. read from disk.
Results go to ``benchmarks/results/sync.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import evict
from pixbin.synthetic import write_sync_session

__all__ = ["main", "make_inputs"]

log = logging.getLogger("bench_sync")

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "sync.json"
N_CHANS = 385


def make_inputs(folder: Path, duration_s: float, *, offset_s: float = -5.0, drift_ppm: float = 37.0,
                tail_s: float = 2.0, beh_rate: float = 25000.0, seed: int = 0) -> dict:
    """Write the LF .bin/.meta, AP .meta and behaviour TDMS of one synthetic session.

    Returns :func:`pixbin.synthetic.write_sync_session`'s paths and truth, the truth with the
    sizes of the files added (``lf_bytes``, ``lf_bytes_on_disk``, ``tdms_bytes``).
    """
    n_pulses = int(duration_s)  # the 1 Hz train runs through the recording
    dropped = np.random.default_rng(seed).choice(np.arange(10, n_pulses - 10), 3, replace=False)
    t0 = time.perf_counter()
    session = write_sync_session(
        folder, duration_s=duration_s, offset_s=offset_s, drift_ppm=drift_ppm, tail_s=tail_s,
        dropped=tuple(int(i) for i in dropped), beh_rate=beh_rate, phase=0.3141, seed=seed,
        n_channels=N_CHANS, sparse=True, segment_s=1.0,
    )
    lf_bin, tdms = session["lf_bin"], session["behaviour_tdms"]
    session["truth"].update(lf_bytes=lf_bin.stat().st_size,
                            lf_bytes_on_disk=os.stat(lf_bin).st_blocks * 512,
                            tdms_bytes=tdms.stat().st_size)
    log.info("LF %.2f GB + TDMS %.2f GB written in %.1f s", lf_bin.stat().st_size / 1e9,
             tdms.stat().st_size / 1e9, time.perf_counter() - t0)
    return session


_CHILD = """
import json, resource, sys, time
from pixbin.sync import SyncParams, run_sync
a = json.loads(sys.argv[1])
t = time.perf_counter()
s = run_sync(ap_meta=a['ap_meta'], lf_meta=a['lf_meta'], lf_bin=a['lf_bin'],
             behaviour_tdms=a['behaviour_tdms'], out_dir=a['out_dir'],
             params=SyncParams(figure=a['figure'], train_within_probe=True))  # the pulser stops with the file
b = s['streams']['behaviour']
print(json.dumps({'run_sync_s': time.perf_counter() - t, 'offset_s': b['offset_s'], 'ppm': b['ppm'],
                  'matched': b['matched'], 'missing': b['missing']['in_behaviour'],
                  'residual_us': b['residual_us'], 'lag': s['lag'],
                  'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


_READ_ONCE = """
import json, resource, sys, time
from pixbin.spikeglx import iter_sync_word
from pixbin.tdms import iter_chunks
a = json.loads(sys.argv[1])
t = time.perf_counter()
n_lf = sum(len(w) for _, w in iter_sync_word(a['lf_bin'], a['lf_meta']))
t_lf = time.perf_counter() - t
n_beh = sum(len(c['NpxlSync_Signal']) for _, c in iter_chunks(a['behaviour_tdms'], ['NpxlSync_Signal']))
print(json.dumps({'read_s': time.perf_counter() - t, 'lf_sy_s': t_lf, 'lf_samples': n_lf,
                  'behaviour_samples': n_beh,
                  'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _read_once(inputs: dict) -> dict:
    """The floor: the LF SY column and the behaviour sync channel read once, nothing else."""
    args = {k: str(inputs[k]) for k in ("lf_meta", "lf_bin", "behaviour_tdms")}
    proc = subprocess.run([sys.executable, "-c", _READ_ONCE, json.dumps(args)], capture_output=True,
                          text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"reading the sync columns failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _measure(inputs: dict, out_dir: Path, *, figure: bool) -> dict:
    args = {k: str(inputs[k]) for k in ("ap_meta", "lf_meta", "lf_bin", "behaviour_tdms")}
    args.update(out_dir=str(out_dir), figure=figure)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True,
                          text=True, check=False)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(f"run_sync failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration-s", type=float, default=3600.0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ns = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from pixbin.fileio import versions, write_json

    work = Path(tempfile.mkdtemp(prefix="bench_sync_", dir=ns.workdir))
    try:
        t0 = time.perf_counter()
        inputs = make_inputs(work / "raw", ns.duration_s)
        gen_s = time.perf_counter() - t0
        runs = {}
        evict(inputs["lf_bin"], inputs["behaviour_tdms"])
        runs["cold_cache_with_figure"] = _measure(inputs, work / "p1", figure=True)
        runs["warm_cache_with_figure"] = _measure(inputs, work / "p2", figure=True)
        runs["warm_cache_no_figure"] = _measure(inputs, work / "p3", figure=False)
        runs["warm_cache_read_sync_columns_once"] = _read_once(inputs)
        truth = inputs["truth"]
        k = np.linspace(0, truth["n_samples"] - 1, 1001)
        doc = json.loads((work / "p2" / "sync.json").read_text())
        m = doc["streams"]["behaviour"]
        mapped = m["offset_s"] + m["rate"] * (k / truth["rate_nominal_hz"])
        err = float(np.abs(mapped - (truth["offset_s"] + k / truth["rate_true_hz"])).max())
        result = {
            "benchmark": "pixbin.sync.run_sync, synthetic session",
            "duration_s": ns.duration_s,
            "inputs": {"lf_rate_hz": truth["lf_rate_hz"], "lf_channels": N_CHANS,
                       "lf_gb": truth["lf_bytes"] / 1e9, "lf_gb_on_disk": truth["lf_bytes_on_disk"] / 1e9,
                       "behaviour_rate_hz": truth["rate_nominal_hz"], "tdms_gb": truth["tdms_bytes"] / 1e9,
                       "offset_s": truth["offset_s"], "drift_ppm": truth["drift_ppm"],
                       "dropped_pulses": len(truth["dropped_pulse_times_s"])},
            "generate_inputs_s": gen_s,
            "runs": runs,
            "accuracy": {"max_map_error_us": err * 1e6},
            "goal": {"time_s": 10, "peak_rss_mb": 1024},
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "load_avg": os.getloadavg()},
            "versions": versions(),
        }
        log.info(json.dumps(result, indent=2))
        if ns.out:
            write_json(ns.out, result)
        return result
    finally:
        if ns.keep:
            log.info("inputs kept in %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
