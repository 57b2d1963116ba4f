"""Stage records, resume, failures that do not stop other sessions, the status table."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from pixbin.errors import ConfigError
from pixbin.pipeline import PipelineConfig, process_session, process_sessions, status_table
from pixbin.session import load_session
from pixbin.simulate import simulate_session


@pytest.fixture()
def two_sessions(tmp_path):
    for i, sid in enumerate(["240101_SIM01", "240102_SIM02"]):
        simulate_session(tmp_path, session_id=sid, duration_s=10, seed=i, n_units=3,
                         write_ap=False)
    return tmp_path


def test_extract_stage_records_skips_and_forces(two_sessions):
    config = PipelineConfig()
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
    table = status_table(two_sessions)
    row = table.set_index("session").loc["240101_SIM01"]
    assert row["extract"] == "stale"
    assert row["spikes"] == "missing input"  # no AP band was written
    assert row["sync"] == "not run"
    saved = pd.read_parquet(two_sessions / "processed" / "sessions.parquet")
    assert list(saved["session"]) == ["240101_SIM01", "240102_SIM02"]


def test_a_failing_session_does_not_stop_the_others(two_sessions):
    archive = two_sessions / "raw/240101_SIM01/USB_Camera.tdms.tar.gz"
    archive.write_bytes(archive.read_bytes()[:1000])
    results = process_sessions(two_sessions, ["240101_SIM01", "240102_SIM02"], PipelineConfig(),
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
        process_sessions(".", [], PipelineConfig(), stages=["bin"], scheduler="serial")
