"""Pose: camera TDMS → lossless video + frame times on the probe clock; DeepLabCut run or import;
pose → 1 kHz with a likelihood mask.

Three steps, each usable alone (see docs/LFP_POSE.md):

1. **Frames** (:func:`reconcile_frames`). The camera's exposure TTL (``CamFrames`` on the
   behaviour rig; rising edge = exposure onset) is found at the channel's native rate in streamed
   chunks and mapped to the probe clock. The saved frames (IMAQdx timestamps, µs on the camera's
   clock) are matched to the TTL pulses: dropped frames are located twice, from the IMAQdx
   ``ind_skipped`` list and independently from gaps in the IMAQdx timestamps, and the numbering
   whose frame times fit the TTL times best (linear camera → behaviour clock fit) is used. Both
   lists and whether they agree go to ``<camera>_frames.json``; drops never abort the stage.
2. **Video** (:func:`tdms_to_video`). Frames are streamed from the TDMS into ffmpeg
   (imageio-ffmpeg): ``libx264 -crf 0`` (.mp4, lossless for 8-bit grey) or FFV1 (.mkv).
3. **Pose** (:func:`read_dlc_output`, :func:`run_dlc`, :func:`pose_to_rate`). A DeepLabCut output
   (.h5 or .csv, single- or multi-animal, any scorer) must have one row per saved frame; points
   below the likelihood threshold become NaN (never 0); pixel coordinates are kept as they are
   (no y flip) with the frame size recorded; x/y/likelihood are linearly interpolated onto the
   1 kHz probe-clock grid between frames, NaN across gaps longer than ``max_gap_periods`` frame
   periods and outside the first/last frame.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pixbin.errors import ConfigError, PoseError, TdmsError
from pixbin.fileio import atomic_path, provenance, write_json, write_npy
from pixbin.params import check_keys, field_names
from pixbin.clock import ClockMapLike

__all__ = [
    "PoseParams",
    "CameraMeta",
    "FrameReconciliation",
    "read_camera_meta",
    "camera_frame_size",
    "frame_ttl_times",
    "reconcile_frames",
    "tdms_to_video",
    "count_video_frames",
    "read_pcutoff",
    "read_dlc_output",
    "check_pose_rows",
    "mask_low_likelihood",
    "pose_to_rate",
    "run_dlc",
    "run_pose",
]

log = logging.getLogger(__name__)

#: DeepLabCut's own default ``pcutoff`` (config.yaml), used when neither a parameter nor a
#: project config gives one.
DLC_DEFAULT_PCUTOFF = 0.6


@dataclass(frozen=True)
class PoseParams:
    """Parameters of the pose stage.

    Attributes
    ----------
    ttl_channel : str
        Behaviour TDMS group of the camera exposure TTL.
    ttl_thresholds_v : (low, high) or None
        Hysteresis thresholds in volts; None: from the signal
        (:func:`pixbin.edges.auto_thresholds`).
    ttl_min_swing_v : float
        Automatic thresholds need a chunk whose robust range is at least this.
    ttl_debounce_s : float
        Transitions closer than this are glitches.
    chunk_samples : int
        Behaviour samples read per chunk.
    video_codec : "libx264" or "ffv1"
        Lossless ``libx264 -crf 0`` in .mp4, or FFV1 in .mkv.
    frames_per_chunk : int
        Frames streamed to ffmpeg per TDMS read.
    frame_size : (height, width) or None
        Frame size when the camera meta lacks ``IMAQdxActualHeight`` (None: from the meta).
    likelihood_threshold : float or None
        Points below it become NaN. None: ``pcutoff`` of the DLC config if given, else 0.6
        (DeepLabCut's default; the lab used 0.05).
    max_gap_periods : float
        Frame intervals longer than this many median frame periods are NaN at 1 kHz.
    rate_hz : float
        Output rate on the probe clock.
    match_tolerance_periods : float
        Largest allowed residual (in frame periods) of the IMAQdx ↔ TTL fit.
    max_ttl_shift : int
        How many TTL pulses before/after the first saved frame are tried when matching.
    dlc_shuffle : int
        Shuffle passed to ``deeplabcut.analyze_videos``.
    """

    ttl_channel: str = "CamFrames"
    ttl_thresholds_v: tuple[float, float] | None = None
    ttl_min_swing_v: float = 1.0
    ttl_debounce_s: float = 0.0005
    chunk_samples: int = 2_000_000
    video_codec: Literal["libx264", "ffv1"] = "libx264"
    frames_per_chunk: int = 256
    frame_size: tuple[int, int] | None = None
    likelihood_threshold: float | None = None
    max_gap_periods: float = 1.5
    rate_hz: float = 1000.0
    match_tolerance_periods: float = 0.25
    max_ttl_shift: int = 300
    dlc_shuffle: int = 1

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PoseParams:
        """Build from a mapping, refusing unknown keys (the error lists the valid ones)."""
        check_keys(values, sorted(field_names(cls)), what="pose parameter")
        values = dict(values)
        for key in ("ttl_thresholds_v", "frame_size"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    def validate(self) -> None:
        """Refuse values that cannot work."""
        if self.video_codec not in ("libx264", "ffv1"):
            raise ConfigError(
                f"pose video_codec must be 'libx264' or 'ffv1', got {self.video_codec!r}"
            )
        if self.likelihood_threshold is not None and not 0 <= self.likelihood_threshold <= 1:
            raise ConfigError(
                f"pose likelihood_threshold must be in [0, 1], got {self.likelihood_threshold}"
            )
        if not self.max_gap_periods >= 1:
            raise ConfigError(f"pose max_gap_periods must be >= 1, got {self.max_gap_periods}")
        if not self.rate_hz > 0 or self.chunk_samples < 1 or self.frames_per_chunk < 1:
            raise ConfigError("pose rate_hz, chunk_samples and frames_per_chunk must be positive")
        if self.ttl_thresholds_v is not None and not (
            len(self.ttl_thresholds_v) == 2 and self.ttl_thresholds_v[0] < self.ttl_thresholds_v[1]
        ):
            raise ConfigError(f"pose ttl_thresholds_v must be (low, high) with low < high, "
                              f"got {self.ttl_thresholds_v}")


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

    Streams the channel at its native rate (:class:`pixbin.edges.EdgeDetector`, sub-sample
    mid-level crossings).

    Returns
    -------
    (times_s, rate_hz)
    """
    from pixbin import tdms
    from pixbin.edges import EdgeDetector, auto_thresholds

    path = Path(behaviour_tdms)
    try:
        info = tdms.require_channels(path, [params.ttl_channel])[params.ttl_channel]
    except TdmsError as exc:
        raise PoseError(f"camera TTL channel {params.ttl_channel!r}: {exc}") from exc
    rate = info.rate_hz
    detector = None
    if params.ttl_thresholds_v is not None:
        low, high = params.ttl_thresholds_v
        detector = EdgeDetector(low=low, high=high,
                                min_interval_samples=params.ttl_debounce_s * rate)
    for start, chunk in tdms.iter_chunks(path, [params.ttl_channel],
                                         chunk_samples=params.chunk_samples):
        x = chunk[params.ttl_channel]
        if detector is None:
            lo, hi = np.percentile(x, (1.0, 99.9)) if x.size else (0.0, 0.0)
            if hi - lo < params.ttl_min_swing_v:
                continue  # no pulses yet
            low, high = auto_thresholds(x, percentiles=(1.0, 99.9))
            log.info("%s %s: TTL thresholds %.3g / %.3g V", path.name, params.ttl_channel, low,
                     high)
            detector = EdgeDetector(low=low, high=high,
                                    min_interval_samples=params.ttl_debounce_s * rate)
        detector.feed(x, start)
    if detector is None:
        raise PoseError(f"{path}: channel {params.ttl_channel!r} never swings by "
                        f"{params.ttl_min_swing_v} V; expected camera exposure pulses")
    return detector.result().rising / rate, rate


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
        Median and max residual of the linear IMAQdx → TTL fit.
    camera_clock_ppm : float
        Probe seconds per camera second − 1, in ppm.
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
        If the frame counts disagree or no numbering fits the TTL times within
        ``match_tolerance_periods``.
    """
    ttl = np.asarray(ttl_behaviour_s, dtype=np.float64)
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
    ttl_period = float(np.median(np.diff(ttl)))
    tolerance = params.match_tolerance_periods * ttl_period

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

    def dropped(num: np.ndarray, s: int | None) -> list[int]:
        missing = np.setdiff1d(np.arange(num[0], num[-1] + 1), num)
        return (missing + (0 if s is None else s)).astype(int).tolist()

    first, last = int(exposure[0]), int(exposure[-1])
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

    matched = (exposure >= 0) & (exposure < ttl.size)
    x, y = stamps_s[matched], ttl[exposure[matched]]
    coef = np.polyfit(x, y, 1)
    residual = np.abs(np.polyval(coef, x) - y)
    times_b = np.empty(n_saved)
    times_b[matched] = y
    times_b[~matched] = np.polyval(coef, stamps_s[~matched])
    frame_times = np.asarray(clock_map.to_probe(times_b), dtype=np.float64)
    ttl_probe = np.asarray(clock_map.to_probe(ttl), dtype=np.float64)
    period = float(np.median(np.diff(ttl_probe)))
    slope_probe = np.polyfit(x, frame_times[matched], 1)[0]
    return FrameReconciliation(
        n_ttl=int(ttl.size), n_saved=n_saved, n_imaqdx=n_saved,
        dropped_by_ind_skipped=by_skip, dropped_by_timestamps=by_ts, dropped_agree=bool(agree),
        dropped_source=source, dropped_frame_indices=used,
        exposure_index=exposure.astype(np.int64), frame_times_s=frame_times,
        time_source=np.where(matched, "ttl", "imaqdx_fit"),
        fps=1.0 / period, period_s=period,
        residual_us={"median": float(np.median(residual) * 1e6),
                     "max": float(residual.max() * 1e6)},
        camera_clock_ppm=float((slope_probe - 1.0) * 1e6),
        n_frames_without_ttl=int((~matched).sum()),
        n_ttl_before_first_saved=max(first, 0),
        n_ttl_after_last_saved=max(int(ttl.size) - 1 - last, 0),
        shift_chosen_by=how, n_shifts_fitting=n_fitting,
    )


# --------------------------------------------------------------------------- video
def tdms_to_video(
    camera_tdms: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    n_frames: int,
    height: int,
    width: int,
    fps: float,
    codec: Literal["libx264", "ffv1"] = "libx264",
    frames_per_chunk: int = 256,
) -> Path:
    """Stream 8-bit grey frames from a camera TDMS into a lossless video, atomically.

    Parameters
    ----------
    camera_tdms : path-like
        TDMS with the frames concatenated (``Image/Image``, uint8).
    out_path : path-like
        Video file (.mp4 for libx264, .mkv for FFV1).
    n_frames, height, width : int
        Frame count and size (see :func:`camera_frame_size`).
    fps : float
        Nominal rate written in the container (the true times are in the frame-times file).
    codec : "libx264" or "ffv1"
        ``libx264 -crf 0`` (lossless 8-bit luma) or FFV1 (lossless).
    frames_per_chunk : int
        Frames per TDMS read (memory ≈ frames_per_chunk × height × width bytes).
    """
    import imageio_ffmpeg

    from pixbin import tdms

    path = Path(camera_tdms)
    out_path = Path(out_path)
    key, n_pixels = _video_channel(path)
    frame_px = height * width
    if n_pixels != n_frames * frame_px:
        raise PoseError(f"{path}: {n_pixels} pixels; expected {n_frames} x {height} x {width}")
    extra = ["-crf", "0", "-preset", "veryfast"] if codec == "libx264" else ["-level", "3"]
    written = 0
    with atomic_path(out_path) as tmp:
        # ffmpeg picks the container from the extension: keep it on the temporary name
        tmp_video = tmp.with_name(tmp.name + out_path.suffix)
        writer = imageio_ffmpeg.write_frames(
            str(tmp_video), (width, height), pix_fmt_in="gray", pix_fmt_out="gray", codec=codec,
            fps=fps, quality=None, macro_block_size=1, output_params=extra,
            ffmpeg_log_level="error",
        )
        writer.send(None)
        try:
            chunks = tdms.iter_chunks(path, [key], chunk_samples=frames_per_chunk * frame_px)
            for _, chunk in chunks:
                pixels = np.ascontiguousarray(chunk[key], dtype=np.uint8)
                for frame in pixels.reshape(-1, height, width):
                    writer.send(frame)
                    written += 1
        finally:
            writer.close()
        os.replace(tmp_video, tmp)
    if written != n_frames:
        raise PoseError(f"{path}: wrote {written} frames; expected {n_frames}")
    log.info("video %s: %d frames %dx%d at %.4g fps (%s)", out_path, written, width, height, fps,
             codec)
    return out_path


def count_video_frames(video: str | os.PathLike) -> int:
    """Frames in a video file, by decoding it with ffmpeg (exact, not the container's estimate)."""
    import imageio_ffmpeg

    path = Path(video)
    if not path.is_file():
        raise PoseError(f"{path}: video not found")
    n, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    return int(n)


# --------------------------------------------------------------------------- DLC files
def read_pcutoff(dlc_config: str | os.PathLike) -> float | None:
    """``pcutoff`` of a DeepLabCut project ``config.yaml`` (None if absent)."""
    import yaml

    path = Path(dlc_config)
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PoseError(f"{path}: cannot read the DeepLabCut config: {exc}") from exc
    value = cfg.get("pcutoff") if isinstance(cfg, dict) else None
    return None if value is None else float(value)


class _PrimitiveUnpickler(pickle.Unpickler):
    """Unpickles lists, tuples, dicts, strings and numbers only (PyTables attribute values)."""

    def find_class(self, module: str, name: str):  # noqa: D102
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a pose file")


def _attr(value, path: Path | None = None) -> Any:
    """A PyTables attribute: text, a number, or a pickled list/tuple/dict of primitives."""
    if isinstance(value, (bytes, np.bytes_)):
        raw = bytes(value)
        if raw[:1] in (b"(", b"\x80", b"]", b"}", b"I", b"V", b"N") and raw.endswith(b"."):
            try:
                return _PrimitiveUnpickler(io.BytesIO(raw)).load()
            except Exception as exc:  # UnpicklingError, EOFError, ValueError, ...
                raise PoseError(f"{path}: cannot decode a pandas attribute ({exc}); read the file "
                                "with PyTables installed ('tables')") from exc
        return raw.decode("utf-8", "replace")
    return value


def _read_table_h5(path: Path, key: str | None) -> tuple[list[tuple], np.ndarray, list[str]]:
    """Columns, values and level names of a pandas ``format="table"`` frame, read with h5py
    (PyTables is not a dependency). Only primitive pickles are decoded."""
    import h5py

    with h5py.File(path, "r") as f:
        groups = []
        f.visititems(lambda name, obj: groups.append(name) if isinstance(obj, h5py.Group)
                     and "pandas_type" in obj.attrs else None)
        if key is not None:
            groups = [g for g in groups if g.strip("/") == key.strip("/")]
        if not groups:
            raise PoseError(f"{path}: no pandas frame{' ' + repr(key) if key else ''} in the file; "
                            "expected a DeepLabCut output (key 'df_with_missing')")
        name = "df_with_missing" if "df_with_missing" in groups else groups[0]
        g = f[name]
        kind = _attr(g.attrs["pandas_type"], path)
        if kind != "frame_table":
            raise PoseError(f"{path}: frame {name!r} is pandas {kind!r}; without PyTables only "
                            "'frame_table' (DeepLabCut's format) can be read: install 'tables'")
        table = g["table"][...]
        try:  # only the level names come from here; they are optional
            info = _attr(g.attrs.get("info", b"N."), path)
        except PoseError:
            info = None
        levels = info.get(1, {}).get("names") if isinstance(info, dict) else None
        columns: list[tuple] = []
        blocks = []
        for block in _attr(g.attrs["values_cols"], path):
            cols = _attr(g["table"].attrs[f"{block}_kind"], path)
            columns.extend(tuple(c) if isinstance(c, (list, tuple)) else (c,) for c in cols)
            values = np.asarray(table[block], dtype=np.float64)
            blocks.append(values.reshape(values.shape[0], -1))
        data = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(table), 0))
        order_axes = _attr(g.attrs.get("non_index_axes", b"N."), path)
    if order_axes:
        order = [tuple(c) if isinstance(c, (list, tuple)) else (c,) for c in order_axes[0][1]]
        position = {c: i for i, c in enumerate(columns)}
        if set(order) == set(position):
            data = data[:, [position[c] for c in order]]
            columns = order
    return columns, data, list(levels) if levels else []


def _frame_from_h5(path: Path, key: str | None):
    import pandas as pd

    try:
        import tables  # noqa: F401
    except ImportError:
        columns, data, names = _read_table_h5(path, key)
        index = pd.MultiIndex.from_tuples(columns, names=names or None)
        return pd.DataFrame(data, columns=index)
    with pd.HDFStore(path, mode="r") as store:
        keys = store.keys()
        if key is None:
            key = "/df_with_missing" if "/df_with_missing" in keys else (keys[0] if keys else None)
        if key is None:
            raise PoseError(f"{path}: the HDF5 file holds no pandas frame; expected a DeepLabCut "
                            "output (key 'df_with_missing')")
        return store[key]


def _frame_from_csv(path: Path):
    import pandas as pd

    first: list[str] = []
    n_index = 1
    with open(path, newline="") as fh:
        for line in fh:
            cells = [c.strip().strip('"') for c in line.rstrip("\r\n").split(",")]
            if not first:  # "scorer,,,Name,...": labelled data indexed by (folder, video, image)
                while n_index < len(cells) and cells[n_index] == "":
                    n_index += 1
            first.append(cells[0])
            if len(first) == 6:
                break
    try:
        n_header = first.index("coords") + 1
    except ValueError:
        raise PoseError(f"{path}: not a DeepLabCut CSV: expected header rows 'scorer', "
                        f"['individuals',] 'bodyparts', 'coords'; first column has {first}"
                        ) from None
    index_col = 0 if n_index == 1 else list(range(n_index))
    frame = pd.read_csv(path, header=list(range(n_header)), index_col=index_col)
    frame.columns = frame.columns.set_names(first[:n_header])
    return frame


def read_dlc_output(path: str | os.PathLike, *, key: str | None = None):
    """A DeepLabCut pose file as an xarray Dataset with dims (frame, keypoint[, individual]).

    Parameters
    ----------
    path : path-like
        ``.h5`` (pandas frame, key ``df_with_missing`` or the only/``key`` frame) or ``.csv``
        (DeepLabCut's 3- or 4-row header: scorer, [individuals,] bodyparts, coords).
    key : str, optional
        HDF5 key when the file holds several frames.

    Returns
    -------
    xarray.Dataset
        ``x``, ``y``, ``likelihood`` float64 as in the file (pixels; nothing masked yet); attrs
        ``scorer``, ``source``, ``multi_animal``.
    """
    import xarray as xr

    path = Path(path)
    if not path.is_file():
        raise PoseError(f"{path}: DeepLabCut output not found")
    if path.suffix.lower() in (".h5", ".hdf5"):
        frame = _frame_from_h5(path, key)
    elif path.suffix.lower() == ".csv":
        frame = _frame_from_csv(path)
    else:
        raise PoseError(f"{path}: expected a DeepLabCut .h5 or .csv, got {path.suffix!r}")
    cols = frame.columns
    names = [str(n).lower() if n is not None else "" for n in cols.names]
    if cols.nlevels not in (3, 4):
        raise PoseError(f"{path}: expected 3 or 4 column levels (scorer, [individuals,] bodyparts, "
                        f"coords); found {cols.nlevels} {cols.names}")
    tuples = [tuple(str(v) for v in c) for c in cols]
    if cols.nlevels == 3:
        tuples = [(s, "", b, c) for s, b, c in tuples]
    scorers = sorted({t[0] for t in tuples})
    if len(scorers) != 1:
        raise PoseError(f"{path}: expected one scorer, found {scorers}")
    coords = {t[3] for t in tuples}
    if not {"x", "y"} <= coords:
        raise PoseError(f"{path}: coords level has {sorted(coords)}; expected x, y[, likelihood]")
    individuals = list(dict.fromkeys(t[1] for t in tuples))
    keypoints = list(dict.fromkeys(t[2] for t in tuples))
    n = len(frame)
    values = frame.to_numpy(dtype=np.float64)
    shape = (n, len(keypoints), len(individuals))
    arrays = {c: np.full(shape, np.nan) for c in ("x", "y", "likelihood")}
    if "likelihood" not in coords:
        arrays["likelihood"][:] = 1.0
    for j, (_, ind, kp, coord) in enumerate(tuples):
        if coord in arrays:
            arrays[coord][:, keypoints.index(kp), individuals.index(ind)] = values[:, j]
    multi = cols.nlevels == 4
    dims = ("frame", "keypoint", "individual")
    data = {c: (dims, a) for c, a in arrays.items()}
    ds = xr.Dataset(data, coords={"frame": np.arange(n), "keypoint": keypoints,
                                  "individual": individuals})
    if not multi:
        ds = ds.isel(individual=0, drop=True)
    ds.attrs.update({"scorer": scorers[0], "source": str(path), "multi_animal": int(multi),
                     "column_levels": ",".join(names)})
    return ds


def check_pose_rows(pose, n_frames: int, *, source: str | os.PathLike | None = None,
                    video: str | os.PathLike | None = None) -> None:
    """Refuse a pose table whose rows are not the saved frames, one each.

    Raises
    ------
    PoseError
        Naming the pose file, its rows and the frame count (and the video).
    """
    rows = int(pose.sizes["frame"])
    if rows != n_frames:
        src = source or pose.attrs.get("source", "pose data")
        where = f" of {video}" if video else ""
        raise PoseError(f"{src}: {rows} pose rows but {n_frames} saved frames{where}; expected "
                        "one row per saved frame (was the pose made from another video, or a "
                        "trimmed one?)")


def mask_low_likelihood(pose, threshold: float):
    """x and y set to NaN where ``likelihood < threshold`` (likelihood kept)."""
    low = pose["likelihood"] < threshold
    out = pose.copy()
    for name in ("x", "y"):
        out[name] = pose[name].where(~low)
    out.attrs["likelihood_threshold"] = float(threshold)
    return out


def pose_to_rate(
    pose,
    frame_times_s: np.ndarray,
    *,
    n_out: int,
    rate_hz: float = 1000.0,
    max_gap_periods: float = 1.5,
    start: int = 0,
    stop: int | None = None,
):
    """Linear interpolation of x, y, likelihood from frame times onto ``t = k / rate_hz``.

    Parameters
    ----------
    pose : xarray.Dataset
        Dims (frame, keypoint[, individual]); NaN stays NaN (an output sample needs both frames
        around it).
    frame_times_s : array
        Probe-clock time of each frame (increasing).
    n_out : int
        Output length (``floor(probe_duration_s * rate_hz)``).
    rate_hz : float
        Output rate.
    max_gap_periods : float
        Intervals between frames longer than this many median periods are NaN.
    start, stop : int
        Output sample range to compute (for chunked writing); default all.

    Returns
    -------
    xarray.Dataset
        Dims (time, keypoint[, individual]), float32.
    """
    import xarray as xr

    ft = np.asarray(frame_times_s, dtype=np.float64)
    if ft.ndim != 1 or ft.size != pose.sizes["frame"]:
        raise PoseError(f"{ft.size} frame times for {pose.sizes['frame']} pose rows")
    if ft.size < 2 or np.any(np.diff(ft) <= 0):
        raise PoseError("frame times must increase strictly (at least 2 frames)")
    stop = n_out if stop is None else min(stop, n_out)
    t = np.arange(start, stop, dtype=np.float64) / rate_hz
    period = float(np.median(np.diff(ft)))
    i = np.searchsorted(ft, t, side="right") - 1
    exact = (i >= 0) & (ft[np.clip(i, 0, ft.size - 1)] == t)  # on a frame: that frame's value
    inside = (i >= 0) & (i < ft.size - 1)
    ic = np.clip(i, 0, ft.size - 2)
    gap = ft[ic + 1] - ft[ic]
    a = np.where(inside, (t - ft[ic]) / gap, np.nan)
    a[~inside | (gap > max_gap_periods * period)] = np.nan
    hit = np.clip(i[exact], 0, ft.size - 1)
    out = {}
    for name in ("x", "y", "likelihood"):
        v = pose[name].values
        w = a.reshape((-1,) + (1,) * (v.ndim - 1))
        val = (1.0 - w) * v[ic] + w * v[ic + 1]  # NaN at either end gives NaN
        val[exact] = v[hit]
        out[name] = (("time",) + pose[name].dims[1:], val.astype(np.float32))
    coords = {"time": t}
    for dim in pose["x"].dims[1:]:
        coords[dim] = pose[dim].values
    return xr.Dataset(out, coords=coords)


# --------------------------------------------------------------------------- DeepLabCut run
def run_dlc(dlc_config: str | os.PathLike, video: str | os.PathLike, dest_dir: str | os.PathLike,
            *, shuffle: int = 1) -> Path:
    """Run ``deeplabcut.analyze_videos`` on one video; return its ``.h5`` output.

    Needs the optional ``[dlc]`` extra (DeepLabCut, imported here, not at module import).
    """
    try:
        import deeplabcut
    except ImportError as exc:
        raise PoseError(f"DeepLabCut is not installed (pip install 'pixbin[dlc]'); needed to run "
                        f"the project {dlc_config} on {video}") from exc
    video = Path(video)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.glob(f"{video.stem}DLC*.h5"))
    started = time.time()
    import inspect

    # DeepLabCut 3 renamed ``videotype`` to ``video_extensions``
    accepted = inspect.signature(deeplabcut.analyze_videos).parameters
    ext_key = "video_extensions" if "video_extensions" in accepted else "videotype"
    deeplabcut.analyze_videos(str(dlc_config), [str(video)], shuffle=shuffle, destfolder=str(dest),
                              save_as_csv=False, **{ext_key: video.suffix})
    found = [p for p in dest.glob(f"{video.stem}*.h5")
             if (p not in before or p.stat().st_mtime >= started - 1)
             and not p.name.endswith(("_full.h5", "_meta.h5"))]
    if not found:
        raise PoseError(f"{dest}: deeplabcut.analyze_videos left no {video.stem}*.h5 "
                        f"(config {dlc_config})")
    return max(found, key=lambda p: p.stat().st_mtime)


# --------------------------------------------------------------------------- stage
def _write_pose_h5(path: Path, pose, frame_times: np.ndarray, *, n_out: int, params: PoseParams,
                   attrs: dict[str, Any], chunk: int = 600_000) -> None:
    """Stream the 1 kHz pose into an h5netcdf file, ``chunk`` samples at a time."""
    import h5netcdf
    import h5py

    dims_extra = [d for d in pose["x"].dims[1:]]
    sizes = {d: int(pose.sizes[d]) for d in dims_extra}
    with atomic_path(path) as tmp, h5netcdf.File(tmp, "w") as f:
        f.dimensions = {"time": n_out, **sizes, "frame": int(frame_times.size)}
        v_time = f.create_variable("time", ("time",), "f8", chunks=(min(max(n_out, 1), 1 << 16),))
        v_time.attrs.update({"units": "s", "long_name": "probe clock (imec0 AP) time"})
        for d in dims_extra:
            labels = np.asarray([str(v) for v in pose[d].values], dtype=object)
            f.create_variable(d, (d,), dtype=h5py.string_dtype(), data=labels)
        var = f.create_variable("frame_time_s", ("frame",), "f8", data=frame_times)
        var.attrs.update({"units": "s", "long_name": "probe-clock time of each saved frame"})
        shape_chunk = (min(max(n_out, 1), 10_000),) + tuple(sizes[d] for d in dims_extra)
        variables = {}
        for name, unit in (("x", "px"), ("y", "px"), ("likelihood", "1")):
            v = f.create_variable(name, ("time", *dims_extra), "f4", chunks=shape_chunk,
                                  fillvalue=np.float32(np.nan))
            v.attrs["units"] = unit
            variables[name] = v
        for k0 in range(0, n_out, chunk):
            part = pose_to_rate(pose, frame_times, n_out=n_out, rate_hz=params.rate_hz,
                                max_gap_periods=params.max_gap_periods, start=k0, stop=k0 + chunk)
            k1 = k0 + part.sizes["time"]
            v_time[k0:k1] = part["time"].values
            for name, v in variables.items():
                v[k0:k1, ...] = part[name].values
        f.attrs.update(attrs)


def run_pose(
    *,
    camera_tdms: str | os.PathLike,
    camera_meta_tdms: str | os.PathLike,
    behaviour_tdms: str | os.PathLike,
    clock_map: ClockMapLike,
    probe_duration_s: float,
    interim_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    params: PoseParams = PoseParams(),
    dlc_output: str | os.PathLike | None = None,
    dlc_config: str | os.PathLike | None = None,
    make_video: bool = True,
) -> dict[str, Any]:
    """Camera TDMS → video, frame times and (with a DLC output or project) 1 kHz pose.

    Parameters
    ----------
    camera_tdms, camera_meta_tdms : path-like
        ``<camera>.tdms`` (frames) and ``<camera>meta.tdms`` (IMAQdx keys, ind_skipped). The
        camera name is the stem of ``camera_tdms``.
    behaviour_tdms : path-like
        Rig TDMS holding the exposure TTL (``params.ttl_channel``).
    clock_map : object with ``to_probe``
        Behaviour → probe map (:meth:`pixbin.clock.ClockMap.load` ``(processed, "behaviour")``).
    probe_duration_s : float
        Probe (AP) duration; the pose has ``floor(probe_duration_s * rate_hz)`` samples.
    interim_dir, out_dir : path-like
        Where the video goes (``interim/<session>/``) and the processed files
        (``processed/<session>/``).
    params : PoseParams
    dlc_output : path-like, optional
        An existing DeepLabCut .h5/.csv for this video (imported).
    dlc_config : path-like, optional
        A DeepLabCut project ``config.yaml``: run ``analyze_videos`` when no ``dlc_output`` is
        given; its ``pcutoff`` is the default likelihood threshold.
    make_video : bool
        Write the video (needed to run DLC); False skips it when only frame times are wanted.

    Returns
    -------
    dict
        ``camera``, ``video``, ``frames_json``, ``frame_times``, ``pose`` (or None), the
        reconciliation summary, ``likelihood_threshold``, ``seconds``.
    """
    started = time.perf_counter()
    params.validate()
    camera_tdms = Path(camera_tdms)
    camera = camera_tdms.stem
    out_dir, interim_dir = Path(out_dir), Path(interim_dir)
    meta = read_camera_meta(camera_meta_tdms)
    size = params.frame_size or (None, None)
    n_frames, height, width = camera_frame_size(camera_tdms, meta, height=size[0], width=size[1])
    ttl_s, behaviour_rate = frame_ttl_times(behaviour_tdms, params)
    rec = reconcile_frames(ttl_s, meta, clock_map, n_video_frames=n_frames, params=params)
    log.info("%s: %d TTL, %d saved, dropped %s (ind_skipped %s, timestamps %s)", camera,
             rec.n_ttl, rec.n_saved, rec.dropped_frame_indices, rec.dropped_by_ind_skipped,
             rec.dropped_by_timestamps)

    video = None
    if make_video or (dlc_output is None and dlc_config is not None):
        suffix = ".mp4" if params.video_codec == "libx264" else ".mkv"
        video = tdms_to_video(camera_tdms, interim_dir / f"{camera}{suffix}", n_frames=n_frames,
                              height=height, width=width, fps=rec.fps, codec=params.video_codec,
                              frames_per_chunk=params.frames_per_chunk)
    times_path = write_npy(out_dir / f"{camera}_frame_times.npy", rec.frame_times_s)
    parameters = dataclasses.asdict(params)
    summary = {
        "camera": camera,
        "video_tdms": str(camera_tdms), "meta_tdms": str(meta.path),
        "behaviour_tdms": str(behaviour_tdms), "ttl_channel": params.ttl_channel,
        "behaviour_rate_hz": behaviour_rate,
        "frame_height": height, "frame_width": width,
        **rec.to_dict(),
        "frame_times_file": times_path.name,
        "video": str(video) if video else None, "video_codec": params.video_codec,
        "provenance": provenance(parameters),
    }
    frames_json = write_json(out_dir / f"{camera}_frames.json", summary)

    pose_path = None
    threshold = params.likelihood_threshold
    if threshold is None and dlc_config is not None:
        threshold = read_pcutoff(dlc_config)
    if threshold is None:
        threshold = DLC_DEFAULT_PCUTOFF
    if dlc_output is None and dlc_config is not None:
        dlc_output = run_dlc(dlc_config, video, interim_dir / f"{camera}_dlc",
                             shuffle=params.dlc_shuffle)
    if dlc_output is not None:
        pose = read_dlc_output(dlc_output)
        check_pose_rows(pose, n_frames, source=dlc_output, video=video or camera_tdms)
        pose = mask_low_likelihood(pose, threshold)
        n_out = int(math.floor(round(probe_duration_s * params.rate_hz, 6)))
        pose_path = out_dir / f"{camera}_pose.h5"
        _write_pose_h5(pose_path, pose, rec.frame_times_s, n_out=n_out, params=params, attrs={
            "camera": camera,
            "source": str(dlc_output),
            "scorer": pose.attrs.get("scorer", ""),
            "multi_animal": int(pose.attrs.get("multi_animal", 0)),
            "frame_width_px": width, "frame_height_px": height,
            "coordinates": "image pixels, origin top-left, y downwards (as DeepLabCut writes them)",
            "likelihood_threshold": float(threshold),
            "max_gap_periods": params.max_gap_periods,
            "rate_hz": params.rate_hz,
            "clock": "probe (imec0 AP) seconds; t = k / rate_hz",
            "frames_file": frames_json.name,
            "provenance": json.dumps(provenance(parameters), default=str),
        })
    return {
        "camera": camera,
        "video": video,
        "frames_json": frames_json,
        "frame_times": times_path,
        "pose": pose_path,
        "likelihood_threshold": float(threshold),
        "reconciliation": rec.to_dict(),
        "seconds": time.perf_counter() - started,
    }

