"""The stage log: what pixbin and its libraries said during a stage run, beside its record;
warnings go there and not to the terminal."""

from __future__ import annotations

import json
import logging
import threading
import warnings

from pixbin import layout
from pixbin.pipeline import PipelineConfig, process_session
from pixbin.simulate import SIMULATED_RIG_CONFIG, simulate_session
from pixbin.stage_log import stage_log
from pixbin.stages import STAGES

SID = "240101_LOG01"


def test_a_stage_run_writes_its_log_and_counts_its_warnings(tmp_path, monkeypatch, capfd):
    simulate_session(tmp_path, session_id=SID, duration_s=12, seed=3, n_units=3, write_ap=False)
    sync = type(STAGES["sync"])
    original = sync.run

    def run_with_a_library_warning(self, session, params):
        warnings.warn("a library's deprecation", FutureWarning)
        logging.getLogger("some.library").warning("a library's log line")
        return original(self, session, params)

    monkeypatch.setattr(sync, "run", run_with_a_library_warning)
    results = process_session(tmp_path, SID, PipelineConfig.from_dict(SIMULATED_RIG_CONFIG), stages=["extract", "sync"])
    assert results["sync"]["status"] == "done"
    processed = layout.Processed(tmp_path / "processed" / SID)
    text = processed.stage_log("sync").read_text()
    assert "FutureWarning: a library's deprecation" in text
    assert "some.library: a library's log line" in text
    record = json.loads(processed.record("sync").read_text())
    assert record["log"] == {"path": f"processed/{SID}/.records/sync.log", "n_warnings": 1,
                             "warnings": ["FutureWarning: a library's deprecation"]}
    assert "a library's deprecation" not in capfd.readouterr().err  # not on the terminal
    assert processed.stage_log("extract").is_file()
    assert not list(processed.records_dir.glob(".*.tmp-*"))


def test_other_threads_and_the_time_after_the_block_are_not_in_the_log(tmp_path):
    logger = logging.getLogger("pixbin.test_stage_log")
    logger.setLevel(logging.INFO)
    path = tmp_path / "stage.log"
    with stage_log(path) as logged:
        logger.info("inside")
        thread = threading.Thread(target=lambda: logger.info("another stage's thread"))
        thread.start()
        thread.join()
        assert not path.exists()  # written under a temporary name until the stage ends
    logger.info("after")
    text = path.read_text()
    assert "inside" in text and "another stage" not in text and "after" not in text
    assert logged.n_warnings == 0
    # outside a stage, warnings are Python's again: nothing routes them to a log
    assert not logging.getLogger("py.warnings").filters
    assert warnings.showwarning.__module__ != "logging"
