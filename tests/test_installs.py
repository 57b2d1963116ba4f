"""Installs: the conda environments in envs/ name the same packages as pyproject.toml, and the
light reader install (envs/read-requirements.txt + ``pip install --no-deps pixbin``) is enough
to open and export the binned tensors."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENVS = REPO / "envs"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

#: conda-forge spells these PyPI names differently
CONDA_NAMES = {"torch": "pytorch", "tables": "pytables"}
#: packages an env may name beyond its pip counterpart, and why
ENV_ONLY = {
    "python": "the interpreter",
    "pip": "installs pixbin itself",
    "pytorch": "Kilosort's torch, taken from conda-forge rather than pip",
}
#: what the light reader install may import: envs/read-requirements.txt and their dependencies
READER_ROOTS = ["numpy", "xarray", "h5netcdf", "h5py", "dask"]


def _requirement(line: str) -> tuple[str, str]:
    """``name>=1.0`` → (normalised conda-side name, specifier)."""
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(\[[^\]]*\])?\s*(.*?)\s*", line)
    assert match, f"cannot parse requirement {line!r}"
    name = match.group(1).lower().replace("_", "-")
    return CONDA_NAMES.get(name, name), match.group(3).replace(" ", "")


def _env(path: Path) -> tuple[dict[str, str], list[str], list[str]]:
    """An env file's packages (conda and pip lines) with specifiers, its channels and pip lines."""
    env = yaml.safe_load(path.read_text())
    packages: dict[str, str] = {}
    pip_lines: list[str] = []
    for entry in env["dependencies"]:
        lines = entry["pip"] if isinstance(entry, dict) else [entry]
        for line in lines:
            if line.startswith("-"):
                pip_lines.append(line)
                continue
            name, spec = _requirement(line)
            packages[name] = spec
    return packages, env.get("channels", []), pip_lines


def _expected(requirements: list[str]) -> dict[str, str]:
    return dict(_requirement(line) for line in requirements)


def _env_cases() -> list[tuple[str, list[str], str | None]]:
    """(env file, the requirements it must name, the editable pip line it must hold)."""
    extras = PYPROJECT["optional-dependencies"]
    cases = [("pixbin.yml", PYPROJECT["dependencies"], "-e .."),
             ("pixbin-read.yml", _read_requirements(), None)]
    for path in sorted(ENVS.glob("pixbin-*.yml")):
        extra = path.stem.removeprefix("pixbin-")
        if extra != "read":
            assert extra in extras, f"{path.name} has no extra [{extra}] in pyproject.toml"
            cases.append((path.name, extras[extra], f"-e ..[{extra}]"))
    return cases


def _read_requirements() -> list[str]:
    text = (ENVS / "read-requirements.txt").read_text()
    lines = (line.split("#")[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


@pytest.mark.parametrize("env_file, requirements, editable", _env_cases(),
                         ids=[case[0] for case in _env_cases()])
def test_env_file_names_the_same_packages_as_pip(env_file: str, requirements: list[str],
                                                 editable: str | None) -> None:
    packages, channels, pip_lines = _env(ENVS / env_file)
    assert channels == ["conda-forge"], f"{env_file}: channels {channels}, expected conda-forge only"
    core = _expected(PYPROJECT["dependencies"])
    for name, spec in _expected(requirements).items():
        assert name in packages, f"{env_file} lacks {name}{spec} (in pyproject.toml)"
        assert packages[name] == spec, f"{env_file}: {name}{packages[name]}, pyproject.toml says {name}{spec}"
    extra_names = set(packages) - set(_expected(requirements)) - set(ENV_ONLY)
    for name in extra_names:  # a core package named again (e.g. a compiled conda build) must agree
        assert name in core, f"{env_file} names {name}, which pyproject.toml does not"
        assert packages[name] == core[name], f"{env_file}: {name}{packages[name]} vs core {name}{core[name]}"
    if editable:
        assert editable in pip_lines, f"{env_file} does not install pixbin with {editable!r}"


def test_read_requirements_are_core_dependencies() -> None:
    core = _expected(PYPROJECT["dependencies"])
    for name, spec in _expected(_read_requirements()).items():
        assert core.get(name) == spec, f"read-requirements.txt {name}{spec} vs pyproject.toml {core.get(name)}"


def _dependency_closure(roots: list[str]) -> set[str]:
    """The installed distributions ``roots`` need (their non-extra requirements, recursively)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _reader_site(folder: Path) -> Path:
    """A site folder holding only the reader install's distributions (links into this venv)."""
    from importlib import metadata

    folder.mkdir()
    for name in _dependency_closure(READER_ROOTS):
        dist = metadata.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in tops:
            source = Path(dist.locate_file(top))
            if source.exists() and not (folder / top).exists() and ".." not in top:
                (folder / top).symlink_to(source)
    return folder


def test_light_reader_install_opens_and_exports(tmp_path: Path) -> None:
    """With only the reader install's packages importable, the tensors open and export."""
    from test_access import SESSION_A, SESSION_B, UNITS_A, UNITS_B, make_processed_session

    from pixbin.dataset import DatasetConfig, build_dataset

    processed = tmp_path / "data" / "processed"
    make_processed_session(processed, SESSION_A, UNITS_A, seed=1, lfp=False)
    make_processed_session(processed, SESSION_B, UNITS_B, seed=2, lfp=False)
    d = DatasetConfig.default().to_dict()
    d["actions"] = [a for a in d["actions"] if a["name"] == "rewarded_push"]
    binned = tmp_path / "data" / "binned"
    build_dataset(processed, [SESSION_A, SESSION_B], binned, DatasetConfig.from_dict(d))
    site = _reader_site(tmp_path / "site")
    script = textwrap.dedent(f"""
        import sys
        sys.path[:] = [p for p in sys.path if "site-packages" not in p]
        sys.path[:0] = [{str(site)!r}, {str(REPO / "code")!r}, {str(REPO / "code" / "utils")!r}]
        from pixbin.binned_read import open_action
        from access_action_structure import access_action_structure
        with open_action({str(binned / "rewarded_push.h5")!r}) as tree:
            sessions = sorted(tree.children)
        paths = access_action_structure("rewarded_push", "MOs", {str(tmp_path / "npy")!r},
                                        in_path={str(binned)!r})
        import spikeinterface  # the pipeline's packages are really out of reach
    """)
    result = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert "No module named 'spikeinterface'" in result.stderr, result.stderr
    assert len(list((tmp_path / "npy").glob("*.npy"))) == 2
