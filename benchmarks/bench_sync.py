"""Benchmark pixbin.sync.run_sync on a synthetic 1 h session: wall time and peak memory.

Usage: ``.venv/bin/python benchmarks/bench_sync.py [--duration-s 3600] [--workdir DIR] [--keep]
[--out PATH]``

Inputs written to a temporary folder (removed afterwards unless ``--keep``):

- an LF ``.bin`` of 385 int16 channels at 2500.0 Hz (calibrated-style rate 29999.94/12): 6.9 GB
  for 1 h. It is created sparse (``truncate``) and only the rows where SY bit 6 is high are
  written (a 1 Hz, 50 % duty square wave), so about half the file is real data on disk;
- the matching ``.ap.meta``/``.lf.meta`` (no AP ``.bin``);
- a behaviour TDMS at 25 kHz with ``NpxlSync_Signal`` and one other channel (0/5 V + noise, 1 s
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

__all__ = ["main", "make_inputs"]

log = logging.getLogger("bench_sync")

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "sync.json"
AP_RATE = 29999.941586
N_CHANS = 385
SYNC_BIT = 6


def _meta(path: Path, *, rate: float, n: int, sns: str) -> None:
    lines = {"imSampRate": repr(rate), "nSavedChans": N_CHANS, "snsApLfSy": sns,
             "fileSizeBytes": n * N_CHANS * 2, "typeThis": "imec", "firstSample": 0,
             "imDatPrb_type": 0, "acqApLfSy": "384,384,1"}
    path.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))


def make_inputs(folder: Path, duration_s: float, *, offset_s: float = -5.0, drift_ppm: float = 37.0,
                tail_s: float = 2.0, beh_rate: float = 25000.0, seed: int = 0) -> dict:
    """Write the LF .bin/.meta, AP .meta and behaviour TDMS of one synthetic session."""
    from nptdms import ChannelObject, GroupObject, RootObject, TdmsWriter

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lf_rate = AP_RATE / 12
    n_lf = int(duration_s * lf_rate)
    n_ap = 12 * n_lf
    probe_end = n_ap / AP_RATE
    rising = np.arange(0.3141, probe_end, 1.0)
    stem = folder / "bench_g0_t0.imec0"
    _meta(Path(f"{stem}.ap.meta"), rate=AP_RATE, n=n_ap, sns="384,0,1")
    _meta(Path(f"{stem}.lf.meta"), rate=lf_rate, n=n_lf, sns="0,384,1")
    lf_bin = Path(f"{stem}.lf.bin")
    row = N_CHANS * 2
    t0 = time.perf_counter()
    with open(lf_bin, "wb") as f:
        f.truncate(n_lf * row)  # sparse: zeros everywhere
        block = np.zeros((int(lf_rate) + 2, N_CHANS), np.int16)
        block[:, N_CHANS - 1] = 1 << SYNC_BIT
        for r in rising:  # rows of each high half-period: first sample at or after the edge
            a = int(np.ceil(r * lf_rate))
            b = min(n_lf, int(np.ceil((r + 0.5) * lf_rate)))
            if b > a:
                f.seek(a * row)
                f.write(block[: b - a].tobytes())
    log.info("LF %.2f GB written in %.1f s", n_lf * row / 1e9, time.perf_counter() - t0)

    t0 = time.perf_counter()
    rate_true = beh_rate * (1 + drift_ppm * 1e-6)
    n_b = int((probe_end + tail_s - offset_s) * rate_true)
    dropped = rng.choice(np.arange(10, len(rising) - 10), 3, replace=False)
    b_rising = np.delete(rising, dropped)
    tdms = folder / "NeuropixelBehaviour(0).tdms"
    seg = int(beh_rate)
    with TdmsWriter(tdms) as w:
        for s in range(0, n_b, seg):
            k = np.arange(s, min(n_b, s + seg))
            t = offset_s + k / rate_true
            i = np.searchsorted(b_rising, t, side="right") - 1
            high = (i >= 0) & (t < b_rising[np.clip(i, 0, None)] + 0.5)
            x = 5.0 * high + rng.normal(0, 0.05, len(k))
            props = {"wf_increment": 1.0 / beh_rate, "wf_start_time": np.datetime64("2024-01-01T10:00"),
                     "unit_string": "V"} if s == 0 else {}
            objs = [RootObject({"name": "bench"})] if s == 0 else []
            objs += [GroupObject("NpxlSync_Signal"), ChannelObject("NpxlSync_Signal", "0", x, properties=props),
                     GroupObject("Back_Sensor"),
                     ChannelObject("Back_Sensor", "0", rng.normal(0, 0.05, len(k)), properties=props)]
            w.write_segment(objs)
    log.info("TDMS %.2f GB written in %.1f s", tdms.stat().st_size / 1e9, time.perf_counter() - t0)
    return {"ap_meta": str(Path(f"{stem}.ap.meta")), "lf_meta": str(Path(f"{stem}.lf.meta")),
            "lf_bin": str(lf_bin), "behaviour_tdms": str(tdms),
            "truth": {"offset_s": offset_s, "drift_ppm": drift_ppm, "rate_true_hz": rate_true,
                      "rate_nominal_hz": beh_rate, "n_samples": n_b,
                      "dropped_pulse_times_s": np.sort(rising[dropped]).tolist(),
                      "lf_bytes": n_lf * row, "lf_bytes_on_disk": os.stat(lf_bin).st_blocks * 512,
                      "tdms_bytes": tdms.stat().st_size}}


_CHILD = """
import json, resource, sys, time
from pixbin.sync import SyncParams, run_sync
a = json.loads(sys.argv[1])
t = time.perf_counter()
s = run_sync(ap_meta=a['ap_meta'], lf_meta=a['lf_meta'], lf_bin=a['lf_bin'],
             behaviour_tdms=a['behaviour_tdms'], out_dir=a['out_dir'],
             params=SyncParams(figure=a['figure']))
b = s['streams']['behaviour']
print(json.dumps({'run_sync_s': time.perf_counter() - t, 'offset_s': b['offset_s'], 'ppm': b['ppm'],
                  'matched': b['matched'], 'missing': b['missing']['in_behaviour'],
                  'residual_us': b['residual_us'], 'lag': s['lag'],
                  'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _measure(inputs: dict, out_dir: Path, *, figure: bool) -> dict:
    args = {k: inputs[k] for k in ("ap_meta", "lf_meta", "lf_bin", "behaviour_tdms")}
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
        truth = inputs["truth"]
        k = np.linspace(0, truth["n_samples"] - 1, 1001)
        doc = json.loads((work / "p2" / "sync.json").read_text())
        m = doc["streams"]["behaviour"]
        mapped = m["offset_s"] + m["rate"] * (k / truth["rate_nominal_hz"])
        err = float(np.abs(mapped - (truth["offset_s"] + k / truth["rate_true_hz"])).max())
        result = {
            "benchmark": "pixbin.sync.run_sync, synthetic session",
            "duration_s": ns.duration_s,
            "inputs": {"lf_rate_hz": AP_RATE / 12, "lf_channels": N_CHANS,
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
