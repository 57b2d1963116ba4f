"""Execute every notebook in notebooks/ top to bottom against a demo data folder.

The demo folder is built once per test session (:func:`build_demo_data`): one simulated session
(:func:`pixbin.simulate.simulate_session`), every pipeline stage
(:func:`pixbin.pipeline.process_sessions`, serial) and the default binned dataset
(:func:`pixbin.dataset.build_dataset`). The notebooks find it through ``PIXBIN_DATA``; 02_decode
writes its per-area decoding numbers to ``PIXBIN_NOTEBOOK_RESULTS``, which the test checks
(outcome decoded above chance in CP, the reward-responsive area, and not in the LSr control).

Spikes. Sorting the AP band with the CPU sorter takes far longer than a test can spend on 2
cores (measured: 675 s for a 120 s, 32-unit recording, which has too few trials to decode), so
by default the session is simulated without its AP band and the spikes stage *imports* a
Kilosort/phy folder holding the simulator's ground-truth spike trains and peak channels — the
stage's phy-import path (``spikes: {phy_folders: {imec0: ...}}``), as for a curated Kilosort
folder. Likewise the pose stage imports a DeepLabCut CSV of the simulated marker
(``pose: {dlc_output: ...}``) instead of running DeepLabCut. Every other stage runs on the raw
files. ``PIXBIN_NOTEBOOK_SPIKES=sort`` writes the AP band and runs the real sorter instead (about
half an hour on 2 cores); ``PIXBIN_NOTEBOOK_DATA=<folder>`` uses an already built data folder.

The kernel is the interpreter running pytest (a kernelspec written to a temporary folder whose
argv is ``sys.executable``), so a fresh ``pip install -e .[dev]`` suffices and no user-level
``python3`` kernelspec can substitute another Python.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("sklearn")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
SESSION_ID = "240101_SIM01"
#: Recording length and units of the demo session: ~105 trials, ~40 rewarded and ~25 missed
#: tone trials, enough for cross-validated decoding on the train+val trials.
DURATION_S = 480.0
N_UNITS = 40
#: With the real sorter (PIXBIN_NOTEBOOK_SPIKES=sort) the AP band must be written and sorted.
SORT_DURATION_S = 480.0
CELL_TIMEOUT_S = 300


# --------------------------------------------------------------------------------------------
# the demo data folder


def _write_truth_phy(raw_dir: Path, truth: dict, out: Path) -> Path:
    """A phy folder of the simulator's ground truth: spike samples, cluster ids, peak channels."""
    out.mkdir(parents=True, exist_ok=True)
    rate = float(truth["parameters"]["ap_rate_hz"])
    arrays = truth["arrays"]
    np.save(out / "spike_times.npy", np.round(arrays["spike_times_s"] * rate).astype(np.int64))
    np.save(out / "spike_clusters.npy", arrays["spike_unit_ids"].astype(np.int64))
    (out / "params.py").write_text(f"sample_rate = {rate!r}\nn_channels_dat = 385\ndtype = 'int16'\n"
                                   "offset = 0\nhp_filtered = False\n")
    rows = ["cluster_id\tch\tdepth\tgroup"]
    rows += [f"{u['unit_id']}\t{u['channel']}\t{u['depth_um']}\tgood" for u in truth["units"]]
    (out / "cluster_info.tsv").write_text("\n".join(rows) + "\n")
    return out


def _write_truth_dlc(truth: dict, out: Path) -> Path:
    """A DeepLabCut CSV (scorer, bodyparts, coords) of the simulated marker, one row per saved frame."""
    arrays = truth["arrays"]
    saved = arrays["frame_saved"].astype(bool)
    x, y = arrays["marker_x"][saved], arrays["marker_y"][saved]
    lines = ["scorer,truth,truth,truth", "bodyparts,marker,marker,marker", "coords,x,y,likelihood"]
    lines += [f"{i},{xi:.4f},{yi:.4f},0.99" for i, (xi, yi) in enumerate(zip(x, y))]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out


def build_demo_data(root: str | os.PathLike, *, spikes: str = "truth", duration_s: float | None = None,
                    n_units: int = N_UNITS) -> dict[str, float]:
    """Simulate one session under ``root/raw``, process it and build ``root/binned``.

    ``spikes="truth"``: no AP band; the spikes stage imports the ground-truth phy folder and the
    pose stage a ground-truth DeepLabCut CSV (written under ``root/truth/``, outside the session).
    ``spikes="sort"``: the AP band is written and sorted by the default sorter.
    Returns the wall time of each step (s).
    """
    from pixbin.dataset import DatasetConfig, build_dataset
    from pixbin.pipeline import PipelineConfig, process_sessions
    from pixbin.simulate import SIMULATED_RIG_CONFIG, load_ground_truth, simulate_session

    if spikes not in ("truth", "sort"):
        raise ValueError(f"spikes: expected 'truth' or 'sort', got {spikes!r}")
    root = Path(root)
    sort = spikes == "sort"
    duration_s = duration_s or (SORT_DURATION_S if sort else DURATION_S)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    raw = simulate_session(root, session_id=SESSION_ID, duration_s=duration_s, seed=0, n_units=n_units,
                           compress=False, write_ap=sort)
    times["simulate"] = time.perf_counter() - t0
    truth = load_ground_truth(raw)
    config: dict = {**SIMULATED_RIG_CONFIG, "pose": {"dlc_output": str(_write_truth_dlc(truth, root / "truth" / "USB_Camera_dlc.csv"))}}
    if not sort:
        config["spikes"] = {"phy_folders": {"imec0": str(_write_truth_phy(raw, truth, root / "truth" / "phy_imec0"))}}
    t0 = time.perf_counter()
    records = process_sessions(root, [SESSION_ID], PipelineConfig.from_dict(config), scheduler="serial")
    times["process"] = time.perf_counter() - t0
    for stage, record in records[SESSION_ID].items():
        times[f"stage {stage}"] = float(record.get("duration_s") or 0.0)
        if record.get("status") not in ("done", "skipped"):
            raise RuntimeError(f"demo data: stage {stage} {record.get('status')}: {record.get('error', record)}")
    t0 = time.perf_counter()
    build_dataset(root / "processed", [SESSION_ID], root / "binned", DatasetConfig.default())
    times["build"] = time.perf_counter() - t0
    return times


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    given = os.environ.get("PIXBIN_NOTEBOOK_DATA")
    if given:
        path = Path(given).resolve()
        if not any((path / "binned").glob("*.h5")):
            pytest.fail(f"PIXBIN_NOTEBOOK_DATA={given}: no binned/*.h5 there")
        return path
    root = tmp_path_factory.mktemp("notebook_data")
    t0 = time.perf_counter()
    times = build_demo_data(root, spikes=os.environ.get("PIXBIN_NOTEBOOK_SPIKES", "truth"))
    times["total"] = time.perf_counter() - t0
    (root / "fixture_times.json").write_text(json.dumps(times, indent=1))
    print("demo data built in", {k: round(v, 1) for k, v in times.items()})
    return root


# --------------------------------------------------------------------------------------------
# running a notebook


@pytest.fixture(scope="session")
def kernel(tmp_path_factory):
    """(KernelSpecManager, name) of a kernel that runs this interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager

    kernels = tmp_path_factory.mktemp("kernels")
    name = "pixbin-notebook-tests"
    (kernels / name).mkdir()
    (kernels / name / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "pixbin tests", "language": "python"}))
    return KernelSpecManager(kernel_dirs=[str(kernels)]), name


def run_notebook(path: Path, kernel, env: dict[str, str]) -> nbformat.NotebookNode:
    """Execute ``path`` in notebooks/ with ``env`` added to the kernel's environment."""
    from jupyter_client.manager import KernelManager

    ksm, name = kernel
    nb = nbformat.read(path, as_version=4)
    km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
    client = nbclient.NotebookClient(nb, km=km, kernel_name=name, timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(path.parent)}})
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)        # the kernel process inherits this environment
    try:
        client.execute()
    finally:
        if km.has_kernel:             # nbclient leaves a kernel manager it was given running
            km.shutdown_kernel(now=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def _kernel_env(data: Path, results: Path) -> dict[str, str]:
    return {
        "PIXBIN_DATA": str(data),
        "PIXBIN_NOTEBOOK_RESULTS": str(results),
        "TMPDIR": str(results.parent),    # the notebooks' temporary folders go to the test's tmp_path
        # inline figures even when the caller set MPLBACKEND=Agg (make test)
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }


def _images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
               for out in cell.get("outputs", []))


# --------------------------------------------------------------------------------------------
# tests


def test_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["01_explore.ipynb", "02_decode.ipynb", "03_access.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: clear them before committing"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


def test_explore_notebook(demo_data, kernel, tmp_path):
    nb = run_notebook(NOTEBOOK_DIR / "01_explore.ipynb", kernel, _kernel_env(demo_data, tmp_path / "r.json"))
    # raster, PSTH + behaviour + pose, the sync PNG, quality histograms
    assert _images(nb) >= 4


def test_decode_notebook(demo_data, kernel, tmp_path):
    results_path = tmp_path / "decode.json"
    t0 = time.perf_counter()
    nb = run_notebook(NOTEBOOK_DIR / "02_decode.ipynb", kernel, _kernel_env(demo_data, results_path))
    print(f"02_decode ran in {time.perf_counter() - t0:.1f} s")
    assert _images(nb) >= 1
    results = json.loads(results_path.read_text())
    by_area = {}
    for r in results["results"]:
        by_area.setdefault(r["area"], []).append(r)
        print(f"{r['area']:>4}: peak CV balanced accuracy {r['peak_accuracy']:.3f} at {r['peak_time_s']:+.2f} s, "
              f"chance {r['chance_mean']:.3f} (max-statistic 95th pct {r['chance_max_p95']:.3f}), "
              f"p = {r['p_value']:.3f}, test {r['test_accuracy']:.3f} (n = {r['n_test']})")
    assert {"CP", "LSr"} <= set(by_area), f"areas decoded: {sorted(by_area)}"
    for r in by_area["CP"]:
        assert r["above_chance"], f"CP (reward-responsive) not decoded above chance: {r}"
        assert r["peak_accuracy"] > r["chance_max_p95"]
    for r in by_area["LSr"]:
        assert not r["above_chance"], f"LSr (control) decoded above chance: {r}"
        assert r["peak_accuracy"] <= r["chance_max_p95"]


def test_access_notebook(demo_data, kernel, tmp_path):
    nb = run_notebook(NOTEBOOK_DIR / "03_access.ipynb", kernel, _kernel_env(demo_data, tmp_path / "r.json"))
    text = "".join(out.get("text", "") for cell in nb.cells for out in cell.get("outputs", []))
    assert "-spike_data.npy" in text and "-trials.npy" in text
    # run from notebooks/ of this checkout: the script itself, and its command line, are used
    assert "code/utils/access_action_structure.py" in text
    assert "-spike_counts.npy" in text


if __name__ == "__main__":  # build a demo folder by hand: python tests/test_notebooks.py DIR [truth|sort]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    target = Path(sys.argv[1])
    result = build_demo_data(target, spikes=sys.argv[2] if len(sys.argv) > 2 else "truth")
    print(json.dumps({k: round(v, 1) for k, v in result.items()}, indent=1))
