"""Reading benchmark for many-session action files: open time against the number of sessions.

Builds one fabricated processed session (2 areas, 5 units, behaviour, pose and LFP, 13 trials of
``rewarded_push``), bins it under N session ids with the real writer
(:func:`pixbin.dataset.build_session`, one action, ``include_lfp: true``: 13 groups and 104
variables per session, as a real session) and combines the first N of them with
:func:`pixbin.binned_write.combine_action` for each N (default 1, 10, 50, 100). Then, each in a
fresh interpreter (imports and one warm-up open of the 1-session file done before the clock
starts; the file's pages are in the page cache), it times (the best of ``--repeat`` opens, wall
and CPU seconds of the process; on a shared machine the CPU seconds vary less with the load):

- ``xr.open_datatree(engine="h5netcdf")``: what users type (lazy, numpy-backed);
- ``xr.open_datatree(engine="h5netcdf", chunks={})``: what ``open_action`` did before issue #19;
- ``xr.open_datatree(engine=BinnedBackend, chunks={})``: ``open_action`` before the one-pass reader;
- ``pixbin open_action``: the pixbin reader of the code imported;
- with ``--baseline-code DIR``: ``open_action`` of the pixbin package under ``DIR`` (e.g. the
  ``code/`` of an earlier commit, ``git archive <commit> code/pixbin | tar -x -C <dir>``), in the
  same run, so that both readers meet the same machine load;
- ``pixbin open_action(sessions=[last], areas=["MOs"])``: one session's area (where it exists);
- ``xr.open_dataset(group=..., engine="h5netcdf")`` and ``pixbin open_group`` (where it exists)
  of the last session's ``MOs/spike_data``;
- ``combine_action`` itself (in this process).

A run that passes ``--timeout`` seconds is stopped and recorded as such. For N up to
``--check-max`` the DataTree of ``open_action`` is checked identical (values, coordinates,
attributes, encodings) to the plain one. Finally ``--layouts`` times one HDF5 name lookup
(``h5py .name`` of a dimension scale opened by reference, the call h5netcdf makes per variable
and axis) in h5py-only files of 10/20/40 x 110 datasets written with the default, ``libver="latest"``
and ``track_order=True`` group formats: the writer-side candidates.

Run: ``.venv/bin/python benchmarks/bench_read.py [--quick] [--sessions 1 10 50 100] [--timeout 240]
[--baseline-code DIR] [--out benchmarks/results/read.json]``; ``--quick`` times the plain h5netcdf opens (O(N²)) up to
10 sessions only, checks up to 10 and skips the name-lookup measurement. To time the code before a change, put its ``code/`` first:
``PYTHONPATH=<old checkout>/code .venv/bin/python benchmarks/bench_read.py --out ...``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import inspect
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
from typing import Any

import h5py
import numpy as np
import pandas as pd
import xarray as xr

import pixbin
from pixbin import binned_read
from pixbin.binned_write import combine_action
from pixbin.dataset import DatasetConfig, build_session
from pixbin.fileio import versions, write_json

logger = logging.getLogger("bench_read")

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "read.json"
ACTION = "rewarded_push"
DURATION_S = 40.0
GROUP = "MOs/spike_data"  # opened in the last session by the one-group methods

#: (probe, cluster id, area, label, depth_um)
UNITS = [("imec0", 7, "MOs", "good", 1500.0), ("imec0", 3, "MOs", "mua", 1400.0),
         ("imec0", 12, "CA1", "good", 800.0), ("imec0", 5, "MOs", "good", 1450.0),
         ("imec0", 9, "CA1", "good", 700.0)]


# --------------------------------------------------------------------------------------------
# the files


def make_processed(folder: Path, seed: int = 0) -> None:
    """A processed session folder with what ``build_session`` reads (the layout of
    docs/PIPELINE.md): units.parquet, trials.parquet, spikes.h5, behaviour, pose and LFP."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rows = []
    for k, a in enumerate([0.6, 3.0, 6.0, 8.2, 10.0, 12.7, 15.1, 20.0, 24.4, 27.0, 30.3, 33.0, 36.5]):
        a += float(rng.uniform(0.0001, 0.0009))
        rows.append({"action": ACTION, "start_s": a - 0.3, "align_event": "back_sensor_open",
                     "align_time_s": a, "back_sensor_open_s": a, "tone_onset_s": a - 0.5,
                     "outcome": "rewarded", "valid": True, "reason": ""})
    trials = pd.DataFrame(rows)
    trials.insert(0, "trial_id", np.arange(len(trials), dtype=np.int64) + 100)
    trials.to_parquet(folder / "trials.parquet")
    n = len(UNITS)
    pd.DataFrame({
        "unit_id": np.array([u[1] for u in UNITS], dtype=np.int64), "probe": [u[0] for u in UNITS],
        "label": [u[3] for u in UNITS], "channel": np.array([int(u[4] // 20) for u in UNITS]),
        "depth_um": np.array([u[4] for u in UNITS]), "area": [u[2] for u in UNITS],
        "firing_rate_hz": rng.uniform(1, 20, n), "num_spikes": rng.integers(100, 1000, n),
        "presence_ratio": rng.uniform(0.8, 1.0, n), "isi_violations_ratio": rng.uniform(0, 1, n),
        "amplitude_cutoff": rng.uniform(0, 0.2, n), "snr": rng.uniform(1, 10, n),
    }).to_parquet(folder / "units.parquet")
    times = np.concatenate([rng.uniform(0.0, DURATION_S, 600) for _ in UNITS])
    ids = np.concatenate([np.full(600, u[1], dtype=np.int64) for u in UNITS])
    order = np.argsort(times, kind="stable")
    with h5py.File(folder / "spikes.h5", "w") as f:
        f.create_dataset("imec0/spike_times_s", data=times[order])
        f.create_dataset("imec0/spike_unit_ids", data=ids[order])
    t = np.arange(int(DURATION_S * 1000)) / 1000.0
    xr.Dataset({"Back_Sensor": ("time", np.sin(t).astype(np.float32), {"units": "V"}),
                "Tone_Signal": ("time", rng.normal(size=t.size).astype(np.float32), {"units": "V"})},
               coords={"time": t}).to_netcdf(folder / "NeuropixelBehaviour(0)_processed.h5", engine="h5netcdf")
    xy = np.stack([100 + 10 * np.sin(t), 50 + 5 * np.cos(3 * t)], axis=1).astype(np.float32)
    xr.Dataset({"x": (("time", "keypoint"), xy), "y": (("time", "keypoint"), xy[:, ::-1].copy()),
                "likelihood": (("time", "keypoint"), rng.uniform(0, 1, xy.shape).astype(np.float32))},
               coords={"time": t, "keypoint": ["paw", "nose"]}).to_netcdf(folder / "USB_Camera_pose.h5",
                                                                          engine="h5netcdf")
    xr.Dataset({"lfp": (("time", "channel"), rng.normal(size=(t.size, 16)).astype(np.float32))},
               coords={"time": t, "channel": np.arange(16), "x_um": ("channel", np.full(16, 16.0)),
                       "y_um": ("channel", np.arange(16) * 100.0)}).to_netcdf(
        folder / "imec0.lf_processed.h5", engine="h5netcdf")


def session_ids(n: int) -> list[str]:
    """``YYMMDD_VR<k>``: one mouse-day per session."""
    day0 = _dt.date(2021, 1, 1)
    return [f"{(day0 + _dt.timedelta(days=k)).strftime('%y%m%d')}_VR{k}" for k in range(n)]


def build(folder: Path, sizes: list[int]) -> tuple[dict[int, Path], dict[int, float], dict[str, Any]]:
    """The per-session files of max(sizes) sessions, then one combined file per size (timed)."""
    make_processed(folder / "processed" / "template")
    d = DatasetConfig.default().to_dict()
    d["actions"] = [a for a in d["actions"] if a["name"] == ACTION]
    d["include_lfp"] = True
    config = DatasetConfig.from_dict(d)
    out = folder / "binned"
    ids = session_ids(max(sizes))
    t0 = time.perf_counter()
    for s in ids:
        build_session(folder / "processed" / "template", s, config, out)
    logger.info("built %d per-session files in %.1f s", len(ids), time.perf_counter() - t0)
    files, combine_s = {}, {}
    for n in sizes:
        t0 = time.perf_counter()
        path = combine_action(out, ACTION, ids[:n])
        combine_s[n] = time.perf_counter() - t0
        files[n] = path.rename(folder / f"{ACTION}-{n}.h5")
        logger.info("N=%-3d combine_action %.2f s  (%.1f MB)", n, combine_s[n], files[n].stat().st_size / 1e6)
    with h5py.File(files[sizes[0]], "r") as f:
        session = f[sorted(f)[0]]
        groups = sum(1 for _ in _walk(session, h5py.Group)) + 1
        datasets = sum(1 for _ in _walk(session, h5py.Dataset))
    with xr.open_datatree(files[sizes[0]], engine="h5netcdf") as dt:
        variables = sum(len(node.to_dataset(inherit=False).variables) for node in dt.subtree)
    return files, combine_s, {"groups_per_session": groups, "hdf5_datasets_per_session": datasets,
                              "variables_per_session": variables}


def _walk(group: h5py.Group, kind: type) -> Any:
    found: list[Any] = []
    group.visititems(lambda name, obj: found.append(obj) if isinstance(obj, kind) else None)
    return found


# --------------------------------------------------------------------------------------------
# timed in a child process

METHODS = {
    "xr.open_datatree(engine='h5netcdf')": "plain_tree",
    "xr.open_datatree(engine='h5netcdf', chunks={}) (open_action before #19)": "plain_tree_chunks",
    "xr.open_datatree(engine=BinnedBackend, chunks={}) (open_action before the one-pass reader)": "backend_tree",
    "pixbin open_action": "open_action",
    "pixbin open_action(sessions=[last session], areas=['MOs'])": "open_action_one",
    "xr.open_dataset(group=last session MOs/spike_data, engine='h5netcdf')": "plain_group",
    "pixbin open_group (last session MOs/spike_data)": "open_group",
}


def _last_group(path: Path) -> str:
    with h5py.File(path, "r") as f:
        return f"{sorted(f)[-1]}/{GROUP}"


def _open(method: str, path: Path) -> Any:
    if method == "plain_tree":
        return xr.open_datatree(path, engine="h5netcdf")
    if method == "plain_tree_chunks":
        return xr.open_datatree(path, engine="h5netcdf", chunks={})
    if method == "backend_tree":
        return xr.open_datatree(path, engine=binned_read.BinnedBackend, chunks={})
    if method == "open_action":
        return binned_read.open_action(path)
    if method == "open_action_one":
        return binned_read.open_action(path, sessions=[_last_group(path).split("/")[0]], areas=["MOs"])
    if method == "plain_group":
        return xr.open_dataset(path, group=_last_group(path), engine="h5netcdf")
    if method == "open_group":
        return binned_read.open_group(path, _last_group(path))
    raise ValueError(method)


def child(method: str, path: Path, warm: Path, repeat: int) -> None:
    """Open ``warm`` once, then time ``repeat`` opens of ``path``; print the least seconds as JSON."""
    import dask.array  # noqa: F401  (imported by the first chunked open otherwise)

    _open(method, warm).close()
    if method.endswith("group"):
        group = _last_group(path)
        opener = (lambda: xr.open_dataset(path, group=group, engine="h5netcdf")) if method == "plain_group" \
            else (lambda: binned_read.open_group(path, group))
    else:
        opener = lambda: _open(method, path)  # noqa: E731
    times, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        obj = opener()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        obj.close()
    print(json.dumps({"seconds": min(times), "all_s": times, "cpu_s": min(cpu), "all_cpu_s": cpu}))


def check(path: Path) -> None:
    """Print whether open_action gives the plain DataTree (every node, values and encodings)."""
    with xr.open_datatree(path, engine="h5netcdf", chunks={}) as plain, binned_read.open_action(path) as fast:
        same = [n.path for n in plain.subtree] == [n.path for n in fast.subtree]
        for node in plain.subtree if same else []:
            a, b = node.to_dataset(inherit=False), fast[node.path].to_dataset(inherit=False)
            same = same and a.identical(b) and list(a.variables) == list(b.variables)
            same = same and all(a[k].encoding.keys() == b[k].encoding.keys()
                                and all(str(a[k].encoding[e]) == str(b[k].encoding[e]) for e in a[k].encoding)
                                for k in a.variables)
            same = same and a.load().identical(b.load())
    print(json.dumps({"identical": bool(same)}))


def run_child(args: list[str], timeout: float, code: Path | None = None) -> dict[str, Any]:
    """Run ``--child args`` in a fresh interpreter (importing pixbin from ``code`` when given)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    env = os.environ.copy()
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code), *filter(None, [env.get("PYTHONPATH")])])
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"seconds": None, "stopped_after_s": timeout}
    if done.returncode:
        raise RuntimeError(f"{cmd}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# writer-side candidates: the cost of one HDF5 name lookup


def name_lookup_ms(folder: Path, n_sessions: int, layout: str) -> float:
    """ms per ``h5py .name`` of a dimension scale, opened by reference, in the last session of
    an h5py-only file of ``n_sessions`` x (2 areas x 5 groups x (1 scale + 10 datasets))."""
    kwargs = {"default": {}, "libver_latest": {"libver": "latest"}, "track_order": {"track_order": True}}[layout]
    path = folder / f"names-{layout}-{n_sessions}.h5"
    with h5py.File(path, "w", **kwargs) as f:
        for s in range(n_sessions):
            for a in range(2):
                for g in ("spike_data", "behaviour", "pose", "lfp", "trials"):
                    grp = f.require_group(f"session_{s:03d}/area{a}/{g}")
                    scale = grp.create_dataset("trial_id", data=np.arange(10))
                    scale.make_scale("trial_id")
                    for v in range(10):
                        grp.create_dataset(f"v{v}", data=np.arange(10)).dims[0].attach_scale(scale)
    with h5py.File(path, "r") as f:
        ref = f[f"session_{n_sessions - 1:03d}/area1/trials/v0"].attrs["DIMENSION_LIST"][0][-1]
        f[ref].name
        t0 = time.perf_counter()
        for _ in range(20):
            f[ref].name
        ms = (time.perf_counter() - t0) / 20 * 1e3
    path.unlink()
    return ms


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 10, 50, 100])
    p.add_argument("--quick", action="store_true",
                   help="plain h5netcdf opens and checks up to 10 sessions only, no name-lookup measurement")
    p.add_argument("--repeat", type=int, default=3, help="opens per method and N (the least time is kept)")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds before a timed open is stopped")
    p.add_argument("--check-max", type=int, default=20, help="check open_action == plain up to this N")
    p.add_argument("--plain-max", type=int, default=10**9, help="time the plain h5netcdf opens up to this N")
    p.add_argument("--no-layouts", action="store_true", help="skip the h5py name-lookup measurement")
    p.add_argument("--baseline-code", type=Path,
                   help="also time open_action of the pixbin package under this folder (an earlier code/)")
    p.add_argument("--dir", type=Path, help="work folder (default: a temporary one, deleted)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        if args.child[0] == "check":
            check(Path(args.child[1]))
        else:
            child(args.child[0], Path(args.child[1]), Path(args.child[2]), int(args.child[3]))
        return 0
    if args.quick:
        args.plain_max, args.check_max, args.no_layouts = min(args.plain_max, 10), min(args.check_max, 10), True
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("pixbin").setLevel(logging.ERROR)
    sizes = sorted(set(args.sessions))
    folder = Path(tempfile.mkdtemp(prefix="bench_read-", dir=args.dir))
    load_start = list(os.getloadavg())
    try:
        files, combine_s, shape = build(folder, sizes)
        opens_one = "sessions" in inspect.signature(binned_read.open_action).parameters
        methods = {name: key for name, key in METHODS.items()
                   if (key != "open_group" or hasattr(binned_read, "open_group"))
                   and (key != "backend_tree" or hasattr(binned_read, "BinnedBackend"))
                   and (key != "open_action_one" or opens_one)}
        rows: dict[str, dict[str, Any]] = {name: {} for name in methods}
        baseline = f"pixbin open_action of {args.baseline_code}" if args.baseline_code else None
        if baseline:
            rows[baseline] = {}
        rows["pixbin combine_action"] = {str(n): {"seconds": s} for n, s in combine_s.items()}
        identical: dict[str, bool] = {}
        for n in sizes:
            for name, key in methods.items():
                if key.startswith("plain") and n > args.plain_max:
                    continue
                r = run_child([key, str(files[n]), str(files[sizes[0]]), str(args.repeat)], args.timeout)
                rows[name][str(n)] = r
                logger.info("N=%-3d %-75s %s", n, name, "stopped after %.0f s" % r["stopped_after_s"]
                            if r["seconds"] is None else f"{r['seconds']:.2f} s ({r['cpu_s']:.2f} s CPU)")
            if baseline:
                r = run_child(["open_action", str(files[n]), str(files[sizes[0]]), str(args.repeat)], args.timeout,
                              code=args.baseline_code)
                rows[baseline][str(n)] = r
                logger.info("N=%-3d %-75s %s", n, baseline, "stopped after %.0f s" % r["stopped_after_s"]
                            if r["seconds"] is None else f"{r['seconds']:.2f} s ({r['cpu_s']:.2f} s CPU)")
            if n <= args.check_max:
                identical[str(n)] = run_child(["check", str(files[n])], 10 * args.timeout)["identical"]
                logger.info("N=%-3d open_action identical to the plain DataTree: %s", n, identical[str(n)])
        layouts: dict[str, dict[str, float]] = {}
        if not args.no_layouts:
            for layout in ("default", "libver_latest", "track_order"):
                layouts[layout] = {str(k): name_lookup_ms(folder, k, layout) for k in (10, 20, 40)}
                logger.info("name lookup, %-13s %s ms", layout,
                            "  ".join(f"{k}: {v:.2f}" for k, v in layouts[layout].items()))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    code = ("one pass of h5py's low-level API, finished Datasets (open_action, #19 item 6)" if opens_one
            else "BinnedBackend (after #19)" if hasattr(binned_read, "BinnedBackend")
            else "plain h5netcdf (before #19)")
    results = {
        "setup": {
            "action": ACTION,
            "sessions": sizes,
            **shape,
            "trials_per_session": 13,
            "units_per_session": len(UNITS),
            "pixbin_reader": code,
            "pixbin_code": str(Path(pixbin.__file__).parent),
            "timing": f"the least of {args.repeat} opens per method and N in a fresh interpreter, after "
                      "imports and a warm-up open of the 1-session file; files in the page cache; "
                      "seconds: wall clock, cpu_s: CPU seconds of the process",
            "baseline_code": None if args.baseline_code is None else str(args.baseline_code),
            "quick": args.quick,
            "timeout_s": args.timeout,
            "h5py": h5py.__version__,
            "hdf5": h5py.version.hdf5_version,
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_average_1_5_15_min_at_start": load_start,
            "load_average_1_5_15_min_at_end": list(os.getloadavg()),
            "platform": platform.platform(),
            "versions": versions(),
        },
        "methods": rows,
        "open_action_identical_to_plain": identical,
        "name_lookup_ms_by_layout_and_sessions": layouts,
    }
    write_json(args.out, results)
    logger.info("wrote %s", args.out)
    return 0 if all(identical.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
