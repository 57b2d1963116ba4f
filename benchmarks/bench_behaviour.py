"""Benchmark the behaviour stage on a 1 h, 25 kHz lever-push TDMS (9 channels, opto).

Usage: ``.venv/bin/python benchmarks/bench_behaviour.py [--duration-s 3600] [--workdir DIR]
[--keep] [--repeat 3] [--out PATH]``

The TDMS is written like the simulator writes it (``pixbin.simulate_task``'s task and
``pixbin.simulate_rig``'s writer: 0/5 V TTLs with noise, 4 s segments, a drifting clock), without
the probe files. Each measurement runs in a fresh Python process, so its peak memory
(``ru_maxrss``) is its own:

- ``read_data``: nptdms streaming, ``TdmsFile.open`` + ``channel.read_data(offset, length)`` per
  1 M-sample chunk of every channel (the plain way to stream a TDMS; what
  ``pixbin.tdms.iter_chunks`` wraps);
- ``data_chunks``: nptdms streaming by file segment, ``TdmsFile.open(...).data_chunks()``;
- ``iter_chunks``: ``pixbin.tdms.iter_chunks`` over every channel;
- ``label``: ``pixbin.behaviour.run_behaviour`` (edges, trials, labels, 1 kHz channels, files).

The goal: ``label`` faster than reading the file twice, with a peak below 1 GB. The file is read
once before timing so every run finds it in the page cache. Times: median of ``--repeat``
interleaved runs (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "make_tdms"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "behaviour.json"

_CHILD = r"""
import json, resource, sys, time
mode, path, extra = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
t0 = time.perf_counter()
if mode == "read_data":
    from nptdms import TdmsFile
    with TdmsFile.open(path) as f:
        chans = [c for g in f.groups() for c in g.channels()]
        n = len(chans[0])
        for s in range(0, n, 1_000_000):
            for c in chans:
                c.read_data(offset=s, length=min(1_000_000, n - s))
elif mode == "data_chunks":
    from nptdms import TdmsFile
    with TdmsFile.open(path) as f:
        for chunk in f.data_chunks():
            for g in chunk.groups():
                for c in g.channels():
                    c[:]
elif mode == "iter_chunks":
    from pixbin.tdms import iter_chunks, list_channels
    for _ in iter_chunks(path, list(list_channels(path)), chunk_samples=1_000_000):
        pass
elif mode == "label":
    from pixbin.behaviour import run_behaviour
    from pixbin.clock import ClockMap
    summary = run_behaviour(behaviour_tdms=path, clock_map=ClockMap("behaviour", extra["offset_s"],
                            extra["rate"]), probe_duration_s=extra["probe_duration_s"],
                            out_dir=extra["out_dir"])
    extra = {"trials": summary["trials"], "events": sum(summary["events"].values()),
             "pass_s": summary["seconds"]["pass"], "total_s": summary["seconds"]["total"]}
else:
    raise SystemExit(f"unknown mode {mode}")
wall = time.perf_counter() - t0
print(json.dumps({"mode": mode, "seconds": wall,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "extra": extra if mode == "label" else {}}))
"""


def make_tdms(path: Path, duration_s: float, *, seed: int = 0) -> dict:
    """Write a lever-push behaviour TDMS (opto, 25 kHz) and return its clock truth."""
    from pixbin.simulate import SimulationParams
    from pixbin.simulate_rig import write_behaviour_tdms
    from pixbin.simulate_task import simulate_task

    p = SimulationParams(duration_s=duration_s, seed=seed, opto=True, offset_s=-2.0,
                         drift_ppm=20.0)
    rng = np.random.default_rng(seed)
    rate_true = p.behaviour_rate_hz * (1 + p.drift_ppm * 1e-6)
    probe_end = duration_s
    n = int((probe_end + p.behaviour_tail_s - p.offset_s) * rate_true)
    truth = simulate_task(p, rng, 0.5, probe_end - 0.5)
    sync = np.arange(0.37, probe_end, 1.0)
    frames = np.arange(0.2, probe_end - 0.2, 1 / 30)
    write_behaviour_tdms(path, p, n, rate_true, truth.intervals, sync, frames, seed)
    return {"offset_s": p.offset_s, "rate": p.behaviour_rate_hz / rate_true,
            "probe_duration_s": probe_end, "n_samples": n, "n_trials": len(truth.trials)}


def _child(mode: str, path: Path, extra: dict) -> dict:
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", _CHILD, mode, str(path), json.dumps(extra)],
                         check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration-s", type=float, default=3600.0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep (and reuse) the generated TDMS")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    workdir = args.workdir or Path(tempfile.gettempdir()) / "pixbin-bench-behaviour"
    workdir.mkdir(parents=True, exist_ok=True)
    tdms = workdir / f"NeuropixelBehaviour(0)_{int(args.duration_s)}s.tdms"
    truth_file = tdms.with_suffix(".json")
    t0 = time.perf_counter()
    if tdms.is_file() and truth_file.is_file():
        truth = json.loads(truth_file.read_text())
        gen_s = None
    else:
        truth = make_tdms(tdms, args.duration_s)
        truth_file.write_text(json.dumps(truth))
        gen_s = time.perf_counter() - t0
    size = tdms.stat().st_size
    print(f"{tdms} ({size / 1e9:.2f} GB){'' if gen_s is None else f', written in {gen_s:.0f} s'}")

    extra = {**truth, "out_dir": str(workdir / "processed")}
    load = {"start": os.getloadavg()}
    _child("data_chunks", tdms, {})  # warm the page cache
    runs: dict[str, list[dict]] = {m: [] for m in ("read_data", "data_chunks", "iter_chunks", "label")}
    for r in range(args.repeat):
        for mode in runs:
            res = _child(mode, tdms, extra)
            runs[mode].append(res)
            print(f"  run {r + 1} {mode:12s} {res['seconds']:7.2f} s  peak {res['peak_rss_mb']:7.0f} MB")
    load["end"] = os.getloadavg()

    med = {m: statistics.median(x["seconds"] for x in v) for m, v in runs.items()}
    peak = {m: max(x["peak_rss_mb"] for x in v) for m, v in runs.items()}
    result = {
        "benchmark": "behaviour stage, 1 pass over a lever-push TDMS",
        "file": {"duration_s": args.duration_s, "bytes": size, "rate_hz": 25000.0,
                 "channels": 9, "n_samples": truth["n_samples"], "trials": truth["n_trials"]},
        "median_seconds": med,
        "min_seconds": {m: min(x["seconds"] for x in v) for m, v in runs.items()},
        "peak_rss_mb": peak,
        "label_vs_read_twice": {
            "read_data": med["label"] / (2 * med["read_data"]),
            "data_chunks": med["label"] / (2 * med["data_chunks"]),
        },
        "goal": {"faster_than_two_reads_read_data": med["label"] < 2 * med["read_data"],
                 "faster_than_two_reads_data_chunks": med["label"] < 2 * med["data_chunks"],
                 "peak_below_1GB": peak["label"] < 1024},
        "label_detail": runs["label"][-1]["extra"],
        "runs": runs,
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count(), "loadavg": load},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    from pixbin.fileio import versions, write_json

    result["versions"] = versions()
    out = args.out or DEFAULT_OUT
    write_json(out, result)
    print(json.dumps({k: result[k] for k in ("median_seconds", "peak_rss_mb", "label_vs_read_twice",
                                             "goal")}, indent=1))
    if not args.keep and args.workdir is None:
        tdms.unlink()
        truth_file.unlink()
    return result


if __name__ == "__main__":
    main()
