"""Progress inside long stages: bars move on a terminal, stay silent elsewhere."""

from __future__ import annotations

import functools
import io
import re
from pathlib import Path

import pytest
from tqdm import tqdm

from pixbin import progress
from pixbin.lfp import LfpParams, run_lfp
from pixbin.session import find_sessions
from pixbin.simulate import simulate_session
from pixbin.stages import STAGES


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """data/ with a packed 10 s session (LF + behaviour + camera archives; no AP)."""
    root = tmp_path_factory.mktemp("progress") / "data"
    simulate_session(root, duration_s=10, seed=5, n_units=3, write_ap=False)
    return root


def _updates(text: str, unit: str) -> list[float]:
    """The counts a tqdm bar printed, in order (``12.0/20 s``, ``3.1MB``...)."""
    return [float(m) for m in re.findall(rf"(\d+(?:\.\d+)?)[ ]?[kMG]?{unit}", text)]


def test_lfp_and_extract_bars_move_on_a_terminal(data, tmp_path, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv(progress.NO_PROGRESS_ENV, raising=False)
    monkeypatch.setattr(progress, "tqdm", functools.partial(tqdm, mininterval=0, miniters=1))
    assert progress.progress_shown()
    (session,) = find_sessions(data)
    stage = STAGES["extract"]
    stage.run(session, stage.Params())
    extract_text = terminal.getvalue()
    assert f"{session.session_id} extract" in extract_text
    assert len(set(_updates(extract_text, "B"))) >= 3  # the byte count moved while unpacking
    terminal.seek(0), terminal.truncate()
    lf_bin = next(session.interim_dir.glob("*.lf.bin"))
    run_lfp(lf_bin=lf_bin, lf_meta=lf_bin.with_suffix(".meta"), out_dir=tmp_path / "lfp",
            params=LfpParams(chunk_s=1.0))
    seconds = [float(n) for n in re.findall(r"\| (\d+)/10 s", terminal.getvalue())]
    assert "LFP" in terminal.getvalue() and seconds[-1] >= 9 and len(set(seconds)) >= 4


def test_no_bars_when_quiet_or_not_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr("sys.stderr", _Terminal())
    monkeypatch.setenv(progress.NO_PROGRESS_ENV, "1")
    assert not progress.progress_shown()
    monkeypatch.delenv(progress.NO_PROGRESS_ENV)
    monkeypatch.setenv("CI", "true")
    assert not progress.progress_shown()
    monkeypatch.delenv("CI")
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not progress.progress_shown()
    with progress.stage_bar("x", total=3) as bar:
        bar.update(3)
    assert bar.disable
