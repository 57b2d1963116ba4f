"""Sorters with and without motion correction on drifting ground truth (docs/SORTING.md, "Drift").

usage: python benchmarks/bench_sorting_drift.py WORK [--sorters tridesclous2,spykingcircus2]
       [--duration 60] [--units 40] [--cases sim_static,sim_rigid,sim_nonrigid,si_drifting]

Recordings (made once under WORK, reused by later runs):

- ``sim_static``, ``sim_rigid``, ``sim_nonrigid``: :func:`pixbin.simulate.simulate_session` (NP1.0,
  384 channels + SY, read as SpikeGLX), no drift / a rigid 20 µm/min ramp with a 20 µm jump at
  mid-session / the same with ``depth_gain_per_mm = 0.4`` (0.23× at the tip, 1.77× at the top);
- ``si_drifting``: SpikeInterface's ``generate_drifting_recording`` (128-channel NP1.0-like
  probe from probeinterface's bundled features, its zigzag drift of ±20 µm from 0 s with one period
  per recording), saved once as a binary folder.

Each (recording, sorter, motion on/off) runs in its own process (so that its peak memory is its
own): ``pixbin.sorting.run_sorter_on_recording`` with ``resolve_motion(..., True/False)``,
``n_jobs=2``; then ``compare_sorter_to_ground_truth(exhaustive_gt=True)`` and, when the sorter
stored a motion estimate, its RMS error against the imposed displacement at every ground-truth
unit's depth and every estimate time bin, after removing the mean difference (a motion estimate
is defined up to a constant). Results: WORK/result_<case>_<sorter>_<on|off>.json and the
collected ``benchmarks/results/sorting_drift.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "sorting_drift.json"
CASES = ("sim_static", "sim_rigid", "sim_nonrigid", "si_drifting")


def _sim_drift(case: str, duration_s: float):
    from pixbin.simulate_units import DriftParams

    if case == "sim_static":
        return DriftParams()
    gain = 0.4 if case == "sim_nonrigid" else 0.0
    return DriftParams(ramp_um_per_min=20.0, jumps=((duration_s / 2, 20.0),), depth_gain_per_mm=gain)


def make_recording(work: Path, case: str, duration_s: float, n_units: int) -> Path:
    """Write the case's recording and ground truth under ``work/case`` (once); its folder."""
    folder = work / case
    if (folder / "done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    if case.startswith("sim_"):
        from pixbin.simulate import simulate_session

        simulate_session(folder, session_id="240101_DRIFT", duration_s=duration_s, seed=0, n_units=n_units,
                         compress=False, drift=_sim_drift(case, duration_s))
    else:
        from probeinterface.neuropixels_tools import build_neuropixels_probe
        from spikeinterface.generation import drifting_generator, generate_drifting_recording

        # its default probe comes from probeinterface's online library; the same NP1000 from the
        # probe features bundled with probeinterface (no network needed)
        drifting_generator.get_probe = lambda manufacturer, name: build_neuropixels_probe(name)
        # its zigzag of +-20 um, started at 0 s with one period per recording (the default starts
        # at 60 s with a 200 s period, longer than these recordings)
        zigzag = dict(drift_mode="zigzag", non_rigid_gradient=None, t_start_drift=0.0,
                      t_end_drift=None, period_s=duration_s)
        _static, drifting, sorting, extra = generate_drifting_recording(
            num_units=n_units, duration=duration_s, sampling_frequency=30000.0, seed=0, extra_outputs=True,
            generate_displacement_vector_kwargs=dict(
                displacement_sampling_frequency=5.0, drift_start_um=[0, 20], drift_stop_um=[0, -20],
                drift_step_um=1, motion_list=[zigzag]))
        drifting.save(folder=folder / "recording", n_jobs=2, chunk_duration="1s")
        sorting.save(folder=folder / "ground_truth")
        np.savez(folder / "motion_truth.npz", unit_displacements=extra["unit_displacements"],
                 displacement_sampling_frequency=extra["displacement_sampling_frequency"],
                 unit_locations=extra["unit_locations"])
    (folder / "done").write_text("")
    return folder


def load_case(folder: Path, case: str):
    """(recording, ground-truth sorting, truth displacement function (times_s, unit) -> µm, unit depths)."""
    import spikeinterface.core as sc

    if case.startswith("sim_"):
        from pixbin.simulate import SimulationParams, load_ground_truth
        from pixbin.simulate_units import imposed_displacement
        from pixbin.sorting import read_ap_recording

        raw = folder / "raw" / "240101_DRIFT"
        truth = load_ground_truth(raw)
        recording = read_ap_recording(next(raw.glob("*.imec0.ap.bin")))
        rate = recording.sampling_frequency
        gt = sc.NumpySorting.from_samples_and_labels(
            [np.round(truth["arrays"]["spike_times_s"] * rate).astype(np.int64)],
            [truth["arrays"]["spike_unit_ids"]], rate)
        drift = SimulationParams.from_dict({"drift": truth["parameters"]["drift"]}).drift
        depths = np.array([u["soma_um"][1] for u in truth["units"]])
        return recording, gt, lambda t, k: imposed_displacement(drift, t, depths[k]), depths
    recording = sc.load(folder / "recording")
    gt = sc.load(folder / "ground_truth")
    arrays = np.load(folder / "motion_truth.npz")
    per_unit, fs = arrays["unit_displacements"], float(arrays["displacement_sampling_frequency"])
    depths = arrays["unit_locations"][:, 1]

    def truth_at(t, k):
        index = np.clip(np.round(np.asarray(t) * fs).astype(int), 0, per_unit.shape[0] - 1)
        return per_unit[index, k, 1]  # (times, units, x/y): the depth direction

    return recording, gt, truth_at, depths


def motion_rms_um(motion, truth_at, depths: np.ndarray) -> float:
    """RMS (µm) of estimate minus truth over estimate time bins × unit depths, mean removed."""
    times = motion.temporal_bins_s[0]
    diffs = []
    for k, depth in enumerate(depths):
        est = motion.get_displacement_at_time_and_depth(times, np.full(times.size, depth))
        diffs.append(est - truth_at(times, k))
    diff = np.concatenate(diffs)
    return float(np.sqrt(np.mean((diff - diff.mean()) ** 2)))


def run_one(work: Path, case: str, sorter: str, apply: bool) -> dict:
    """Sort one case in this process and measure it."""
    from spikeinterface.comparison import compare_sorter_to_ground_truth

    from pixbin.sorting import MOTION_FOLDER, load_motion, resolve_motion, run_sorter_on_recording

    recording, gt, truth_at, depths = load_case(work / case, case)
    motion = resolve_motion(sorter, recording, apply)
    out = work / f"sorted_{case}_{sorter}_{'on' if apply else 'off'}"
    t0 = time.perf_counter()
    sorting = run_sorter_on_recording(recording, out, sorter=sorter, n_jobs=2, export_phy=False, motion=motion)
    wall_s = time.perf_counter() - t0
    peak_mb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    cmp = compare_sorter_to_ground_truth(gt, sorting, exhaustive_gt=True)
    perf = cmp.get_performance()
    result = {
        "case": case, "sorter": sorter, "motion_correction": apply, "motion_preset": motion["preset"],
        "wall_s": round(wall_s, 1), "peak_memory_mb": round(peak_mb),
        "n_units_found": int(sorting.get_num_units()), "n_gt_units": int(gt.get_num_units()),
        "well_detected": int(cmp.count_well_detected_units(well_detected_score=0.8)),
        "accuracy": round(float(perf["accuracy"].mean()), 3),
        "precision": round(float(perf["precision"].mean()), 3),
        "recall": round(float(perf["recall"].mean()), 3),
        "false_positive": int(cmp.count_false_positive_units()),
        "motion_rms_um": None, "imposed_range_um": None,
    }
    times = np.arange(0.0, recording.get_duration(), 1.0)
    imposed = np.concatenate([truth_at(times, k) for k in range(depths.size)])
    result["imposed_range_um"] = [round(float(imposed.min()), 1), round(float(imposed.max()), 1)]
    if (out / MOTION_FOLDER).is_dir():
        result["motion_rms_um"] = round(motion_rms_um(load_motion(out / MOTION_FOLDER)["motion"], truth_at, depths), 2)
    return result


def markdown_table(doc: dict) -> str:
    """The docs/SORTING.md table of a results document."""
    head = ("| recording | sorter | motion | wall time | peak memory | units found | well detected | accuracy "
            "| precision | recall | false positive | motion RMS error |\n|" + "---|" * 12)
    rows = []
    for r in doc["results"]:
        if "error" in r:
            rows.append(f"| {r['case']} | {r['sorter']} | {'on' if r['motion_correction'] else 'off'} | "
                        f"failed: {r['error']} |" + " |" * 8)
            continue
        rms = "–" if r["motion_rms_um"] is None else f"{r['motion_rms_um']:.1f} µm"
        rows.append(f"| {r['case']} | {r['sorter']} | {'on' if r['motion_correction'] else 'off'} | "
                    f"{r['wall_s']:.0f} s | {r['peak_memory_mb'] / 1024:.1f} GiB | {r['n_units_found']} | "
                    f"{r['well_detected']}/{r['n_gt_units']} | {r['accuracy']:.3f} | {r['precision']:.3f} | "
                    f"{r['recall']:.3f} | {r['false_positive']} | {rms} |")
    return "\n".join([head, *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--sorters", default="tridesclous2")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--units", type=int, default=40)
    parser.add_argument("--one", nargs=3, metavar=("CASE", "SORTER", "ON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    if args.one:
        case, sorter, on = args.one
        result = run_one(work, case, sorter, on == "on")
        (work / f"result_{case}_{sorter}_{on}.json").write_text(json.dumps(result, indent=2))
        return
    results = []
    for case in args.cases.split(","):
        make_recording(work, case, args.duration, args.units)
        for sorter in args.sorters.split(","):
            for on in ("off", "on"):
                path = work / f"result_{case}_{sorter}_{on}.json"
                if not path.exists():
                    run = subprocess.run([sys.executable, __file__, str(work), "--one", case, sorter, on])
                    if run.returncode != 0:
                        path.write_text(json.dumps({"case": case, "sorter": sorter, "motion_correction": on == "on",
                                                    "error": f"exit status {run.returncode}"}))
                result = json.loads(path.read_text())
                print(result, flush=True)
                results.append(result)
    import spikeinterface

    doc = {"machine": {"cpus": 2, "platform": platform.platform(), "python": platform.python_version(),
                       "spikeinterface": spikeinterface.__version__},
           "duration_s": args.duration, "n_units": args.units, "results": results}
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    print(markdown_table(doc))


if __name__ == "__main__":
    main()
