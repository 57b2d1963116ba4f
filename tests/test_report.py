"""The session report: every section present, every image a PNG that exists, absent inputs shown
as notes (never a figure), and the page rendered by a headless browser with all images loaded."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from pixbin import report
from pixbin.pipeline import PipelineConfig, process_sessions
from pixbin.simulate import SIMULATED_RIG_CONFIG, simulate_session, write_ground_truth_dlc, write_ground_truth_phy

SID = "240101_SIM01"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXPECTED_FIGURES = {"sync_0.png", "drift_imec0.png", "unit_metrics.png", "units_depth.png",
                    "behaviour.png", "raster_rewarded_push.png", "raster_missed_tone.png",
                    "lfp_imec0.png", "frames_USB_Camera.png", "pose_USB_Camera.png"}


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A 30 s simulated session processed with ground-truth sorting and pose, then reported."""
    root = tmp_path_factory.mktemp("report")
    raw = simulate_session(root, session_id=SID, duration_s=30, seed=11, n_units=12,
                           write_ap=False, compress=False)
    phy = write_ground_truth_phy(raw, root / "truth_phy")
    dlc = write_ground_truth_dlc(raw, root / "USB_CameraDLC_resnet50_sim.csv")
    config = PipelineConfig.from_dict({**SIMULATED_RIG_CONFIG,
                                       "spikes": {"phy_folders": {"imec0": str(phy)}},
                                       "pose": {"dlc_output": str(dlc)}})
    results = process_sessions(root, [SID], config, scheduler="serial")
    assert {r["status"] for r in results[SID].values()} == {"done"}
    paths = report.write_report(root)
    return {"root": root, "paths": paths, "phy": phy}


def _images(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def _is_png(path) -> bool:
    with open(path, "rb") as f:
        head = f.read(24)
    return head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR"


def _copy_session(src_root, dst_root, leave_out=()):
    """A copy of the processed session without some of its files (the LFP is always left out
    unless asked for: it is the big one)."""
    src = src_root / "processed" / SID
    dst = dst_root / "processed" / SID
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("report", *leave_out))
    return dst


def test_every_section_and_every_image(reported):
    index, dataset_page = reported["paths"]
    assert index == reported["root"] / "processed" / SID / "report" / "index.html"
    page = index.read_text()
    for key, title, _ in report.SECTIONS:
        assert f'<section id="{key}">' in page and title in page
    assert "could not be drawn" not in page
    images = _images(page)
    assert set(images) == EXPECTED_FIGURES
    for name in images:
        assert "/" not in name  # beside index.html, relative
        assert _is_png(index.parent / name), name
    assert {p.name for p in index.parent.iterdir()} == EXPECTED_FIGURES | {"index.html"}
    # sync table, stage records, the waveform note (the ground-truth phy folder has no templates)
    assert "decided_by" in page and "<td>proof</td>" in page and "behaviour</td>" in page
    for stage in ["extract", "sync", "behaviour", "spikes", "lfp", "pose"]:
        assert f"<td>{stage}</td><td>done</td>" in page
    assert "waveforms skipped for imec0: no templates.npy" in page
    assert "tone_onset_s → back_sensor_open_s" in page
    listing = dataset_page.read_text()
    assert dataset_page == reported["root"] / "processed" / "report.html"
    link = f'href="{SID}/report/index.html"'
    assert link in listing and (dataset_page.parent / SID / "report" / "index.html").is_file()


def test_absent_inputs_are_notes_not_figures(reported, tmp_path):
    _copy_session(reported["root"], tmp_path,
                  leave_out=("imec0.lf_processed.h5", "trials.parquet", "sync_0.png",
                             "USB_Camera_pose.h5"))
    index = report.write_session_report(tmp_path, SID)
    page = index.read_text()
    for name in ["trials.parquet", "imec0.lf_processed.h5", "sync_0.png", "USB_Camera_pose.h5"]:
        assert f"skipped: {name} is absent" in page
    images = set(_images(page))
    assert images == {"drift_imec0.png", "unit_metrics.png", "units_depth.png",
                      "frames_USB_Camera.png"}
    assert {p.name for p in index.parent.iterdir()} == images | {"index.html"}
    # re-running replaces the folder whole: no figure of an earlier report stays behind
    (tmp_path / "processed" / SID / "units.parquet").unlink()
    page = report.write_session_report(tmp_path, SID).read_text()
    assert set(_images(page)) == {"frames_USB_Camera.png"}
    assert "skipped: units.parquet is absent" in page


def test_waveforms_from_a_phy_folder_with_templates(reported, tmp_path, monkeypatch):
    phy = shutil.copytree(reported["phy"], tmp_path / "phy")
    clusters = np.load(phy / "spike_clusters.npy")
    n_units, n_t = int(clusters.max()) + 1, 61
    shape = -np.exp(-0.5 * ((np.arange(n_t) - 30) / 3.0) ** 2)
    templates = np.zeros((n_units, n_t, 385), np.float32)
    channels = np.loadtxt(phy / "cluster_info.tsv", skiprows=1, usecols=(0, 1), dtype=int)
    for unit, channel in channels:
        templates[unit, :, channel] = 50 * shape
    np.save(phy / "templates.npy", templates)
    np.save(phy / "spike_templates.npy", clusters)
    _copy_session(reported["root"], tmp_path)
    monkeypatch.setattr(report, "_phy_folder", lambda ctx, units, probe: phy)
    page = report.write_session_report(tmp_path, SID).read_text()
    assert "unit_waveforms.png" in _images(page)
    assert _is_png(tmp_path / "processed" / SID / "report" / "unit_waveforms.png")
    units = pd.read_parquet(tmp_path / "processed" / SID / "units.parquet")
    best, key = report._best_units(units, 4)
    waves = report._unit_waves(report._templates(phy), best, "imec0", key, 30000.0)
    assert len(waves) == 4
    for wave, (_, unit) in zip(waves, best.iterrows()):
        assert f"unit {unit['unit_id']} · {unit['area']} · ch {unit['channel']} " in wave["title"]
        assert wave["peak"].min() == pytest.approx(-50)


@pytest.fixture(scope="session")
def chromium():
    """A headless Chromium: on PATH, else installed with apt-get when root, else skip."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium not installed and not root: cannot apt-get install -y chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "install", "-y", "chromium"], ["apt-get", "update"],
                ["apt-get", "install", "-y", "chromium"]):
        done = subprocess.run(cmd, capture_output=True, env=env, timeout=900)
        if done.returncode == 0 and shutil.which("chromium"):
            return shutil.which("chromium")
    pytest.skip(f"apt-get install -y chromium failed: {done.stderr.decode()[-300:]}")


def _browser(chromium, profile, *args):
    cmd = [chromium, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={profile}",
           "--allow-file-access-from-files", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_page_renders_in_a_browser_with_every_image(reported, chromium, tmp_path):
    index = reported["paths"][0]
    url = index.resolve().as_uri()
    dom = _browser(chromium, tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom", url)
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stderr[-500:]
    assert 'data-loaded="all"' in body.group(0)
    assert f'data-images="{len(EXPECTED_FIGURES)}"' in body.group(0)
    shot = tmp_path / "report.png"
    _browser(chromium, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,4000",
             "--hide-scrollbars", url)
    assert _is_png(shot)
    keep = os.environ.get("PIXBIN_REPORT_SCREENSHOT")  # to look at it: set a path
    if keep:
        shutil.copyfile(shot, keep)
