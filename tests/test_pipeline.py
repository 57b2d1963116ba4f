"""Stage records, resume, failures that do not stop other sessions, the status table."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from pixbin import layout
from pixbin.errors import ConfigError
from pixbin.pipeline import (
    PipelineConfig,
    process_session,
    process_sessions,
    session_status,
    status_table,
)
from pixbin.session import load_session
from pixbin.simulate import SIMULATED_RIG_CONFIG, simulate_session

#: the simulated rig: its pulser starts and stops with the probe file
SIM = PipelineConfig.from_dict(SIMULATED_RIG_CONFIG)


@pytest.fixture()
def two_sessions(tmp_path):
    for i, sid in enumerate(["240101_SIM01", "240102_SIM02"]):
        simulate_session(tmp_path, session_id=sid, duration_s=10, seed=i, n_units=3,
                         write_ap=False)
    return tmp_path


def test_extract_stage_records_skips_and_forces(two_sessions):
    config = SIM
    first = process_session(two_sessions, "240101_SIM01", config, stages=["extract"])
    assert first["extract"]["status"] == "done"
    again = process_session(two_sessions, "240101_SIM01", config, stages=["extract"])
    assert again["extract"]["status"] == "skipped"
    forced = process_session(two_sessions, "240101_SIM01", config, stages=["extract"],
                             force=["extract"])
    assert forced["extract"]["status"] == "done"
    assert forced["extract"]["run_id"] != first["extract"]["run_id"]
    # deleting interim/ makes nothing downstream stale (it is regenerable) ...
    shutil.rmtree(two_sessions / "interim" / "240101_SIM01")
    table = status_table(two_sessions, save=True)
    row = table.set_index("session").loc["240101_SIM01"]
    assert row["extract"] == "stale"
    assert row["spikes"] == "missing input: ap_bin"  # no AP band was written
    assert row["sync"] == "not run"
    saved = pd.read_parquet(two_sessions / "processed" / "sessions.parquet")
    assert list(saved["session"]) == ["240101_SIM01", "240102_SIM02"]


def test_a_failing_session_does_not_stop_the_others(two_sessions):
    archive = two_sessions / "raw/240101_SIM01/USB_Camera.tdms.tar.gz"
    archive.write_bytes(archive.read_bytes()[:1000])
    results = process_sessions(two_sessions, ["240101_SIM01", "240102_SIM02"], SIM,
                               stages=["extract"], scheduler="serial")
    assert results["240101_SIM01"]["extract"]["status"] == "error"
    assert "USB_Camera.tdms.tar.gz" in results["240101_SIM01"]["extract"]["error"]
    assert results["240102_SIM02"]["extract"]["status"] == "done"
    cell = status_table(two_sessions).set_index("session").loc["240101_SIM01", "extract"]
    assert cell.startswith("error:") and "truncated" in cell or "corrupted" in cell
    session = load_session(two_sessions, "240101_SIM01")
    assert not (session.interim_dir / "USB_Camera.tdms").exists()


def test_unknown_config_sections_and_stages_are_refused():
    with pytest.raises(ConfigError, match="valid"):
        PipelineConfig.from_dict({"sorting": {}})
    with pytest.raises(ConfigError, match="unknown stage"):
        process_sessions(".", [], SIM, stages=["bin"], scheduler="serial")


# ----------------------------------------------------------------------------- staleness
@pytest.fixture()
def synced(tmp_path):
    """One short session with extract and sync done."""
    simulate_session(tmp_path, session_id="240101_SIM01", duration_s=12, seed=3, n_units=3,
                     write_ap=False)
    results = process_session(tmp_path, "240101_SIM01", SIM,
                              stages=["extract", "sync"])
    assert [r["status"] for r in results.values()] == ["done", "done"], results
    return tmp_path


def _cells(root, config=None):
    session = load_session(root, "240101_SIM01")
    return session_status(session, config)


def test_changed_parameters_make_a_stage_stale_and_equal_ones_do_not(synced):
    assert _cells(synced)["sync"] == "done"
    # the same values spelt differently (int for float) are the same parameters
    same = PipelineConfig.from_dict({"sync": {"tolerance_s": 0.001, "max_drift_ppm": 200,
                                              "train_within_probe": True}})
    assert _cells(synced, same)["sync"] == "done"
    other = PipelineConfig.from_dict({"sync": {"tolerance_s": 0.002, "train_within_probe": True}})
    assert _cells(synced, other)["sync"] == "stale"
    assert _cells(synced, other)["extract"] == "done"


def test_a_new_pixbin_version_makes_every_stage_stale(synced, monkeypatch):
    monkeypatch.setattr("pixbin.pipeline.__version__", "999.0")
    cells = _cells(synced)
    assert cells["extract"] == "stale" and cells["sync"] == "stale"


def test_a_new_upstream_run_makes_the_downstream_stage_stale(synced):
    config = SIM
    assert process_session(synced, "240101_SIM01", config,
                           stages=["behaviour"])["behaviour"]["status"] == "done"
    process_session(synced, "240101_SIM01", config, stages=["sync"], force=["sync"])
    cells = _cells(synced)
    assert cells["sync"] == "done" and cells["behaviour"] == "stale"
    # extract's outputs are regenerable: re-running it with the same raw content changes nothing
    process_session(synced, "240101_SIM01", config, stages=["extract"], force=["extract"])
    assert _cells(synced)["sync"] == "done"


def test_a_deleted_output_makes_its_stage_stale(synced):
    (synced / "processed" / "240101_SIM01" / "lag.json").unlink()
    assert _cells(synced)["sync"] == "stale"


def test_records_carry_the_normalised_parameters_and_outputs_name_the_run(synced):
    record = json.loads((synced / "processed/240101_SIM01/.records/sync.json").read_text())
    assert record["params"]["tolerance_s"] == 0.001 and record["params"]["sync_bit"] == 6
    sync_json = json.loads((synced / "processed/240101_SIM01/sync.json").read_text())
    assert sync_json["provenance"]["run_id"] == record["run_id"]
    assert sync_json["provenance"]["stage"] == "sync"


def test_a_second_behaviour_recording_is_done_after_one_run(tmp_path):
    """``NeuropixelBehaviour(1).tdms`` writes ``action_labels_1.npy``, and the stage is current."""
    simulate_session(tmp_path, session_id="240101_SIM01", duration_s=12, seed=4, n_units=3,
                     write_ap=False, compress=False)
    raw = tmp_path / "raw" / "240101_SIM01"
    (raw / "NeuropixelBehaviour(0).tdms").rename(raw / "NeuropixelBehaviour(1).tdms")
    results = process_session(tmp_path, "240101_SIM01", SIM,
                              stages=["extract", "sync", "behaviour"])
    assert results["behaviour"]["status"] == "done", results["behaviour"]
    processed = tmp_path / "processed" / "240101_SIM01"
    assert (processed / "action_labels_1.npy").is_file()
    assert not (processed / "action_labels_0.npy").exists()
    assert _cells(tmp_path)["behaviour"] == "done"
    again = process_session(tmp_path, "240101_SIM01", SIM, stages=["behaviour"])
    assert again["behaviour"]["status"] == "skipped"


def test_upstream_failed_under_dask(tmp_path):
    for i, sid in enumerate(["240101_SIM01", "240102_SIM02"]):
        simulate_session(tmp_path, session_id=sid, duration_s=20, seed=i, n_units=3,
                         write_ap=False)
    archive = tmp_path / "raw/240101_SIM01/NeuropixelBehaviour(0).tdms.tar.gz"
    archive.write_bytes(archive.read_bytes()[:1000])
    results = process_sessions(tmp_path, ["240101_SIM01", "240102_SIM02"], SIM,
                               stages=["extract", "sync", "behaviour"], n_workers=1)
    bad, good = results["240101_SIM01"], results["240102_SIM02"]
    assert bad["extract"]["status"] == "error"
    assert bad["sync"] == {"stage": "sync", "status": "upstream failed", "upstream": ["extract"]}
    assert bad["behaviour"]["status"] == "upstream failed"
    assert [good[s]["status"] for s in ("extract", "sync", "behaviour")] == ["done"] * 3


# ----------------------------------------------------------------------------- typed config
def test_config_values_of_the_wrong_type_name_the_file_section_and_key(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("sync:\n  tolerance_s: one ms\n")
    with pytest.raises(ConfigError) as info:
        PipelineConfig.from_yaml(path)
    msg = str(info.value)
    assert str(path) in msg and "[sync]" in msg and "tolerance_s" in msg
    assert "expected a finite number (float)" in msg and "'one ms'" in msg
    path.write_text("lfp: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"\[lfp\]: expected a mapping"):
        PipelineConfig.from_yaml(path)
    path.write_text("spikes:\n  phy_folders: {imec0: 5}\n")
    with pytest.raises(ConfigError, match=r"phy_folders.imec0: expected a string"):
        PipelineConfig.from_yaml(path)
    path.write_text("pose:\n  frame_size: [48, 64]\n  video_codec: ffv1\n")
    params = PipelineConfig.from_yaml(path).params("pose")
    assert params.frame_size == (48, 64) and params.video_codec == "ffv1"


# ----------------------------------------------------------------------------- content keys
def test_deleting_interim_makes_only_extract_stale_and_reruns_nothing_downstream(synced):
    sync_record = json.loads((synced / "processed/240101_SIM01/.records/sync.json").read_text())
    shutil.rmtree(synced / "interim" / "240101_SIM01")
    cells = _cells(synced)
    assert cells["extract"] == "stale" and cells["sync"] == "done"
    again = process_session(synced, "240101_SIM01", SIM, stages=["extract", "sync"])
    assert again["extract"]["status"] == "done" and again["sync"]["status"] == "skipped"
    assert again["sync"]["run_id"] == sync_record["run_id"]


def test_new_mtimes_with_the_same_content_keep_the_state(synced):
    for path in (synced / "raw" / "240101_SIM01").iterdir():
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # as a copy without -t would
    assert _cells(synced) == {**_cells(synced), "extract": "done", "sync": "done"}
    assert process_session(synced, "240101_SIM01", SIM,
                           stages=["sync"])["sync"]["status"] == "skipped"


def test_changed_raw_content_makes_the_stage_stale(synced):
    meta = synced / "raw" / "240101_SIM01" / "SIM01_g0_t0.imec0.lf.meta.tar.gz"
    stat = meta.stat()
    data = bytearray(meta.read_bytes())
    data[-20] ^= 0xFF  # same size, same mtime, other content
    meta.write_bytes(bytes(data))
    os.utime(meta, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert _cells(synced)["sync"] == "stale"


# ----------------------------------------------------------------------------- isolation
def test_a_bad_session_folder_is_a_status_row_and_does_not_stop_the_others(two_sessions):
    (two_sessions / "raw" / "241399_X").mkdir()  # looks like a session; 13th month
    (two_sessions / "raw" / "notes").mkdir()  # not a session name at all: skipped
    table = status_table(two_sessions).set_index("session")
    assert list(table.index) == ["240101_SIM01", "240102_SIM02", "241399_X"]
    assert table.loc["241399_X", "extract"].startswith("error:")
    assert "not a date" in table.loc["241399_X", "extract"]
    assert table.loc["241399_X", "sync"] == "upstream failed"
    assert table.loc["240101_SIM01", "extract"] == "not run"
    assert not (two_sessions / "processed" / "sessions.parquet").exists()  # status only reads


def test_build_blockers():
    from pixbin.pipeline import build_blockers

    done = {s: "done" for s in ("extract", "sync", "behaviour", "spikes", "lfp", "pose")}
    assert build_blockers(done) == {}
    assert build_blockers({**done, "extract": "stale", "lfp": "missing input"}) == {}
    assert build_blockers({**done, "behaviour": "stale"}) == {"behaviour": "stale"}
    assert build_blockers({**done, "spikes": "missing input", "pose": "error: x"}) == {
        "spikes": "missing input", "pose": "error: x"}


# ----------------------------------------------------------------------------- lock, leftovers
def test_a_second_writer_of_data_is_refused_naming_the_first(tmp_path):
    from pixbin.errors import LockError
    from pixbin.fileio import data_lock
    from pixbin.layout import lock_file

    with data_lock(lock_file(tmp_path), "pixbin process"):
        code = subprocess.run(
            [sys.executable, "-m", "pixbin.cli", "build", "--data", str(tmp_path), "--no-save"],
            capture_output=True, text=True)
        assert code.returncode == 2
        assert "in use by pid" in code.stderr and "pixbin process" in code.stderr
        with pytest.raises(LockError):  # another open of the lock file, same process
            with data_lock(lock_file(tmp_path), "pixbin build"):
                pass
    with data_lock(lock_file(tmp_path), "pixbin build"):  # released: free again
        pass


def test_temporaries_of_killed_runs_are_removed_and_live_ones_kept(synced):
    processed = synced / "processed" / "240101_SIM01"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = processed / f".lag.json.tmp-{dead}-0123abcd"
    stale.write_text("partial")
    live = processed / f".units.parquet.tmp-{os.getpid()}-89abcdef"
    live.write_text("being written")
    process_session(synced, "240101_SIM01", SIM, stages=["sync"], force=["sync"])
    assert not stale.exists() and live.exists()


def test_readers_return_the_stage_files_and_name_the_stage_of_a_missing_one(synced):
    from pixbin import readers
    from pixbin.errors import PixbinError

    processed = synced / "processed" / "240101_SIM01"
    sync = readers.read_sync(processed)
    assert sync["pass"] and "behaviour" in sync["streams"]
    assert set(readers.read_lag(processed)[0]) == {"lag_start", "lag_end"}
    with pytest.raises(PixbinError, match=r"events.parquet: not found; .*behaviour stage"):
        readers.read_events(processed)
    with pytest.raises(PixbinError, match=r"units.parquet: not found; .*spikes stage"):
        readers.read_units(processed)


def test_a_probe_without_an_lf_band_syncs_from_the_ap_band(tmp_path):
    """Neuropixels 2.0 writes no .lf files: the SY word comes from the AP band; LFP is then
    'missing input', which neither blocks the build nor fails the run."""
    from pixbin.pipeline import build_blockers

    simulate_session(tmp_path, session_id="240101_SIM01", duration_s=12, seed=3, n_units=3,
                     write_ap=True, compress=False)
    raw = tmp_path / "raw" / "240101_SIM01"
    for lf in raw.glob("*.lf.*"):
        lf.unlink()
    results = process_session(tmp_path, "240101_SIM01", SIM,
                              stages=["extract", "sync", "lfp"])
    assert results["sync"]["status"] == "done", results["sync"].get("error")
    assert results["lfp"]["status"] == "missing input"
    sync = json.loads((tmp_path / "processed/240101_SIM01/sync.json").read_text())
    assert sync["probe"]["edge_source"] == "ap" and sync["probe"]["lf_meta"] is None
    assert "imec0.lf" not in sync["streams"]
    truth = json.loads((raw / "ground_truth.json").read_text())["behaviour"]
    assert abs(sync["streams"]["behaviour"]["offset_s"] - truth["offset_s"]) < 1e-4
    assert build_blockers({**_cells(tmp_path), "behaviour": "done", "spikes": "done",
                           "pose": "done"}) == {}


def test_serial_progress_is_reported_as_each_stage_finishes(two_sessions):
    """on_result comes after each stage, before the next one starts (the progress bar moves)."""
    seen = []

    def on_result(session, stage, record):
        later = layout.Processed(two_sessions / "processed" / session).record("behaviour")
        seen.append((session, stage, record["status"], later.exists()))

    process_sessions(two_sessions, ["240101_SIM01"], SIM,
                     stages=["extract", "sync", "behaviour"], scheduler="serial",
                     on_result=on_result)
    assert [s[1] for s in seen] == ["extract", "sync", "behaviour"]
    assert [s[3] for s in seen] == [False, False, True]


def test_temporaries_with_a_tool_extension_are_recognised():
    """ffmpeg needs the extension: video temporaries end in .mp4 and are still atomic_path's."""
    from pixbin.fileio import temporary_of

    assert temporary_of(".USB_Camera.mp4.tmp-19002-f115d9a6.mp4") == ("USB_Camera.mp4", 19002)
    assert temporary_of(".units.parquet.tmp-12-0123abcd") == ("units.parquet", 12)
    assert temporary_of("units.parquet") is None


def test_status_lists_the_sync_warnings_of_done_sessions(tmp_path, capsys):
    from pixbin.cli import _print_sync_warnings

    warned = layout.processed_dir(tmp_path, "240101_A")
    warned.mkdir(parents=True)
    (warned / "sync.json").write_text(json.dumps({"warnings": ["behaviour: offset chosen for needing the fewest lost pulses"]}))
    quiet = layout.processed_dir(tmp_path, "240101_B")
    quiet.mkdir(parents=True)
    (quiet / "sync.json").write_text(json.dumps({"warnings": []}))
    table = pd.DataFrame({"session": ["240101_A", "240101_B", "240101_C"],
                          "sync": ["done", "done", "error: no edges"]})
    _print_sync_warnings(tmp_path, table)
    out = capsys.readouterr().out
    assert "240101_A: behaviour: offset chosen for needing the fewest lost pulses" in out
    assert "240101_B" not in out and "240101_C" not in out
