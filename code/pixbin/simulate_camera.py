"""The simulated camera: exposures of a moving marker, some frames not saved, and its two TDMS.

Exposures are on the probe clock; IMAQdx stamps them on a clock of its own (35 ppm off).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pixbin.simulate import SimulationParams

__all__ = ["camera_exposures", "write_camera"]


def camera_exposures(
    p: SimulationParams, rng: np.random.Generator, overlap: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exposure times (TTL) across the overlap, which of them are saved, and the marker's path.

    Parameters
    ----------
    p : SimulationParams
        ``camera_fps``, ``dropped_frames`` and the frame size are read.
    rng : numpy.random.Generator
        Where the jitter and the dropped frames are drawn.
    overlap : (float, float)
        Probe times (s) when both the probe and the behaviour DAQ record.

    Returns
    -------
    frame_times : ndarray
        Exposure onsets (s, probe clock).
    saved : ndarray of bool
        Whether each exposure's frame was saved.
    marker_xy : ndarray, shape (n_exposures, 2)
        The marker's (x, y) in pixels at each exposure.
    """
    fps = p.camera_fps
    frame_times = np.arange(overlap[0] + 0.2, overlap[1] - 0.2, 1.0 / fps)
    frame_times = frame_times + rng.normal(0, 0.0002, frame_times.size)
    saved = np.ones(frame_times.size, dtype=bool)
    if p.dropped_frames:
        drop = rng.choice(np.arange(5, frame_times.size - 5), size=p.dropped_frames,
                          replace=False)
        saved[drop] = False
    marker_xy = np.column_stack([
        p.frame_width / 2 + 0.35 * p.frame_width * np.sin(2 * np.pi * 0.13 * frame_times),
        p.frame_height / 2 + 0.35 * p.frame_height * np.sin(2 * np.pi * 0.07 * frame_times + 1),
    ])
    return frame_times, saved, marker_xy


def write_camera(
    video_path: Path,
    meta_path: Path,
    p: SimulationParams,
    frame_times: np.ndarray,
    saved: np.ndarray,
    marker_xy: np.ndarray,
    rng_seed: int,
) -> None:
    """Write ``USB_Camera.tdms`` (the saved frames) and ``USB_Camerameta.tdms`` (their stamps).

    Parameters
    ----------
    video_path, meta_path : Path
        The two TDMS files to write.
    p : SimulationParams
        ``frame_height`` and ``frame_width`` are read.
    frame_times, saved, marker_xy
        From :func:`camera_exposures`.
    rng_seed : int
        Seed of the IMAQdx clock's origin and of the pixel noise (drawn per 300 frames).
    """
    from nptdms import ChannelObject, TdmsWriter

    h, w = p.frame_height, p.frame_width
    yy, xx = np.mgrid[0:h, 0:w]
    cam_ppm = 35.0
    base_us = 3_600_000_000_000 + int(np.random.default_rng(rng_seed).integers(0, 1 << 30))
    saved_idx = np.flatnonzero(saved)
    with TdmsWriter(video_path) as writer:
        for k in range(0, saved_idx.size, 300):
            idx = saved_idx[k : k + 300]
            rng = np.random.default_rng([rng_seed, 4, k])
            frames = rng.normal(20, 3, size=(idx.size, h, w))
            for j, i in enumerate(idx):
                x, y = marker_xy[i]
                frames[j] += 200 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.0**2))
            pixels = np.clip(np.round(frames), 0, 255).astype(np.uint8).ravel()
            writer.write_segment([ChannelObject("Image", "Image", pixels)])
    stamps = base_us + np.round(frame_times[saved] * 1e6 * (1 + cam_ppm * 1e-6)).astype(np.int64)
    with TdmsWriter(meta_path) as writer:
        writer.write_segment([
            ChannelObject("keys", "IMAQdxTimestampHigh", (stamps >> 32).astype(np.uint32)),
            ChannelObject("keys", "IMAQdxTimestampLow", (stamps & 0xFFFFFFFF).astype(np.uint32)),
            ChannelObject("keys", "IMAQdxActualHeight", np.full(saved_idx.size, h, np.uint32)),
            ChannelObject("frames", "ind_skipped", np.flatnonzero(~saved).astype(np.int32)),
        ])
