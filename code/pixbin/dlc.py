"""DeepLabCut: a project's ``pcutoff``, DeepLabCut pose files (.h5/.csv) read into xarray, their
rows checked against the saved frames, and ``analyze_videos`` run on a video.

Pose files may be single- or multi-animal, from any scorer; the .h5 is read with h5py when
PyTables is not installed. DeepLabCut itself is the optional ``[dlc]`` extra, imported only by
:func:`run_dlc`. Used by the pose stage (:func:`pixbin.pose.run_pose`; see docs/LFP_POSE.md).
"""

from __future__ import annotations

import io
import os
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np

from pixbin.errors import PoseError

__all__ = [
    "read_pcutoff",
    "read_dlc_output",
    "check_pose_rows",
    "run_dlc",
]

#: DeepLabCut's own default ``pcutoff`` (config.yaml), used when neither a parameter nor a
#: project config gives one.
DLC_DEFAULT_PCUTOFF = 0.6


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
