"""The stages of a session, each one object: its parameters, inputs, outputs and how to run it.

A :class:`Stage` declares

- ``Params``: a frozen dataclass with typed fields (:mod:`pixbin.params` builds it from a config
  section, refusing unknown keys and wrong types);
- ``upstream``: the stages of the same session it reads from (:meth:`Stage.upstream_of` may add
  some for a session, e.g. sync for the spikes of several probes);
- ``roles`` / ``optional_roles``: the raw files it reads (roles of :mod:`pixbin.session`);
- :meth:`Stage.outputs`: the files it writes (paths from :mod:`pixbin.layout`);
- :meth:`Stage.run`: binds a session's files to the stage function of its module.

The stage modules themselves (:mod:`pixbin.sync`, :mod:`pixbin.behaviour`, ...) are functions of
paths and parameters that know nothing of sessions; this module is the only place that connects
the two. :data:`STAGES` lists them in run order; :mod:`pixbin.pipeline` walks it without knowing
any stage by name. To add a stage: write its module (a ``Params`` dataclass and a ``run_*``
function), add a :class:`Stage` subclass here and put it in :data:`STAGES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pixbin import layout
from pixbin.behaviour import BehaviourParams
from pixbin.errors import ConfigError, MetaError, SyncError
from pixbin.extract import ExtractParams
from pixbin.lfp import LfpParams
from pixbin.pose import PoseParams
from pixbin.session import Session
from pixbin.spikes import SpikesParams
from pixbin.sync import SyncParams

__all__ = ["Stage", "STAGES"]


class Stage:
    """What the pipeline needs to know of a stage (subclasses fill in the class attributes)."""

    name: ClassVar[str]
    Params: ClassVar[type]
    upstream: ClassVar[tuple[str, ...]] = ()
    roles: ClassVar[tuple[str, ...]] = ()
    optional_roles: ClassVar[tuple[str, ...]] = ()
    #: outputs are a pure function of the raw content (re-making them changes nothing downstream)
    regenerable: ClassVar[bool] = False
    #: the binned dataset cannot be built without this stage's outputs
    needed_by_dataset: ClassVar[bool] = False

    def required_roles(self, session: Session, params: Any) -> tuple[str, ...]:
        """The raw roles that must be present for this session (default: :attr:`roles`)."""
        return self.roles

    def upstream_of(self, session: Session) -> tuple[str, ...]:
        """The upstream stages for this session (default: :attr:`upstream`)."""
        return self.upstream

    def reads_role(self, role: str) -> bool:
        """Whether a raw file of ``role`` is an input (its change makes the stage stale)."""
        return role in self.roles or role in self.optional_roles

    def curation_inputs(self, session: Session, params: Any) -> list[Path]:
        """Files outside raw/ that a person edits and the stage reads (their content is part of
        the stage's inputs: an edit makes it stale). Default: none."""
        return []

    def prepare(self, session: Session) -> None:
        """Bring the stage's raw inputs into ``interim/`` (re-extracted if it was deleted)."""
        from pixbin.extract import extract_session

        extract_session(session, roles={f.role for f in session.files if self.reads_role(f.role)})

    def outputs(self, session: Session, params: Any) -> list[Path]:
        """Files the stage writes; all must exist for the stage to be current."""
        raise NotImplementedError

    def run(self, session: Session, params: Any) -> dict:
        """Run the stage on one session; return its summary (stored in the stage record)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<stage {self.name}>"


def _processed(session: Session) -> layout.Processed:
    return layout.Processed(session.processed_dir)


def _probe_duration_s(session: Session, probe: str = "imec0") -> float:
    """Length of the probe's AP recording (samples counted from the interim .bin when there)."""
    from pixbin.spikeglx import stream_info

    return stream_info(session.interim_path("ap_meta", probe=probe)).duration_s


def _has_lf(session: Session, probe: str) -> bool:
    return session.has("lf_bin", probe=probe) and session.has("lf_meta", probe=probe)


def _single_band(session: Session, probe: str) -> bool:
    """Whether the probe records no LF band (``acqApLfSy`` = ``N,0,1`` in its AP meta, as NP2.0):
    then its LFP comes from the AP band; an NP1.0 probe whose LF file is missing is not one."""
    import tarfile

    raw = session.file("ap_meta", probe=probe)
    if raw.compressed:
        with tarfile.open(raw.raw_path, "r:gz") as tar:
            member = tar.next()
            handle = tar.extractfile(member) if member is not None else None
            text = handle.read().decode("utf-8", "replace") if handle is not None else ""
    else:
        text = raw.raw_path.read_text(errors="replace")
    for line in text.splitlines():
        if line.startswith("acqApLfSy="):
            parts = line.split("=", 1)[1].split(",")
            return len(parts) == 3 and parts[1].strip() == "0"
    return False


def _sync_roles(session: Session, probe: str) -> tuple[str, ...]:
    """The raw roles that carry ``probe``'s sync edges (LF band, else AP band)."""
    return ("ap_meta", "lf_meta", "lf_bin") if _has_lf(session, probe) else ("ap_meta", "ap_bin")


def _probe_files(session: Session, probe: str):
    """The interim SpikeGLX files of one probe (LF None when it has no LF band)."""
    from pixbin.sync_probes import ProbeFiles

    def interim(role: str) -> Path | None:
        return session.interim_path(role, probe=probe) if session.has(role, probe=probe) else None

    from pixbin.spikeglx import check_same_probe

    lf = _has_lf(session, probe)
    if lf:
        check_same_probe(session.interim_path("ap_meta", probe=probe), interim("lf_meta"))
    return ProbeFiles(ap_meta=session.interim_path("ap_meta", probe=probe), ap_bin=interim("ap_bin"),
                      lf_meta=interim("lf_meta") if lf else None,
                      lf_bin=interim("lf_bin") if lf else None)


class ExtractStage(Stage):
    name = "extract"
    Params = ExtractParams
    regenerable = True

    def reads_role(self, role: str) -> bool:
        return True

    def prepare(self, session: Session) -> None:
        """Nothing: extracting is this stage's run."""

    def outputs(self, session: Session, params: ExtractParams) -> list[Path]:
        return [session.interim_dir / layout.INTERIM_MANIFEST]

    def run(self, session: Session, params: ExtractParams) -> dict:
        from pixbin.extract import extract_session

        return {"files": len(extract_session(session))}


class SyncStage(Stage):
    name = "sync"
    Params = SyncParams
    upstream = ("extract",)
    roles = ("ap_meta", "behaviour")
    optional_roles = ("lf_meta", "lf_bin", "ap_bin", "nidq_meta", "nidq_bin")
    needed_by_dataset = True

    def required_roles(self, session: Session, params: SyncParams) -> tuple[str, ...]:
        """Each probe's SY word from its LF band when it has one, else (Neuropixels 2.0 and
        other single-band probes) from its AP band."""
        roles = set(self.roles)
        for probe in session.probes or ["imec0"]:
            roles |= set(_sync_roles(session, probe))
        return tuple(sorted(roles))

    def outputs(self, session: Session, params: SyncParams) -> list[Path]:
        files = _processed(session)
        return [files.sync_json, files.lag_json, files.sync_figure(0)]

    def run(self, session: Session, params: SyncParams) -> dict:
        from pixbin.sync import run_sync

        if "imec0" not in session.probes:
            raise MetaError(f"{session.raw_dir}: probes {session.probes} but no imec0; the probe "
                            "clock is imec0's AP clock")
        files = {probe: _probe_files(session, probe) for probe in session.probes}
        imec0 = files.pop("imec0")
        return run_sync(
            ap_meta=imec0.ap_meta,
            lf_meta=imec0.lf_meta,
            lf_bin=imec0.lf_bin,
            ap_bin=imec0.ap_bin,
            behaviour_tdms=session.interim_path("behaviour"),
            out_dir=session.processed_dir,
            params=params,
            other_probes=files,
            nidq=_nidq_files(session),
        )


def _nidq_files(session: Session):
    """The session's interim NIDQ files, or None when it has no NIDQ meta."""
    from pixbin.sync_probes import NidqFiles

    if not session.has("nidq_meta"):
        return None
    return NidqFiles(meta=session.interim_path("nidq_meta"),
                     bin=session.interim_path("nidq_bin") if session.has("nidq_bin") else None)


class BehaviourStage(Stage):
    name = "behaviour"
    Params = BehaviourParams
    upstream = ("sync",)
    roles = ("ap_meta", "behaviour")
    needed_by_dataset = True

    def outputs(self, session: Session, params: BehaviourParams) -> list[Path]:
        files = _processed(session)
        rec = params.recording(session.file("behaviour").name)
        return [files.action_labels(rec), files.events, files.trials]

    def run(self, session: Session, params: BehaviourParams) -> dict:
        from pixbin.behaviour import run_behaviour
        from pixbin.clock import BEHAVIOUR_STREAM, ClockMap

        return run_behaviour(
            behaviour_tdms=session.interim_path("behaviour"),
            clock_map=ClockMap.load(session.processed_dir, BEHAVIOUR_STREAM),
            probe_duration_s=_probe_duration_s(session),
            out_dir=session.processed_dir,
            params=params,
        )


class SpikesStage(Stage):
    name = "spikes"
    Params = SpikesParams
    upstream = ("extract",)
    roles = ("ap_meta", "ap_bin")
    optional_roles = ("areas",)
    needed_by_dataset = True

    def upstream_of(self, session: Session) -> tuple[str, ...]:
        """Extract; and sync for a session of several probes (their spikes are mapped onto the
        imec0 clock). A one-probe session's sorting never waits for, or re-runs after, sync."""
        return ("extract", "sync") if len(session.probes) > 1 else self.upstream

    def required_roles(self, session: Session, params: SpikesParams) -> tuple[str, ...]:
        if all(p in params.phy_folders for p in session.probes):
            return ("ap_meta",)  # every probe imported from phy: the AP band is optional
        return self.roles

    def outputs(self, session: Session, params: SpikesParams) -> list[Path]:
        files = _processed(session)
        return [files.units, files.spikes]

    def curation_inputs(self, session: Session, params: SpikesParams) -> list[Path]:
        """The files of each probe's phy folder that say which spike is in which unit and how
        it is labelled (an imported folder, or the ``phy/`` of pixbin's own sort): curating in
        phy makes the stage stale, and the re-run reads the curation."""
        found = []
        for probe in session.probes:
            folder = (params.phy_folder(probe, session.session_id, session.data_root)
                      or layout.Processed(session.processed_dir).sorting_dir(probe) / "phy")
            if folder.is_dir():
                found += sorted(p for p in folder.iterdir() if p.name in _PHY_CURATION_FILES
                                or (p.name.startswith("cluster_") and p.suffix == ".tsv"))
        return found

    def run(self, session: Session, params: SpikesParams) -> dict:
        from pixbin.clock import ClockMap, ap_stream
        from pixbin.spikes import ProbeInput, run_spikes

        _check_phy_folder_probes(session, params)
        probes, failed = {}, {}
        for probe in session.probes:
            ap_meta = session.interim_path("ap_meta", probe=probe)
            has_ap = session.has("ap_bin", probe=probe)
            ap_bin = session.interim_path("ap_bin", probe=probe) if has_ap else None
            folder = params.phy_folder(probe, session.session_id, session.data_root)
            try:
                clock = (None if probe == "imec0"
                         else ClockMap.load(session.processed_dir, ap_stream(probe)))
            except SyncError as exc:  # its spikes cannot be placed on the probe clock
                failed[probe] = str(exc)
                continue
            probes[probe] = ProbeInput(phy_folder=folder, ap_bin=ap_bin, ap_meta=ap_meta,
                                       clock_map=clock)
        areas = session.raw_dir / layout.AREAS_CSV if session.has("areas") else None
        return run_spikes(probes=probes, out_dir=session.processed_dir, areas_table=areas,
                          params=params, failed_probes=failed)


#: phy files (besides ``cluster_*.tsv``) whose edit changes the units.
_PHY_CURATION_FILES = ("spike_clusters.npy", "spike_times.npy", "params.py")


def _check_phy_folder_probes(session: Session, params: SpikesParams) -> None:
    """Refuse a ``phy_folders`` key that is no probe name (a typo would sort instead of import),
    or one whose folder exists for a probe this session lacks (curation meant for another
    probe). A probe name without a folder is fine: one config serves sessions of 1 and 2 probes."""
    import re

    for key in params.phy_folders:
        if key in session.probes:
            continue
        if not re.fullmatch(r"imec\d+", key):
            raise ConfigError(f"spikes.phy_folders: {key!r} is not a probe name (imec0, imec1, ...); "
                              f"session {session.session_id} has probes {list(session.probes)}")
        folder = params.phy_folder(key, session.session_id, session.data_root)
        if folder is not None and folder.exists():
            raise ConfigError(f"spikes.phy_folders: {key!r} names {folder}, which exists, but session "
                              f"{session.session_id} has no probe {key} (its probes: "
                              f"{list(session.probes)}); fix the key, or move the folder")


class LfpStage(Stage):
    name = "lfp"
    Params = LfpParams
    upstream = ("sync",)
    roles = ("ap_meta",)
    optional_roles = ("lf_meta", "lf_bin", "ap_bin")

    def required_roles(self, session: Session, params: LfpParams) -> tuple[str, ...]:
        """The LF band; for probes without one (NP2.0), the AP band it is derived from."""
        if self.sources(session):
            return self.roles
        return (*self.roles, "lf_meta", "lf_bin")

    @staticmethod
    def sources(session: Session) -> dict[str, tuple[str, str]]:
        """``{probe: (bin role, meta role)}``: each probe's LF band, else (single-band probes
        such as NP2.0) its wide AP band."""
        out = {}
        for probe in session.probes:
            if _has_lf(session, probe):
                out[probe] = ("lf_bin", "lf_meta")
            elif session.has("ap_bin", probe=probe) and _single_band(session, probe):
                out[probe] = ("ap_bin", "ap_meta")
        return out

    def outputs(self, session: Session, params: LfpParams) -> list[Path]:
        return [_processed(session).lfp(p) for p in self.sources(session)]

    def run(self, session: Session, params: LfpParams) -> dict:
        """Each probe's LFP at 1 kHz on the probe clock (``imecN.lf``, or ``imecN.ap`` for a
        probe whose LFP comes from its AP band)."""
        from pixbin.clock import ClockMap, ap_stream, lf_stream
        from pixbin.lfp import run_lfp

        summaries = {}
        for probe, (bin_role, meta_role) in self.sources(session).items():
            stream = lf_stream(probe) if bin_role == "lf_bin" else ap_stream(probe)
            summaries[probe] = run_lfp(
                lf_bin=session.interim_path(bin_role, probe=probe),
                lf_meta=session.interim_path(meta_role, probe=probe),
                out_dir=session.processed_dir,
                params=params,
                stream=probe,
                clock_map=ClockMap.load(session.processed_dir, stream),
                probe_duration_s=_probe_duration_s(session),
            )
        return summaries


class PoseStage(Stage):
    name = "pose"
    Params = PoseParams
    upstream = ("sync",)
    roles = ("ap_meta", "camera", "camera_meta", "behaviour")

    def outputs(self, session: Session, params: PoseParams) -> list[Path]:
        files, camera = _processed(session), session.cameras[0]
        outputs = [files.frames_json(camera), files.frame_times(camera)]
        if params.dlc_output or params.dlc_config:
            outputs.append(files.pose(camera))
        return outputs

    def run(self, session: Session, params: PoseParams) -> dict:
        from pixbin.clock import BEHAVIOUR_STREAM, ClockMap
        from pixbin.pose import run_pose

        camera = session.cameras[0]
        return run_pose(
            camera_tdms=session.interim_path("camera", camera=camera),
            camera_meta_tdms=session.interim_path("camera_meta", camera=camera),
            behaviour_tdms=session.interim_path("behaviour"),
            clock_map=ClockMap.load(session.processed_dir, BEHAVIOUR_STREAM),
            probe_duration_s=_probe_duration_s(session),
            interim_dir=session.interim_dir,
            out_dir=session.processed_dir,
            params=params,
        )


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (ExtractStage(), SyncStage(), BehaviourStage(), SpikesStage(), LfpStage(),
                  PoseStage())
}
