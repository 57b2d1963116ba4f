"""pixbin.spikeglx: meta parsing, sample counts from file size, SY column streaming, sync edges,
LF channels (saved subset, gains, geometry)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from pixbin.errors import MetaError
from pixbin.spikeglx import (
    iter_sync_word,
    lf_source,
    memmap_bin,
    read_meta,
    read_probe,
    read_sync_word,
    stream_info,
    sync_edges,
)


def write_stream(folder: Path, stem: str, data: np.ndarray, *, rate_hz: float, kind: str = "lf",
                 extra: dict | None = None) -> tuple[Path, Path]:
    """A minimal imec .bin/.meta pair: ``data`` (n, n_chans) int16, the last column the SY word."""
    n, nch = data.shape
    folder.mkdir(parents=True, exist_ok=True)
    bin_path = folder / f"{stem}.imec0.{kind}.bin"
    data.astype(np.int16).tofile(bin_path)
    sns = f"{nch - 1},0,1" if kind == "ap" else f"0,{nch - 1},1"
    meta = {"imSampRate": repr(rate_hz), "nSavedChans": nch, "snsApLfSy": sns,
            "fileSizeBytes": n * nch * 2, "typeThis": "imec", "firstSample": 0,
            **(extra or {})}
    meta_path = bin_path.with_suffix(".meta")
    meta_path.write_text("".join(f"{k}={v}\n" for k, v in meta.items()))
    return bin_path, meta_path


def test_read_meta_types_and_tilde_keys(realdata):
    m = read_meta(realdata / "probe-metas/spikeglx/allan-longcol_g0_t0.imec0.ap.meta")
    assert m["imSampRate"] == 29999.941586 and isinstance(m["imSampRate"], float)
    assert m["nSavedChans"] == 385 and isinstance(m["nSavedChans"], int)
    assert m["snsApLfSy"] == "384,0,1"
    assert any(k.startswith("~") for k in m) and "~imroTbl" in m


def test_read_meta_tolerant(tmp_path, caplog):
    p = tmp_path / "x.meta"
    p.write_bytes("\ufeffa=1\r\n\r\nb = 2.5e3\nnot a pair\nc=1,2,3\nd=\n~e=(1 2)\n".encode())
    with caplog.at_level(logging.WARNING):
        m = read_meta(p)
    assert m == {"a": 1, "b": 2500.0, "c": "1,2,3", "d": "", "~e": "(1 2)"}
    assert "not a pair" in caplog.text
    with pytest.raises(MetaError, match="x2.meta"):
        read_meta(tmp_path / "x2.meta")


def test_all_real_probe_metas(realdata):
    metas = sorted((realdata / "probe-metas/spikeglx").glob("*.meta"))
    assert len(metas) >= 19
    for path in metas:
        s = stream_info(path)
        m = read_meta(path)
        assert isinstance(s.rate_hz, float) and s.rate_hz == float(m["imSampRate"])
        assert s.n_saved_chans == m["nSavedChans"]
        assert s.sync_channel == s.n_saved_chans - int(m["snsApLfSy"].split(",")[2])
        assert s.n_samples_from == "meta" and s.n_samples == m["fileSizeBytes"] // (2 * s.n_saved_chans)
    assert stream_info(realdata / "probe-metas/spikeglx/catgt.meta").rate_hz == 30000.149579831934


#: (shanks, vertical site pitch in um) of each probe family in the real metas, from the probes'
#: specifications: NP1.0/3A/NHP 20 um, NP2.0 15 um, NP-Ultra 6 um
_GEOMETRY = {"PRB_1_4_0480_1": (1, 20.0), "PRB_1_4_0480_1_C": (1, 20.0), "NP1010": (1, 20.0),
             "NP1015": (1, 20.0), "NP1030": (1, 20.0), "PRB2_1_2_0640_0": (1, 15.0),
             "NP2013": (4, 15.0), "NP2010": (4, 15.0), "NP2020": (4, 15.0), "NP1100": (1, 6.0),
             "NP1110": (1, 6.0)}


def test_every_real_probe_type_has_its_geometry(realdata):
    """NP1.0, phase 3A, NHP, NP2.0 1-/4-shank, quad-base and NP-Ultra metas: one contact per saved
    AP channel, distinct positions, the family's shank count and site pitch."""
    for path in sorted((realdata / "probe-metas/spikeglx").glob("*.meta")):
        probe = read_probe(path)
        n_ap = int(read_meta(path)["snsApLfSy"].split(",")[0])
        shanks, pitch = _GEOMETRY[probe.model_name]
        pos = probe.contact_positions
        assert probe.get_contact_count() == n_ap, path.name
        assert len({tuple(p) for p in pos}) == n_ap, path.name
        assert probe.get_shank_count() == shanks, path.name
        rows = np.unique(pos[:, 1])
        assert np.isclose(np.diff(rows).min(), pitch), (path.name, np.diff(rows).min())


def test_noise4sam_counts_samples_from_file_not_meta(realdata, caplog):
    d = realdata / "spikeglx/Noise4Sam_g0/Noise4Sam_g0_imec0"
    with caplog.at_level(logging.WARNING):
        s = stream_info(d / "Noise4Sam_g0_t0.imec0.ap.meta")
    assert s.n_samples == 889350 // (385 * 2) == 1155
    assert s.n_samples_from == "file"
    assert "fileSizeBytes=121625350" in caplog.text
    mm = memmap_bin(s.bin_path, s)
    assert mm.shape == (1155, 385) and mm.dtype == np.int16
    # the LF has a .meta only: count from fileSizeBytes
    lf = stream_info(d / "Noise4Sam_g0_t0.imec0.lf.meta")
    assert lf.kind == "lf" and lf.bin_path is None and lf.n_samples_from == "meta"
    assert lf.sync_channel == 384 and lf.rate_hz == 2500.0


def test_np2_stubs(realdata):
    t = realdata / "spikeglx/TEST_20210920_0_g0/TEST_20210920_0_g0_t0.imec0.ap.meta"
    s = stream_info(t)
    assert (s.n_samples, s.n_saved_chans, s.sync_channel) == (1000, 385, 384)
    probe = read_probe(t)
    assert probe.get_contact_count() == 384 and probe.get_shank_count() == 4
    d = realdata / "spikeglx/NP2_with_sync/all_chan_g0_imec0/all_chan_g0_t0.imec0.ap"
    s2 = stream_info(f"{d}.meta")
    words = read_sync_word(s2.bin_path, s2, 0, s2.n_samples)
    np.testing.assert_array_equal(words, np.asarray(memmap_bin(s2.bin_path, s2)[:, 384]))
    # a 33 ms stub of a 1 Hz, 500 ms-high pulse: the SY word is constant here, so no edge
    e = sync_edges(s2.bin_path, s2, 6)
    assert len(e) == 0 and np.unique(words).size == 1


def test_real_digital_sync_pulse(realdata):
    """DigitalChannelTest: a real 1 Hz, 50 % duty pulse on bit 0 of the nidq digital word."""
    p = realdata / "spikeglx/DigitalChannelTest_g0/DigitalChannelTest_g0_t0.nidq"
    s = stream_info(f"{p}.meta")
    assert s.kind == "nidq" and s.sync_channel == 0 and s.rate_hz == 2500.0
    e = sync_edges(s.bin_path, s, bit=0, chunk_samples=7777)
    assert len(e.rising) == 163 and len(e.falling) == 163
    # 1 s at 2500 Hz; the pulser runs on another clock (imec), so one sample short now and then
    assert set(np.diff(e.rising)) == {2499.0, 2500.0}
    assert set(e.falling - e.rising) <= {1249.0, 1250.0, 1251.0}
    whole = np.asarray(memmap_bin(s.bin_path, s)[:, 0])
    assert np.all(whole[e.rising.astype(int)] & 1) and not np.any(whole[e.rising.astype(int) - 1] & 1)


def test_synthetic_sy_stream_chunked(tmp_path):
    n, rate = 25_013, 250.0
    data = np.random.default_rng(0).integers(-500, 500, (n, 4)).astype(np.int16)
    sq = ((np.arange(n) + 37) % 250 < 125)
    data[:, 3] = (sq.astype(np.int16) << 6) | np.int16(0b101)  # other bits set too
    bin_path, meta_path = write_stream(tmp_path, "syn_g0_t0", data, rate_hz=rate)
    s = stream_info(meta_path)
    assert (s.kind, s.sync_channel, s.n_samples) == ("lf", 3, n)
    parts = list(iter_sync_word(bin_path, meta_path, 1000))
    assert [p[0] for p in parts] == list(range(0, n, 1000))
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), data[:, 3])
    for chunk in (1, 999, 10**6):
        e = sync_edges(bin_path, s, 6, chunk_samples=chunk)
        np.testing.assert_array_equal(e.rising, np.flatnonzero(np.diff(sq.astype(int)) == 1) + 1)
        np.testing.assert_array_equal(e.falling, np.flatnonzero(np.diff(sq.astype(int)) == -1) + 1)
    # a parsed dict works as meta too
    assert memmap_bin(bin_path, read_meta(meta_path)).shape == (n, 4)


def test_bad_metas(tmp_path):
    data = np.zeros((10, 3), np.int16)
    _, meta_path = write_stream(tmp_path, "a", data, rate_hz=100.0, extra={"snsApLfSy": "2,0,0"})
    with pytest.raises(MetaError, match="nSavedChans=3"):
        stream_info(meta_path)
    _, meta_path = write_stream(tmp_path / "b", "b", data, rate_hz=100.0, extra={"imSampRate": "x"})
    with pytest.raises(MetaError, match="imSampRate"):
        stream_info(meta_path)
    bin_path, meta_path = write_stream(tmp_path / "c", "c", data, rate_hz=100.0,
                                       extra={"snsApLfSy": "0,3,0"})
    with pytest.raises(MetaError, match="no sync"):
        sync_edges(bin_path, meta_path)
    with pytest.raises(MetaError, match="not found"):
        stream_info(meta_path, tmp_path / "missing.bin")


def test_partial_trailing_sample_is_ignored(tmp_path, caplog):
    data = np.arange(30, dtype=np.int16).reshape(10, 3)
    bin_path, meta_path = write_stream(tmp_path, "t", data, rate_hz=100.0)
    with open(bin_path, "ab") as f:
        f.write(b"\x00\x00")
    with caplog.at_level(logging.WARNING):
        s = stream_info(meta_path)
    assert s.n_samples == 10 and "not a whole number" in caplog.text


LF_METAS = ["spikeglx/Noise4Sam_g0/Noise4Sam_g0_imec0/Noise4Sam_g0_t0.imec0.lf.meta",
            "spikeglx/np_ultra_stub/p5_g0/p5_g0_imec0/p5_g0_t0.imec0.lf.meta"]


@pytest.mark.parametrize("name", LF_METAS)
def test_read_probe_real_lf_meta_needs_readout(realdata, name):
    """Why pixbin does not hand a real LF .meta to probeinterface as it is: the meta lists its
    channels as snsSaveChanSubset=384:768 (acquisition numbering), probeinterface 0.4.2 reads
    them as readout channels, keeps none and fails. Given the readout channels, it builds the
    geometry (and LF gains) of the AP meta beside it."""
    import probeinterface

    lf = realdata / name
    with pytest.raises(ValueError, match="zero-size array"):
        probeinterface.read_spikeglx(lf)
    with pytest.raises(MetaError, match=f"{lf.name}.*probeinterface cannot build"):
        read_probe(lf)
    probe = read_probe(lf, readout=np.arange(384))
    ap = read_probe(lf.with_name(lf.name.replace(".lf.", ".ap.")))
    np.testing.assert_array_equal(probe.contact_positions, ap.contact_positions)
    for key in ("channel_ids", "lf_gains"):
        np.testing.assert_array_equal(probe.contact_annotations[key], ap.contact_annotations[key])


def test_lf_source_real_np_ultra_stub(realdata):
    lf = realdata / LF_METAS[1]
    src = lf_source(lf.with_suffix(".bin"), lf)
    assert (src.kind, src.rate_hz, src.n_samples, src.n_saved_chans) == ("lf", 2500.0, 416, 385)
    np.testing.assert_array_equal(src.channel_ids, np.arange(384))
    np.testing.assert_array_equal(src.data_columns, np.arange(384))
    np.testing.assert_array_equal(src.uv_per_bit, np.full(384, 0.6 / 512 / 250 * 1e6))
    ap = read_probe(lf.with_name(lf.name.replace(".lf.", ".ap.")))
    np.testing.assert_array_equal(np.c_[src.x_um, src.y_um], ap.contact_positions)


def test_lf_source_saved_all_is_lf_numbered(realdata, tmp_path):
    """snsSaveChanSubset=all in an LF meta: LF channels then SY, as the explicit 384:768."""
    real = realdata / LF_METAS[0]
    sources = {}
    for subset in ("384:768", "all"):
        meta = tmp_path / subset.replace(":", "-") / real.name
        meta.parent.mkdir()
        meta.write_text(real.read_text().replace("snsSaveChanSubset=384:768",
                                                 f"snsSaveChanSubset={subset}"))
        np.zeros((3, 385), np.int16).tofile(meta.with_suffix(".bin"))
        sources[subset] = lf_source(meta.with_suffix(".bin"), meta)
    a, b = sources["384:768"], sources["all"]
    for key in ("data_columns", "channel_ids", "uv_per_bit", "x_um", "y_um"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))


def test_lf_source_refusals(realdata, tmp_path):
    real = realdata / LF_METAS[0]

    def source(**edits):
        lines = [line for line in real.read_text().splitlines()
                 if line.split("=", 1)[0] not in edits]
        meta = tmp_path / str(len(list(tmp_path.iterdir()))) / real.name
        meta.parent.mkdir()
        meta.write_text("\n".join(lines + [f"{k}={v}" for k, v in edits.items()]) + "\n")
        np.zeros((10, 385), np.int16).tofile(meta.with_suffix(".bin"))
        return lf_source(meta.with_suffix(".bin"), meta)

    for edits, message in [
        ({"acqApLfSy": "384,384"}, "acqApLfSy='384,384', expected 3"),
        ({"snsSaveChanSubset": "384:700,768"}, "lists 318 channels but nSavedChans=385"),
        ({"snsSaveChanSubset": "384:abc"}, "not a list of channels"),
        ({"snsSaveChanSubset": "0:383,768", "snsApLfSy": "384,0,1"}, "no LF channels"),
        ({"imAiRangeMax": "x"}, "imAiRangeMax='x' is not a valid float"),
        ({"imMaxInt": "x"}, "imMaxInt='x' is not a valid float"),
        ({"imDatPrb_pn": "NP9999"}, "probeinterface cannot build.*NP9999"),
        ({"~imroTbl": "(0,384)" + "".join(f"({c} 0 0 500 0 1)" for c in range(384))},
         r"LF gains must be > 0"),
    ]:
        with pytest.raises(MetaError, match=f"{real.name}: .*{message}"):
            source(**edits)
    np2 = realdata / "spikeglx/TEST_20210920_0_g0/TEST_20210920_0_g0_t0.imec0.ap.meta"
    src = lf_source(np2.with_suffix(".bin"), np2)  # NP2.0: the wide AP band, gain 80
    assert src.rate_hz == 30000.0 and src.data_columns.size == 384
    assert np.allclose(src.uv_per_bit, float(read_meta(np2)["imAiRangeMax"]) / 8192 / 80 * 1e6)
