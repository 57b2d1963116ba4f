"""Run the stages of many sessions, resumably, on dask.distributed.

A stage is run for a session only when its last record (``processed/<S>/.records/<stage>.json``)
is missing, failed, was made with other parameters or another pixbin version, names inputs that
changed since (raw files by content sha256, cached against size + mtime; upstream stages by run
id, except extract, whose outputs are regenerable and count by the content of its inputs), or lists
an output that is gone. So deleting ``interim/``, or copying ``data/`` without keeping mtimes,
makes nothing stale but extract itself. Records are written on success *and* on failure (with the message), so ``pixbin status``
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
import os
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixbin import __version__, layout
from pixbin.errors import ConfigError, PixbinError
from pixbin.fileio import (
    read_json,
    remove_stale_temporaries,
    sha256_file,
    stage_run,
    write_json,
    write_parquet,
)
from pixbin.params import check_keys, params_from_dict, params_hash, params_to_dict
from pixbin.session import Session, load_session
from pixbin.stage_log import stage_log
from pixbin.stages import STAGES, Stage

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

#: Record states after which the stages downstream cannot run.
#: A stage's status (and, followed by ": <roles>", its status cell) when raw files it needs are absent.
MISSING_INPUT = "missing input"
FAILED = ("error", "upstream failed", MISSING_INPUT)



@dataclass(frozen=True)
class PipelineConfig:
    """The parameters of every stage, each a typed, validated ``Params`` of :data:`STAGES`.

    Loaded from YAML: top-level keys are stage names (``sync``, ``behaviour``, ``spikes``,
    ``lfp``, ``pose``); an unknown stage name, an unknown key or a value of the wrong type is
    refused naming the file, the section and the key.
    """

    stage_params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, source: str = "pipeline config"
                  ) -> PipelineConfig:
        values = {} if values is None else values
        check_keys(values, list(STAGES), what="pipeline section", where=source)
        return cls({name: params_from_dict(stage.Params, values.get(name) or {},
                                           what=f"{name} parameter", where=f"{source} [{name}]")
                    for name, stage in STAGES.items()})

    def params(self, stage: str) -> Any:
        """The ``Params`` of ``stage`` (its defaults when the config has no section for it)."""
        found = self.stage_params.get(stage)
        return found if found is not None else STAGES[stage].Params()

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
        return cls.from_dict(values, source=str(path))


# ----------------------------------------------------------------------------- records
def _read_record(session: Session, stage: str) -> dict | None:
    path = layout.Processed(session.processed_dir).record(stage)
    try:
        return read_json(path) if path.exists() else None
    except json.JSONDecodeError:
        return None


def _missing_roles(session: Session, stage: Stage, params: Any) -> list[str]:
    return [r for r in stage.required_roles(session, params) if not session.has(r)]


def _raw_digests(session: Session, files: list) -> dict[str, str]:
    """sha256 of each raw file's content, cached against its size + mtime in interim/ (so a copy
    with new mtimes re-hashes once and keeps its state; deleting interim/ only costs a re-hash)."""
    cache_path = session.interim_dir / layout.RAW_DIGESTS
    try:
        cache = read_json(cache_path) if cache_path.is_file() else {}
    except (json.JSONDecodeError, OSError):
        cache = {}
    digests, changed = {}, False
    for f in files:
        parts = f.parts or (f,)  # a file joined from triggers: each trigger's digest
        for part in parts:
            stat = part.raw_path.stat()
            entry = cache.get(part.name) or {}
            if entry.get("size") != stat.st_size or entry.get("mtime_ns") != stat.st_mtime_ns:
                entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                         "sha256": sha256_file(part.raw_path)}
                cache[part.name], changed = entry, True
        digests[f.name] = "+".join(cache[part.name]["sha256"] for part in parts)
    if changed:
        try:
            write_json(cache_path, cache)
        except OSError as e:  # a cache only: a read-only interim/ costs a re-hash next time
            log.warning("%s: cannot cache raw digests (%s)", cache_path, e)
    return digests


def _upstream_key(record: dict) -> str | None:
    """What a downstream stage depends on: the content key of a stage whose outputs are
    regenerable from raw alone (extract), else the run id of the upstream run."""
    return record.get("content_key") or record.get("run_id")


def _inputs_signature(session: Session, stage: Stage, params: Any) -> dict:
    raw = _raw_digests(session, [f for f in session.files if stage.reads_role(f.role)])
    upstream = {name: _upstream_key(_read_record(session, name) or {})
                for name in stage.upstream_of(session)}
    signature = {"raw": raw, "upstream": upstream}
    curation = _curation_digests(session, stage, params)
    if curation:
        signature["curation"] = curation
    return signature


def _curation_digests(session: Session, stage: Stage, params: Any) -> dict[str, str]:
    """sha256 of the files a person edits that the stage reads (e.g. phy curation), by path
    relative to ``data/``; an edit makes the stage stale."""
    return {os.path.relpath(p, session.data_root): sha256_file(p)
            for p in stage.curation_inputs(session, params) if p.is_file()}


def _is_current(session: Session, stage: Stage, params: Any) -> bool:
    record = _read_record(session, stage.name)
    if not record or record.get("status") != "done":
        return False
    if record.get("params_hash") != params_hash(params):
        return False
    if record.get("pixbin_version") != __version__:
        return False
    if record.get("inputs") != _inputs_signature(session, stage, params):
        return False
    return all(p.exists() for p in stage.outputs(session, params))


def run_stage(session: Session, stage_name: str, params: Any, *, force: bool = False) -> dict:
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
    stage.prepare(session)
    for folder in (session.processed_dir, session.interim_dir):
        for path in remove_stale_temporaries(folder):
            log.warning("%s: removed %s, left by a run that was killed", session.session_id, path)
    log.info("%s/%s: running", session.session_id, stage_name)
    started = time.time()
    record: dict[str, Any] = {
        "stage": stage_name,
        "session": session.session_id,
        "params": params_to_dict(params),
        "params_hash": params_hash(params),
        "pixbin_version": __version__,
        "inputs": _inputs_signature(session, stage, params),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
    }
    run_id = uuid.uuid4().hex
    log_path = layout.Processed(session.processed_dir).stage_log(stage_name)
    with stage_log(log_path) as logged:
        try:
            with stage_run(stage_name, run_id):
                summary = stage.run(session, params)
            curation = _curation_digests(session, stage, params)  # the stage may write them
            record["inputs"].pop("curation", None)
            if curation:
                record["inputs"]["curation"] = curation
            record.update(status="done", summary=summary, run_id=run_id,
                          outputs=[os.path.relpath(p, session.data_root)  # portable with data/
                                   for p in stage.outputs(session, params)])
            if stage.regenerable:
                key = json.dumps([record["inputs"], record["params_hash"], __version__], sort_keys=True)
                record["content_key"] = hashlib.sha256(key.encode()).hexdigest()[:16]
        except Exception as e:  # noqa: BLE001 - a stage failure is recorded, not raised
            kind = "" if isinstance(e, PixbinError) else f"{type(e).__name__}: "
            record.update(status="error", error=f"{kind}{e}", traceback=traceback.format_exc())
            log.error("%s/%s failed: %s%s", session.session_id, stage_name, kind, e)
    record["log"] = logged.summary(session.data_root)
    record["duration_s"] = round(time.time() - started, 3)
    path = layout.Processed(session.processed_dir).record(stage_name)
    try:
        write_json(path, record)
    except OSError as e:  # e.g. a full disk: report it, never crash on the way out
        log.error("%s: cannot write the stage record (%s); the %s stage's result is %s",
                  path, e.strerror or e, stage_name, record["status"])
        record = {**record, "status": "error",
                  "error": f"{record.get('error') or 'done'}; and the record {path} could not "
                           f"be written ({e.strerror or e})"}
    return record


def _ordered(stages: Iterable[str]) -> list[str]:
    wanted = set(stages)
    unknown = wanted - set(STAGES)
    if unknown:
        raise ConfigError(f"unknown stage(s) {sorted(unknown)}; valid: {list(STAGES)}")
    return [name for name in STAGES if name in wanted]


def process_session(data_root: str | Path, session_id: str, config: PipelineConfig,
                    stages: Iterable[str] | None = None, force: Iterable[str] = (),
                    on_result: Callable[[str, str, dict], None] | None = None) -> dict:
    """Run the stages of one session in order (serially); return ``{stage: record}``.
    ``on_result(session, stage, record)`` is called as each stage finishes."""
    session = load_session(data_root, session_id)
    results: dict[str, dict] = {}
    for name in _ordered(stages or STAGES):
        failed = [u for u in STAGES[name].upstream_of(session)
                  if results.get(u, {}).get("status") in FAILED]
        if failed:
            results[name] = {"stage": name, "status": "upstream failed", "upstream": failed}
        else:
            results[name] = run_stage(session, name, config.params(name),
                                      force=name in set(force))
        if on_result:
            on_result(session_id, name, results[name])
    return results


def _stage_task(data_root: str, session_id: str, name: str, params: Any, force: bool,
                *upstream: dict) -> dict:
    """One dask task: run ``name`` unless an upstream record failed."""
    failed = [u["stage"] for u in upstream if u.get("status") in FAILED]
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
            results[sid] = process_session(data_root, sid, config, names, force, on_result)
        return results

    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=n_workers or os.cpu_count() or 1, threads_per_worker=1,
                               processes=True, dashboard_address=None)
        client = Client(cluster)
    else:
        client = Client(scheduler)
    try:
        futures = {}
        for sid in session_ids:
            try:
                session = load_session(data_root, sid)
            except PixbinError:  # its tasks record the error; order them by the plain upstream
                session = None
            for name in names:
                stage = STAGES[name]
                wanted = stage.upstream if session is None else stage.upstream_of(session)
                upstream = [futures[(sid, u)] for u in wanted if (sid, u) in futures]
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
def _recorded_params(stage: Stage, record: dict | None) -> Any:
    """The parameters a stage last ran with (its defaults when it never ran or they no longer
    parse, e.g. after an upgrade renamed a key: then the stage shows ``stale``)."""
    if record and isinstance(record.get("params"), dict):
        try:
            return params_from_dict(stage.Params, record["params"], what=f"{stage.name} parameter")
        except ConfigError:
            pass
    return stage.Params()


def session_status(session: Session, config: PipelineConfig | None = None) -> dict[str, str]:
    """One cell per stage: ``done``, ``done except <probe>: <error>`` (a stage that went on
    without a failed probe; the session is not binned), ``stale``, ``error: <message>``,
    ``missing input: <roles>``, ``not run``.

    With ``config``, ``done`` means current for those parameters; without, for the parameters
    each stage last ran with (its record), so a session processed with a ``pipeline.yaml`` is
    ``done`` without repeating it.
    """
    row = {}
    for name, stage in STAGES.items():
        record = _read_record(session, name)
        params = config.params(name) if config is not None else _recorded_params(stage, record)
        missing = _missing_roles(session, stage, params)
        if missing:
            row[name] = f"{MISSING_INPUT}: {', '.join(missing)}"
        elif record is None:
            row[name] = "not run"
        elif record.get("status") == "error":
            row[name] = f"error: {record.get('error', '')}"
        elif _is_current(session, stage, params):
            failed = (record.get("summary") or {}).get("failed_probes") or {}
            row[name] = ("done" if not failed else
                         "done except " + "; ".join(f"{p}: {e}" for p, e in sorted(failed.items())))
        else:
            row[name] = "stale"
    return row


def build_blockers(row: Mapping[str, str]) -> dict[str, str]:
    """Why a session (a row of :func:`status_table`) must not be binned: ``{stage: state}`` for
    every stage that is not ``done`` (``missing input`` is fine for stages the dataset can do
    without, such as LFP on a probe without an LF band; extract's outputs are regenerable and
    never block). Empty: ready."""
    blockers = {}
    for name, stage in STAGES.items():
        state = row.get(name, "not run")
        if stage.regenerable or state == "done":
            continue
        if state.startswith(MISSING_INPUT) and not stage.needed_by_dataset:
            continue
        blockers[name] = state
    return blockers


def status_table(data_root: str | Path, config: PipelineConfig | None = None,
                 *, save: bool = False):
    """The session × stage table (pandas DataFrame), one row per session folder: a folder that
    cannot be read has ``error: <why>`` under ``extract`` and ``upstream failed`` after it.
    Saved as ``processed/sessions.parquet`` when ``save`` (``pixbin process`` does; ``pixbin
    status`` only reads)."""
    import pandas as pd

    from pixbin.session import scan_sessions

    sessions, problems = scan_sessions(data_root)
    rows = [{"session": s.session_id, **session_status(s, config)} for s in sessions]
    first = next(iter(STAGES))
    for name, message in problems.items():
        rows.append({"session": name, **{stage: "upstream failed" for stage in STAGES},
                     first: f"error: {message}"})
    table = pd.DataFrame(sorted(rows, key=lambda r: r["session"]), columns=["session", *STAGES])
    if save:
        write_parquet(layout.sessions_table(Path(data_root)), table)
    return table
