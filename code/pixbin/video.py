"""Video: the frames of a camera TDMS streamed into a lossless video, and a video's frame count.

The second step of the pose stage (:func:`pixbin.pose.run_pose`; see docs/LFP_POSE.md). Frames
are streamed from the TDMS into ffmpeg (imageio-ffmpeg): ``libx264 -crf 0`` (.mp4, lossless for
8-bit grey) or FFV1 (.mkv).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np

from pixbin.errors import PoseError
from pixbin.fileio import atomic_path
from pixbin.frames import _video_channel
from pixbin.progress import stage_bar

__all__ = [
    "tdms_to_video",
    "count_video_frames",
]

log = logging.getLogger(__name__)


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
        Frame count and size (see :func:`pixbin.frames.camera_frame_size`).
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
        bar = stage_bar(f"video {path.name}", total=n_frames, unit="frame")
        try:
            chunks = tdms.iter_chunks(path, [key], chunk_samples=frames_per_chunk * frame_px)
            for _, chunk in chunks:
                pixels = np.ascontiguousarray(chunk[key], dtype=np.uint8)
                for frame in pixels.reshape(-1, height, width):
                    writer.send(frame)
                    written += 1
                bar.update(pixels.size // frame_px)
        finally:
            bar.close()
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
