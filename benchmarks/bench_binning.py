"""Benchmark pixbin.binning.bin_spikes against numpy baselines on a simulated 1 h session.

Usage: ``.venv/bin/python benchmarks/bench_binning.py [--quick] [--out PATH]``

Full run: 500 units, 9 M spikes over 3600 s, 400 trials x 100 bins of 20 ms (window -1..+1 s).
``--quick`` runs a 10x smaller session (360 s, 0.9 M spikes, 40 trials) and writes no JSON unless
``--out`` is given. Times are the best of 3 after a warm-up call; peak memory is the tracemalloc
peak of one call (numpy allocations, inputs excluded).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixbin.binning import _check_spikes, _numba_engine, bin_edges, bin_spikes
from pixbin.fileio import versions, write_json

__all__ = ["main"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "binning.json"


@dataclass(frozen=True)
class Session:
    """Simulated inputs: sorted spike times with unit ids 0..n_units-1, and trial align times."""

    times: np.ndarray
    units: np.ndarray
    unit_ids: np.ndarray
    align: np.ndarray
    window_s: tuple[float, float]
    bin_size_s: float


def simulate(duration_s: float, n_units: int, rate_hz: float, n_trials: int, seed: int = 0) -> Session:
    """Homogeneous Poisson spikes (uniform times, uniform unit labels); trials at random times."""
    rng = np.random.default_rng(seed)
    n_spikes = int(round(duration_s * n_units * rate_hz))
    times = np.sort(rng.uniform(0.0, duration_s, n_spikes))
    units = rng.integers(0, n_units, n_spikes, dtype=np.int64)
    align = np.sort(rng.uniform(1.0, duration_s - 1.0, n_trials))
    return Session(times, units, np.arange(n_units, dtype=np.int64), align, (-1.0, 1.0), 0.02)


def flat_bincount(s: Session) -> np.ndarray:
    """numpy baseline: per-trial searchsorted, one flat bincount over all trials (int64 buffer)."""
    edges = bin_edges(s.window_s, s.bin_size_s)
    n_bins, n_units, n_trials = edges.size - 1, s.unit_ids.size, s.align.size
    lo = np.searchsorted(s.times, s.align + edges[0], side="left")
    hi = np.searchsorted(s.times, s.align + edges[-1], side="left")
    lengths = hi - lo
    trial = np.repeat(np.arange(n_trials), lengths)
    idx = np.arange(trial.size) + np.repeat(lo - (np.cumsum(lengths) - lengths), lengths)
    k = np.floor((s.times[idx] - (s.align[trial] + edges[0])) / s.bin_size_s).astype(np.int64)
    np.clip(k, 0, n_bins - 1, out=k)
    flat = (trial * n_bins + k) * n_units + s.units[idx]
    counts = np.bincount(flat, minlength=n_trials * n_bins * n_units)
    return np.minimum(counts, 255).astype(np.uint8).reshape(n_trials, n_bins, n_units)


def per_unit_searchsorted(s: Session, unit_times: list[np.ndarray]) -> np.ndarray:
    """AllenSDK-style baseline: for each unit, searchsorted all absolute edges of all trials, diff.

    ``unit_times`` (one sorted array per unit) is built outside the timing, as AllenSDK stores
    spike times per unit.
    """
    edges = bin_edges(s.window_s, s.bin_size_s)
    abs_edges = (s.align[:, None] + edges[None, :]).ravel()
    n_trials, n_bins = s.align.size, edges.size - 1
    out = np.zeros((n_trials, n_bins, len(unit_times)), dtype=np.uint8)
    for u, ut in enumerate(unit_times):
        pos = np.searchsorted(ut, abs_edges, side="left").reshape(n_trials, n_bins + 1)
        out[:, :, u] = np.minimum(np.diff(pos, axis=1), 255)
    return out


def zeros(s: Session) -> np.ndarray:
    """Allocate the uint8 output with np.zeros (calloc: fresh pages are zeroed lazily, reused
    heap memory is cleared)."""
    return np.zeros((s.align.size, round(2.0 / s.bin_size_s), s.unit_ids.size), dtype=np.uint8)


def zeros_touched(s: Session) -> np.ndarray:
    """Allocate the uint8 output and write every page (what any kernel pays to produce it)."""
    out = zeros(s)
    out.fill(0)
    return out


def read_floor(s: Session) -> Callable[[], object]:
    """A numba pass that only reads the windowed spike times and unit ids: the memory floor of
    any kernel that must look at every windowed spike."""
    import numba

    @numba.njit(nogil=True)
    def read(times, units, starts, stops):
        acc, acc_u = 0.0, 0
        for j in range(starts.size):
            for i in range(starts[j], stops[j]):
                acc += times[i]
                acc_u += units[i]
        return acc, acc_u

    def run() -> object:
        lo = np.searchsorted(s.times, s.align + s.window_s[0], side="left")
        hi = np.searchsorted(s.times, s.align + s.window_s[1], side="left")
        return read(s.times, s.units, lo, hi)

    return run


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls, s (after the caller's warm-up)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def peak_bytes(fn: Callable[[], object]) -> int:
    """tracemalloc peak of one call, bytes (numpy registers its buffers with tracemalloc)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def windowed_spikes(s: Session) -> int:
    """Number of (trial, spike) pairs inside the trial windows."""
    lo = np.searchsorted(s.times, s.align + s.window_s[0], side="left")
    hi = np.searchsorted(s.times, s.align + s.window_s[1], side="left")
    return int((hi - lo).sum())


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo where there is one, else platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(s: Session, repeat: int) -> dict:
    """Time and measure every method; check that all give the same counts."""
    unit_times = [s.times[s.units == u] for u in s.unit_ids]

    def pixbin(engine: str) -> Callable[[], np.ndarray]:
        return lambda: bin_spikes(
            s.times, s.units, s.unit_ids, s.align, s.window_s, s.bin_size_s, engine=engine
        ).counts

    methods: dict[str, Callable[[], object]] = {
        "pixbin bin_spikes, numba engine": pixbin("numba"),
        "pixbin bin_spikes, numpy engine": pixbin("numpy"),
        "flat np.bincount baseline": lambda: flat_bincount(s),
        "per-unit searchsorted (AllenSDK-style)": lambda: per_unit_searchsorted(s, unit_times),
        "np.zeros uint8 output": lambda: zeros(s),
        "np.zeros uint8 output + fill(0) (every page written)": lambda: zeros_touched(s),
        "input check alone (O(n) sortedness, inside bin_spikes)": lambda: _check_spikes(
            s.times, s.units, _numba_engine().n_unsorted
        ),
        "read windowed spikes alone (numba, memory floor)": read_floor(s),
    }
    reference = pixbin("numba")()  # also the numba warm-up (compile or cache load)
    rows = {}
    for name, fn in methods.items():
        result = fn()  # warm-up
        equal = None
        if isinstance(result, np.ndarray) and name.startswith(("pixbin", "flat", "per-unit")):
            equal = bool(np.array_equal(result, reference))
        seconds = best_of(fn, repeat)
        rows[name] = {"seconds": seconds, "peak_tracemalloc_bytes": peak_bytes(fn), "equal_counts": equal}
    n_win = windowed_spikes(s)
    for name, row in rows.items():
        spikes = name.startswith(("pixbin", "flat", "per-unit", "read"))
        row["windowed_spikes_per_s"] = n_win / row["seconds"] if spikes else None
    pix = rows["pixbin bin_spikes, numba engine"]["seconds"]
    per_unit = rows["per-unit searchsorted (AllenSDK-style)"]["seconds"]
    zeros_t = rows["np.zeros uint8 output + fill(0) (every page written)"]["seconds"]
    check = rows["input check alone (O(n) sortedness, inside bin_spikes)"]["seconds"]
    floor = rows["read windowed spikes alone (numba, memory floor)"]["seconds"]
    return {
        "setup": {
            "n_units": int(s.unit_ids.size),
            "n_spikes": int(s.times.size),
            "duration_s": float(s.times[-1]) if s.times.size else 0.0,
            "n_trials": int(s.align.size),
            "window_s": list(s.window_s),
            "bin_size_s": s.bin_size_s,
            "n_bins": round((s.window_s[1] - s.window_s[0]) / s.bin_size_s),
            "output_cells": int(reference.size),
            "windowed_spikes": n_win,
            "timing": f"best of {repeat} after warm-up",
            "memory": "tracemalloc peak of one call (numpy buffers; the numba kernel allocates none)",
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_average_1_5_15_min": list(os.getloadavg()),
            "cpu_model": cpu_model(),
            "platform": platform.platform(),
            "versions": versions(),
        },
        "methods": rows,
        "ratios": {
            "per_unit_over_pixbin": per_unit / pix,
            "pixbin_over_zeros_touched": pix / zeros_t,
            "pixbin_minus_input_check_over_zeros_touched": (pix - check) / zeros_t,
            "pixbin_over_read_floor": pix / floor,
            "pixbin_minus_input_check_over_read_floor": (pix - check) / floor,
            "flat_bincount_over_pixbin": rows["flat np.bincount baseline"]["seconds"] / pix,
        },
        "all_equal": all(r["equal_counts"] for r in rows.values() if r["equal_counts"] is not None),
    }


def table(results: dict) -> str:
    """The results as a Markdown table."""
    lines = [
        "| method | time (ms) | windowed spikes/s | peak tracemalloc (MB) | counts equal |",
        "|---|---:|---:|---:|---|",
    ]
    for name, row in results["methods"].items():
        equal = {None: "—", True: "yes", False: "NO"}[row["equal_counts"]]
        rate = row["windowed_spikes_per_s"]
        rate_text = "—" if rate is None else f"{rate / 1e6:,.1f} M"
        lines.append(
            f"| {name} | {row['seconds'] * 1e3:,.2f} | {rate_text} "
            f"| {row['peak_tracemalloc_bytes'] / 1e6:,.1f} | {equal} |"
        )
    lines.append("")
    lines.extend(f"- {k}: {v:.2f}" for k, v in results["ratios"].items())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table and write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x smaller session; no JSON unless --out")
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON (default {DEFAULT_OUT})")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per method (best is kept)")
    args = parser.parse_args(argv)
    if args.quick:
        session = simulate(duration_s=360.0, n_units=500, rate_hz=5.0, n_trials=40)
    else:
        session = simulate(duration_s=3600.0, n_units=500, rate_hz=5.0, n_trials=400)
    results = run(session, args.repeat)
    results["quick"] = args.quick
    print(table(results))
    out = args.out if args.out is not None else (None if args.quick else DEFAULT_OUT)
    if out is not None:
        write_json(out, results)
        print(f"\nwrote {out}")
    return 0 if results["all_equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
