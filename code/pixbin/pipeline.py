"""Run the stages of many sessions, resumably, on dask.distributed.

A stage is run for a session only when its last record (``processed/<S>/.records/<stage>.json``)
is missing, failed, was made with other parameters or another pixbin version, names inputs that
changed since (raw files by size + mtime, upstream stages by run id), or lists an output that is
gone. Records are written on success *and* on failure (with the message), so ``pixbin status``
and the next run know what happened without any state in memory.

Sessions are independent: each (session, stage) is one dask task whose upstream stages of the
same session are its dependencies. A failing stage marks its downstream stages "upstream failed"
and never stops the other sessions. ``scheduler="serial"`` runs everything in this process;
otherwise a ``LocalCluster`` sized to the machine is started, or an existing scheduler address is
used (any dask deployment: SSH, SLURM via dask-jobqueue, Kubernetes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixbin import __version__
from pixbin.errors import ConfigError, PixbinError
from pixbin.fileio import read_json, write_json, write_parquet
from pixbin.params import check_keys, field_names
from pixbin.session import Session, load_session

__all__ = [
    "STAGES",
    "PipelineConfig",
    "run_stage",
    "process_session",
    "process_sessions",
    "session_status",
    "status_table",
]

log = logging.getLogger(__name__)

RECORDS = ".records"


@dataclass(frozen=True)
class PipelineConfig:
    """Parameters of every stage, as plain mappings handed to each stage's own ``Params``.

    Loaded from YAML: top-level keys are stage names (``sync``, ``behaviour``, ``spikes``,
    ``lfp``, ``pose``); an unknown stage name is refused.
    """

    sync: dict = field(default_factory=dict)
    behaviour: dict = field(default_factory=dict)
    spikes: dict = field(default_factory=dict)
    lfp: dict = field(default_factory=dict)
    pose: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict | None) -> PipelineConfig:
        values = values or {}
        check_keys(values, sorted(field_names(cls)), what="pipeline section")
        return cls(**{k: dict(v or {}) for k, v in values.items()})

    def params(self, stage: str) -> dict:
        """The parameters of ``stage`` (empty for stages without any, like ``extract``)."""
        return dict(getattr(self, stage, None) or {})

    @classmethod
    def from_yaml(cls, path: str | Path | None) -> PipelineConfig:
        if path is None:
            return cls()
        import yaml

        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read pipeline config: {e}") from e
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of stage → parameters")
        return cls.from_dict(values)


# ----------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class Stage:
    """One stage: which raw roles it reads, which stages it follows, what it writes."""

    name: str
    roles: tuple[str, ...]
    optional_roles: tuple[str, ...]
    upstream: tuple[str, ...]
    outputs: Callable[[Session, dict], list[Path]]
    run: Callable[[Session, dict], dict]


def _probe_duration_s(session: Session, probe: str = "imec0") -> float:
    """Length of the probe's AP recording (samples counted from the interim .bin when there)."""
    from pixbin.spikeglx import stream_info

    return stream_info(session.interim_path("ap_meta", probe=probe)).duration_s


def _run_extract(session: Session, params: dict) -> dict:
    from pixbin.extract import extract_session

    manifest = extract_session(session)
    return {"files": len(manifest)}


def _run_sync(session: Session, params: dict) -> dict:
    from pixbin.sync import SyncParams, run_sync

    return run_sync(
        ap_meta=session.interim_path("ap_meta", probe="imec0"),
        lf_meta=session.interim_path("lf_meta", probe="imec0"),
        lf_bin=session.interim_path("lf_bin", probe="imec0"),
        behaviour_tdms=session.interim_path("behaviour"),
        out_dir=session.processed_dir,
        params=SyncParams.from_dict(params),
    )


def _run_behaviour(session: Session, params: dict) -> dict:
    from pixbin.behaviour import BehaviourParams, run_behaviour
    from pixbin.clock import ClockMap

    params = dict(params)
    task = params.pop("task", "leverpush")
    return run_behaviour(
        behaviour_tdms=session.interim_path("behaviour"),
        clock_map=ClockMap.load(session.processed_dir, "behaviour"),
        probe_duration_s=_probe_duration_s(session),
        out_dir=session.processed_dir,
        task=task,
        params=BehaviourParams.from_dict(params),
    )


def _run_spikes(session: Session, params: dict) -> dict:
    from pixbin.spikes import ProbeInput, SpikesParams, run_spikes

    params = dict(params)
    phy_folders = params.pop("phy_folders", {}) or {}
    probes = {}
    for probe in session.probes:
        if probe in phy_folders:
            folder = Path(str(phy_folders[probe]).format(session=session.session_id))
            folder = folder if folder.is_absolute() else session.data_root / folder
            ap_bin = (session.interim_path("ap_bin", probe=probe)
                      if session.has("ap_bin", probe=probe) else None)  # waveform metrics
            probes[probe] = ProbeInput(phy_folder=folder, ap_bin=ap_bin,
                                       ap_meta=session.interim_path("ap_meta", probe=probe))
        else:
            probes[probe] = ProbeInput(ap_bin=session.interim_path("ap_bin", probe=probe),
                                       ap_meta=session.interim_path("ap_meta", probe=probe))
    areas = session.raw_dir / "areas.csv" if session.has("areas") else None
    return run_spikes(probes=probes, out_dir=session.processed_dir, areas_table=areas,
                      params=SpikesParams.from_dict(params))


def _run_lfp(session: Session, params: dict) -> dict:
    from pixbin.lfp import LfpParams, run_lfp
    from pixbin.clock import ClockMap

    return run_lfp(
        lf_bin=session.interim_path("lf_bin", probe="imec0"),
        lf_meta=session.interim_path("lf_meta", probe="imec0"),
        out_dir=session.processed_dir,
        params=LfpParams.from_dict(params),
        clock_map=ClockMap.load(session.processed_dir, "imec0.lf"),
        probe_duration_s=_probe_duration_s(session),
    )


def _run_pose(session: Session, params: dict) -> dict:
    from pixbin.pose import PoseParams, run_pose
    from pixbin.clock import ClockMap

    params = dict(params)
    dlc_output = params.pop("dlc_output", None)
    dlc_config = params.pop("dlc_config", None)
    camera = session.cameras[0]
    return run_pose(
        camera_tdms=session.interim_path("camera", camera=camera),
        camera_meta_tdms=session.interim_path("camera_meta", camera=camera),
        behaviour_tdms=session.interim_path("behaviour"),
        clock_map=ClockMap.load(session.processed_dir, "behaviour"),
        probe_duration_s=_probe_duration_s(session),
        interim_dir=session.interim_dir,
        out_dir=session.processed_dir,
        params=PoseParams.from_dict(params),
        dlc_output=dlc_output,
        dlc_config=dlc_config,
    )


def _files(*names: str) -> Callable[[Session, dict], list[Path]]:
    return lambda s, params: [s.processed_dir / n for n in names]


def _pose_outputs(session: Session, params: dict) -> list[Path]:
    camera = session.cameras[0]
    outputs = [session.processed_dir / f"{camera}_frames.json"]
    if params.get("dlc_output") or params.get("dlc_config"):
        outputs.append(session.processed_dir / f"{camera}_pose.h5")
    return outputs


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage("extract", (), (), (), lambda s, _: [s.interim_dir / "manifest.json"], _run_extract),
        Stage("sync", ("ap_meta", "lf_meta", "lf_bin", "behaviour"), (), ("extract",),
              _files("sync.json", "lag.json", "sync_0.png"), _run_sync),
        Stage("behaviour", ("ap_meta", "behaviour"), (), ("sync",),
              _files("action_labels_0.npy", "events.parquet", "trials.parquet"), _run_behaviour),
        Stage("spikes", ("ap_meta", "ap_bin"), ("areas",), ("extract",),
              _files("units.parquet", "spikes.h5"), _run_spikes),
        Stage("lfp", ("ap_meta", "lf_meta", "lf_bin"), (), ("sync",),
              _files("imec0.lf_processed.h5"), _run_lfp),
        Stage("pose", ("ap_meta", "camera", "camera_meta", "behaviour"), (), ("sync",),
              _pose_outputs, _run_pose),
    ]
}


# ----------------------------------------------------------------------------- records
def _record_path(session: Session, stage: str) -> Path:
    return session.processed_dir / RECORDS / f"{stage}.json"


def _read_record(session: Session, stage: str) -> dict | None:
    path = _record_path(session, stage)
    try:
        return read_json(path) if path.exists() else None
    except json.JSONDecodeError:
        return None


def _params_hash(params: dict) -> str:
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _missing_roles(session: Session, stage: Stage, params: dict) -> list[str]:
    roles = list(stage.roles)
    if stage.name == "spikes":
        phy = (params.get("phy_folders") or {})
        roles = [r for r in roles if not (r == "ap_bin" and all(p in phy for p in session.probes))]
    return [r for r in roles if not session.has(r)]


def _inputs_signature(session: Session, stage: Stage, params: dict) -> dict:
    wanted = set(stage.roles) | set(stage.optional_roles)
    raw = {
        f.name: [f.raw_path.stat().st_size, f.raw_path.stat().st_mtime_ns]
        for f in session.files
        if stage.name == "extract" or f.role in wanted
    }
    upstream = {}
    for name in stage.upstream:
        record = _read_record(session, name) or {}
        upstream[name] = record.get("run_id")
    return {"raw": raw, "upstream": upstream}


def _is_current(session: Session, stage: Stage, params: dict) -> bool:
    record = _read_record(session, stage.name)
    if not record or record.get("status") != "done":
        return False
    if record.get("params_hash") != _params_hash(params):
        return False
    if record.get("pixbin_version") != __version__:
        return False
    if record.get("inputs") != _inputs_signature(session, stage, params):
        return False
    return all(p.exists() for p in stage.outputs(session, params))


def run_stage(session: Session, stage_name: str, params: dict, *, force: bool = False) -> dict:
    """Run one stage for one session unless it is current; never raises for stage failures.

    Returns the stage record: ``status`` is ``done``, ``skipped`` (already current),
    ``error`` (with ``error`` and ``traceback``) or ``missing input``.
    """
    stage = STAGES[stage_name]
    missing = _missing_roles(session, stage, params)
    if missing:
        return {"stage": stage_name, "status": "missing input", "missing": missing}
    if not force and _is_current(session, stage, params):
        log.info("%s/%s: up to date", session.session_id, stage_name)
        return {**(_read_record(session, stage_name) or {}), "status": "skipped"}
    if stage_name != "extract":
        from pixbin.extract import extract_session

        extract_session(session, roles=set(stage.roles) | set(stage.optional_roles))
    log.info("%s/%s: running", session.session_id, stage_name)
    started = time.time()
    record: dict[str, Any] = {
        "stage": stage_name,
        "session": session.session_id,
        "params": params,
        "params_hash": _params_hash(params),
        "pixbin_version": __version__,
        "inputs": _inputs_signature(session, stage, params),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
    }
    try:
        summary = stage.run(session, params)
        record.update(status="done", summary=summary, run_id=uuid.uuid4().hex,
                      outputs=[str(p) for p in stage.outputs(session, params)])
    except Exception as e:  # noqa: BLE001 - a stage failure is recorded, not raised
        kind = "" if isinstance(e, PixbinError) else f"{type(e).__name__}: "
        record.update(status="error", error=f"{kind}{e}", traceback=traceback.format_exc())
        log.error("%s/%s failed: %s%s", session.session_id, stage_name, kind, e)
    record["duration_s"] = round(time.time() - started, 3)
    write_json(_record_path(session, stage_name), record)
    return record


def _ordered(stages: Iterable[str]) -> list[str]:
    wanted = set(stages)
    unknown = wanted - set(STAGES)
    if unknown:
        raise ConfigError(f"unknown stage(s) {sorted(unknown)}; valid: {list(STAGES)}")
    return [name for name in STAGES if name in wanted]


def process_session(data_root: str | Path, session_id: str, config: PipelineConfig,
                    stages: Iterable[str] | None = None, force: Iterable[str] = ()) -> dict:
    """Run the stages of one session in order (serially); return ``{stage: record}``."""
    session = load_session(data_root, session_id)
    results: dict[str, dict] = {}
    for name in _ordered(stages or STAGES):
        failed = [u for u in STAGES[name].upstream
                  if results.get(u, {}).get("status") in ("error", "upstream failed",
                                                          "missing input")]
        if failed:
            results[name] = {"stage": name, "status": "upstream failed", "upstream": failed}
            continue
        results[name] = run_stage(session, name, config.params(name),
                                  force=name in set(force))
    return results


def _stage_task(data_root: str, session_id: str, name: str, params: dict, force: bool,
                *upstream: dict) -> dict:
    """One dask task: run ``name`` unless an upstream record failed."""
    failed = [u["stage"] for u in upstream
              if u.get("status") in ("error", "upstream failed", "missing input")]
    if failed:
        return {"stage": name, "status": "upstream failed", "upstream": failed}
    logging.basicConfig(level=logging.INFO)
    return run_stage(load_session(data_root, session_id), name, params, force=force)


def process_sessions(
    data_root: str | Path,
    session_ids: list[str],
    config: PipelineConfig,
    *,
    stages: Iterable[str] | None = None,
    force: Iterable[str] = (),
    scheduler: str | None = None,
    n_workers: int | None = None,
    on_result: Callable[[str, str, dict], None] | None = None,
) -> dict[str, dict[str, dict]]:
    """Process many sessions; return ``{session: {stage: record}}``.

    ``scheduler``: ``"serial"`` (in this process), ``None`` (a LocalCluster with ``n_workers``
    single-threaded worker processes, default: one per core) or a scheduler address.
    ``on_result(session, stage, record)`` is called as each stage finishes (progress bars).
    """
    names = _ordered(stages or STAGES)
    force = set(force)
    data_root = str(Path(data_root).resolve())
    if scheduler == "serial":
        results = {}
        for sid in session_ids:
            results[sid] = process_session(data_root, sid, config, names, force)
            if on_result:
                for name, record in results[sid].items():
                    on_result(sid, name, record)
        return results

    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        import os

        cluster = LocalCluster(n_workers=n_workers or os.cpu_count() or 1, threads_per_worker=1,
                               processes=True, dashboard_address=None)
        client = Client(cluster)
    else:
        client = Client(scheduler)
    try:
        futures = {}
        for sid in session_ids:
            for name in names:
                upstream = [futures[(sid, u)] for u in STAGES[name].upstream
                            if (sid, u) in futures]
                futures[(sid, name)] = client.submit(
                    _stage_task, data_root, sid, name, config.params(name),
                    name in force, *upstream, key=f"pixbin-{sid}-{name}-{uuid.uuid4().hex[:6]}",
                    pure=False,
                )
        keys = {f.key: k for k, f in futures.items()}
        results: dict[str, dict[str, dict]] = {sid: {} for sid in session_ids}
        for future in as_completed(list(futures.values())):
            sid, name = keys[future.key]
            try:
                record = future.result()
            except Exception as e:  # noqa: BLE001 - a worker crash must not stop the others
                record = {"stage": name, "status": "error", "error": f"worker: {e}"}
            results[sid][name] = record
            if on_result:
                on_result(sid, name, record)
        return results
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# ----------------------------------------------------------------------------- status
def session_status(session: Session, config: PipelineConfig | None = None) -> dict[str, str]:
    """One cell per stage: ``done``, ``stale``, ``error: <message>``, ``missing input``,
    ``not run``."""
    config = config or PipelineConfig()
    row = {}
    for name, stage in STAGES.items():
        params = config.params(name)
        record = _read_record(session, name)
        if _missing_roles(session, stage, params):
            row[name] = "missing input"
        elif record is None:
            row[name] = "not run"
        elif record.get("status") == "error":
            row[name] = f"error: {record.get('error', '')}"
        elif _is_current(session, stage, params):
            row[name] = "done"
        else:
            row[name] = "stale"
    return row


def status_table(data_root: str | Path, config: PipelineConfig | None = None,
                 *, save: bool = True):
    """The session × stage table (pandas DataFrame); saved as
    ``processed/sessions.parquet`` when ``save``."""
    import pandas as pd

    from pixbin.session import find_sessions

    rows = []
    for session in find_sessions(data_root):
        rows.append({"session": session.session_id, **session_status(session, config)})
    table = pd.DataFrame(rows, columns=["session", *STAGES])
    if save:
        write_parquet(Path(data_root) / "processed" / "sessions.parquet", table)
    return table
