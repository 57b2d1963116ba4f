"""The ``pixbin`` command.

Subcommands are thin: each parses its arguments, sets up logging and progress, and calls one
public function of the stage module that does the work.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pixbin import __version__, layout
from pixbin.errors import PixbinError
from pixbin.progress import NO_PROGRESS_ENV

__all__ = ["main", "build_parser"]

log = logging.getLogger("pixbin")


def _cmd_simulate(args: argparse.Namespace) -> int:
    from pixbin.simulate import SimulationParams, simulate_session

    params = SimulationParams(
        session_id=args.session_id,
        duration_s=args.duration_s,
        seed=args.seed,
        n_units=args.n_units,
        drift_ppm=args.drift_ppm,
        offset_s=args.offset_s,
        behaviour_tail_s=args.behaviour_tail_s,
        dropped_pulses=args.dropped_pulses,
        dropped_frames=args.dropped_frames,
        opto=args.opto,
        write_ap=not args.no_ap,
        compress=not args.no_compress,
        probes=tuple(args.probes),
        probe_drift_ppm=tuple(args.probe_drift_ppm or ()),
    )
    path = simulate_session(args.data, params, progress=log.info)
    log.info("the simulated sync pulser starts and stops with the probe file: process with a "
             "pipeline.yaml holding `sync: {train_within_probe: true}` (docs/SYNC.md section 3)")
    print(path)
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from pixbin.extract import extract_session, verify_interim
    from pixbin.session import find_sessions

    for session in find_sessions(args.data, args.sessions or None):
        manifest = extract_session(session)
        problems = verify_interim(session) if args.verify else []
        for problem in problems:
            log.error(problem)
        print(f"{session.session_id}: {len(manifest)} files in {session.interim_dir}"
              + (f", {len(problems)} problem(s)" if problems else ""))
        if problems:
            return 1
    return 0


def _progress_callback(total: int, quiet: bool):
    """A tqdm bar over (session, stage) results, or a log line per result when quiet/CI."""
    import os

    from tqdm import tqdm

    bar = tqdm(total=total, unit="stage", disable=quiet or bool(os.environ.get("CI")))

    def on_result(session: str, stage: str, record: dict) -> None:
        bar.update(1)
        bar.set_postfix_str(f"{session}/{stage}: {record.get('status')}")
        if record.get("status") == "error":
            log.error("%s/%s: %s", session, stage, record.get("error"))
        elif record.get("status") == "missing input":
            log.warning("%s/%s: missing input: %s (no such file in raw/%s)", session, stage,
                        ", ".join(record.get("missing", [])), session)

    return bar, on_result


def _record_with_datalad(data: Path, paths: list[str], message: str, parameters: dict) -> None:
    """Save ``paths`` of the DataLad dataset ``data`` with the command and parameters.

    Versioning never undoes finished processing: when DataLad cannot save (no git identity,
    git-annex missing, ``data/`` inside another repository), the reason is logged as a warning
    with what to do, and the outputs stay where they are.
    """
    from pixbin.versioning import save
    from pixbin.versioning_datalad import VersioningError

    try:
        result = save(data, paths, message, command=sys.argv, parameters=parameters)
    except VersioningError as e:
        log.warning("outputs not versioned: %s (re-run with --no-save to silence)", e)
        return
    if result:
        log.info("recorded in DataLad: %s", result.get("commit", "")[:10])


def _save_raw(data: Path, ids: list[str]) -> None:
    """Register the sessions' raw folders in DataLad (so a clone can ``datalad get`` them); a
    failure is a warning."""
    from pixbin.versioning import save_raw
    from pixbin.versioning_datalad import VersioningError

    try:
        commits = save_raw(data, ids)
    except VersioningError as e:
        log.warning("raw data not registered in DataLad: %s (re-run with --no-save to silence)", e)
        return
    if commits:
        log.info("registered the raw data of %d session folder(s) in DataLad", len(commits))


def _record_stage_runs(data: Path, results: dict, config: Path | None) -> None:
    """One DataLad run commit per stage that ran (``datalad rerun`` repeats it); as
    :func:`_record_with_datalad`, a failure to record is a warning, never a lost output."""
    from pixbin.versioning import record_stage_runs
    from pixbin.versioning_datalad import VersioningError

    try:
        commits = record_stage_runs(data, results, config)
    except VersioningError as e:
        log.warning("stage runs not recorded: %s (re-run with --no-save to silence)", e)
        return
    if commits:
        log.info("recorded %d stage run(s) in DataLad (datalad rerun <commit> repeats one)", len(commits))


def _record_build_run(data: Path, ids: list[str], config: Path | None) -> None:
    """The build as a DataLad run commit (``datalad rerun`` builds it again); a failure to
    record is a warning, never a lost output."""
    from pixbin.versioning import record_build_run
    from pixbin.versioning_datalad import VersioningError

    try:
        made = record_build_run(data, ids, config)
    except VersioningError as e:
        log.warning("build not recorded: %s (re-run with --no-save to silence)", e)
        return
    if made:
        log.info("recorded in DataLad: %s (datalad rerun repeats the build)", made["commit"][:10])


def _locked(command: str):
    """Run a command that writes data/ under the data/ lock (one writer at a time)."""
    def wrap(func):
        def run(args: argparse.Namespace) -> int:
            from pixbin.fileio import data_lock
            from pixbin.layout import lock_file

            with data_lock(lock_file(args.data), command):
                return func(args)
        return run
    return wrap


@_locked("pixbin process")
def _cmd_process(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from pixbin.pipeline import STAGES, PipelineConfig, process_sessions, status_table
    from pixbin.session import load_session, scan_sessions

    config = PipelineConfig.from_yaml(args.config)
    if args.sessions:
        ids = [load_session(args.data, s).session_id for s in args.sessions]
        problems = {}
    else:
        sessions, problems = scan_sessions(args.data)
        ids = [s.session_id for s in sessions]
    for name, message in problems.items():
        log.error("session %s cannot be processed: %s", name, message)
    stages = args.stages or list(STAGES)
    scheduler = "serial" if args.serial else args.scheduler
    bar, on_result = _progress_callback(len(ids) * len(stages), args.quiet)
    with bar, logging_redirect_tqdm():  # log lines print above the bar, not through it
        results = process_sessions(args.data, ids, config, stages=stages, force=args.force,
                                   scheduler=scheduler, n_workers=args.workers,
                                   on_result=on_result)
    try:
        table = status_table(args.data, config, save=True)
    except OSError as e:  # e.g. a full disk: the stages' results stand, only the table is unsaved
        log.error("cannot save %s (%s); the stage records hold the results",
                  layout.processed_root(args.data) / "sessions.parquet", e.strerror or e)
        table = status_table(args.data, config)
    print(table.to_string(index=False))
    _print_sync_warnings(args.data, table)
    if not args.no_save:
        _save_raw(args.data, ids)
        _record_stage_runs(args.data, results, args.config)
        _record_with_datalad(args.data, ["processed"], "pixbin process",
                             {"sessions": ids, "stages": stages, "config": str(args.config)})
    failed = [(sid, st) for sid, rec in results.items() for st, r in rec.items()
              if r.get("status") in ("error", "upstream failed")
              or (r.get("status") == "missing input" and STAGES[st].needed_by_dataset)]
    return 1 if failed or problems else 0


def _cmd_status(args: argparse.Namespace) -> int:
    from pixbin.pipeline import PipelineConfig, status_table

    # without --config, each stage is judged by the parameters it last ran with
    table = status_table(args.data, PipelineConfig.from_yaml(args.config) if args.config else None)
    print(table.to_string(index=False) if len(table) else "no sessions in " + str(args.data))
    _print_sync_warnings(args.data, table)
    return 0


def _print_sync_warnings(data: Path, table) -> None:
    """Under the status table: the warnings of each session's sync.json whose sync is done (an
    alignment chosen without proof, a probe or NIDQ without a map), so a pass is never silent."""
    from pixbin.errors import PixbinError
    from pixbin.readers import read_sync

    lines = []
    for sid in table.loc[table["sync"] == "done", "session"] if len(table) else []:
        try:
            warnings = read_sync(layout.processed_dir(Path(data), sid)).get("warnings") or []
        except PixbinError as e:
            warnings = [f"sync.json unreadable: {e}"]
        lines += [f"  {sid}: {w}" for w in warnings]
    if lines:
        print("sync warnings (see each session's processed/<session>/sync.json):")
        print("\n".join(lines))


@_locked("pixbin build")
def _cmd_build(args: argparse.Namespace) -> int:
    from pixbin.dataset import DatasetConfig, build_dataset
    from pixbin.pipeline import build_blockers, status_table

    config = DatasetConfig.from_yaml(args.config) if args.config else DatasetConfig.default()
    table = status_table(args.data)
    wanted = set(args.sessions) if args.sessions else None
    unknown = sorted((wanted or set()) - set(table["session"]))
    if unknown:
        log.error("no such session(s) in %s: %s", layout.raw_root(args.data), unknown)
        return 2
    ids, left_out = [], {}
    for row in table.to_dict("records"):
        if wanted is not None and row["session"] not in wanted:
            continue
        blockers = build_blockers(row)
        if blockers:
            left_out[row["session"]] = blockers
            log.warning("%s left out of the build: %s", row["session"],
                        "; ".join(f"{k}: {v}" for k, v in blockers.items()))
        else:
            ids.append(row["session"])
    if left_out and args.strict:
        log.error("--strict: %d session(s) not ready, nothing built", len(left_out))
        return 1
    if not ids:
        log.error("no session is ready to build (every stage done); run `pixbin process`")
        return 1
    manifest = build_dataset(layout.processed_root(args.data), ids, layout.binned_dir(args.data), config,
                             left_out=left_out)
    for action in manifest.get("actions", []):
        print(action if isinstance(action, str) else action.get("name", action))
    if not args.no_save:
        _record_build_run(args.data, ids, args.config)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pixbin.binned_read import export_npy

    paths = export_npy(args.action, args.area, args.out_path, data=args.data_var,
                       in_path=args.in_path, sessions=args.sessions or None)
    for path in paths:
        print(path)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """simulate → process → build → export → report, on one generated session."""
    import importlib.util

    import yaml

    from pixbin.fileio import atomic_path
    from pixbin.simulate import SIMULATED_RIG_CONFIG, simulate_session, write_ground_truth_dlc

    data = args.data
    session_id = "240101_SIM01"
    if not layout.raw_dir(data, session_id).exists():
        simulate_session(data, session_id=session_id, duration_s=args.duration_s, seed=0,
                         progress=log.info)
    # the demo has no trained DeepLabCut project: its pose is the simulator's marker truth
    demo_dir = Path(data) / "demo"
    dlc = write_ground_truth_dlc(layout.raw_dir(data, session_id),
                                 demo_dir / "USB_CameraDLC_ground_truth.csv").resolve()
    if importlib.util.find_spec("deeplabcut") is None:
        log.info("no DeepLabCut: pose from the simulator's marker truth, imported as a DLC output")
    else:
        log.info("DeepLabCut is installed but the demo has no trained project: pose from the "
                 "simulator's marker truth, imported as a DLC output")
    config = demo_dir / "pipeline.yaml"
    with atomic_path(config) as tmp:
        tmp.write_text(yaml.safe_dump({**SIMULATED_RIG_CONFIG, "pose": {"dlc_output": str(dlc)}}))
    common = ["--data", str(data)] + (["--no-save"] if args.no_save else [])
    steps = [
        ["process", session_id, "--serial", "--config", str(config), *common],
        ["build", *common],
        ["export", "rewarded_push", "CP", str(layout.exports_dir(data)), "--in-path",
         str(layout.binned_dir(data))],
        ["report", session_id, "--data", str(data)],
    ]
    for step in steps:
        log.info("pixbin %s", " ".join(step))
        code = main(step)
        if code:
            return code
    report = layout.processed_dir(data, session_id) / "report" / "index.html"
    print(f"done: binned tensors in {layout.binned_dir(data)}, .npy exports in {layout.exports_dir(data)}")
    print(f"report: {report}")
    return 0


def _cmd_export_nwb(args: argparse.Namespace) -> int:
    """Write one session as an NWB file (docs/NWB.md)."""
    from pixbin.nwb import export_nwb

    print(export_nwb(args.data, args.session, args.out, include_lfp=args.lfp))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    """Write the HTML report of sessions (default: every processed one) and the dataset page."""
    from pixbin.report import write_report

    for path in write_report(args.data, args.sessions or None):
        print(path)
    return 0


def _add_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="write a simulated raw session with ground truth")
    p.add_argument("--data", type=Path, default=Path("data"), help="data folder (default: data)")
    p.add_argument("--session-id", default="240101_SIM01", help="YYMMDD_mouseID[_extra]")
    p.add_argument("--duration-s", type=float, default=60.0, help="probe recording length (s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-units", type=int, default=48)
    p.add_argument("--drift-ppm", type=float, default=20.0,
                   help="behaviour clock drift relative to the probe (ppm)")
    p.add_argument("--offset-s", type=float, default=-2.5,
                   help="probe time of the first behaviour sample (negative: behaviour first)")
    p.add_argument("--behaviour-tail-s", type=float, default=1.5,
                   help="behaviour recording after the probe stops (s)")
    p.add_argument("--dropped-pulses", type=int, default=2)
    p.add_argument("--dropped-frames", type=int, default=3)
    p.add_argument("--opto", action="store_true", help="add shutter/laser channels")
    p.add_argument("--no-ap", action="store_true", help="skip the AP band (LF only)")
    p.add_argument("--no-compress", action="store_true", help="leave files uncompressed")
    p.add_argument("--probes", nargs="+", default=["NP1.0"], choices=["NP1.0", "NP2.0"],
                   help="probe types of imec0, imec1, ... (default: one NP1.0)")
    p.add_argument("--probe-drift-ppm", nargs="+", type=float,
                   help="clock drift of imec1, ... against imec0 (ppm; default -40 each)")
    p.set_defaults(func=_cmd_simulate)


def _add_extract(sub) -> None:
    p = sub.add_parser("extract", help="raw → interim (safe, verified, resumable)")
    p.add_argument("sessions", nargs="*", help="session ids (default: all in data/raw)")
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--verify", action="store_true", help="re-hash interim files after")
    p.set_defaults(func=_cmd_extract)


def _add_process(sub) -> None:
    p = sub.add_parser("process", help="run the stages of sessions (dask.distributed)")
    p.add_argument("sessions", nargs="*", help="session ids (default: all in data/raw)")
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--config", type=Path, help="pipeline YAML (stage → parameters)")
    p.add_argument("--stages", nargs="+", help="only these stages (upstream stages must be done)")
    p.add_argument("--force", nargs="+", default=[], metavar="STAGE", help="re-run these stages")
    p.add_argument("--scheduler", help="address of an existing dask scheduler")
    p.add_argument("--workers", type=int, help="LocalCluster workers (default: one per core)")
    p.add_argument("--serial", action="store_true", help="no dask: run in this process")
    p.add_argument("--no-save", action="store_true", help="do not record the run with DataLad")
    p.set_defaults(func=_cmd_process)

    p = sub.add_parser("status", help="session × stage table (saved as processed/sessions.parquet)")
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--config", type=Path, help="pipeline YAML used by process")
    p.set_defaults(func=_cmd_status)


def _add_build(sub) -> None:
    p = sub.add_parser("build", help="bin processed sessions into data/binned/<action>.h5")
    p.add_argument("sessions", nargs="*",
                   help="session ids (default: every session whose stages are done)")
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--config", type=Path, help="dataset YAML (actions, windows, bins, presets)")
    p.add_argument("--strict", action="store_true",
                   help="build nothing when a session is not ready (default: leave it out)")
    p.add_argument("--no-save", action="store_true", help="do not record the build with DataLad")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("export", help="binned tensors → .npy + JSON sidecars (Allen-style)")
    p.add_argument("action")
    p.add_argument("area")
    p.add_argument("out_path", type=Path)
    p.add_argument("--data", dest="data_var", default="spike_data",
                   help="variable group: spike_data, behaviour, pose, lfp, trials")
    p.add_argument("--in-path", type=Path, default=Path("data/binned"))
    p.add_argument("--sessions", nargs="+")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("demo", help="simulate one session and run everything end to end")
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--duration-s", type=float, default=120.0)
    p.add_argument("--no-save", action="store_true", help="do not record with DataLad")
    p.set_defaults(func=_cmd_demo)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="HTML report per processed session (figures + QC tables)")
    p.add_argument("sessions", nargs="*", help="session ids (default: every processed session)")
    p.add_argument("--data", type=Path, default=Path("data"))
    p.set_defaults(func=_cmd_report)


def _add_export_nwb(sub) -> None:
    p = sub.add_parser("export-nwb", help="one session as an NWB file (pynwb; the [nwb] extra)")
    p.add_argument("session", help="session id")
    p.add_argument("--lfp", action="store_true", help="include the 1 kHz LFP (large)")
    p.add_argument("--out", type=Path, default=None,
                   help="output file (default: data/exports/nwb/<session>.nwb)")
    p.add_argument("--data", type=Path, default=Path("data"))
    p.set_defaults(func=_cmd_export_nwb)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pixbin`` command."""
    parser = argparse.ArgumentParser(
        prog="pixbin",
        description="Raw Neuropixels + behaviour sessions → synchronised, binned, versioned "
        "trial tensors.",
    )
    parser.add_argument("--version", action="version", version=f"pixbin {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_simulate(sub)
    _add_extract(sub)
    _add_process(sub)
    _add_build(sub)
    _add_report(sub)
    _add_export_nwb(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pixbin`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if args.quiet:  # no bars inside stages either (dask workers inherit the environment)
        os.environ[NO_PROGRESS_ENV] = "1"
    try:
        return args.func(args)
    except PixbinError as e:
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
