"""Session discovery and raw → interim extraction."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from pixbin.errors import ExtractError, SessionError
from pixbin.extract import extract_session, verify_interim
from pixbin.fileio import sha256_file
from pixbin.session import find_sessions, load_session, parse_session_id, scan_sessions
from pixbin.simulate import simulate_session


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("packed")
    simulate_session(root, duration_s=10, seed=2, n_units=3, write_ap=False)
    return root


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")


def test_roles_found_compressed_and_subfolders_ignored(packed):
    (session,) = find_sessions(packed)
    assert session.session_id == "240101_SIM01" and session.mouse == "SIM01"
    roles = {f.role for f in session.files}
    assert roles == {"lf_bin", "lf_meta", "ap_meta", "behaviour", "camera", "camera_meta",
                     "areas"}
    assert all(f.compressed for f in session.files if f.role != "areas")
    assert session.probes == ["imec0"] and session.cameras == ["USB_Camera"]
    assert not any("notes" in f.name for f in session.files)


def test_probe_spellings_gates_and_recordings(tmp_path):
    _touch(tmp_path / "raw/211024_VR46_rec2", "run_g1_t0.imec00.ap.bin", "run_g1_t0.imec00.ap.meta",
           "run_g1_t0.imec1.lf.bin", "NeuropixelBehaviour(3).tdms")
    s = load_session(tmp_path, "211024_VR46_rec2")
    assert s.extra == "rec2" and s.probes == ["imec0", "imec1"]
    assert s.file("ap_bin", probe="imec0").gate == 1
    assert s.file("behaviour").recording == 3


@pytest.mark.parametrize("names, match", [
    (["run_g0_t0.imec0.ap.bin", "run_g0_t0.imec0.ap.bin.tar.gz"], "same role"),
    (["run_g0_t0.imec0.ap.bin", "run_g1_t0.imec0.lf.bin"], "several SpikeGLX gates"),
    (["weird.imec0.ap.bin"], "does not match"),
    (["USB_Camerameta.tdms"], "without its video"),
])
def test_layout_errors_name_the_folder(tmp_path, names, match):
    _touch(tmp_path / "raw/211024_VR46", *names)
    with pytest.raises(SessionError, match=match):
        load_session(tmp_path, "211024_VR46")


def test_session_names_must_parse(tmp_path):
    with pytest.raises(SessionError, match="YYMMDD"):
        parse_session_id("VR46_211024")
    with pytest.raises(SessionError, match="not a date"):
        parse_session_id("219999_VR46")
    _touch(tmp_path / "raw/notasession", "a.txt")
    assert find_sessions(tmp_path) == []


def test_missing_role_is_a_clear_error(packed):
    (session,) = find_sessions(packed)
    with pytest.raises(SessionError, match="no ap_bin"):
        session.file("ap_bin", probe="imec0")


def test_extract_checksums_resume_and_raw_untouched(packed):
    (session,) = find_sessions(packed)
    raw_state = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in session.raw_dir.iterdir()}
    manifest = extract_session(session)
    assert set(manifest) == {f.name for f in session.files if f.role != "areas"}
    for name, entry in manifest.items():
        assert sha256_file(session.interim_dir / name) == entry["sha256"]
    assert verify_interim(session) == []
    mtimes = {p: p.stat().st_mtime_ns for p in session.interim_dir.iterdir()}
    extract_session(session)  # up to date: nothing rewritten
    assert mtimes == {p: p.stat().st_mtime_ns for p in session.interim_dir.iterdir()}
    # a deleted interim file is regenerated; a corrupted one is caught by verify
    (session.interim_dir / "NeuropixelBehaviour(0).tdms").unlink()
    extract_session(session)
    assert verify_interim(session) == []
    with open(session.interim_dir / "USB_Camera.tdms", "r+b") as f:
        f.write(b"\0\0\0\0")
    assert any("sha256" in p for p in verify_interim(session))
    assert raw_state == {p: (p.stat().st_size, p.stat().st_mtime_ns)
                         for p in session.raw_dir.iterdir()}


def _archive(path: Path, members: list[tarfile.TarInfo], payload: bytes = b"data") -> None:
    with tarfile.open(path, "w:gz") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(payload) if m.isfile() else None)


def _info(name: str, kind=tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, 4 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize("member, match", [
    (_info("/etc/USB_Camera.tdms"), "absolute"),
    (_info("../USB_Camera.tdms"), r"'\.\.'"),
    (_info("USB_Camera.tdms", tarfile.SYMTYPE, "/etc/passwd"), "link"),
    (_info("USB_Camera.tdms", tarfile.CHRTYPE), "device"),
    (_info("other.tdms"), "expected one member"),
])
def test_unsafe_archives_refused_and_nothing_written(tmp_path, member, match):
    folder = tmp_path / "raw/211024_VR46"
    folder.mkdir(parents=True)
    _archive(folder / "USB_Camera.tdms.tar.gz", [member])
    session = load_session(tmp_path, "211024_VR46")
    with pytest.raises(ExtractError, match=match):
        extract_session(session)
    assert not [p for p in session.interim_dir.iterdir() if p.name != "manifest.json"]


def test_truncated_archive_names_the_file(packed, tmp_path):
    src = packed / "raw/240101_SIM01/USB_Camera.tdms.tar.gz"
    folder = tmp_path / "raw/211024_VR46"
    folder.mkdir(parents=True)
    data = src.read_bytes()
    (folder / "USB_Camera.tdms.tar.gz").write_bytes(data[: len(data) // 2])
    session = load_session(tmp_path, "211024_VR46")
    with pytest.raises(ExtractError, match="USB_Camera.tdms.tar.gz"):
        extract_session(session)
    leftovers = [p for p in session.interim_dir.iterdir() if p.name != "manifest.json"]
    assert leftovers == [], leftovers
    assert not os.path.exists(session.interim_dir / "USB_Camera.tdms")


def _copy_of(packed: Path, tmp_path: Path, name: str, change=None) -> Path:
    folder = tmp_path / "raw/211024_VR46"
    folder.mkdir(parents=True)
    data = bytearray((packed / "raw/240101_SIM01" / name).read_bytes())
    if change:
        change(data)
    (folder / name).write_bytes(bytes(data))
    return folder / name


def test_a_bad_gzip_crc_is_refused_naming_the_archive(packed, tmp_path):
    """The deflate data is intact, only the CRC-32 in the gzip trailer is wrong: the member
    decompresses fine, so only reading the stream to its end can tell."""
    def flip_crc(data: bytearray) -> None:
        data[-8] ^= 0x01

    archive = _copy_of(packed, tmp_path, "NeuropixelBehaviour(0).tdms.tar.gz", flip_crc)
    before = archive.read_bytes()
    session = load_session(tmp_path, "211024_VR46")
    with pytest.raises(ExtractError, match=r"NeuropixelBehaviour\(0\).tdms.tar.gz: corrupted .*CRC"):
        extract_session(session)
    assert not (session.interim_dir / "NeuropixelBehaviour(0).tdms").exists()
    assert archive.read_bytes() == before


def test_a_full_disk_is_not_called_a_corrupt_archive(packed, tmp_path, monkeypatch):
    import builtins
    import errno

    _copy_of(packed, tmp_path, "NeuropixelBehaviour(0).tdms.tar.gz")
    real_open = builtins.open

    def full_disk_open(file, mode="r", *args, **kwargs):
        if "w" in mode and ".tmp-" in str(file):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("pixbin.extract.open", full_disk_open, raising=False)
    session = load_session(tmp_path, "211024_VR46")
    with pytest.raises(ExtractError) as info:
        extract_session(session)
    message = str(info.value)
    assert "No space left on device" in message and "NeuropixelBehaviour(0).tdms" in message
    assert "corrupt" not in message and "the raw file is intact" in message


def test_several_gates_are_one_session_each(tmp_path, caplog):
    _touch(tmp_path / "raw/211024_VR46", "run_g0_t0.imec0.ap.bin", "run_g0_t0.imec0.ap.meta",
           "run_g1_t0.imec0.ap.bin", "run_g1_t0.imec0.ap.meta", "run_g1_t0.imec1.ap.meta",
           "NeuropixelBehaviour(0).tdms", "areas.csv")
    sessions, problems = scan_sessions(tmp_path)
    assert problems == {}
    assert [s.session_id for s in sessions] == ["211024_VR46_g0", "211024_VR46_g1"]
    g1 = load_session(tmp_path, "211024_VR46_g1")
    assert g1.probes == ["imec0", "imec1"] and {f.gate for f in g1.files if f.probe} == {1}
    assert g1.raw_dir == tmp_path / "raw/211024_VR46"
    assert g1.processed_dir.name == "211024_VR46_g1"
    assert g1.has("areas") and not g1.has("behaviour")  # which gate it belongs to is unknown
    assert "not assigned to gate 1" in caplog.text
    with pytest.raises(SessionError, match="no files of SpikeGLX gate 2"):
        load_session(tmp_path, "211024_VR46_g2")
