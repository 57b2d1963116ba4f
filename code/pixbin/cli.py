"""The ``pixbin`` command.

Subcommands are thin: each parses its arguments, sets up logging and progress, and calls one
public function of the stage module that does the work.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pixbin import __version__
from pixbin.errors import PixbinError

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
    )
    path = simulate_session(args.data, params, progress=log.info)
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
    p.set_defaults(func=_cmd_simulate)


def _add_extract(sub) -> None:
    p = sub.add_parser("extract", help="raw → interim (safe, verified, resumable)")
    p.add_argument("sessions", nargs="*", help="session ids (default: all in data/raw)")
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--verify", action="store_true", help="re-hash interim files after")
    p.set_defaults(func=_cmd_extract)


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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pixbin`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except PixbinError as e:
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
