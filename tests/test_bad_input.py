"""The bad-input corpus as tests: what a hostile new user gives pixbin, and what pixbin must do.

Each case breaks a fresh copy of one small simulated session that has been processed and built
once (spikes from the simulator's ground-truth phy folder: no sorter runs), runs ``pixbin`` on
it and checks, through the command line:

- the exit status;
- the message: it names the file (or key) and the problem, in the log / status table and, for a
  stage failure, in the stage's status cell (what ``pixbin status`` shows later);
- ``raw/`` is byte-identical before and after the run (pixbin only ever reads it);
- nothing partial: no ``.tmp-*`` file is left, every file of ``processed/`` and ``binned/`` opens,
  every ``interim/`` file matches its manifest;
- after the case's fix, the same command completes (exit 0, its stages ``done``).

The cases tested elsewhere (truncated archives, a bad gzip CRC, unsafe archive members, a folder
name that is not a date, two files for one role, NaN in behaviour channels, wrong config types,
a second writer, kill -9, mtime-only changes, deleted interim/) are not repeated here.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import logging
import re
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from pixbin.cli import main
from pixbin.pipeline import status_table
from pixbin.simulate import simulate_session, write_ground_truth_phy

SID = "240101_BAD"
STEM = "BAD_g0_t0.imec0"
BEHAVIOUR = "NeuropixelBehaviour(0).tdms"
CAMERA_META = "USB_Camerameta.tdms"
PHY = f"curated/{SID}/imec0"  # relative to data/, where the config says it is
# the simulated rig's pulser starts and stops with the probe file (simulate.SIMULATED_RIG_CONFIG)
CONFIG = ("sync: {train_within_probe: true}\n"
          f"spikes:\n  phy_folders: {{imec0: 'curated/{{session}}/imec0'}}\n")


@dataclass
class Ctx:
    """One case's copy: ``data/``, its raw session folder, the config, and the pristine base."""

    data: Path
    config: Path
    base: Path
    monkeypatch: pytest.MonkeyPatch

    @property
    def raw(self) -> Path:
        return self.data / "raw" / SID

    @property
    def processed(self) -> Path:
        return self.data / "processed" / SID

    def base_file(self, name: str) -> Path:
        return self.base / "raw" / SID / name

    def restore(self, name: str) -> None:
        """Put the original raw file back (and remove what a case put under its name)."""
        for extra in (self.raw / name, self.raw / f"{name}.tar.gz"):
            extra.unlink(missing_ok=True)
        shutil.copy2(self.base_file(name), self.raw / name)


@dataclass
class Case:
    """``breaks`` a copy, ``pixbin <command>`` exits ``code`` with a message matching
    ``message``, also shown in the status cell of stage ``where`` in row ``session`` (None when
    the command refuses before any stage runs); after ``fix`` the command completes with
    ``stages`` done."""

    breaks: Callable[[Ctx], object]
    code: int
    message: str
    fix: Callable[[Ctx], object]
    stages: tuple[str, ...] = ("extract", "sync")
    where: str | None = "sync"
    command: str = "process"
    #: files outside raw/ the break damaged on purpose (not checked for completeness before the fix)
    damaged: tuple[str, ...] = ()
    #: stages re-run although current (a change pixbin does not track: the phy folder, a disk)
    force: tuple[str, ...] = ()
    #: the row of the status table that shows the message (the session folder's name)
    session: str = SID


# ----------------------------------------------------------------------------- the base session
@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_input_base")
    data = root / "data"
    raw = simulate_session(data, session_id=SID, duration_s=12, seed=3, n_units=4,
                           write_ap=False, compress=False)
    write_ground_truth_phy(raw, data / PHY)
    (root / "pipeline.yaml").write_text(CONFIG)
    args = ["--no-save", "--data", str(data)]
    assert main(["process", "--serial", "--config", str(root / "pipeline.yaml"), *args]) == 0
    assert main(["build", *args]) == 0
    return data


@pytest.fixture()
def ctx(base, tmp_path, monkeypatch) -> Ctx:
    data = tmp_path / "data"
    shutil.copytree(base, data, symlinks=True)  # copy2: mtimes kept, the raw digests stay cached
    (tmp_path / "pipeline.yaml").write_text(CONFIG)
    return Ctx(data=data, config=tmp_path / "pipeline.yaml", base=base, monkeypatch=monkeypatch)


# ----------------------------------------------------------------------------- helpers of breaks
def _edit_meta(path: Path, **changes: str | None) -> None:
    """Set (or, with None, remove) keys of a SpikeGLX .meta."""
    lines = path.read_text().splitlines()
    out, seen = [], set()
    for line in lines:
        key = line.partition("=")[0]
        if key in changes:
            seen.add(key)
            if changes[key] is not None:
                out.append(f"{key}={changes[key]}")
        else:
            out.append(line)
    out += [f"{k}={v}" for k, v in changes.items() if k not in seen and v is not None]
    path.write_text("\n".join(out) + "\n")


def _tar_gz(members: dict[str, bytes | None]) -> bytes:
    """A .tar.gz of ``{name: content}`` (content None: a directory member)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _archive_instead(ctx: Ctx, name: str, payload: bytes) -> None:
    """Replace raw ``name`` by ``name.tar.gz`` holding ``payload`` (bytes as they are)."""
    (ctx.raw / name).unlink()
    (ctx.raw / f"{name}.tar.gz").write_bytes(payload)


def _good_archive(ctx: Ctx, name: str) -> None:
    """The fix of an archive case: a sound ``name.tar.gz`` of the original file."""
    (ctx.raw / f"{name}.tar.gz").write_bytes(_tar_gz({name: ctx.base_file(name).read_bytes()}))
    (ctx.raw / name).unlink(missing_ok=True)


def _flip_mid_stream(ctx: Ctx, name: str) -> None:
    data = bytearray(_tar_gz({name: ctx.base_file(name).read_bytes()}))
    for i in range(len(data) // 3, len(data) // 3 + 8):  # inside the deflate data
        data[i] ^= 0x5A
    _archive_instead(ctx, name, bytes(data))


def _rewrite_behaviour(ctx: Ctx, change: Callable[[str, np.ndarray], np.ndarray]) -> None:
    """Rewrite the rig TDMS with ``change(group, values)`` applied to every channel."""
    from nptdms import ChannelObject, GroupObject, RootObject, TdmsFile, TdmsWriter

    source = TdmsFile.read(ctx.base_file(BEHAVIOUR))
    objects = [RootObject(properties=dict(source.properties))]
    for group in source.groups():
        objects.append(GroupObject(group.name, properties=dict(group.properties)))
        for channel in group.channels():
            objects.append(ChannelObject(group.name, channel.name, change(group.name, channel[:]),
                                         properties=dict(channel.properties)))
    with TdmsWriter(ctx.raw / BEHAVIOUR) as writer:
        writer.write_segment(objects)


def _write_config(text: str) -> Callable[[Ctx], None]:
    return lambda ctx: ctx.config.write_text(text)


def _good_config(ctx: Ctx) -> None:
    ctx.config.write_text(CONFIG)


def _restore(name: str) -> Callable[[Ctx], None]:
    return lambda ctx: ctx.restore(name)


def _corrupt_processed(name: str) -> Callable[[Ctx], None]:
    def corrupt(ctx: Ctx) -> None:
        path = ctx.processed / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return corrupt


def _remove_processed(name: str) -> Callable[[Ctx], None]:
    return lambda ctx: (ctx.processed / name).unlink()


def _no_space_for(name: str) -> Callable:
    """``pyarrow.parquet.write_table`` that fails as a full disk for files whose name holds
    ``name`` (every file for ``""``)."""
    import pyarrow.parquet as pq

    real = pq.write_table

    def write_table(table, where, *args, **kwargs):
        if name in Path(where).name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, where, *args, **kwargs)
    return write_table


# ----------------------------------------------------------------------------- the corpus
CASES: dict[str, Case] = {
    # --- archives: extract refuses, naming the archive; the plain copy in interim/ is untouched
    "gzip bytes flipped mid-stream": Case(
        lambda c: _flip_mid_stream(c, CAMERA_META), 1,
        rf"{re.escape(CAMERA_META)}\.tar\.gz: corrupted or truncated archive",
        lambda c: _good_archive(c, CAMERA_META), stages=("extract",), where="extract"),
    # (the same bytes renamed: the content is unchanged, so only a re-extraction reads it)
    "a plain file named .tar.gz, interim/ deleted": Case(
        lambda c: (_archive_instead(c, f"{STEM}.lf.meta", c.base_file(f"{STEM}.lf.meta").read_bytes()),
                   shutil.rmtree(c.data / "interim" / SID)),
        1, rf"{STEM}\.lf\.meta\.tar\.gz: corrupted or truncated archive",
        lambda c: _good_archive(c, f"{STEM}.lf.meta"), stages=("extract",), where="extract"),
    "a .tar.gz of 0 bytes": Case(
        lambda c: _archive_instead(c, CAMERA_META, b""), 1,
        rf"{re.escape(CAMERA_META)}\.tar\.gz: (corrupted or truncated|empty) archive",
        lambda c: _good_archive(c, CAMERA_META), stages=("extract",), where="extract"),
    "an archive of two members": Case(
        lambda c: _archive_instead(c, CAMERA_META, _tar_gz(
            {CAMERA_META: c.base_file(CAMERA_META).read_bytes(), "notes.txt": b"hello"})), 1,
        rf"{re.escape(CAMERA_META)}\.tar\.gz: holds more than one member",
        lambda c: _good_archive(c, CAMERA_META), stages=("extract",), where="extract"),
    "an archive holding a folder": Case(
        lambda c: _archive_instead(c, CAMERA_META, _tar_gz({CAMERA_META: None})), 1,
        rf"{re.escape(CAMERA_META)}\.tar\.gz: member '{re.escape(CAMERA_META)}' is a directory",
        lambda c: _good_archive(c, CAMERA_META), stages=("extract",), where="extract"),
    "an archive that is a gzip of the file, not a tar": Case(
        lambda c: _archive_instead(c, CAMERA_META, gzip.compress(c.base_file(CAMERA_META).read_bytes())),
        1, rf"{re.escape(CAMERA_META)}\.tar\.gz: corrupted or truncated archive",
        lambda c: _good_archive(c, CAMERA_META), stages=("extract",), where="extract"),

    # --- session folders
    "a folder named mouse first": Case(
        lambda c: c.raw.rename(c.raw.with_name("BAD_240101")), 1,
        r"BAD_240101.*does not match YYMMDD_mouseID",
        lambda c: (c.data / "raw" / "BAD_240101").rename(c.raw), where="extract",
        session="BAD_240101"),
    "two behaviour recordings in one session": Case(
        lambda c: shutil.copy2(c.raw / BEHAVIOUR, c.raw / "NeuropixelBehaviour(1).tdms"), 1,
        r"two files for the same role \(behaviour\): NeuropixelBehaviour\(0\)\.tdms and "
        r"NeuropixelBehaviour\(1\)\.tdms",
        lambda c: (c.raw / "NeuropixelBehaviour(1).tdms").unlink(), where="extract"),
    "a stray DAQ TDMS beside the rig file": Case(
        lambda c: shutil.copy2(c.raw / BEHAVIOUR, c.raw / "AnalogInput.tdms"), 1,
        rf"{SID}: no camera_meta of AnalogInput file",
        lambda c: (c.raw / "AnalogInput.tdms").unlink(), stages=("extract", "pose"),
        where="pose"),
    "a session with only its rig file": pytest.param(Case(
        lambda c: [p.unlink() for p in c.raw.iterdir() if p.is_file() and p.name != BEHAVIOUR],
        1, r"missing input: .*ap_meta",
        lambda c: [shutil.copy2(p, c.raw / p.name) for p in (c.base / "raw" / SID).iterdir()
                   if p.is_file()])),
    # --- SpikeGLX metas
    "snsApLfSy of two values": Case(
        lambda c: _edit_meta(c.raw / f"{STEM}.lf.meta", snsApLfSy="0,385"), 1,
        rf"{STEM}\.lf\.meta: snsApLfSy='0,385', expected 3 comma-separated integers",
        _restore(f"{STEM}.lf.meta")),
    "no imSampRate": Case(
        lambda c: _edit_meta(c.raw / f"{STEM}.ap.meta", imSampRate=None), 1,
        rf"{STEM}\.ap\.meta: imSampRate=None, expected a positive number",
        _restore(f"{STEM}.ap.meta")),
    "imSampRate of 0": Case(
        lambda c: _edit_meta(c.raw / f"{STEM}.lf.meta", imSampRate="0"), 1,
        rf"{STEM}\.lf\.meta: imSampRate=0, expected a positive number",
        _restore(f"{STEM}.lf.meta")),
    "nSavedChans that does not fit the file size": Case(
        lambda c: _edit_meta(c.raw / f"{STEM}.lf.meta", nSavedChans="384", snsApLfSy="0,383,1"),
        1, rf"{STEM}\.lf\.meta: fileSizeBytes=23099230 and the \.bin's 23099230 bytes are not a "
        r"whole number of 384-channel int16 samples",
        _restore(f"{STEM}.lf.meta")),
    "the AP meta under the LF meta's name": Case(
        lambda c: shutil.copy(c.raw / f"{STEM}.ap.meta", c.raw / f"{STEM}.lf.meta"), 1,
        rf"{STEM}\.lf\.meta: imSampRate 29999\.9\d+ Hz; .*ratio 1\.0, expected 12\.0",
        _restore(f"{STEM}.lf.meta")),
    "the LF meta of another probe": pytest.param(Case(
        lambda c: _edit_meta(c.raw / f"{STEM}.lf.meta", imDatPrb_sn="18194809999"), 1,
        rf"{STEM}\.lf\.meta.*imDatPrb_sn.*18194809999.*18194809281",
        _restore(f"{STEM}.lf.meta"))),
    "an LF .bin of 0 bytes": Case(
        lambda c: (c.raw / f"{STEM}.lf.bin").write_bytes(b""), 1,
        rf"{STEM}\.lf\.bin: holds no complete sample of 385 channels \(0 bytes\)",
        _restore(f"{STEM}.lf.bin")),
    # --- TDMS files
    "a text file named as the camera metadata": Case(
        lambda c: (c.raw / CAMERA_META).write_text("frame,time\n0,0.0\n"), 1,
        rf"{re.escape(CAMERA_META)}: cannot read as TDMS", _restore(CAMERA_META),
        stages=("extract", "pose"), where="pose"),
    "a text file named as the rig TDMS": Case(
        lambda c: (c.raw / BEHAVIOUR).write_text("not a TDMS file\n" * 100), 1,
        rf"{re.escape(BEHAVIOUR)}: cannot read as TDMS", _restore(BEHAVIOUR)),
    "a truncated rig TDMS": Case(
        lambda c: (c.raw / BEHAVIOUR).write_bytes(
            c.base_file(BEHAVIOUR).read_bytes()[: c.base_file(BEHAVIOUR).stat().st_size * 3 // 5]),
        1, rf"{re.escape(BEHAVIOUR)}: truncated TDMS file: its last segment ends at byte \d+ "
        r"but the file has \d+ bytes", _restore(BEHAVIOUR)),
    "NaN in the rig's sync channel": pytest.param(Case(
        lambda c: _rewrite_behaviour(c, lambda g, v: np.where(
            (np.arange(v.size) >= 100_000) & (np.arange(v.size) < 100_500), np.nan, v)
            if g == "NpxlSync_Signal" else v), 1,
        rf"{re.escape(BEHAVIOUR)}.*NpxlSync_Signal.*500 non-finite", _restore(BEHAVIOUR))),
    # --- pipeline.yaml: refused before anything runs, naming the file, section and key
    "a bool for a float": Case(
        _write_config("sync: {tolerance_s: true}\n"), 2,
        r"pipeline\.yaml \[sync\]: tolerance_s: expected a finite number \(float\); found True",
        _good_config, where=None),
    "a float for an integer": Case(
        _write_config("sync: {sync_bit: 6.5}\n"), 2,
        r"pipeline\.yaml \[sync\]: sync_bit: expected an integer \(int\); found 6\.5",
        _good_config, where=None),
    "NaN for a float": Case(
        _write_config("sync: {tolerance_s: .nan}\n"), 2,
        r"pipeline\.yaml \[sync\]: tolerance_s: expected a finite number \(float\); found nan",
        _good_config, where=None),
    "a list for the whole config": Case(
        _write_config("- sync\n- spikes\n"), 2,
        r"pipeline\.yaml: expected a mapping of stage", _good_config, where=None),
    "a YAML syntax error": Case(
        _write_config("sync: {tolerance_s: 0.001\n"), 2,
        r"pipeline\.yaml: cannot read pipeline config", _good_config, where=None),
    "an unknown key": Case(
        _write_config(CONFIG + "lfp: {cmr: true, notch_hz: 50}\n"), 2,
        r"pipeline\.yaml \[lfp\]: unknown lfp parameter\(s\) \['notch_hz'\]",
        _good_config, where=None),
    "a negative tolerance": Case(
        _write_config(CONFIG.replace("{train_within_probe: true}",
                                     "{train_within_probe: true, tolerance_s: -0.001}")), 2,
        r"pipeline\.yaml \[sync\]: sync parameter tolerance_s must be > 0, got -0\.001",
        _good_config, where=None),
    "an unknown task": Case(
        _write_config(CONFIG + "behaviour: {task: leverpull}\n"), 2,
        r"pipeline\.yaml \[behaviour\]: task: unknown task 'leverpull'; known tasks: "
        r"\['leverpush'\]", _good_config,
        stages=("extract", "sync", "behaviour"), where=None),
    "a phy folder that does not exist": Case(
        _write_config("spikes:\n  phy_folders: {imec0: 'curated/{session}/imec1'}\n"), 1,
        rf"curated/{SID}/imec1.*(not found|no such|does not exist)", _good_config,
        stages=("extract", "spikes"), where="spikes"),
    "a phy folder for a probe the session lacks": pytest.param(Case(
        _write_config(CONFIG.replace("imec0:", "imec0: 'curated/{session}/imec0', imec3:")), 1,
        r"phy_folders.*imec3.*\['imec0'\]", _good_config, stages=("extract", "spikes"),
        where="spikes")),
    # --- areas.csv
    "an empty areas.csv": Case(
        lambda c: (c.raw / "areas.csv").write_text(""), 1,
        r"areas\.csv: empty file; expected an areas table", _restore("areas.csv"),
        stages=("extract", "spikes"),
        where="spikes"),
    "an areas.csv with a header only": Case(
        lambda c: (c.raw / "areas.csv").write_text("probe,area,depth_min_um,depth_max_um\n"), 1,
        r"areas\.csv: no rows under the header", _restore("areas.csv"),
        stages=("extract", "spikes"),
        where="spikes"),
    "an areas.csv with a range that is not a number": Case(
        lambda c: (c.raw / "areas.csv").write_text(
            "probe,area,depth_min_um,depth_max_um\nimec0,CP,0,top\n"), 1,
        r"areas\.csv: depth_max_um: expected numbers \(µm from the tip\), found \['top'\] "
        r"for area\(s\) \['CP'\]", _restore("areas.csv"),
        stages=("extract", "spikes"), where="spikes"),
    # --- the curated phy folder
    "a phy folder without spike_clusters.npy": Case(
        lambda c: (c.data / PHY / "spike_clusters.npy").unlink(), 1,
        rf"{PHY}.*spike_clusters\.npy", lambda c: write_ground_truth_phy(c.raw, c.data / PHY),
        stages=("extract", "spikes"), where="spikes", force=("spikes",)),
    "a phy folder with an empty spike_times.npy": Case(
        lambda c: (c.data / PHY / "spike_times.npy").write_bytes(b""), 1,
        rf"{PHY}/spike_times\.npy: expected a numeric \.npy array, found an unreadable file",
        lambda c: write_ground_truth_phy(c.raw, c.data / PHY),
        stages=("extract", "spikes"), where="spikes", force=("spikes",)),
    "a phy folder edited after its import": pytest.param(Case(
        lambda c: (c.data / PHY / "spike_clusters.npy").unlink(), 1,
        rf"{PHY}.*spike_clusters\.npy", lambda c: write_ground_truth_phy(c.raw, c.data / PHY),
        stages=("extract", "spikes"), where="spikes")),
    # --- processed/ files damaged after a run: the build names the file and the stage
    "a truncated trials.parquet": pytest.param(Case(
        _corrupt_processed("trials.parquet"), 2, r"trials\.parquet: unreadable .*--force behaviour",
        lambda c: main(["process", "--serial", "--no-save", "--config", str(c.config),
                        "--data", str(c.data), "--force", "behaviour"]),
        command="build", where=None, damaged=(f"processed/{SID}/trials.parquet",))),
    "a truncated units.parquet": pytest.param(Case(
        _corrupt_processed("units.parquet"), 2, r"units\.parquet: unreadable .*--force spikes",
        lambda c: main(["process", "--serial", "--no-save", "--config", str(c.config),
                        "--data", str(c.data), "--force", "spikes"]),
        command="build", where=None, damaged=(f"processed/{SID}/units.parquet",))),
    # --- the disk
    "a full disk while writing trials.parquet": Case(
        lambda c: c.monkeypatch.setattr("pyarrow.parquet.write_table", _no_space_for("trials")),
        1, r"No space left on device: '[^']*/trials\.parquet'", lambda c: c.monkeypatch.undo(),
        stages=("extract", "sync", "behaviour"), where="behaviour", force=("behaviour",)),
    "a full disk for every parquet file": pytest.param(Case(
        lambda c: c.monkeypatch.setattr("pyarrow.parquet.write_table", _no_space_for("")),
        1, r"No space left on device: '[^']*/(events|trials)\.parquet'", lambda c: c.monkeypatch.undo(),
        stages=("extract", "sync", "behaviour"), where="behaviour", force=("behaviour",))),
}


def _tree_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _opens(path: Path) -> None:
    """Read the whole file the way its readers do (raises if it is partial)."""
    suffix = path.suffix
    if suffix == ".parquet":
        pd.read_parquet(path)
    elif suffix == ".h5":
        with h5py.File(path, "r") as f:
            f.visititems(lambda _, obj: obj[()] if isinstance(obj, h5py.Dataset) else None)
    elif suffix == ".json":
        json.loads(path.read_text())
    elif suffix == ".npy":
        np.load(path)
    elif suffix == ".png":
        assert path.read_bytes()[-8:-4] == b"IEND", path


def _assert_nothing_partial(data: Path, damaged: tuple[str, ...] = ()) -> None:
    leftovers = [p for p in data.rglob("*") if ".tmp-" in p.name]
    assert leftovers == [], leftovers
    for sub in ("processed", "binned"):
        for path in (data / sub).rglob("*"):
            if path.is_file() and str(path.relative_to(data)) not in damaged:
                _opens(path)
    for manifest in (data / "interim").glob("*/manifest.json"):
        for name, entry in json.loads(manifest.read_text()).items():
            path = manifest.parent / name
            assert path.is_file(), path
            assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], path


def _run(ctx: Ctx, case: Case) -> int:
    args = ["--no-save", "--data", str(ctx.data)]
    if case.command == "build":
        return main(["build", *args])
    force = ["--force", *case.force] if case.force else []
    return main(["process", "--serial", "--config", str(ctx.config), "--stages", *case.stages,
                 *force, *args])


def _row(ctx: Ctx, session: str = SID) -> dict[str, str]:
    table = status_table(ctx.data).set_index("session")
    return table.loc[session].to_dict() if session in table.index else {}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input(case, ctx, caplog, capsys):
    case.breaks(ctx)
    raw_before = _tree_digests(ctx.data / "raw")
    with caplog.at_level(logging.WARNING):
        code = _run(ctx, case)
    said = caplog.text + capsys.readouterr().out
    assert code == case.code, said
    assert re.search(case.message, said), said
    if case.where is not None:
        cell = _row(ctx, case.session)[case.where]
        assert re.search(case.message, cell), cell
    assert _tree_digests(ctx.data / "raw") == raw_before, "raw/ changed"
    _assert_nothing_partial(ctx.data, case.damaged)

    case.fix(ctx)
    raw_fixed = _tree_digests(ctx.data / "raw")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        code = _run(ctx, case)
    said = caplog.text + capsys.readouterr().out
    assert code == 0, said
    assert _tree_digests(ctx.data / "raw") == raw_fixed
    _assert_nothing_partial(ctx.data)
    row = _row(ctx)
    if case.command == "build":
        manifest = json.loads((ctx.data / "binned" / "manifest.json").read_text())
        assert SID in json.dumps(manifest.get("sessions", manifest))
    assert {s: row[s] for s in case.stages} == {s: "done" for s in case.stages}, row
