"""Every path of ``data/``: raw/, interim/, processed/, binned/ and exports/, named once.

No other module spells a file name of ``data/``; they ask this one. The table in docs/PIPELINE.md
lists the same files with their content.

Recording indices: a behaviour rig file ``NAME(N).tdms`` is recording ``N``; its outputs carry
``_N`` (``action_labels_N.npy``), and so does the sync figure of that recording.

Examples
--------
>>> from pathlib import Path
>>> p = Processed(Path("data/processed/240101_SIM01"))
>>> p.action_labels(1).name, p.lfp("imec0").name, p.record("sync").as_posix()
('action_labels_1.npy', 'imec0.lf_processed.h5', 'data/processed/240101_SIM01/.records/sync.json')
>>> Binned(Path("data/binned")).session_action("240101_SIM01", "rewarded_push").as_posix()
'data/binned/sessions/session_240101_SIM01/rewarded_push.h5'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "RAW",
    "INTERIM",
    "PROCESSED",
    "BINNED",
    "EXPORTS",
    "AREAS_CSV",
    "INTERIM_MANIFEST",
    "Processed",
    "Binned",
    "processed_dir",
    "interim_dir",
    "raw_dir",
    "raw_root",
    "processed_root",
    "binned_dir",
    "exports_dir",
    "sessions_table",
    "recorded_path",
    "camera_video",
    "behaviour_recording",
]

RAW, INTERIM, PROCESSED, BINNED, EXPORTS = "raw", "interim", "processed", "binned", "exports"
AREAS_CSV = "areas.csv"
INTERIM_MANIFEST = "manifest.json"
LOCK = ".pixbin.lock"  # in interim/ (never versioned): one process/build writer per data/
RAW_DIGESTS = "raw_digests.json"  # in interim/<S>: sha256 of each raw file, keyed by size + mtime
MANIFEST = "manifest.json"
RECORDS = ".records"
BEHAVIOUR_CHANNELS_SUFFIX = "_processed.h5"
LFP_SUFFIX = ".lf_processed.h5"
POSE_SUFFIX = "_pose.h5"


def raw_dir(data_root: Path, session_id: str) -> Path:
    """``data/raw/<session>``: the session's files as they arrived (never modified)."""
    return Path(data_root) / RAW / session_id


def interim_dir(data_root: Path, session_id: str) -> Path:
    """``data/interim/<session>``: uncompressed copies and caches (always regenerable)."""
    return Path(data_root) / INTERIM / session_id


def processed_dir(data_root: Path, session_id: str) -> Path:
    """``data/processed/<session>``: every stage's outputs."""
    return Path(data_root) / PROCESSED / session_id


def recorded_path(path: str | os.PathLike | None, out_dir: Path) -> str | None:
    """A path as recorded inside an output in ``out_dir``: relative to that folder (POSIX), so a
    copy or clone of ``data/`` keeps it valid and no machine path ships with the data."""
    return None if path is None else Path(os.path.relpath(path, out_dir)).as_posix()


def raw_root(data_root: Path) -> Path:
    """``data/raw``: one folder per session."""
    return Path(data_root) / RAW


def processed_root(data_root: Path) -> Path:
    """``data/processed``: one folder per session."""
    return Path(data_root) / PROCESSED


def binned_dir(data_root: Path) -> Path:
    """``data/binned``: the per-action DataTrees (:class:`Binned`)."""
    return Path(data_root) / BINNED


def exports_dir(data_root: Path) -> Path:
    """``data/exports``: ``.npy`` + JSON exports of the tensors."""
    return Path(data_root) / EXPORTS


def camera_video(interim: Path, camera: str, codec: str) -> Path:
    """The camera's video in ``interim/<session>`` (regenerable): ``.mp4`` for libx264, else
    ``.mkv`` (FFV1)."""
    return Path(interim) / f"{camera}{'.mp4' if codec == 'libx264' else '.mkv'}"


def lock_file(data_root: Path) -> Path:
    """``data/interim/.pixbin.lock``: held by the one ``process``/``build`` writing data/."""
    return Path(data_root) / INTERIM / LOCK


def sessions_table(data_root: Path) -> Path:
    """``data/processed/sessions.parquet``: the session × stage status table."""
    return Path(data_root) / PROCESSED / "sessions.parquet"


def behaviour_recording(tdms_name: str) -> int:
    """The recording index ``N`` of a rig file ``NAME(N).tdms`` (0 when the name has none)."""
    stem = Path(tdms_name).stem
    if stem.endswith(")") and "(" in stem:
        index = stem[stem.rindex("(") + 1:-1]
        if index.isdigit():
            return int(index)
    return 0


@dataclass(frozen=True)
class Processed:
    """The files of one session's processed folder."""

    dir: Path

    # sync
    @property
    def sync_json(self) -> Path:
        return self.dir / "sync.json"

    @property
    def lag_json(self) -> Path:
        return self.dir / "lag.json"

    def sync_figure(self, rec: int = 0) -> Path:
        return self.dir / f"sync_{rec}.png"

    # behaviour
    def action_labels(self, rec: int = 0) -> Path:
        return self.dir / f"action_labels_{rec}.npy"

    def action_labels_json(self, rec: int = 0) -> Path:
        return self.dir / f"action_labels_{rec}.json"

    @property
    def events(self) -> Path:
        return self.dir / "events.parquet"

    @property
    def trials(self) -> Path:
        return self.dir / "trials.parquet"

    def behaviour_channels(self, tdms_stem: str) -> Path:
        """1 kHz channels of the rig file ``<tdms_stem>.tdms``."""
        return self.dir / f"{tdms_stem}{BEHAVIOUR_CHANNELS_SUFFIX}"

    def behaviour_channel_files(self) -> list[Path]:
        """Every 1 kHz behaviour channel file present, sorted."""
        return sorted(self.dir.glob(f"*(*){BEHAVIOUR_CHANNELS_SUFFIX}"))

    # spikes
    @property
    def units(self) -> Path:
        return self.dir / "units.parquet"

    @property
    def spikes(self) -> Path:
        return self.dir / "spikes.h5"

    def sorting_dir(self, probe: str) -> Path:
        """``sorting/<probe>``: the sorter's run, its SpikeInterface sorting and the phy export."""
        return self.dir / "sorting" / probe

    # lfp
    def lfp(self, probe: str = "imec0") -> Path:
        return self.dir / f"{probe}{LFP_SUFFIX}"

    # pose
    def frames_json(self, camera: str) -> Path:
        return self.dir / f"{camera}_frames.json"

    def frame_times(self, camera: str) -> Path:
        return self.dir / f"{camera}_frame_times.npy"

    def pose(self, camera: str) -> Path:
        return self.dir / f"{camera}{POSE_SUFFIX}"

    def pose_files(self) -> list[Path]:
        return sorted(self.dir.glob(f"*{POSE_SUFFIX}"))

    # pipeline
    @property
    def records_dir(self) -> Path:
        return self.dir / RECORDS

    def record(self, stage: str) -> Path:
        """``.records/<stage>.json``: the last run of a stage (parameters, versions, status)."""
        return self.records_dir / f"{stage}.json"

    def stage_log(self, stage: str) -> Path:
        """``.records/<stage>.log``: what was logged and warned during the last run of a stage."""
        return self.records_dir / f"{stage}.log"


@dataclass(frozen=True)
class Binned:
    """The files of ``data/binned``: one DataTree per action, per-session parts, manifests."""

    dir: Path

    def action(self, action: str) -> Path:
        """``<action>.h5``: every session's tensors for one action."""
        return self.dir / f"{action}.h5"

    def session_dir(self, session_id: str) -> Path:
        return self.dir / "sessions" / f"session_{session_id}"

    def session_action(self, session_id: str, action: str) -> Path:
        return self.session_dir(session_id) / f"{action}.h5"

    def session_actions(self, action: str) -> list[Path]:
        """Every session's file of ``action`` present, sorted."""
        return sorted((self.dir / "sessions").glob(f"session_*/{action}.h5"))

    def session_manifest(self, session_id: str) -> Path:
        return self.session_dir(session_id) / MANIFEST

    @property
    def manifest(self) -> Path:
        return self.dir / MANIFEST
