"""Stage runs recorded as DataLad run commits (pixbin.versioning.record_stage_runs) that
``datalad rerun`` repeats, on one short simulated session (spikes from the ground-truth phy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pixbin.pipeline import process_sessions
from pixbin.pipeline import PipelineConfig
from pixbin.simulate import SIMULATED_RIG_CONFIG, simulate_session, write_ground_truth_phy
from pixbin.versioning import ensure_dataset, record_stage_runs

pytestmark = pytest.mark.slow
SID = "240101_PROV1"


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                          text=True).stdout


def _env() -> dict:
    env = dict(os.environ, GIT_AUTHOR_NAME="pixbin test", GIT_AUTHOR_EMAIL="t@example.org",
               GIT_COMMITTER_NAME="pixbin test", GIT_COMMITTER_EMAIL="t@example.org")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder`` (through annex symlinks), by relative path."""
    from pixbin.fileio import sha256_file

    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One dataset for the module: a session processed serially, each stage recorded."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in _env().items():
            mp.setenv(key, value)
        lab = tmp_path_factory.mktemp("prov")
        data = lab / "data"
        raw = simulate_session(data, session_id=SID, duration_s=20, seed=5, n_units=8,
                               write_ap=False, compress=True)
        raw_sha = _digests(raw)
        phy = write_ground_truth_phy(raw, lab / "truth_phy")
        config_path = lab / "pipeline.yaml"
        config_path.write_text(json.dumps({**SIMULATED_RIG_CONFIG,
                                           "spikes": {"phy_folders": {"imec0": str(phy)}}}))
        ensure_dataset(data)
        config = PipelineConfig.from_yaml(config_path)
        results = process_sessions(data, [SID], config, stages=["extract", "sync", "behaviour",
                                                                "spikes"], scheduler="serial")
        commits = record_stage_runs(data, results, config_path)
        yield {"data": data, "results": results[SID], "commits": commits, "config": config_path,
               "raw_sha": raw_sha}


def _commit_of(recorded, stage: str) -> dict:
    made = [c for c in recorded["commits"] if f"] {stage} stage of {SID}" in c["message"]]
    assert len(made) == 1, [c["message"].splitlines()[0] for c in recorded["commits"]]
    return made[0]


def test_each_stage_is_a_run_commit_naming_stage_session_parameters(recorded):
    assert {k: v["status"] for k, v in recorded["results"].items()} == dict.fromkeys(
        ["extract", "sync", "behaviour", "spikes"], "done")
    # extract writes interim/ only, which is never saved: no commit for it
    assert len(recorded["commits"]) == 3
    for stage in ("sync", "behaviour", "spikes"):
        commit = _commit_of(recorded, stage)
        message = commit["message"]
        assert "[DATALAD RUNCMD]" in message
        record = json.loads(message.split("=== Do not change lines below ===")[1]
                            .split("^^^ Do not change lines above ^^^")[0])
        assert record["cmd"].split()[:3] == ["pixbin", "--quiet", "process"]
        assert f"--stages {stage}" in record["cmd"] and SID in record["cmd"]
        assert f"processed/{SID}/.{stage}.json" in " ".join(record["outputs"]) or any(
            stage in o for o in record["outputs"])
        trailer = json.loads(message.split("pixbin-parameters: ")[1].splitlines()[0])
        assert trailer["stage"] == stage and trailer["session"] == SID
        assert trailer["params"] == recorded["results"][stage]["params"]
        assert set(commit["files"]) <= set(record["outputs"])
        assert any(i.startswith(f"raw/{SID}/") for i in record["inputs"]) or stage == "spikes"


def test_rerun_reproduces_a_stage_output(recorded):
    data = recorded["data"]
    commit = _commit_of(recorded, "behaviour")
    outputs = [data / f for f in commit["files"] if not f.endswith(".json")]
    arrays = [p for p in outputs if p.suffix == ".npy"]
    outputs = [p for p in outputs if p.suffix == ".parquet"]
    assert outputs and arrays
    before = {p: _table_and_provenance(p) for p in outputs}
    array_bytes = {p: p.read_bytes() for p in arrays}
    for p in arrays:
        p.unlink()
    for p in outputs:
        p.unlink()
    subprocess.run(["datalad", "rerun", "--explicit", commit["commit"]], cwd=data, check=True,
                   env=_env(), capture_output=True)
    for p in outputs:
        table, provenance = _table_and_provenance(p)
        assert table.equals(before[p][0])  # the data, column by column, bit for bit
        # the provenance differs only where a new run must differ: when, and which run
        changed = {k for k in provenance if provenance[k] != before[p][1].get(k)}
        assert changed <= {"created", "run_id"}, changed
    assert {p: p.read_bytes() for p in arrays} == array_bytes  # no provenance inside: bit for bit
    assert f"[pixbin] behaviour stage of {SID}" in _git(data, "log", "-1", "--format=%s")


def _table_and_provenance(path: Path):
    """The parquet table without its schema metadata, and its pixbin provenance record."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    record = json.loads(meta.get(b"pixbin", b"{}"))
    provenance = {**{k: v for k, v in record.items() if k != "provenance"},
                  **record.get("provenance", {})}
    return table.replace_schema_metadata(None), provenance


def test_pixbin_process_records_each_stage_it_runs(recorded, monkeypatch):
    """`pixbin process` (without --no-save) makes the run commits itself, then saves the rest."""
    from pixbin.cli import main

    for key, value in _env().items():
        monkeypatch.setenv(key, value)
    data = recorded["data"]
    head = _git(data, "rev-parse", "HEAD").strip()
    assert main(["--quiet", "process", SID, "--data", str(data), "--stages", "behaviour", "--force",
                 "behaviour", "--serial", "--config", str(recorded["config"])]) == 0
    subjects = _git(data, "log", "--format=%s", f"{head}..HEAD").splitlines()
    assert f"[DATALAD RUNCMD] [pixbin] behaviour stage of {SID}" in subjects
    assert not any("sync stage" in s or "spikes stage" in s for s in subjects)  # only what ran
    assert _git(data, "status", "--porcelain", "--", "processed").strip() == ""


def test_pixbin_build_is_a_run_commit_that_rerun_repeats(recorded, monkeypatch):
    import xarray as xr

    from pixbin.cli import main
    from pixbin.simulate import write_ground_truth_dlc

    for key, value in _env().items():
        monkeypatch.setenv(key, value)
    data, config_path = recorded["data"], recorded["config"]
    config = json.loads(config_path.read_text())  # the stages a build needs: lfp, pose too
    config["pose"] = {"dlc_output": str(write_ground_truth_dlc(
        data / "raw" / SID, config_path.parent / "USB_CameraDLC_resnet50_sim.csv"))}
    config_path.write_text(json.dumps(config))
    assert main(["--quiet", "process", SID, "--data", str(data), "--serial", "--config",
                 str(config_path)]) == 0
    assert main(["--quiet", "build", "--data", str(data)]) == 0
    subject = _git(data, "log", "-1", "--format=%s").strip()
    assert subject == "[DATALAD RUNCMD] [pixbin] build of 1 session(s)"
    message = _git(data, "log", "-1", "--format=%B")
    record = json.loads(message.split("=== Do not change lines below ===")[1]
                        .split("^^^ Do not change lines above ^^^")[0])
    assert record["cmd"] == f"pixbin --quiet build {SID} --data . --no-save"
    assert record["inputs"] == [f"processed/{SID}"] and record["outputs"] == ["binned"]
    action = sorted((data / "binned").glob("*.h5"))[0]
    before = xr.open_datatree(action, engine="h5netcdf").load()
    action.unlink()
    commit = _git(data, "rev-parse", "HEAD").strip()
    subprocess.run(["datalad", "rerun", "--explicit", commit], cwd=data, check=True, env=_env(),
                   capture_output=True)
    after = xr.open_datatree(action, engine="h5netcdf").load()
    assert [n.path for n in after.subtree] == [n.path for n in before.subtree]
    for node in before.subtree:  # the tensors and tables, value for value (attributes say when)
        xr.testing.assert_equal(after[node.path].to_dataset(), node.to_dataset())


def test_raw_is_in_the_dataset_and_a_clone_gets_it_and_processes(recorded, tmp_path, monkeypatch):
    """`pixbin process` registered raw/ (annexed, bytes unchanged); a clone has the paths, and
    after `datalad get raw/<session>` the stages run there and make the same data."""
    from pixbin.cli import main
    from pixbin.versioning import clone, get

    for key, value in _env().items():
        monkeypatch.setenv(key, value)
    data = recorded["data"]
    assert f"[pixbin] raw data of {SID}" in _git(data, "log", "--format=%s")
    assert _digests(data / "raw" / SID) == recorded["raw_sha"]  # raw content untouched
    copy = clone(data, tmp_path / "clone")
    tdms = copy / "raw" / SID / next(p.name for p in (data / "raw" / SID).iterdir()
                                     if p.name.startswith("NeuropixelBehaviour"))
    assert tdms.is_symlink() and not tdms.exists()  # a pointer until fetched
    get(copy, [f"raw/{SID}"])
    assert _digests(copy / "raw" / SID) == recorded["raw_sha"]
    assert main(["--quiet", "process", SID, "--data", str(copy), "--serial", "--no-save",
                 "--config", str(recorded["config"]),
                 "--stages", "extract", "sync", "behaviour", "--force", "sync", "behaviour"]) == 0
    mine, theirs = data / "processed" / SID, copy / "processed" / SID
    assert json.loads((theirs / "lag.json").read_text()) == json.loads((mine / "lag.json").read_text())
    for name in ("events.parquet", "trials.parquet"):
        assert _table_and_provenance(theirs / name)[0].equals(_table_and_provenance(mine / name)[0])
