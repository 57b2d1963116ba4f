"""Several SpikeGLX triggers of one gate: joined into one recording when they follow each other
sample for sample, refused with the reason when they gap, overlap or do not pair up."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pixbin.errors import ExtractError, SessionError
from pixbin.extract import extract_session, verify_interim
from pixbin.pipeline import PipelineConfig, process_session
from pixbin.session import load_session
from pixbin.simulate import SIMULATED_RIG_CONFIG, _pack, simulate_session, split_into_triggers
from pixbin.spikeglx import read_meta, stream_info

SID = "240101_TRIG"


@pytest.fixture(scope="module")
def unsplit(tmp_path_factory) -> Path:
    """A 10 s simulated session (LF band, NIDQ) in one trigger, uncompressed."""
    root = tmp_path_factory.mktemp("unsplit")
    simulate_session(root, session_id=SID, duration_s=10.0, seed=4, n_units=2, compress=False,
                     write_ap=False, nidq=True)
    return root


def _split_copy(unsplit: Path, tmp_path: Path, n: int = 3, compress: bool = False) -> Path:
    data = tmp_path / "data"
    shutil.copytree(unsplit, data)
    raw = data / "raw" / SID
    for path in split_into_triggers(raw, n):
        if compress:
            _pack(path, True)
    return data


def _streams(raw: Path) -> list[str]:
    return sorted(p.name for p in raw.glob("*_t0.*.bin"))


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "tar.gz"])
def test_triggers_that_follow_each_other_are_joined_to_the_one_recording(unsplit, tmp_path, compress):
    original = unsplit / "raw" / SID
    data = _split_copy(unsplit, tmp_path, compress=compress)
    session = load_session(data, SID)
    joined = [f for f in session.files if f.parts]
    metas = [p.name.replace("_t0.", "_tcat.") for p in original.glob("*_t0.*.meta")]
    bins = [n.replace("_t0.", "_tcat.") for n in _streams(original)]
    assert sorted(f.name for f in joined) == sorted(bins + metas)  # the AP band: its meta only
    assert all([p.trigger for p in f.parts] == ["0", "1", "2"] for f in joined)

    manifest = extract_session(session)
    assert verify_interim(session) == []
    for name in _streams(original):
        interim = session.interim_dir / name.replace("_t0.", "_tcat.")
        assert interim.read_bytes() == (original / name).read_bytes()  # the recording, sample for sample
        meta, before = read_meta(interim.with_suffix(".meta")), read_meta((original / name).with_suffix(".meta"))
        assert meta["fileSizeBytes"] == before["fileSizeBytes"]
        assert meta["firstSample"] == before["firstSample"]
        assert str(meta["pixbinJoinedTriggers"]) == "0,1,2"
        assert sum(int(n) for n in str(meta["pixbinTriggerSamples"]).split(",")) == \
            stream_info(interim.with_suffix(".meta")).n_samples
        entry = manifest[interim.name]
        assert len(entry["source"]) == 3 and len(entry["source_size"]) == 3
    # resumable: nothing is rewritten when the triggers have not changed, a changed one is redone
    stamp = {p.name: p.stat().st_mtime_ns for p in session.interim_dir.iterdir()}
    extract_session(session)
    assert {p.name: p.stat().st_mtime_ns for p in session.interim_dir.iterdir()} == stamp


def test_joined_triggers_sync_like_the_unsplit_session(unsplit, tmp_path):
    data = _split_copy(unsplit, tmp_path)
    config = PipelineConfig.from_dict(SIMULATED_RIG_CONFIG)
    records = []
    for root in (unsplit, data):
        results = process_session(root, SID, config, stages=["extract", "sync"])
        assert results["sync"]["status"] == "done", results["sync"]
        # the same record, but for the file names and the run's time and id
        sync = json.loads((root / "processed" / SID / "sync.json").read_text().replace("_tcat.", "_t0."))
        records.append({k: v for k, v in sync.items() if k not in ("duration_s", "provenance")})
    assert records[0] == records[1]
    assert records[0]["pass"] and set(records[0]["streams"]) == {"imec0.ap", "imec0.lf", "behaviour", "nidq"}


@pytest.mark.parametrize("shift, what", [(120, "a gap of 120 samples"), (-50, "an overlap of 50 samples")])
def test_triggers_with_a_gap_or_an_overlap_are_refused(unsplit, tmp_path, shift, what):
    data = _split_copy(unsplit, tmp_path, n=2)
    raw = data / "raw" / SID
    meta = next(raw.glob("*_t1.imec0.lf.meta"))
    lines = meta.read_text().splitlines()
    first = next(int(line.split("=")[1]) for line in lines if line.startswith("firstSample="))
    meta.write_text("\n".join(f"firstSample={first + shift}" if line.startswith("firstSample=") else line
                              for line in lines) + "\n")
    before = {p.name: p.read_bytes() for p in raw.iterdir() if p.is_file()}
    with pytest.raises(ExtractError, match=f"{meta.name}: trigger t1 starts at sample .*{what}.*CatGT"):
        extract_session(load_session(data, SID))
    assert {p.name: p.read_bytes() for p in raw.iterdir() if p.is_file()} == before  # raw untouched
    assert not (data / "interim" / SID / meta.name.replace("_t1.", "_tcat.")).exists()


def test_a_short_trigger_before_the_last_is_refused(unsplit, tmp_path):
    data = _split_copy(unsplit, tmp_path, n=2)
    part = next((data / "raw" / SID).glob("*_t0.imec0.lf.bin"))
    part.write_bytes(part.read_bytes()[: -385 * 2])
    with pytest.raises(ExtractError, match=f"{part.name}: holds .* bytes, its meta .* says"):
        extract_session(load_session(data, SID))


def test_triggers_that_do_not_pair_up_are_refused(unsplit, tmp_path):
    data = _split_copy(unsplit, tmp_path, n=3)
    raw = data / "raw" / SID
    for part in raw.glob("*_t1.imec0.lf.*"):
        part.unlink()
    with pytest.raises(SessionError, match="triggers \\['t0', 't2'\\] .* have no t1"):
        load_session(data, SID)
    next(raw.glob("*_t2.imec0.lf.meta")).unlink()  # bins t0 and t2, and t0's meta: t2's is missing
    for part in raw.glob("*_t2.imec0.lf.bin"):
        part.rename(part.with_name(part.name.replace("_t2.", "_t1.")))
    with pytest.raises(SessionError, match="would join triggers \\['t0', 't1'\\] but the .meta "
                                           "files are of triggers \\['t0'\\]"):
        load_session(data, SID)


def test_catgt_output_beside_the_triggers_it_joins_is_refused(unsplit, tmp_path):
    data = _split_copy(unsplit, tmp_path, n=2)
    raw = data / "raw" / SID
    original = unsplit / "raw" / SID
    for name in _streams(original):
        if ".imec0.lf." in name:
            shutil.copy(original / name, raw / name.replace("_t0.", "_tcat."))
    with pytest.raises(SessionError, match="_tcat.imec0.lf.bin \\(CatGT's\\) and the triggers it would join"):
        load_session(data, SID)
