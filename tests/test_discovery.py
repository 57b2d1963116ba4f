"""Finding SpikeGLX sessions in the layouts labs use, on the real public SpikeGLX sets.

Each real set is copied into ``data/raw/<session>/`` as a lab would leave it: SpikeGLX's own run
and probe folders, flat files, CatGT and exported names; a layout pixbin cannot use is reported
for that folder only.
"""

from __future__ import annotations

import shutil

import probeinterface
import pytest

from pixbin.errors import ExtractError, SessionError
from pixbin.extract import extract_session
from pixbin.pipeline import status_table
from pixbin.session import load_session, scan_sessions
from pixbin.spikeglx import stream_info

# session folder → (real set copied into it, {probe: (roles, imSampRate of the AP meta)})
REAL_LAYOUTS = {
    # a probe folder directly in the session folder, beside the NIDQ files (NP2.0, no LF)
    "230904_NP2SYNC": ("NP2_with_sync", {"imec0": ({"ap_bin", "ap_meta"}, 30000.0)}),
    # a run folder <run>_g0/ with its probe folder <run>_g0_imec0/ (NP1.0; LF meta without bin)
    "220101_NOISE4SAM": ("Noise4Sam_g0", {"imec0": ({"ap_bin", "ap_meta", "lf_meta"}, 30000.0)}),
    # NP-Ultra in a run folder inside a folder of its own: a run folder p5_g0/ in the session
    "230101_ULTRA": ("np_ultra_stub", None),
    # flat files inside a run folder (NP2.0)
    "210920_TEST": ("TEST_20210920_0_g0", {"imec0": ({"ap_bin", "ap_meta"}, 30000.0)}),
}


def _copy(realdata, data, session, source):
    target = data / "raw" / session
    src = realdata / "spikeglx" / source
    if source == "np_ultra_stub":  # the run folder itself goes into the session folder
        src = src / "p5_g0"
        target = target / "p5_g0"
    shutil.copytree(src, target)


@pytest.fixture
def data(tmp_path, realdata):
    data = tmp_path / "data"
    for session, (source, _) in REAL_LAYOUTS.items():
        _copy(realdata, data, session, source)
    bad = data / "raw" / "210702_MULTI"
    shutil.copytree(realdata / "spikeglx" / "multi_probe_multi_dock_multi_shank_filename_without_info",
                    bad)
    return data


@pytest.mark.parametrize("session", [s for s, (_, want) in REAL_LAYOUTS.items() if want])
def test_real_layouts_are_found_with_their_files_and_rates(data, session):
    _, want = REAL_LAYOUTS[session]
    s = load_session(data, session)
    assert s.probes == sorted(want)
    for probe, (roles, rate) in want.items():
        found = {f.role for f in s.files if f.probe == probe}
        assert found == roles
        meta = next(f.raw_path for f in s.files if f.probe == probe and f.role == "ap_meta")
        assert stream_info(meta).rate_hz == pytest.approx(rate, rel=1e-4)


def test_np_ultra_run_folder(data):
    s = load_session(data, "230101_ULTRA")
    assert s.probes == ["imec0"]
    assert {f.role for f in s.files} == {"ap_bin", "ap_meta", "lf_bin", "lf_meta"}
    meta = next(f.raw_path for f in s.files if f.role == "ap_meta")
    probe = probeinterface.read_spikeglx(meta)  # NP-Ultra: 6 µm pitch, 8 columns
    assert probe.model_name == "NP1100"
    assert sorted(set(probe.contact_positions[:8, 0])) == [0, 6, 12, 18, 24, 30, 36, 42]


def test_a_layout_pixbin_cannot_use_is_reported_for_that_folder_only(data):
    sessions, problems = scan_sessions(data)
    assert "210702_MULTI" in problems
    assert "probe_1/npx.imec.ap.meta" in problems["210702_MULTI"]
    assert "<run>_gN_imecP" in problems["210702_MULTI"]
    assert {s.session_id for s in sessions} == set(REAL_LAYOUTS)
    table = status_table(data).set_index("session")
    assert table.loc["210702_MULTI", "extract"].startswith("error")


def test_catgt_and_exported_names_and_two_triggers(tmp_path, realdata):
    src = realdata / "spikeglx" / "TEST_20210920_0_g0"
    folder = tmp_path / "data" / "raw" / "210920_CATGT"
    folder.mkdir(parents=True)
    for f in src.iterdir():
        shutil.copy(f, folder / f.name.replace("_t0.", "_tcat."))
    s = load_session(tmp_path / "data", "210920_CATGT")
    assert s.probes == ["imec0"] and {f.trigger for f in s.files} == {"cat"}

    exported = tmp_path / "data" / "raw" / "210920_EXPORTED"
    exported.mkdir()
    for f in src.iterdir():
        shutil.copy(f, exported / f.name.replace(".imec0.", ".exported.imec0."))
    assert load_session(tmp_path / "data", "210920_EXPORTED").probes == ["imec0"]

    two = tmp_path / "data" / "raw" / "210920_TWOTRIG"
    two.mkdir()
    for f in src.iterdir():
        shutil.copy(f, two / f.name)
        shutil.copy(f, two / f.name.replace("_t0.", "_t1."))
    # two triggers are one recording (tests/test_triggers.py), but this copy of t0 as t1 starts
    # where t0 does: an overlap, refused when the triggers are joined
    two_triggers = load_session(tmp_path / "data", "210920_TWOTRIG")
    joined = two_triggers.file("ap_meta", probe="imec0")
    assert joined.name.endswith("_tcat.imec0.ap.meta") and [p.trigger for p in joined.parts] == ["0", "1"]
    with pytest.raises(ExtractError, match="_t1.imec0.ap.meta: trigger t1 starts at sample .* an overlap"):
        extract_session(two_triggers)
