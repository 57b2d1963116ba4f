"""pixbin.tdms: streamed TDMS reading, channel checks, rates from properties."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from nptdms import ChannelObject, GroupObject, RootObject, TdmsWriter

from pixbin.errors import TdmsError
from pixbin.tdms import (
    ChannelInfo,
    iter_chunks,
    list_channels,
    read_channel,
    read_windows,
    require_channels,
)

START = np.datetime64("2024-03-01T10:00:00.123456")


def write_rig_tdms(path: Path, signals: dict[str, np.ndarray], *, wf_increment=1 / 25000,
                   segment_samples=1000, props=None) -> Path:
    """A LabVIEW-rig-shaped file: one group per signal, channel "0", written in many segments."""
    n = max(len(v) for v in signals.values())
    with TdmsWriter(path) as w:
        for s in range(0, n, segment_samples):
            objs = [RootObject({"name": "rig"})]
            for name, data in signals.items():
                if s >= len(data):
                    continue
                p = {"wf_increment": wf_increment, "wf_start_time": START, "unit_string": "V"}
                if props and name in props:
                    p = props[name]
                objs += [GroupObject(name), ChannelObject(name, "0", data[s:s + segment_samples],
                                                          properties=p if s == 0 else {})]
            w.write_segment(objs)
    return path


@pytest.fixture
def rig(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    sig = {g: rng.normal(size=12_345) for g in ("Back_Sensor", "Front_Sensor", "NpxlSync_Signal")}
    return write_rig_tdms(tmp_path / "NeuropixelBehaviour(0).tdms", sig), sig


def test_list_channels_rig_layout(rig):
    path, sig = rig
    info = list_channels(path)
    assert list(info) == list(sig)
    ch = info["NpxlSync_Signal"]
    assert isinstance(ch, ChannelInfo)
    assert (ch.group, ch.channel, ch.n_samples, ch.unit, ch.path) == (
        "NpxlSync_Signal", "0", 12_345, "V", path)
    assert ch.rate_hz == 1 / (1 / 25000)  # exactly 1/wf_increment, not rounded
    assert ch.start_time == dt.datetime(2024, 3, 1, 10, 0, 0, 123456, tzinfo=dt.timezone.utc)


def test_read_channel_ranges(rig):
    path, sig = rig
    x = sig["Front_Sensor"]
    np.testing.assert_array_equal(read_channel(path, "Front_Sensor"), x)
    np.testing.assert_array_equal(read_channel(path, "Front_Sensor", "0", 999, 3001), x[999:3001])
    np.testing.assert_array_equal(read_channel(path, "Front_Sensor", start=12_000, stop=99_999), x[12_000:])
    assert read_channel(path, "Front_Sensor", start=20_000).size == 0
    w = read_windows(path, "Front_Sensor", "0", [(0, 10), (5000, 5100), (12_300, 20_000)])
    for (a, b), got in zip([(0, 10), (5000, 5100), (12_300, 20_000)], w):
        np.testing.assert_array_equal(got, x[a:b])


def test_iter_chunks_aligned_and_complete(rig):
    path, sig = rig
    groups = ["NpxlSync_Signal", "Back_Sensor"]
    starts, parts = [], {g: [] for g in groups}
    for s, chunk in iter_chunks(path, groups, chunk_samples=1_777):
        starts.append(s)
        assert len({len(v) for v in chunk.values()}) == 1
        for g in groups:
            parts[g].append(chunk[g])
    assert starts == list(range(0, 12_345, 1_777))
    for g in groups:
        np.testing.assert_array_equal(np.concatenate(parts[g]), sig[g])


def test_require_channels_missing_names_file_and_lists(rig):
    path, _ = rig
    with pytest.raises(TdmsError) as e:
        require_channels(path, ["Back_Sensor", "Reward_Signal", "Tone_Signal"])
    msg = str(e.value)
    assert str(path) in msg and "Reward_Signal" in msg and "Tone_Signal" in msg
    assert "NpxlSync_Signal" in msg  # lists what is there


def test_require_channels_lengths_and_rate(tmp_path):
    p = write_rig_tdms(tmp_path / "a.tdms", {"A": np.zeros(100), "B": np.zeros(90)})
    with pytest.raises(TdmsError, match="different lengths"):
        require_channels(p, ["A", "B"])
    assert set(require_channels(p, ["A", "B"], same_length=False)) == {"A", "B"}
    with pytest.raises(TdmsError, match="different lengths"):
        next(iter_chunks(p, ["A", "B"]))
    q = write_rig_tdms(tmp_path / "b.tdms", {"A": np.zeros(100)}, props={"A": {"unit_string": "V"}})
    assert np.isnan(list_channels(q)["A"].rate_hz)
    with pytest.raises(TdmsError, match="wf_increment"):
        require_channels(q, ["A"])


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(TdmsError, match="not found"):
        list_channels(tmp_path / "nope.tdms")
    bad = tmp_path / "bad.tdms"
    bad.write_bytes(b"this is not a tdms file at all" * 10)
    with pytest.raises(TdmsError, match="bad.tdms"):
        list_channels(bad)
    with pytest.raises(TdmsError, match="no channel"):
        read_channel(write_rig_tdms(tmp_path / "c.tdms", {"A": np.zeros(5)}), "Z")


def test_real_tdms_files(realdata):
    """The public LabVIEW files: multi-channel keys, big-endian, DAQmx raw."""
    d = realdata / "tdms"
    di = list_channels(d / "Digital_Input.tdms")
    assert all(c.rate_hz > 0 for c in di.values())
    be = list_channels(d / "big_endian.tdms")
    assert "Measured Data/Amplitude sweep" in be  # group with several channels -> group/channel
    info = be["Measured Data/Amplitude sweep"]
    x = read_channel(d / "big_endian.tdms", info.group, info.channel)
    assert len(x) == info.n_samples
    parts = [c["Measured Data/Amplitude sweep"] for _, c in iter_chunks(
        d / "big_endian.tdms", ["Measured Data/Amplitude sweep", "Measured Data/Phase sweep"],
        chunk_samples=1000)]
    np.testing.assert_array_equal(np.concatenate(parts), x)
    raw = list_channels(d / "raw1.tdms")
    k = next(iter(raw))
    assert len(read_channel(d / "raw1.tdms", raw[k].group, raw[k].channel, 10, 20)) == 10
