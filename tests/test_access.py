"""code/utils/access_action_structure.py (and pixbin.binned_read.export_npy): Allen-style .npy export."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from pixbin.dataset import DatasetConfig, build_dataset
from pixbin.errors import DatasetError
from test_dataset import SESSION_A, SESSION_B, UNITS_A, UNITS_B, make_processed_session

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "code" / "utils" / "access_action_structure.py"


def _load_script() -> Any:
    spec = importlib.util.spec_from_file_location("access_action_structure", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def binned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset folder ``<tmp>/data/binned`` with two sessions and one action."""
    root = tmp_path_factory.mktemp("access")
    processed = root / "data" / "processed"
    make_processed_session(processed, SESSION_A, UNITS_A, seed=1, lfp=False)
    make_processed_session(processed, SESSION_B, UNITS_B, seed=2, lfp=False)
    d = DatasetConfig.default().to_dict()
    d["actions"] = [a for a in d["actions"] if a["name"] == "rewarded_push"]
    build_dataset(processed, [SESSION_A, SESSION_B], root / "data" / "binned", DatasetConfig.from_dict(d))
    return root / "data" / "binned"


def test_spike_data_is_unit_trial_time_with_sidecar(binned: Path, tmp_path: Path) -> None:
    access = _load_script().access_action_structure
    paths = access("rewarded_push", "MOs", tmp_path, in_path=binned)
    assert [p.name for p in paths] == [f"session_{SESSION_A}-rewarded_push-MOs-spike_data.npy",
                                       f"session_{SESSION_B}-rewarded_push-MOs-spike_data.npy"]
    with xr.open_datatree(binned / "rewarded_push.h5", engine="h5netcdf") as dt:
        for path, session in zip(paths, (SESSION_A, SESSION_B)):
            ds = dt[f"session_{session}/MOs/spike_data"]
            array = np.load(path)
            meta = json.loads(path.with_suffix(".json").read_text())
            assert array.dtype == bool
            assert array.shape == (ds.sizes["unit_id"], ds.sizes["trial_id"], ds.sizes["time"])
            np.testing.assert_array_equal(array, ds["spike_data"].transpose("unit_id", "trial_id", "time").values)
            assert meta["dims"] == ["unit_id", "trial_id", "time"] and meta["dtype"] == "bool"
            assert meta["shape"] == list(array.shape)
            assert meta["session"] == session and meta["action"] == "rewarded_push" and meta["area"] == "MOs"
            assert meta["coords"]["unit_id"]["values"] == ds["unit_id"].values.tolist()
            assert meta["coords"]["trial_id"]["values"] == ds["trial_id"].values.tolist()
            np.testing.assert_allclose(meta["coords"]["time"]["values"], ds["time"].values)
            assert meta["coords"]["probe"] == {"dim": "unit_id", "values": ds["probe"].values.tolist()}
            assert meta["bin_size_s"] == 0.02 and meta["window_s"] == [-1.0, 1.0]


def test_other_data(binned: Path, tmp_path: Path) -> None:
    access = _load_script().access_action_structure
    with xr.open_datatree(binned / "rewarded_push.h5", engine="h5netcdf") as dt:
        area = dt[f"session_{SESSION_A}/CA1"]
        n_trials, n_time = area["spike_data"].sizes["trial_id"], area["spike_data"].sizes["time"]
        (counts,) = access("rewarded_push", "CA1", tmp_path, data="spike_counts", in_path=binned,
                           sessions=[SESSION_A])
        assert np.load(counts).dtype == np.uint8 and np.load(counts).shape[1:] == (n_trials, n_time)
        (beh,) = access("rewarded_push", "CA1", tmp_path, data="behaviour", in_path=binned,
                        sessions=[f"session_{SESSION_A}"])
        meta = json.loads(beh.with_suffix(".json").read_text())
        assert np.load(beh).shape == (n_trials, n_time, 2)
        assert meta["dims"] == ["trial_id", "time", "variable"]
        assert meta["variables"] == ["Back_Sensor", "Tone_Signal"]
        np.testing.assert_array_equal(np.load(beh)[:, :, 0], area["behaviour"]["Back_Sensor"].values)
        (one,) = access("rewarded_push", "CA1", tmp_path, data="behaviour/Tone_Signal", in_path=binned,
                        sessions=[SESSION_A])
        assert one.name == f"session_{SESSION_A}-rewarded_push-CA1-behaviour.Tone_Signal.npy"
        np.testing.assert_array_equal(np.load(one), area["behaviour"]["Tone_Signal"].values)
        (pose,) = access("rewarded_push", "CA1", tmp_path, data="pose", in_path=binned, sessions=[SESSION_A])
        assert np.load(pose).shape == (n_trials, n_time, 2, 3)
        assert json.loads(pose.with_suffix(".json").read_text())["variables"] == ["x", "y", "likelihood"]
        (trials,) = access("rewarded_push", "CA1", tmp_path, data="trials", in_path=binned, sessions=[SESSION_A])
        table = np.load(trials)  # a structured array: no pickle needed
        assert table.shape == (n_trials,)
        np.testing.assert_array_equal(table["trial_id"], area["trials"]["trial_id"].values)
        assert set(table["split"]) <= {"train", "val", "test"}
        np.testing.assert_array_equal(table["align_time"], area["trials"]["align_time"].values)


def test_errors(binned: Path, tmp_path: Path) -> None:
    access = _load_script().access_action_structure
    with pytest.raises(DatasetError, match=r"no session has area 'VISp'.*areas found: \['CA1', 'MOs'\]"):
        access("rewarded_push", "VISp", tmp_path, in_path=binned)
    with pytest.raises(DatasetError, match="not found"):
        access("missed_push", "MOs", tmp_path, in_path=binned)
    with pytest.raises(DatasetError, match="expected one of"):
        access("rewarded_push", "MOs", tmp_path, data="speed", in_path=binned)


def test_per_session_files_when_combined_file_is_absent(binned: Path, tmp_path: Path) -> None:
    partial = tmp_path / "binned"
    shutil.copytree(binned / "sessions" / f"session_{SESSION_B}", partial / "sessions" / f"session_{SESSION_B}")
    (path,) = _load_script().access_action_structure("rewarded_push", "MOs", tmp_path / "out", in_path=partial)
    assert path.name.startswith(f"session_{SESSION_B}-")
    assert np.load(path).shape[0] == 2  # imec0 + imec1 units


def test_cli(binned: Path, tmp_path: Path) -> None:
    out = tmp_path / "npy"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "rewarded_push", "MOs", str(out), "--sessions", SESSION_B],
        cwd=binned.parents[1], capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    written = [Path(line) for line in result.stdout.split()]
    assert [p.name for p in written] == [f"session_{SESSION_B}-rewarded_push-MOs-spike_data.npy"]
    assert np.load(written[0]).ndim == 3 and written[0].with_suffix(".json").is_file()
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "rewarded_push", "VISp", str(out), "--in-path", str(binned), "--data", "pose"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1 and "VISp" in result.stderr


def test_format_md_examples_run(binned: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reading examples of docs/FORMAT.md run against a built dataset."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "FORMAT.md").read_text(), re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(binned.parents[1])
    for block in blocks:
        exec(compile(block, "docs/FORMAT.md", "exec"), {})
