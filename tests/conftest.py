"""Shared fixtures: the real public files in ../shared/realdata and simulated sessions."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` next to the repository root; tests that need it skip when it is absent."""
    path = (REPO_ROOT / ".." / "shared").resolve()
    if not (path / "realdata").is_dir():
        pytest.skip(f"real test data not found: {path / 'realdata'} is absent")
    return path


@pytest.fixture(scope="session")
def realdata(shared_dir: Path) -> Path:
    """The folder of real public files (SpikeGLX, Kilosort/phy, DLC, TDMS)."""
    return shared_dir / "realdata"
