"""Frames: the camera files' account of the saved frames, the camera exposure TTL, and how the
two line up (frame times on the probe clock, dropped frames located two ways).

The first step of the pose stage (:func:`pixbin.pose.run_pose`; see docs/LFP_POSE.md). The
camera's exposure TTL (``CamFrames`` on the behaviour rig; rising edge = exposure onset) is found
at the channel's native rate in streamed chunks and mapped to the probe clock. The saved frames
(IMAQdx timestamps, µs on the camera's clock) are matched to the TTL pulses: dropped frames are
located twice, from the IMAQdx ``ind_skipped`` list and independently from gaps in the IMAQdx
timestamps, and the numbering whose frame times fit the TTL times best (linear camera → behaviour
clock fit) is used (:func:`reconcile_frames`). Drops never abort the stage.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pixbin.clock import CAMERA_STREAM, ClockMap, ClockMapLike, PiecewiseClockMap, fit_clock_map
from pixbin.errors import PoseError, TdmsError
from pixbin.pose import PoseParams

__all__ = [
    "CameraMeta",
    "FrameReconciliation",
    "read_camera_meta",
    "camera_frame_size",
    "frame_ttl_times",
    "reconcile_frames",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- camera files
@dataclass(frozen=True)
class CameraMeta:
    """What ``<camera>meta.tdms`` says about the saved frames.

    Attributes
    ----------
    path : Path
    timestamps_us : ndarray of int64
        IMAQdx timestamp of each saved frame (``High << 32 | Low``, µs on the camera's clock).
    heights : ndarray of int64
        ``IMAQdxActualHeight`` of each saved frame.
    ind_skipped : ndarray of int64
        ``frames/ind_skipped``: exposure indices that were not saved (sorted, unique).
    """

    path: Path
    timestamps_us: np.ndarray
    heights: np.ndarray
    ind_skipped: np.ndarray

    @property
    def n_frames(self) -> int:
        """Number of saved frames listed."""
        return int(self.timestamps_us.size)


def _channel_names(path: Path) -> dict:
    from pixbin import tdms

    try:
        return tdms.list_channels(path)
    except TdmsError as exc:
        raise PoseError(str(exc)) from exc


def read_camera_meta(path: str | os.PathLike) -> CameraMeta:
    """Read IMAQdx timestamps, heights and skipped-frame indices from the camera meta TDMS.

    Raises
    ------
    PoseError
        If a channel is missing (naming the file and what it holds) or the lengths disagree.
    """
    from pixbin import tdms

    path = Path(path)
    channels = _channel_names(path)
    needed = ["keys/IMAQdxTimestampHigh", "keys/IMAQdxTimestampLow"]
    missing = [k for k in needed if k not in channels]
    if missing:
        raise PoseError(f"{path}: camera meta lacks {missing}; expected group 'keys' with "
                        f"IMAQdxTimestampHigh/Low; the file holds {sorted(channels)}")
    high = tdms.read_channel(path, "keys", "IMAQdxTimestampHigh").astype(np.int64)
    low = tdms.read_channel(path, "keys", "IMAQdxTimestampLow").astype(np.int64)
    if high.size != low.size:
        raise PoseError(f"{path}: IMAQdxTimestampHigh has {high.size} values but "
                        f"IMAQdxTimestampLow has {low.size}; expected equal")
    stamps = (high << 32) | (low & 0xFFFFFFFF)
    if "keys/IMAQdxActualHeight" in channels:
        heights = tdms.read_channel(path, "keys", "IMAQdxActualHeight").astype(np.int64)
    else:
        heights = np.zeros(0, np.int64)
    key = next((k for k in ("frames/ind_skipped", "frames") if k in channels), None)
    if key is not None:
        info = channels[key]
        skipped = tdms.read_channel(path, info.group, info.channel).astype(np.int64)
    else:
        skipped = np.zeros(0, np.int64)
    return CameraMeta(path=path, timestamps_us=stamps, heights=heights,
                      ind_skipped=np.unique(skipped))


def _video_channel(path: Path) -> tuple[str, int]:
    """The image channel of a camera TDMS (``Image/Image``, or the only channel) and its size."""
    channels = _channel_names(path)
    for key in ("Image", "Image/Image"):
        if key in channels and channels[key].channel == "Image":
            return key if "/" in key else f"{channels[key].group}/{channels[key].channel}", \
                channels[key].n_samples
    if len(channels) == 1:
        info = next(iter(channels.values()))
        return f"{info.group}/{info.channel}", info.n_samples
    raise PoseError(f"{path}: cannot tell the image channel; expected 'Image'/'Image' or a single "
                    f"channel, the file holds {sorted(channels)}")


def camera_frame_size(
    camera_tdms: str | os.PathLike,
    meta: CameraMeta,
    *,
    height: int | None = None,
    width: int | None = None,
) -> tuple[int, int, int]:
    """``(n_frames, height, width)`` of the frames in the camera TDMS.

    ``n_frames`` is the number of IMAQdx timestamps, ``height`` the IMAQdx height (the same for
    every frame) unless given, and ``width = n_pixels / (n_frames * height)`` unless given.

    Raises
    ------
    PoseError
        If heights vary or are absent (and ``height`` is not given), or the pixel count is not
        ``n_frames × height × width``.
    """
    path = Path(camera_tdms)
    _, n_pixels = _video_channel(path)
    n_frames = meta.n_frames
    if height is None:
        heights = np.unique(meta.heights)
        if heights.size != 1:
            raise PoseError(f"{meta.path}: IMAQdxActualHeight must be one value for every frame; "
                            f"found {heights.tolist()[:10]} (give PoseParams.frame_size to "
                            "override)")
        height = int(heights[0])
    if n_frames == 0 or height <= 0:
        raise PoseError(f"{meta.path}: no saved frames listed (n={n_frames}, height={height})")
    if width is None:
        width, extra = divmod(n_pixels, n_frames * height)
        if extra or width == 0:
            raise PoseError(
                f"{path}: {n_pixels} pixels are not a whole number of {n_frames} frames of "
                f"height {height} (IMAQdx timestamps in {meta.path}); expected a multiple of "
                f"{n_frames * height}"
            )
    elif n_pixels != n_frames * height * width:
        raise PoseError(f"{path}: {n_pixels} pixels; expected {n_frames} frames x {height} x "
                        f"{width} = {n_frames * height * width}")
    return n_frames, int(height), int(width)


# --------------------------------------------------------------------------- TTL and matching
def frame_ttl_times(behaviour_tdms: str | os.PathLike, params: PoseParams = PoseParams()
                    ) -> tuple[np.ndarray, float]:
    """Rising edges of the camera TTL, in seconds on the behaviour clock (sample · wf_increment).

    Streams the channel at its native rate (:func:`pixbin.edges.ttl_detector`, sub-sample
    mid-level crossings). Thresholds are ``ttl_thresholds_v``, or from the first chunk whose
    robust range (1st to 99.9th percentile) is at least ``ttl_min_swing_v``; the chunks before
    it are skipped.

    Returns
    -------
    (times_s, rate_hz)
    """
    from pixbin import tdms
    from pixbin.edges import ttl_detector

    path = Path(behaviour_tdms)
    try:
        info = tdms.require_channels(path, [params.ttl_channel])[params.ttl_channel]
    except TdmsError as exc:
        raise PoseError(f"camera TTL channel {params.ttl_channel!r}: {exc}") from exc
    try:
        detector, first = ttl_detector(
            info, declared=params.ttl_thresholds_v, percentiles=(1.0, 99.9),
            scan_samples=params.chunk_samples, min_swing=params.ttl_min_swing_v,
            debounce_s=params.ttl_debounce_s, interpolate=True)
    except ValueError as exc:
        raise PoseError(f"{path}: channel {params.ttl_channel!r} {exc}; expected camera "
                        "exposure pulses") from None
    for start, chunk in tdms.iter_chunks(path, [params.ttl_channel],
                                         chunk_samples=params.chunk_samples, start=first):
        detector.feed(chunk[params.ttl_channel], start)
    return detector.result().rising / info.rate_hz, info.rate_hz


@dataclass
class FrameReconciliation:
    """How saved frames, IMAQdx timestamps and TTL pulses line up (see :func:`reconcile_frames`).

    Exposure indices count TTL pulses from 0 (the first rising edge in the behaviour file).

    Attributes
    ----------
    n_ttl, n_saved, n_imaqdx : int
        TTL rising edges, frames in the video TDMS, IMAQdx timestamps.
    dropped_by_ind_skipped, dropped_by_timestamps : list of int
        Unsaved exposures according to ``ind_skipped`` and to the IMAQdx timestamp gaps (the
        latter only sees drops between saved frames).
    dropped_agree : bool
        Whether the two lists agree between the first and last saved frame.
    dropped_source : str
        The numbering used (``"timestamps"`` or ``"ind_skipped"``): the one fitting the TTL best.
    dropped_frame_indices : list of int
        Exposures between the first and last saved frame that were not saved.
    exposure_index, frame_times_s, time_source : arrays, one per saved frame
        TTL pulse index, probe-clock time, and ``"ttl"`` or ``"imaqdx_fit"``.
    fps, period_s : float
        From the median TTL interval on the probe clock (not rounded).
    residual_us : dict
        Median and max residual of the camera clock map (IMAQdx → probe times of the pulses).
    camera_clock_ppm : float
        Probe seconds per camera second − 1, in ppm (the map's rate).
    camera_map : ClockMap or None
        Camera (IMAQdx seconds) → probe clock, fitted on the frames that have a pulse; stored
        in ``<camera>_frames.json`` under ``clock_map``.
    n_frames_without_ttl, n_ttl_before_first_saved, n_ttl_after_last_saved : int
        Saved frames outside the TTL record; pulses before/after the saved frames.
    shift_chosen_by : str
        ``"counts"`` (the frame counts fix the alignment) or ``"timing"`` (best fit).
    n_shifts_fitting : int
        How many alignments fit within the tolerance (1 = timing alone is unambiguous).
    """

    n_ttl: int
    n_saved: int
    n_imaqdx: int
    dropped_by_ind_skipped: list[int]
    dropped_by_timestamps: list[int]
    dropped_agree: bool
    dropped_source: str
    dropped_frame_indices: list[int]
    exposure_index: np.ndarray = field(repr=False)
    frame_times_s: np.ndarray = field(repr=False)
    time_source: np.ndarray = field(repr=False)
    fps: float = math.nan
    period_s: float = math.nan
    residual_us: dict[str, float] = field(default_factory=dict)
    camera_clock_ppm: float = math.nan
    camera_map: ClockMap | None = None
    n_frames_without_ttl: int = 0
    n_ttl_before_first_saved: int = 0
    n_ttl_after_last_saved: int = 0
    shift_chosen_by: str = ""
    n_shifts_fitting: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (arrays left out)."""
        return {
            "n_ttl": self.n_ttl, "n_saved": self.n_saved, "n_imaqdx": self.n_imaqdx,
            "n_dropped": len(self.dropped_frame_indices),
            "dropped_frame_indices": self.dropped_frame_indices,
            "dropped_by_ind_skipped": self.dropped_by_ind_skipped,
            "dropped_by_timestamps": self.dropped_by_timestamps,
            "dropped_agree": self.dropped_agree, "dropped_source": self.dropped_source,
            "first_saved_exposure": (int(self.exposure_index[0]) if self.exposure_index.size
                                     else None),
            "fps": self.fps, "period_s": self.period_s, "residual_us": self.residual_us,
            "camera_clock_ppm_vs_probe": self.camera_clock_ppm,
            "clock_map": None if self.camera_map is None else {
                "stream": self.camera_map.stream, **self.camera_map.to_dict()},
            "n_frames_without_ttl": self.n_frames_without_ttl,
            "n_ttl_before_first_saved": self.n_ttl_before_first_saved,
            "n_ttl_after_last_saved": self.n_ttl_after_last_saved,
            "ttl_alignment": self.shift_chosen_by,
            "n_alignments_fitting": self.n_shifts_fitting,
            "frame_time": "TTL rising edge (exposure onset) on the probe clock; frames without a "
                          "TTL pulse: IMAQdx timestamp through the camera→behaviour fit",
        }


def _numbering_from_gaps(stamps_s: np.ndarray) -> tuple[np.ndarray, float]:
    """Exposure number of each saved frame (0 for the first) from IMAQdx timestamp gaps."""
    d = np.diff(stamps_s)
    if d.size == 0:
        return np.zeros(stamps_s.size, np.int64), math.nan
    period = float(np.median(d))
    if not period > 0:
        raise PoseError(f"IMAQdx timestamps do not increase (median interval {period} s)")
    steps = np.maximum(np.rint(d / period).astype(np.int64), 1)
    return np.r_[0, np.cumsum(steps)], period


def _numbering_from_skipped(n_saved: int, skipped: np.ndarray) -> np.ndarray | None:
    """Exposure number of each saved frame: the exposures not listed in ``ind_skipped``."""
    total = n_saved + skipped.size
    if skipped.size and (skipped.min() < 0 or skipped.max() >= total):
        return None
    keep = np.ones(total, bool)
    keep[skipped] = False
    return np.flatnonzero(keep)


def _shift_residuals(numbering: np.ndarray, stamps_s: np.ndarray, ttl_s: np.ndarray,
                     shifts: np.ndarray, max_points: int = 5000) -> dict[int, float]:
    """Max |residual| (s) of a linear camera → TTL fit for each shift ``s`` (saved frame ``i`` ↔
    TTL pulse ``numbering[i] + s``), on at most ``max_points`` evenly spaced frames."""
    n_ttl = ttl_s.size
    step = max(1, numbering.size // max_points)
    num, x_all = numbering[::step], stamps_s[::step]
    needed = max(3, int(0.5 * min(num.size, n_ttl // step)))
    out: dict[int, float] = {}
    for s in shifts:
        j = num + s
        ok = (j >= 0) & (j < n_ttl)
        if ok.sum() < needed:
            continue
        x, y = x_all[ok], ttl_s[j[ok]]
        coef = np.polyfit(x, y, 1)
        out[int(s)] = float(np.abs(np.polyval(coef, x) - y).max())
    return out


def _choose_shift(numbering: np.ndarray, stamps_s: np.ndarray, ttl_s: np.ndarray,
                  count_shift: int | None, params: PoseParams, tolerance: float
                  ) -> tuple[int | None, float, str, int]:
    """The TTL shift for a numbering: the one the counts imply when it fits, else the best fit.

    Returns (shift or None, its max residual, how it was chosen, number of shifts that fit).
    When the camera and the TTL run off one regular clock every shift fits about equally well,
    so timing alone cannot choose; counts can (all exposures seen, plus any leading drops listed
    in ``ind_skipped``).
    """
    span = int(numbering[-1])
    lo = max(-span, -params.max_ttl_shift)
    hi = min(ttl_s.size - 1, max(ttl_s.size - span - 1, 0) + params.max_ttl_shift)
    candidates = np.arange(lo, hi + 1)
    if count_shift is not None and count_shift not in candidates:
        candidates = np.r_[candidates, count_shift]
    res = _shift_residuals(numbering, stamps_s, ttl_s, candidates)
    if not res:
        return None, math.inf, "none", 0
    fitting = [s for s, r in res.items() if r <= tolerance]
    if count_shift is not None and res.get(count_shift, math.inf) <= tolerance:
        return count_shift, res[count_shift], "counts", len(fitting)
    best = min(res, key=res.get)
    return best, res[best], "timing", len(fitting)


def _imaqdx_seconds(ttl: np.ndarray, meta: CameraMeta, n_video_frames: int | None
                    ) -> np.ndarray:
    """IMAQdx timestamps in seconds from the first saved frame, once the frame counts and the
    timestamps are checked."""
    n_saved = meta.n_frames
    if n_video_frames is not None and n_video_frames != n_saved:
        raise PoseError(f"{meta.path}: {n_saved} IMAQdx timestamps but the video holds "
                        f"{n_video_frames} frames; expected one timestamp per saved frame")
    if n_saved < 3 or ttl.size < 3:
        raise PoseError(f"{meta.path}: too few frames to match ({n_saved} saved, "
                        f"{ttl.size} TTL pulses); expected at least 3 of each")
    stamps_s = (meta.timestamps_us - meta.timestamps_us[0]) / 1e6
    if np.any(np.diff(stamps_s) <= 0):
        raise PoseError(f"{meta.path}: IMAQdx timestamps do not increase strictly")
    return stamps_s


def _numberings(ttl: np.ndarray, meta: CameraMeta, stamps_s: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray],
                           dict[str, int | None]]:
    """The saved frames' exposure numbering from the timestamp gaps and from ``ind_skipped``
    (None when the list does not fit), and the TTL shift each implies from the counts (None when
    the counts do not add up). Returns ``(by_gaps, by_list, numberings, count_shifts)``."""
    n_saved = meta.n_frames
    by_gaps, _ = _numbering_from_gaps(stamps_s)
    by_list = _numbering_from_skipped(n_saved, meta.ind_skipped)
    lead = int(by_list[0]) if by_list is not None else 0  # exposures dropped before the first save
    numberings = {"timestamps": by_gaps}
    count_shifts: dict[str, int | None] = {
        "timestamps": lead if ttl.size == int(by_gaps[-1]) + 1 + lead else None
    }
    if by_list is not None:
        numberings["ind_skipped"] = by_list
        count_shifts["ind_skipped"] = 0 if ttl.size == n_saved + meta.ind_skipped.size else None
    return by_gaps, by_list, numberings, count_shifts


def _choose_numbering(numberings: dict[str, np.ndarray], count_shifts: dict[str, int | None],
                      stamps_s: np.ndarray, ttl: np.ndarray, meta: CameraMeta,
                      params: PoseParams, tolerance: float
                      ) -> tuple[dict[str, tuple], str, str, int, np.ndarray]:
    """Each numbering's TTL shift (:func:`_choose_shift`) and the numbering that fits best (the
    timestamp one on a tie). Returns ``(chosen, source, how, n_fitting, exposure)``: the shift
    per numbering, the numbering used, how its shift was chosen, how many shifts fit, and the
    TTL pulse index of each saved frame."""
    n_saved = meta.n_frames
    chosen = {name: _choose_shift(num, stamps_s, ttl, count_shifts[name], params, tolerance)
              for name, num in numberings.items()}
    good = {k: v for k, v in chosen.items() if v[0] is not None and v[1] <= tolerance}
    if not good:
        found = {k: f"{v[1] * 1e3:.3f} ms" for k, v in chosen.items()}
        raise PoseError(
            f"{meta.path}: the {n_saved} saved frames do not line up with the {ttl.size} TTL "
            f"pulses of {params.ttl_channel!r}: best max residual {found} (tolerance "
            f"{tolerance * 1e3:.3f} ms = {params.match_tolerance_periods} frame periods)"
        )
    source = min(good, key=lambda k: (good[k][1], k != "timestamps"))
    shift, _, how, n_fitting = good[source]
    exposure = numberings[source] + shift
    return chosen, source, how, n_fitting, exposure


def _dropped_lists(by_gaps: np.ndarray, by_list: np.ndarray | None, chosen: dict[str, tuple],
                   exposure: np.ndarray, first: int, last: int, meta: CameraMeta, source: str
                   ) -> tuple[list[int], list[int], list[int], bool]:
    """Dropped exposures (TTL numbering) by the timestamp gaps, by ``ind_skipped`` and by the
    numbering used, and whether the first two agree between the first and last saved frame
    (a warning when not). Returns ``(by_ts, by_skip, used, agree)``."""

    def dropped(num: np.ndarray, s: int | None) -> list[int]:
        missing = np.setdiff1d(np.arange(num[0], num[-1] + 1), num)
        return (missing + (0 if s is None else s)).astype(int).tolist()

    by_ts = dropped(by_gaps, chosen["timestamps"][0])
    by_skip: list[int] = []
    if by_list is not None:
        by_skip = (meta.ind_skipped + (chosen["ind_skipped"][0] or 0)).astype(int).tolist()
    used = (np.setdiff1d(np.arange(first, last + 1), exposure)).astype(int).tolist()
    # timestamps only see drops between saved frames: compare the lists there
    agree = by_ts == [d for d in by_skip if first < d < last]
    if not agree:
        log.warning("%s: dropped frames from ind_skipped %s and from IMAQdx gaps %s disagree; "
                    "using %s", meta.path, by_skip[:10], by_ts[:10], source)
    return by_ts, by_skip, used, agree


def _frame_times(stamps_s: np.ndarray, ttl: np.ndarray, exposure: np.ndarray, n_saved: int,
                 clock_map: ClockMapLike
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, ClockMap]:
    """Probe-clock time of each saved frame: its TTL rising edge, or (no pulse) its IMAQdx time
    through the camera clock map (IMAQdx seconds → probe seconds, fitted on the frames that have
    a pulse). Returns ``(matched, residual, frame_times, period, camera_map)``: which frames had
    a pulse, the fit's residuals (s), the times, the median TTL period on the probe clock and
    the camera map."""
    matched = (exposure >= 0) & (exposure < ttl.size)
    ttl_probe_of_frame = np.asarray(clock_map.to_probe(ttl[exposure[matched]]), np.float64)
    camera_map, residual = fit_clock_map(CAMERA_STREAM, stamps_s[matched], ttl_probe_of_frame)
    frame_times = np.empty(n_saved)
    frame_times[matched] = ttl_probe_of_frame
    frame_times[~matched] = camera_map.to_probe(stamps_s[~matched])
    ttl_probe = np.asarray(clock_map.to_probe(ttl), dtype=np.float64)
    period = float(np.median(np.diff(ttl_probe)))
    return matched, residual, frame_times, period, camera_map


def reconcile_frames(
    ttl_behaviour_s: np.ndarray,
    meta: CameraMeta,
    clock_map: ClockMapLike,
    *,
    n_video_frames: int | None = None,
    params: PoseParams = PoseParams(),
) -> FrameReconciliation:
    """Match saved frames to TTL pulses; locate dropped frames two ways; frame times on the probe
    clock.

    Dropped frames are located (a) from ``ind_skipped`` (exposure indices not saved) and
    (b) independently from the IMAQdx timestamps: an interval of ``m`` median periods means
    ``m - 1`` exposures were lost. Each numbering is aligned to the TTL pulses (shift from the
    counts when they add up, else by the best linear camera → behaviour fit); the numbering that
    fits better is used (the timestamp one on a tie). Frame ``i``'s time is its TTL rising edge;
    a saved frame with no pulse (the rig stopped first) gets its IMAQdx time through the fit.

    Parameters
    ----------
    ttl_behaviour_s : array
        Rising edges of the camera TTL (behaviour clock, s).
    meta : CameraMeta
        IMAQdx timestamps and ``ind_skipped``.
    clock_map : object with ``to_probe``
        Behaviour → probe map.
    n_video_frames : int, optional
        Frames in the video TDMS (must equal the IMAQdx count).
    params : PoseParams

    Raises
    ------
    PoseError
        If the frame counts disagree, no numbering fits the TTL times within
        ``match_tolerance_periods``, or the behaviour recording paused (``clock_map`` is a
        :class:`~pixbin.clock.PiecewiseClockMap`: the TTL pulses of the frames taken during a
        pause were not recorded, and matching frames to pulses across it is not implemented).
    """
    if isinstance(clock_map, PiecewiseClockMap):
        ranges = clock_map.probe_ranges_s
        pauses = ", ".join(f"{a[1]:.3f}–{b[0]:.3f} s" for a, b in zip(ranges, ranges[1:]))
        raise PoseError(
            f"{meta.path}: the behaviour recording that holds the camera TTL "
            f"({params.ttl_channel!r}) paused between {pauses} (probe clock); matching the saved "
            "frames to their TTL pulses across a pause is not implemented, so no frame times or "
            "pose are written rather than wrong ones (the other stages are not affected; "
            "docs/SYNC.md section 4, Pauses)"
        )
    ttl = np.asarray(ttl_behaviour_s, dtype=np.float64)
    n_saved = meta.n_frames
    stamps_s = _imaqdx_seconds(ttl, meta, n_video_frames)
    ttl_period = float(np.median(np.diff(ttl)))
    tolerance = params.match_tolerance_periods * ttl_period

    by_gaps, by_list, numberings, count_shifts = _numberings(ttl, meta, stamps_s)
    chosen, source, how, n_fitting, exposure = _choose_numbering(
        numberings, count_shifts, stamps_s, ttl, meta, params, tolerance)
    first, last = int(exposure[0]), int(exposure[-1])
    by_ts, by_skip, used, agree = _dropped_lists(by_gaps, by_list, chosen, exposure, first, last,
                                                 meta, source)
    matched, residual, frame_times, period, camera_map = _frame_times(
        stamps_s, ttl, exposure, n_saved, clock_map)
    return FrameReconciliation(
        n_ttl=int(ttl.size), n_saved=n_saved, n_imaqdx=n_saved,
        dropped_by_ind_skipped=by_skip, dropped_by_timestamps=by_ts, dropped_agree=bool(agree),
        dropped_source=source, dropped_frame_indices=used,
        exposure_index=exposure.astype(np.int64), frame_times_s=frame_times,
        time_source=np.where(matched, "ttl", "imaqdx_fit"),
        fps=1.0 / period, period_s=period,
        residual_us={"median": float(np.median(residual) * 1e6),
                     "max": float(residual.max() * 1e6)},
        camera_clock_ppm=camera_map.ppm,
        camera_map=camera_map,
        n_frames_without_ttl=int((~matched).sum()),
        n_ttl_before_first_saved=max(first, 0),
        n_ttl_after_last_saved=max(int(ttl.size) - 1 - last, 0),
        shift_chosen_by=how, n_shifts_fitting=n_fitting,
    )
