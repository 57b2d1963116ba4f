"""Pose: camera TDMS → lossless video + frame times on the probe clock; DeepLabCut run or import;
pose → 1 kHz with a likelihood mask.

The stage (:func:`run_pose`, parameters :class:`PoseParams`) has three steps, each usable alone
(see docs/LFP_POSE.md):

1. **Frames** (:func:`pixbin.frames.reconcile_frames`). The camera's exposure TTL is matched to
   the saved frames (IMAQdx timestamps); dropped frames are located from ``ind_skipped`` and from
   the timestamp gaps. Both lists and whether they agree go to ``<camera>_frames.json``; drops
   never abort the stage.
2. **Video** (:func:`pixbin.video.tdms_to_video`): lossless ``libx264 -crf 0`` (.mp4) or FFV1
   (.mkv).
3. **Pose** (:func:`pixbin.dlc.read_dlc_output`, :func:`pixbin.dlc.run_dlc`, here
   :func:`mask_low_likelihood` and :func:`pose_to_rate`). A DeepLabCut output (.h5 or .csv,
   single- or multi-animal, any scorer) must have one row per saved frame; points below the
   likelihood threshold become NaN (never 0); pixel coordinates are kept as they are (no y flip)
   with the frame size recorded; x/y/likelihood are linearly interpolated onto the 1 kHz
   probe-clock grid between frames, NaN across gaps longer than ``max_gap_periods`` frame periods
   and outside the first/last frame.

:mod:`pixbin.frames` imports :class:`PoseParams` from here, so this module imports
:mod:`pixbin.frames` and :mod:`pixbin.video` (which uses it) inside :func:`run_pose`, not at the
top (no import cycle).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pixbin import layout
from pixbin.clock import ClockMapLike
from pixbin.dlc import DLC_DEFAULT_PCUTOFF, check_pose_rows, read_dlc_output, read_pcutoff, run_dlc
from pixbin.errors import ConfigError, PoseError
from pixbin.fileio import PROVENANCE_KEY, atomic_path, provenance, to_json, write_json, write_npy
from pixbin.params import params_from_dict

if TYPE_CHECKING:
    from pixbin.frames import CameraMeta, FrameReconciliation

__all__ = [
    "PoseParams",
    "mask_low_likelihood",
    "pose_to_rate",
    "run_pose",
]

log = logging.getLogger(__name__)


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
    dlc_output : str or None
        An existing DeepLabCut .h5/.csv for this video (imported).
    dlc_config : str or None
        A DeepLabCut project ``config.yaml``: run ``analyze_videos`` when no ``dlc_output`` is
        given; its ``pcutoff`` is the default likelihood threshold.
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
    dlc_output: str | None = None
    dlc_config: str | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PoseParams:
        """Build from a mapping; unknown keys and wrong types raise ConfigError."""
        return params_from_dict(cls, values, what="pose parameter")

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


# --------------------------------------------------------------------------- pose at 1 kHz
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


def _match_frames(camera_tdms: Path, camera_meta_tdms: str | os.PathLike,
                  behaviour_tdms: str | os.PathLike, clock_map: ClockMapLike, params: PoseParams
                  ) -> tuple[CameraMeta, int, int, int, float, FrameReconciliation]:
    """Step 1: camera meta, ``n_frames, height, width``, the behaviour rate and the frame
    reconciliation (:func:`pixbin.frames.reconcile_frames`)."""
    # imported here: pixbin.frames imports PoseParams from this module
    from pixbin.frames import (camera_frame_size, frame_ttl_times, read_camera_meta,
                               reconcile_frames)

    camera = camera_tdms.stem
    meta = read_camera_meta(camera_meta_tdms)
    size = params.frame_size or (None, None)
    n_frames, height, width = camera_frame_size(camera_tdms, meta, height=size[0], width=size[1])
    ttl_s, behaviour_rate = frame_ttl_times(behaviour_tdms, params)
    rec = reconcile_frames(ttl_s, meta, clock_map, n_video_frames=n_frames, params=params)
    log.info("%s: %d TTL, %d saved, dropped %s (ind_skipped %s, timestamps %s)", camera,
             rec.n_ttl, rec.n_saved, rec.dropped_frame_indices, rec.dropped_by_ind_skipped,
             rec.dropped_by_timestamps)
    return meta, n_frames, height, width, behaviour_rate, rec


def _write_video(camera_tdms: Path, interim_dir: Path, *, n_frames: int, height: int, width: int,
                 fps: float, params: PoseParams) -> Path:
    """Step 2: ``<interim_dir>/<camera>.mp4`` (libx264) or ``.mkv`` (FFV1)."""
    # imported here: pixbin.video imports pixbin.frames, which imports this module
    from pixbin.video import tdms_to_video

    video = layout.camera_video(interim_dir, camera_tdms.stem, params.video_codec)
    return tdms_to_video(camera_tdms, video, n_frames=n_frames,
                         height=height, width=width, fps=fps, codec=params.video_codec,
                         frames_per_chunk=params.frames_per_chunk)


def _write_frames(out_dir: Path, camera_tdms: Path, behaviour_tdms: str | os.PathLike, *,
                  meta: CameraMeta, behaviour_rate: float, height: int, width: int,
                  rec: FrameReconciliation, video: Path | None, params: PoseParams,
                  parameters: dict[str, Any]) -> tuple[Path, Path]:
    """``<camera>_frame_times.npy`` and ``<camera>_frames.json`` (the reconciliation summary)."""
    camera = camera_tdms.stem
    times_path = write_npy(layout.Processed(out_dir).frame_times(camera), rec.frame_times_s)
    summary = {
        "camera": camera,
        "video_tdms": layout.recorded_path(camera_tdms, out_dir),
        "meta_tdms": layout.recorded_path(meta.path, out_dir),
        "behaviour_tdms": layout.recorded_path(behaviour_tdms, out_dir),
        "ttl_channel": params.ttl_channel,
        "behaviour_rate_hz": behaviour_rate,
        "frame_height": height, "frame_width": width,
        **rec.to_dict(),
        "frame_times_file": times_path.name,
        "video": layout.recorded_path(video, out_dir), "video_codec": params.video_codec,
        "provenance": provenance(parameters),
    }
    frames_json = write_json(layout.Processed(out_dir).frames_json(camera), summary)
    return times_path, frames_json


def _pose_from_dlc(dlc_output: str | os.PathLike | None, dlc_config: str | os.PathLike | None,
                   camera_tdms: Path, interim_dir: Path, out_dir: Path, *, video: Path | None,
                   n_frames: int, height: int, width: int, frame_times: np.ndarray,
                   probe_duration_s: float, frames_json: Path, params: PoseParams,
                   parameters: dict[str, Any]) -> tuple[float, Path | None]:
    """Step 3: the likelihood threshold and, given a DLC output (or a project to run DeepLabCut
    with), ``<camera>_pose.h5``. Returns ``(threshold, pose file or None)``."""
    camera = camera_tdms.stem
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
        pose_path = layout.Processed(out_dir).pose(camera)
        _write_pose_h5(pose_path, pose, frame_times, n_out=n_out, params=params, attrs={
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
            PROVENANCE_KEY: to_json(provenance(parameters)),
        })
    return threshold, pose_path


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
        Includes ``dlc_output`` (a DeepLabCut file to import) or ``dlc_config`` (a project to run).
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
    dlc_output, dlc_config = params.dlc_output, params.dlc_config
    meta, n_frames, height, width, behaviour_rate, rec = _match_frames(
        camera_tdms, camera_meta_tdms, behaviour_tdms, clock_map, params)

    video = None
    if make_video or (dlc_output is None and dlc_config is not None):
        video = _write_video(camera_tdms, interim_dir, n_frames=n_frames, height=height,
                             width=width, fps=rec.fps, params=params)
    parameters = dataclasses.asdict(params)
    times_path, frames_json = _write_frames(
        out_dir, camera_tdms, behaviour_tdms, meta=meta, behaviour_rate=behaviour_rate,
        height=height, width=width, rec=rec, video=video, params=params, parameters=parameters)

    threshold, pose_path = _pose_from_dlc(
        dlc_output, dlc_config, camera_tdms, interim_dir, out_dir, video=video, n_frames=n_frames,
        height=height, width=width, frame_times=rec.frame_times_s,
        probe_duration_s=probe_duration_s, frames_json=frames_json, params=params,
        parameters=parameters)
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
