"""pixbin.pose, pixbin.frames, pixbin.video, pixbin.dlc: frame times and dropped frames vs
simulator truth, lossless video, DeepLabCut import (.h5/.csv, single/multi-animal, any scorer),
likelihood mask, 1 kHz resampling, real files, and (``-m dlc``) DeepLabCut itself."""

from __future__ import annotations

import dataclasses
import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from pixbin.errors import ConfigError, PoseError
from pixbin.dlc import check_pose_rows, read_dlc_output, read_pcutoff
from pixbin.frames import camera_frame_size, frame_ttl_times, read_camera_meta, reconcile_frames
from pixbin.pose import PoseParams, pose_to_rate, run_pose
from pixbin.video import count_video_frames, tdms_to_video
from pixbin.simulate import load_ground_truth, simulate_session
from pixbin.clock import ClockMap

SCORER = "DLC_resnet50_madeUpScorerOct7shuffle1_1234"


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pose_sim")
    return simulate_session(root, duration_s=30, seed=11, dropped_frames=3, compress=False,
                            write_ap=False, n_units=4)


@pytest.fixture(scope="module")
def truth(session) -> dict:
    return load_ground_truth(session)


@pytest.fixture(scope="module")
def clock_map(truth) -> ClockMap:
    b = truth["behaviour"]
    return ClockMap("behaviour", offset_s=b["offset_s"],
                    rate=b["rate_nominal_hz"] / b["rate_true_hz"])


@pytest.fixture(scope="module")
def frames(session, clock_map, truth, tmp_path_factory) -> dict:
    """run_pose without pose data: video, frames json, frame times."""
    out = tmp_path_factory.mktemp("pose_out")
    res = run_pose(camera_tdms=session / "USB_Camera.tdms",
                   camera_meta_tdms=session / "USB_Camerameta.tdms",
                   behaviour_tdms=session / "NeuropixelBehaviour(0).tdms", clock_map=clock_map,
                   probe_duration_s=truth["probe"]["duration_s"], interim_dir=out / "interim",
                   out_dir=out / "processed")
    return res


def _run(session, clock_map, truth, tmp_path, dlc_output=None, dlc_config=None, **kwargs) -> dict:
    params = kwargs.pop("params", PoseParams())
    params = dataclasses.replace(params, dlc_output=None if dlc_output is None else str(dlc_output),
                                 dlc_config=None if dlc_config is None else str(dlc_config))
    return run_pose(params=params,camera_tdms=session / "USB_Camera.tdms",
                    camera_meta_tdms=session / "USB_Camerameta.tdms",
                    behaviour_tdms=session / "NeuropixelBehaviour(0).tdms", clock_map=clock_map,
                    probe_duration_s=truth["probe"]["duration_s"], interim_dir=tmp_path / "interim",
                    out_dir=tmp_path / "processed", make_video=False, **kwargs)


# --------------------------------------------------------------------------- DLC files
def write_pandas_table_h5(path: Path, frame: pd.DataFrame, key: str = "df_with_missing") -> None:
    """Write ``frame`` as pandas ``to_hdf(format="table")`` does (DeepLabCut's format).

    Uses pandas/PyTables when installed; otherwise writes the same layout with h5py (the layout
    of the real DeepLabCut file in realdata/dlc/openfield-pose: a ``table`` of (index,
    values_block_0) and protocol-0 pickled column lists in the attributes).
    """
    try:
        import tables  # noqa: F401
    except ImportError:
        import h5py

        cols = [tuple(str(v) for v in c) for c in frame.columns]
        values = frame.to_numpy(np.float64)
        dt = np.dtype([("index", "<i8"), ("values_block_0", "<f8", (values.shape[1],))])
        rec = np.empty(len(frame), dt)
        rec["index"] = np.arange(len(frame))
        rec["values_block_0"] = values
        with h5py.File(path, "w") as f:
            g = f.create_group(key)
            g.attrs["pandas_type"] = np.bytes_(b"frame_table")
            g.attrs["table_type"] = np.bytes_(b"appendable_frame")
            g.attrs["values_cols"] = np.bytes_(pickle.dumps(["values_block_0"], protocol=0))
            g.attrs["non_index_axes"] = np.bytes_(pickle.dumps([(1, cols)], protocol=0))
            info = {1: {"names": list(frame.columns.names), "type": "MultiIndex"}, "index": {}}
            g.attrs["info"] = np.bytes_(pickle.dumps(info, protocol=0))
            t = g.create_dataset("table", data=rec)
            t.attrs["values_block_0_kind"] = np.bytes_(pickle.dumps(cols, protocol=0))
    else:
        frame.to_hdf(path, key=key, format="table", mode="w")


def dlc_frame(xy: dict, likelihood: dict, *, multi: bool) -> pd.DataFrame:
    """A DeepLabCut-shaped frame. ``xy[(individual, bodypart)] = (x, y)`` arrays."""
    columns, data = [], []
    for (ind, bp), (x, y) in xy.items():
        for coord, v in (("x", x), ("y", y), ("likelihood", likelihood[ind, bp])):
            columns.append((SCORER, ind, bp, coord) if multi else (SCORER, bp, coord))
            data.append(v)
    names = ["scorer", "individuals", "bodyparts", "coords"] if multi else \
        ["scorer", "bodyparts", "coords"]
    index = pd.MultiIndex.from_tuples(columns, names=names)
    return pd.DataFrame(np.column_stack(data), columns=index)


def write_dlc(path: Path, frame: pd.DataFrame) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path)
    else:
        write_pandas_table_h5(path, frame)
    return path


def truth_tracks(truth: dict) -> dict:
    a = truth["arrays"]
    saved = a["frame_saved"]
    w, h = truth["camera"]["width"], truth["camera"]["height"]
    return {
        ("mouse1", "marker"): (a["marker_x"][saved], a["marker_y"][saved]),
        ("mouse2", "marker"): (w - a["marker_x"][saved], h - a["marker_y"][saved]),
    }


# --------------------------------------------------------------------------- frames
def test_dropped_frames_located_and_frame_times_within_0p1_ms(frames, truth):
    rec = frames["reconciliation"]
    cam = truth["camera"]
    assert rec["n_ttl"] == cam["n_exposures"] and rec["n_saved"] == cam["n_saved"]
    assert rec["n_imaqdx"] == cam["n_saved"]
    assert rec["dropped_frame_indices"] == cam["dropped_frame_indices"]
    assert rec["dropped_by_ind_skipped"] == cam["dropped_frame_indices"]
    assert rec["dropped_by_timestamps"] == cam["dropped_frame_indices"]
    assert rec["dropped_agree"] is True
    times = np.load(frames["frame_times"])
    a = truth["arrays"]
    expect = a["frame_times_s"][a["frame_saved"]]
    assert times.shape == expect.shape
    assert np.abs(times - expect).max() < 1e-4
    assert rec["fps"] == pytest.approx(cam["fps"], rel=1e-3)
    assert rec["residual_us"]["max"] < 100


def test_frames_json_records_reconciliation(frames, truth):
    import json

    doc = json.loads(Path(frames["frames_json"]).read_text())
    assert frames["frames_json"].name == "USB_Camera_frames.json"
    for key in ("n_ttl", "n_saved", "n_imaqdx", "dropped_frame_indices", "dropped_by_ind_skipped",
                "dropped_by_timestamps", "dropped_agree", "fps", "frame_width", "frame_height",
                "provenance", "frame_times_file"):
        assert key in doc
    assert doc["frame_width"] == truth["camera"]["width"]
    assert doc["frame_height"] == truth["camera"]["height"]


def test_video_is_lossless_and_has_every_saved_frame(frames, session, truth):
    import imageio_ffmpeg
    from pixbin import tdms

    video = frames["video"]
    assert video.suffix == ".mp4" and video.parent.name == "interim"
    n, h, w = truth["camera"]["n_saved"], truth["camera"]["height"], truth["camera"]["width"]
    assert count_video_frames(video) == n
    raw = tdms.read_channel(session / "USB_Camera.tdms", "Image", "Image", 0, 40 * h * w)
    gen = imageio_ffmpeg.read_frames(str(video), pix_fmt="gray", bpp=1)
    next(gen)
    back = np.stack([np.frombuffer(next(gen), np.uint8) for _ in range(40)])
    gen.close()
    np.testing.assert_array_equal(back.reshape(-1), raw)


def test_ffv1_video_is_lossless(session, tmp_path):
    import imageio_ffmpeg
    from pixbin import tdms

    meta = read_camera_meta(session / "USB_Camerameta.tdms")
    n, h, w = camera_frame_size(session / "USB_Camera.tdms", meta)
    out = tdms_to_video(session / "USB_Camera.tdms", tmp_path / "cam.mkv", n_frames=n, height=h,
                        width=w, fps=30.0, codec="ffv1", frames_per_chunk=50)
    assert count_video_frames(out) == n
    raw = tdms.read_channel(session / "USB_Camera.tdms", "Image", "Image")
    back = b"".join(list(imageio_ffmpeg.read_frames(str(out), pix_fmt="gray", bpp=1))[1:])
    np.testing.assert_array_equal(np.frombuffer(back, np.uint8), raw)


def test_drop_lists_disagreeing_are_reported_not_fatal(session, clock_map, truth):
    meta = read_camera_meta(session / "USB_Camerameta.tdms")
    ttl, _ = frame_ttl_times(session / "NeuropixelBehaviour(0).tdms")
    drops = truth["camera"]["dropped_frame_indices"]
    wrong = dataclasses.replace(meta, ind_skipped=np.array(drops[:-1] + [drops[-1] - 1]))
    rec = reconcile_frames(ttl, wrong, clock_map)
    assert rec.dropped_agree is False
    assert rec.dropped_by_timestamps == drops and rec.dropped_frame_indices == drops
    a = truth["arrays"]
    assert np.abs(rec.frame_times_s - a["frame_times_s"][a["frame_saved"]]).max() < 1e-4
    # no ind_skipped written at all: the timestamps alone find the drops
    none = dataclasses.replace(meta, ind_skipped=np.zeros(0, np.int64))
    rec = reconcile_frames(ttl, none, clock_map)
    assert rec.dropped_frame_indices == drops and rec.dropped_by_ind_skipped == []
    assert rec.dropped_agree is False


def test_leading_unsaved_exposures_listed_in_ind_skipped(session, clock_map, truth):
    """The camera exposed (and pulsed) twice before the first saved frame."""
    meta = read_camera_meta(session / "USB_Camerameta.tdms")
    ttl, _ = frame_ttl_times(session / "NeuropixelBehaviour(0).tdms")
    period = np.median(np.diff(ttl))
    ttl2 = np.r_[ttl[0] - 2 * period, ttl[0] - period, ttl]
    meta2 = dataclasses.replace(meta, ind_skipped=np.r_[0, 1, meta.ind_skipped + 2])
    rec = reconcile_frames(ttl2, meta2, clock_map)
    shifted = [d + 2 for d in truth["camera"]["dropped_frame_indices"]]
    assert rec.exposure_index[0] == 2 and rec.n_ttl_before_first_saved == 2
    assert rec.dropped_by_ind_skipped == [0, 1] + shifted
    assert rec.dropped_frame_indices == shifted and rec.dropped_by_timestamps == shifted
    assert rec.dropped_agree is True
    a = truth["arrays"]
    assert np.abs(rec.frame_times_s - a["frame_times_s"][a["frame_saved"]]).max() < 1e-4


def test_explicit_thresholds_and_missing_ttl_channel(session):
    auto, rate = frame_ttl_times(session / "NeuropixelBehaviour(0).tdms")
    fixed, _ = frame_ttl_times(session / "NeuropixelBehaviour(0).tdms",
                               PoseParams(ttl_thresholds_v=(1.0, 4.0), chunk_samples=100_000))
    assert auto.size == fixed.size and np.abs(auto - fixed).max() < 2 / rate
    with pytest.raises(PoseError, match="LeftCamFrames"):
        frame_ttl_times(session / "NeuropixelBehaviour(0).tdms",
                        PoseParams(ttl_channel="LeftCamFrames"))


def test_frame_count_mismatch_is_refused(session, clock_map):
    meta = read_camera_meta(session / "USB_Camerameta.tdms")
    ttl, _ = frame_ttl_times(session / "NeuropixelBehaviour(0).tdms")
    with pytest.raises(PoseError, match="IMAQdx timestamps but the video holds"):
        reconcile_frames(ttl, meta, clock_map, n_video_frames=meta.n_frames - 1)
    cut = dataclasses.replace(meta, timestamps_us=meta.timestamps_us[:-7],
                              heights=meta.heights[:-7])
    with pytest.raises(PoseError, match="not a whole number of"):
        camera_frame_size(session / "USB_Camera.tdms", cut)
    no_height = dataclasses.replace(meta, heights=np.zeros(0, np.int64))
    with pytest.raises(PoseError, match="frame_size"):
        camera_frame_size(session / "USB_Camera.tdms", no_height)
    assert camera_frame_size(session / "USB_Camera.tdms", no_height, height=48) == (
        meta.n_frames, 48, 64)


# --------------------------------------------------------------------------- pose import
@pytest.mark.parametrize("suffix", [".h5", ".csv"])
def test_single_animal_pose_at_1khz_matches_truth(session, clock_map, truth, tmp_path, suffix):
    tracks = truth_tracks(truth)
    x, y = tracks["mouse1", "marker"]
    n = x.size
    like = np.full(n, 0.95)
    masked = np.arange(400, 404)
    like[masked] = 0.2
    frame = dlc_frame({("", "marker"): (x, y)}, {("", "marker"): like}, multi=False)
    path = write_dlc(tmp_path / f"USB_CameraDLC_{suffix[1:]}{suffix}", frame)
    res = _run(session, clock_map, truth, tmp_path, dlc_output=path)
    assert res["pose"].name == "USB_Camera_pose.h5" and res["likelihood_threshold"] == 0.6
    with xr.open_dataset(res["pose"], engine="h5netcdf") as ds:
        ds = ds.load()
    n_out = math.floor(truth["probe"]["duration_s"] * 1000)
    assert ds["x"].dims == ("time", "keypoint") and ds.sizes["time"] == n_out
    assert list(ds["keypoint"].values) == ["marker"]
    assert ds["x"].dtype == np.float32 and ds["likelihood"].dtype == np.float32
    np.testing.assert_array_equal(ds["time"].values, np.arange(n_out) / 1000.0)
    assert ds.attrs["frame_width_px"] == 64 and ds.attrs["frame_height_px"] == 48
    assert ds.attrs["likelihood_threshold"] == 0.6 and ds.attrs["scorer"] == SCORER

    t = ds["time"].values
    a = truth["arrays"]
    ft_all = a["frame_times_s"]
    ft = ft_all[a["frame_saved"]]
    got_x, got_y = ds["x"].values[:, 0], ds["y"].values[:, 0]
    # truth trajectory at 1 kHz (linear between all exposures, as the 1 kHz pose is)
    tx = np.interp(t, ft_all, a["marker_x"])
    ty = np.interp(t, ft_all, a["marker_y"])
    valid = np.isfinite(got_x)
    assert valid.sum() > 0.9 * ((t > ft[0]) & (t < ft[-1])).sum()
    np.testing.assert_allclose(got_x[valid], tx[valid], atol=0.02)
    np.testing.assert_allclose(got_y[valid], ty[valid], atol=0.02)
    # NaN (never 0): outside the first/last frame, across dropped-frame gaps, around masked frames
    assert np.isnan(got_x[t < ft[0]]).all() and np.isnan(got_x[t > ft[-1]]).all()
    for d in truth["camera"]["dropped_frame_indices"]:
        gap = (t > ft_all[d - 1]) & (t < ft_all[d + 1])
        assert np.isnan(got_x[gap]).all()
    around = (t > ft[masked[0] - 1]) & (t < ft[masked[-1] + 1])
    assert np.isnan(got_x[around]).all() and np.isnan(got_y[around]).all()
    assert not np.any(got_x[valid] == 0)
    np.testing.assert_allclose(ds["likelihood"].values[valid, 0][
        ~np.isin(np.searchsorted(ft, t[valid]) - 1, masked - 1)], 0.95, atol=1e-6)
    np.testing.assert_allclose(ds["frame_time_s"].values, ft, atol=1e-4)


@pytest.mark.parametrize("suffix", [".h5", ".csv"])
def test_multi_animal_pose(session, clock_map, truth, tmp_path, suffix):
    tracks = truth_tracks(truth)
    n = tracks["mouse1", "marker"][0].size
    like = {k: np.full(n, 0.9) for k in tracks}
    like["mouse2", "marker"][100:110] = 0.01
    frame = dlc_frame(tracks, like, multi=True)
    path = write_dlc(tmp_path / f"USB_CameraDLC_ma{suffix}", frame)
    res = _run(session, clock_map, truth, tmp_path, dlc_output=path,
               params=PoseParams(likelihood_threshold=0.05))
    with xr.open_dataset(res["pose"], engine="h5netcdf") as ds:
        ds = ds.load()
    assert ds["x"].dims == ("time", "keypoint", "individual")
    assert list(ds["individual"].values) == ["mouse1", "mouse2"]
    assert ds.attrs["multi_animal"] == 1 and ds.attrs["likelihood_threshold"] == 0.05
    x1 = ds["x"].sel(individual="mouse1", keypoint="marker").values
    x2 = ds["x"].sel(individual="mouse2", keypoint="marker").values
    both = np.isfinite(x1) & np.isfinite(x2)
    np.testing.assert_allclose(x1[both] + x2[both], truth["camera"]["width"], atol=1e-3)
    assert np.isnan(x2).sum() > np.isnan(x1).sum()  # mouse2's masked frames


def test_pcutoff_from_dlc_config_and_rows_checked(session, clock_map, truth, tmp_path, realdata):
    config = realdata / "dlc" / "openfield-pose" / "config.yaml"
    assert read_pcutoff(config) == 0.4
    tracks = truth_tracks(truth)
    x, y = tracks["mouse1", "marker"]
    frame = dlc_frame({("", "marker"): (x, y)}, {("", "marker"): np.full(x.size, 0.5)}, multi=False)
    path = write_dlc(tmp_path / "pose.csv", frame)
    res = _run(session, clock_map, truth, tmp_path, dlc_output=path, dlc_config=config)
    assert res["likelihood_threshold"] == 0.4  # from config.yaml; DLC itself is not run
    with xr.open_dataset(res["pose"], engine="h5netcdf") as ds:
        assert np.isfinite(ds["x"].values).any()
    short = write_dlc(tmp_path / "short.csv", frame.iloc[:-1])
    with pytest.raises(PoseError, match=rf"short.csv: {x.size - 1} pose rows but {x.size} saved"):
        _run(session, clock_map, truth, tmp_path / "b", dlc_output=short)


# --------------------------------------------------------------------------- 1 kHz resampling
def test_pose_to_rate_rules():
    ft = np.array([0.0100, 0.0433, 0.0767, 0.1100, 0.1767, 0.2100])  # one frame lost after 0.11
    x = np.array([1.0, 2.0, 3.0, 4.0, 6.0, np.nan])
    pose = xr.Dataset({"x": (("frame", "keypoint"), x[:, None]),
                       "y": (("frame", "keypoint"), 2 * x[:, None]),
                       "likelihood": (("frame", "keypoint"), np.ones((6, 1)))},
                      coords={"frame": np.arange(6), "keypoint": ["a"]})
    out = pose_to_rate(pose, ft, n_out=250, rate_hz=1000.0, max_gap_periods=1.5)
    v = out["x"].values[:, 0]
    assert out["x"].dims == ("time", "keypoint") and v.dtype == np.float32
    assert np.isnan(v[:10]).all() and v[10] == 1.0
    assert v[27] == pytest.approx(1 + (0.027 - 0.010) / 0.0333, rel=1e-6)
    assert np.isfinite(v[10:110]).all() and v[110] == 4.0
    assert np.isnan(v[111:177]).all()  # a 2-period gap
    assert np.isnan(v[177:]).all()  # next frame masked (NaN), then past the last frame
    chunked = np.concatenate([
        pose_to_rate(pose, ft, n_out=250, start=s, stop=s + 37)["x"].values[:, 0]
        for s in range(0, 250, 37)])
    np.testing.assert_array_equal(chunked, v)
    with pytest.raises(PoseError, match="increase"):
        pose_to_rate(pose, ft[::-1], n_out=10)


# --------------------------------------------------------------------------- real files
def test_real_dlc_pose_matches_real_video(realdata):
    pose_file = (realdata / "dlc" / "openfield-pose"
                 / "m3v1mp4DLC_resnet50_openfieldAug20shuffle1_30000.h5")
    video = (realdata / "dlc" / "labeled-projects" / "openfield-Pranav-2018-10-30" / "videos"
             / "m3v1mp4.mp4")
    pose = read_dlc_output(pose_file)
    assert pose.sizes == {"frame": 2330, "keypoint": 4}
    assert list(pose["keypoint"].values) == ["snout", "leftear", "rightear", "tailbase"]
    assert pose.attrs["scorer"] == "DLC_resnet50_openfieldAug20shuffle1_30000"
    np.testing.assert_allclose(pose["x"].values[0, 0], 77.29780579, rtol=1e-9)
    np.testing.assert_allclose(pose["likelihood"].values[0, 0], 0.99544525, rtol=1e-7)
    n_frames = count_video_frames(video)
    assert n_frames == 2330
    check_pose_rows(pose, n_frames, video=video)
    with pytest.raises(PoseError, match=r"2329 pose rows but 2330 saved frames"):
        check_pose_rows(pose.isel(frame=slice(0, -1)), n_frames, source=pose_file, video=video)


def test_real_labelled_data_csv_and_h5_agree(realdata):
    folder = (realdata / "dlc" / "labeled-projects" / "Reaching-Mackenzie-2018-08-30"
              / "labeled-data" / "reachingvideo1")
    from_csv = read_dlc_output(folder / "CollectedData_Mackenzie.csv")
    from_h5 = read_dlc_output(folder / "CollectedData_Mackenzie.h5")
    assert from_csv.attrs["scorer"] == "Mackenzie" and from_csv.sizes["keypoint"] >= 4
    np.testing.assert_allclose(from_csv["x"].values, from_h5["x"].values)
    np.testing.assert_allclose(from_csv["y"].values, from_h5["y"].values)


def test_csv_with_three_index_columns(tmp_path):
    """DeepLabCut >= 2.2 labelled-data CSVs index rows by (folder, video, image)."""
    cols = pd.MultiIndex.from_product([["someone"], ["a", "b"], ["x", "y"]],
                                      names=["scorer", "bodyparts", "coords"])
    idx = pd.MultiIndex.from_tuples([("labeled-data", "v", f"img{i}.png") for i in range(3)])
    pd.DataFrame(np.arange(12.0).reshape(3, 4), index=idx, columns=cols).to_csv(tmp_path / "l.csv")
    ds = read_dlc_output(tmp_path / "l.csv")
    assert ds.sizes == {"frame": 3, "keypoint": 2} and ds.attrs["scorer"] == "someone"
    np.testing.assert_array_equal(ds["x"].values, [[0, 2], [4, 6], [8, 10]])
    np.testing.assert_array_equal(ds["likelihood"].values, np.ones((3, 2)))


def test_params_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="valid"):
        PoseParams.from_dict({"pcutoff": 0.5})
    with pytest.raises(ConfigError):
        PoseParams(likelihood_threshold=1.5).validate()
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(PoseError, match="not a DeepLabCut CSV"):
        read_dlc_output(bad)
    with pytest.raises(PoseError, match="not found"):
        read_dlc_output(tmp_path / "nope.h5")


# --------------------------------------------------------------------------- DeepLabCut itself
@pytest.mark.dlc
@pytest.mark.slow
def test_deeplabcut_train_and_analyze_end_to_end(tmp_path):
    """Trains a DeepLabCut (PyTorch, ResNet-50) model from scratch on 12 labelled simulated frames
    for 1 epoch on the CPU, then run_pose runs analyze_videos on the converted video and imports
    its output (skipped without DeepLabCut; minutes on 2 cores)."""
    deeplabcut = pytest.importorskip("deeplabcut")
    import imageio.v3 as iio
    import imageio_ffmpeg
    import yaml
    from deeplabcut.core.engine import Engine

    sess = simulate_session(tmp_path, duration_s=12, seed=5, write_ap=False, compress=False,
                            frame_height=96, frame_width=128, n_units=2)
    truth = load_ground_truth(sess)
    meta = read_camera_meta(sess / "USB_Camerameta.tdms")
    n, h, w = camera_frame_size(sess / "USB_Camera.tdms", meta)
    video = tdms_to_video(sess / "USB_Camera.tdms", tmp_path / "labelling" / "USB_Camera.mp4",
                          n_frames=n, height=h, width=w, fps=30.0)
    config = deeplabcut.create_new_project("pixbin", "sim", [str(video)],
                                           working_directory=str(tmp_path), copy_videos=False)
    cfg = yaml.safe_load(Path(config).read_text())
    cfg.update(bodyparts=["marker"], skeleton=[], pcutoff=0.3)
    Path(config).write_text(yaml.safe_dump(cfg))
    labelled = Path(config).parent / "labeled-data" / video.stem
    labelled.mkdir(parents=True, exist_ok=True)
    a = truth["arrays"]
    mx, my = a["marker_x"][a["frame_saved"]], a["marker_y"][a["frame_saved"]]
    gen = imageio_ffmpeg.read_frames(str(video), pix_fmt="gray", bpp=1)
    next(gen)
    images = np.stack([np.frombuffer(b, np.uint8).reshape(h, w) for b in gen])
    pick = np.linspace(0, n - 1, 12).astype(int)
    rows = []
    for i in pick:
        name = f"img{i:04d}.png"
        iio.imwrite(labelled / name, np.repeat(images[i][:, :, None], 3, axis=2))
        rows.append(("labeled-data", video.stem, name))
    cols = pd.MultiIndex.from_product([["sim"], ["marker"], ["x", "y"]],
                                      names=["scorer", "bodyparts", "coords"])
    pd.DataFrame(np.c_[mx[pick], my[pick]], index=pd.MultiIndex.from_tuples(rows),
                 columns=cols).to_hdf(labelled / "CollectedData_sim.h5", key="keypoints", mode="w")
    deeplabcut.create_training_dataset(config, net_type="resnet_50", engine=Engine.PYTORCH,
                                       userfeedback=False)
    # No network here: DeepLabCut would fetch ImageNet weights for the backbone unless training
    # resumes from a snapshot, so start from a randomly initialised one.
    import torch
    from deeplabcut.pose_estimation_pytorch.models.model import PoseModel

    models = Path(config).parent / "dlc-models-pytorch"
    train_cfg = next(models.rglob("train/pytorch_config.yaml"))
    model_cfg = yaml.safe_load(train_cfg.read_text())["model"]
    model = PoseModel.build(model_cfg, pretrained_backbone=False)
    init = train_cfg.parent / "random-init.pt"
    torch.save({"model": model.state_dict(), "metadata": {"epoch": 0}}, init)
    deeplabcut.train_network(config, shuffle=1, epochs=1, save_epochs=1, batch_size=4,
                             device="cpu", snapshot_path=str(init))
    b = truth["behaviour"]
    cmap = ClockMap("behaviour", offset_s=b["offset_s"],
                    rate=b["rate_nominal_hz"] / b["rate_true_hz"])
    res = run_pose(camera_tdms=sess / "USB_Camera.tdms",
                   camera_meta_tdms=sess / "USB_Camerameta.tdms",
                   behaviour_tdms=sess / "NeuropixelBehaviour(0).tdms", clock_map=cmap,
                   probe_duration_s=truth["probe"]["duration_s"], interim_dir=tmp_path / "interim",
                   out_dir=tmp_path / "processed", params=PoseParams(dlc_config=str(config)))
    assert res["likelihood_threshold"] == 0.3
    with xr.open_dataset(res["pose"], engine="h5netcdf") as ds:
        assert list(ds["keypoint"].values) == ["marker"]
        assert ds.sizes["frame"] == n
        assert ds.sizes["time"] == math.floor(truth["probe"]["duration_s"] * 1000)

