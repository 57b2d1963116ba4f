"""Benchmark pixbin.lfp.run_lfp on a 1 h LF file against a plain sequential read of the same file.

Usage: ``.venv/bin/python benchmarks/bench_lfp.py [--duration-s 3600] [--dir DIR] [--keep]
[--out PATH]``

Writes an NP1.0 LF ``.bin`` (385 int16 channels at 2499.995 Hz, band-limited noise + a common
slow signal + SY bits; 6.9 GB for 1 h) and its ``.meta`` (the simulator's meta text), checks the
free disk space first, then measures, with the file evicted from the page cache before each
(``posix_fadvise(DONTNEED)`` after ``fsync``; reads come from the disk, as for a new session):

- ``read``: the file read once in 64 MiB blocks (the I/O floor);
- ``lfp``: ``run_lfp`` (CMR on, default filter) in a child process, whose peak RSS and CPU time
  are taken from ``getrusage(RUSAGE_CHILDREN)``; the wall time excludes the interpreter start;
- ``io_floor``: reading the input and writing a float32 HDF5 of the output's size in the same
  chunks, computing nothing (the part of ``lfp`` that no algorithm removes).

The files are deleted afterwards unless ``--keep``. Results go to ``benchmarks/results/lfp.json``.
Goal: ``lfp`` at ≥ 0.5 × the sequential read speed, peak RSS < 1 GB.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import evict
from pixbin.fileio import versions, write_json

__all__ = ["main", "write_lf_file"]

log = logging.getLogger("bench_lfp")

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "lfp.json"
RATE_HZ = 29999.941586 / 12.0
N_SAVED = 385


def write_lf_file(folder: Path, duration_s: float, seed: int = 0) -> tuple[Path, Path]:
    """An LF .bin/.meta pair of ``duration_s`` seconds, written in 10 s chunks."""
    from pixbin.simulate import SimulationParams
    from pixbin.simulate_probe import meta_text

    n = int(duration_s * RATE_HZ)
    p = SimulationParams(session_id="240101_BENCH", duration_s=max(duration_s, 10.0))
    bin_path = folder / "BENCH_g0_t0.imec0.lf.bin"
    meta_path = folder / "BENCH_g0_t0.imec0.lf.meta"
    meta_path.write_text(meta_text(p, "lf", n, RATE_HZ))
    rng = np.random.default_rng(seed)
    chunk = int(10 * RATE_HZ)
    slow_w = np.linspace(0.5, 1.0, 384).astype(np.float32)
    with open(bin_path, "wb") as f:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            out = np.empty((m, N_SAVED), np.int16)
            noise = rng.integers(-12, 13, size=(m, 384), dtype=np.int16)
            t = (start + np.arange(m)) / RATE_HZ
            slow = (60 * np.sin(2 * np.pi * 7.0 * t)).astype(np.float32)
            out[:, :384] = noise + (slow[:, None] * slow_w[None]).astype(np.int16)
            out[:, 384] = 64 * ((t % 1.0) < 0.5)
            f.write(out.tobytes())
        f.flush()
        os.fsync(f.fileno())
    return bin_path, meta_path


def sequential_read(path: Path, block: int = 64 << 20) -> float:
    """Seconds to read ``path`` once, start to end."""
    buf = bytearray(block)
    view = memoryview(buf)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(view):
            pass
    return time.perf_counter() - start


_IO_FLOOR = """
import json, sys, time
import h5netcdf, numpy as np
n_in, n_saved, n_out, n_ch = (int(v) for v in sys.argv[3:7])
t = time.perf_counter()
chunk = 10000
rows = int(chunk * 2.5) + 110
buf = np.empty((rows, n_saved), np.int16)
out = np.zeros((chunk, n_ch), np.float32)
with open(sys.argv[1], "rb", buffering=0) as f, h5netcdf.File(sys.argv[2], "w") as h:
    h.dimensions = {"time": n_out, "channel": n_ch}
    v = h.create_variable("lfp", ("time", "channel"), "f4", chunks=(1000, n_ch))
    for k0 in range(0, n_out, chunk):
        k1 = min(n_out, k0 + chunk)
        f.readinto(memoryview(buf).cast("B"))
        out[: k1 - k0] = buf[: k1 - k0, :n_ch]
        v[k0:k1, :] = out[: k1 - k0]
print(json.dumps({"seconds": time.perf_counter() - t}))
"""

_CHILD = """
import json, sys, time
from pixbin.lfp import run_lfp, LfpParams
t = time.perf_counter()
res = run_lfp(lf_bin=sys.argv[1], lf_meta=sys.argv[2], out_dir=sys.argv[3], params=LfpParams())
seconds = time.perf_counter() - t
hwm = None
try:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
except OSError:
    pass
print(json.dumps({"seconds": seconds, "n_samples": res["n_samples"], "peak_rss_bytes": hwm,
                  "n_channels": res["n_channels"], "output": str(res["path"])}))
"""


def run_child(*args: str, code: str = _CHILD) -> tuple[dict, float, float, float]:
    """``code`` (run_lfp by default) in a child process: its report, wall time, peak RSS (bytes)
    and CPU seconds."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before, cpu_before = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    cmd = [sys.executable, "-c", code, *(str(a) for a in args)]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_kb, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime - cpu_before
    if peak_kb <= before:
        log.warning("peak RSS of the child may be masked by an earlier, larger child")
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall, peak_kb * 1024.0, cpu


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and write its JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration-s", type=float, default=3600.0)
    ap.add_argument("--dir", type=Path, default=None, help="where to write the test file")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    folder = Path(tempfile.mkdtemp(prefix="pixbin-bench-lfp-", dir=args.dir))
    need = int(args.duration_s * RATE_HZ) * N_SAVED * 2 * 1.9  # input + float32 output at 1 kHz
    free = shutil.disk_usage(folder).free
    if free < need + (2 << 30):
        shutil.rmtree(folder)
        raise SystemExit(f"{folder}: {free / 1e9:.1f} GB free, need {need / 1e9:.1f} GB + 2 GB")
    try:
        t = time.perf_counter()
        bin_path, meta_path = write_lf_file(folder, args.duration_s)
        size = bin_path.stat().st_size
        log.info("wrote %s (%.2f GB) in %.1f s", bin_path, size / 1e9, time.perf_counter() - t)
        # warm-up on a short file: numba compilation/cache load is not part of the measurement
        warm = folder / "warm"
        warm.mkdir()
        wb, wm = write_lf_file(warm, 12.0)
        run_child(wb, wm, warm / "out")  # the warm-up's numbers are not kept
        shutil.rmtree(warm)

        load_start = os.getloadavg()[0]
        evict(bin_path)
        read_s = sequential_read(bin_path)
        log.info("sequential read: %.1f s (%.0f MB/s)", read_s, size / read_s / 1e6)
        evict(bin_path)
        report, wall, peak, cpu = run_child(bin_path, meta_path, folder / "out")
        out_bytes = Path(report["output"]).stat().st_size
        shutil.rmtree(folder / "out")
        # the I/O floor: the same reads and the same float32 HDF5 writes, no computation
        evict(bin_path)
        n_in = size // (N_SAVED * 2)
        floor, _, _, floor_cpu = run_child(bin_path, folder / "floor.h5", n_in, N_SAVED,
                                           report["n_samples"], report["n_channels"],
                                           code=_IO_FLOOR)
        (folder / "floor.h5").unlink()
        log.info("I/O floor (read input + write output, no compute): %.1f s, %.1f CPU s",
                 floor["seconds"], floor_cpu)
        lfp_s = report["seconds"]
        if report.get("peak_rss_bytes"):  # the child's own high-water mark (Linux)
            peak = float(report["peak_rss_bytes"])
        log.info("run_lfp: %.1f s (%.0f MB/s of input), %.1f CPU s, peak RSS %.0f MB", lfp_s,
                 size / lfp_s / 1e6, cpu, peak / 1e6)
        result = {
            "benchmark": "pixbin.lfp.run_lfp, 1 h NP1.0 LF file (385 ch int16) -> 1 kHz float32",
            "duration_s": args.duration_s,
            "input_bytes": size,
            "output_bytes": out_bytes,
            "n_output_samples": report["n_samples"],
            "n_channels": report["n_channels"],
            "sequential_read_s": read_s,
            "sequential_read_MBps": size / read_s / 1e6,
            "lfp_s": lfp_s,
            "lfp_child_wall_s": wall,
            "lfp_cpu_s": cpu,
            "lfp_cpu_s_note": "user + system CPU seconds of the child (all threads): the time "
                              "on an otherwise idle machine is about lfp_cpu_s / cpus",
            "lfp_input_MBps": size / lfp_s / 1e6,
            "speed_vs_read": read_s / lfp_s,
            "io_floor_s": floor["seconds"],
            "io_floor_cpu_s": floor_cpu,
            "io_floor_note": "reading the input and writing a float32 HDF5 of the output's size "
                             "in the same chunks, without computing: what run_lfp cannot beat",
            "goal_speed_vs_read": 0.5,
            "peak_rss_MB": peak / 1e6,
            "goal_peak_rss_MB": 1000.0,
            "page_cache": "evicted before the read and before run_lfp (posix_fadvise DONTNEED)",
            "machine": {"cpus": os.cpu_count(), "load_avg_1m_at_start": load_start,
                        "load_avg_1m_at_end": os.getloadavg()[0],
                        "platform": platform.platform()},
            "versions": versions(),
        }
        write_json(args.out, result)
        log.info("results written to %s", args.out)
        return result
    finally:
        if args.keep:
            log.info("kept %s", folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
