"""Do the files' wall-clock start times agree with the sync fit? (A foreign file is refused.)

A periodic sync train lines up with any train of similar length, so a behaviour TDMS from another
session (same day or days later) can fit perfectly. The files say when they started: the TDMS
``wf_start_time`` (UTC) and the SpikeGLX meta's ``fileCreateTime`` (the acquisition PC's local
time, no time zone). The fit says when the behaviour started on the probe clock (``offset_s``).
These must agree to within the two PCs' clock difference: ``file_time_tolerance_s`` plus, unless
``file_times_utc_offset_h`` states it, a whole time-zone offset (a multiple of 15 min, at most
14 h), which is then reported. Beyond that the file is refused, naming both times; ``sync:
{ignore_file_times: true}`` overrides the refusal, with a warning kept in ``sync.json``.
A session whose files lack either time is reported as not checked.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from pixbin.clock import ClockMap
from pixbin.spikeglx import SpikeGlxStream
from pixbin.tdms import ChannelInfo

if TYPE_CHECKING:  # pragma: no cover
    from pixbin.sync import SyncParams

__all__ = ["check_file_times"]

log = logging.getLogger(__name__)

_ZONE_STEP_S = 900.0  # time zones are whole quarter hours
_MAX_ZONE_S = 14 * 3600.0


def _probe_start(ap: SpikeGlxStream) -> dt.datetime | None:
    value = ap.meta.get("fileCreateTime")
    if value in (None, ""):
        return None
    try:
        return dt.datetime.fromisoformat(str(value)).replace(tzinfo=None)
    except ValueError:
        return None


def check_file_times(ap: SpikeGlxStream, behaviour: ChannelInfo, bmap: ClockMap,
                     params: SyncParams) -> dict[str, Any]:
    """The file-time check as stored in ``sync.json`` (``file_times``): ``pass`` is False, with
    the ``reason`` naming both times, when the start times disagree with the fit beyond the
    tolerance (and any time-zone offset); the caller refuses unless ``ignore_file_times``
    (then the record carries a ``warning``)."""
    probe_local = _probe_start(ap)
    beh_utc = behaviour.start_time
    record: dict[str, Any] = {
        "probe_file_create_time": None if probe_local is None else probe_local.isoformat(),
        "behaviour_start_time_utc": None if beh_utc is None else beh_utc.isoformat(),
        "fitted_offset_s": bmap.offset_s,
        "tolerance_s": params.file_time_tolerance_s,
        "checked": False,
    }
    if probe_local is None or beh_utc is None:
        missing = [name for name, v in (("fileCreateTime of " + ap.meta_path.name, probe_local),
                                        ("wf_start_time of " + behaviour.path.name, beh_utc))
                   if v is None]
        record["reason"] = f"not checked: no {' or '.join(missing)}"
        return record
    beh_naive = beh_utc.astimezone(dt.timezone.utc).replace(tzinfo=None)
    wall_s = (beh_naive - probe_local).total_seconds()  # behaviour start − probe start
    mismatch = wall_s - bmap.offset_s
    if params.file_times_utc_offset_h is not None:
        zone_s = -params.file_times_utc_offset_h * 3600.0
    else:
        zone_s = round(mismatch / _ZONE_STEP_S) * _ZONE_STEP_S
        if abs(zone_s) > _MAX_ZONE_S:
            zone_s = 0.0
    error_s = mismatch - zone_s
    zone_h = -zone_s / 3600.0 + 0.0  # + 0.0: no "-0"
    record.update(checked=True, clock_difference_s=error_s,
                  probe_utc_offset_h=zone_h,
                  utc_offset_from="config" if params.file_times_utc_offset_h is not None
                  else "nearest time zone")
    if abs(error_s) <= params.file_time_tolerance_s:
        record["pass"] = True
        return record
    message = (
        f"{behaviour.path}: starts {beh_utc.isoformat()} (UTC) but the probe file "
        f"{ap.meta_path.name} was created {probe_local.isoformat()} (local, UTC"
        f"{zone_h:+g} h); the sync fit puts the behaviour's start {bmap.offset_s:+.3f} s "
        f"from the probe's, so the files' clocks disagree by {error_s:+.1f} s "
        f"(tolerance {params.file_time_tolerance_s} s). Is this behaviour file from another "
        "session? If the PCs' clocks are known to be wrong, set sync: {ignore_file_times: true} "
        "(or sync: {file_times_utc_offset_h: H} for the probe PC's time zone)"
    )
    record.update({"pass": False, "reason": message})
    if params.ignore_file_times:
        record["warning"] = "ignored (sync: ignore_file_times): " + message
        log.warning("%s", record["warning"])
    return record
