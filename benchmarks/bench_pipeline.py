"""Process N simulated sessions on a dask LocalCluster with 1 and with 2 workers; report the
speed-up.

Each session runs every stage (extract, sync, behaviour, spikes by importing the simulator's
ground-truth phy folder, lfp, pose frame times). Sorting is left out on purpose: it would
dominate and it parallelises inside the sorter, not across sessions.

    python benchmarks/bench_pipeline.py [--sessions 8] [--duration-s 60] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from pixbin import __version__
from pixbin.pipeline import PipelineConfig, process_sessions
from pixbin.simulate import SIMULATED_RIG_CONFIG, simulate_session, write_ground_truth_phy

RESULTS = Path(__file__).parent / "results" / "pipeline.json"


def _make_sessions(root: Path, n: int, duration_s: float) -> tuple[list[str], PipelineConfig]:
    ids, phy = [], {}
    for i in range(n):
        sid = f"2401{i + 1:02d}_BENCH{i:02d}"
        raw = simulate_session(root, session_id=sid, duration_s=duration_s, seed=i, n_units=24,
                               write_ap=False)
        phy[sid] = write_ground_truth_phy(raw, root / "truth_phy" / sid)
        ids.append(sid)
    return ids, phy


def _run(template: Path, ids: list[str], phy: dict, workers: int) -> float:
    with tempfile.TemporaryDirectory(dir=template.parent) as tmp:
        root = Path(tmp)
        shutil.copytree(template / "raw", root / "raw")
        # each session imports its own truth folder through the {session} placeholder
        for sid in ids:
            (root / "raw" / sid / "phy").symlink_to(phy[sid])
        config = PipelineConfig.from_dict({**SIMULATED_RIG_CONFIG,
                                           "spikes": {"phy_folders": {"imec0": "raw/{session}/phy"}}})
        start = time.perf_counter()
        results = process_sessions(root, ids, config, scheduler=None, n_workers=workers)
        elapsed = time.perf_counter() - start
        failed = {(s, k): r.get("error") for s, rs in results.items() for k, r in rs.items()
                  if r["status"] != "done"}
        if failed:
            raise SystemExit(f"stages failed: {failed}")
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="2 sessions of 20 s")
    args = parser.parse_args()
    n, duration = (2, 20.0) if args.quick else (args.sessions, args.duration_s)
    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp) / "template"
        ids, phy = _make_sessions(template, n, duration)
        times = {w: _run(template, ids, phy, w) for w in (1, 2)}
    result = {
        "sessions": n,
        "duration_s_each": duration,
        "wall_s": {str(w): round(t, 2) for w, t in times.items()},
        "speedup_2_vs_1": round(times[1] / times[2], 2),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "pixbin": __version__,
    }
    print(json.dumps(result, indent=2))
    if not args.quick:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
