"""pixbin.versioning and its versioning_* modules: data/ as a DataLad dataset (offline, tmp folders).

One source dataset is built per module (DataLad calls take ~1 s each on 2 cores); tests that
change it only touch files no other test compares.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")
pd = pytest.importorskip("pandas")

from pixbin import __version__  # noqa: E402
from pixbin.versioning import (  # noqa: E402
    clone,
    drop,
    ensure_dataset,
    get,
    run_recorded,
    save,
    status,
)
from pixbin.versioning_datalad import VersioningError  # noqa: E402
from pixbin.versioning_history import commit_message, file_history  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SESSION = "250101_M1"
PARAMS = {"bin_size_s": 0.01, "window_s": [-1.0, 2.0], "actions": ["rewarded_push", "missed_tone"]}
COMMAND = ["pixbin", "build", "--bin-size-s", "0.01"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_h5(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset(f"session_{SESSION}/CA1/counts", data=rng.poisson(2.0, (5, 7, 300)).astype("uint8"))
        f.attrs["bin_size_s"] = 0.01


def _replace_h5(path: Path, seed: int) -> None:
    """Rewrite an annexed (read-only symlink) file the way pixbin.fileio does: a new file, renamed."""
    tmp = path.with_name(f".{path.name}.tmp-test")
    _write_h5(tmp, seed)
    os.replace(tmp, path)


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module", autouse=True)
def git_identity() -> Iterator[None]:
    """A git identity for the commits, independent of the machine's configuration."""
    with pytest.MonkeyPatch.context() as mp:
        for who in ("AUTHOR", "COMMITTER"):
            mp.setenv(f"GIT_{who}_NAME", "pixbin test")
            mp.setenv(f"GIT_{who}_EMAIL", "pixbin-test@example.org")
        yield


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, git_identity: None) -> dict:
    """A data/ folder with raw, interim, processed and binned files, made a dataset and saved."""
    root = tmp_path_factory.mktemp("lab") / "data"
    proc = root / "processed" / SESSION
    (proc / ".records").mkdir(parents=True)
    (root / "interim" / SESSION).mkdir(parents=True)
    (root / "raw" / SESSION).mkdir(parents=True)
    (root / "interim" / SESSION / "imec0.ap.bin").write_bytes(b"\x00\x01" * 500)
    (root / "raw" / SESSION / "notes.md").write_text("raw notes\n")
    with tarfile.open(root / "raw" / SESSION / "probe.tar.gz", "w:gz") as tar:
        tar.add(root / "raw" / SESSION / "notes.md", arcname="notes.md")
    pd.DataFrame({"unit_id": np.arange(4), "depth_um": [10.0, 20.0, 30.0, 40.0]}).to_parquet(proc / "units.parquet")
    np.save(proc / "action_labels_0.npy", np.zeros((100, 2), dtype="uint32"))
    (proc / "lag.json").write_text(json.dumps([{"lag_start": 3, "lag_end": -2}]))
    (proc / "sync.json").write_text(json.dumps({"behaviour": {"ppm": 12.5, "pass": True}}))
    (proc / ".records" / "sync.json").write_text(json.dumps({"stage": "sync"}))
    (proc / "sync_0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (proc / "notes").write_text("a small text file without a suffix\n")
    (proc / "blob").write_bytes(bytes(range(256)) * 4)  # small binary without a suffix
    (proc / ".units.parquet.tmp-123-abcd").write_bytes(b"leftover of a killed write")
    _write_h5(root / "binned" / "rewarded_push.h5", seed=1)
    _write_h5(root / "binned" / "missed_tone.h5", seed=2)
    sha = {p: _sha256(root / p) for p in ("binned/rewarded_push.h5", "binned/missed_tone.h5")}

    assert ensure_dataset(root) == root
    record = save(root, None, "process and bin the demo session", command=COMMAND, parameters=PARAMS)
    return {"root": root, "sha": sha, "first": record}


def test_first_save_commits_processed_and_binned_with_trailers(source: dict) -> None:
    record = source["first"]
    assert record is not None
    assert "binned/rewarded_push.h5" in record["files"]
    assert "processed/250101_M1/units.parquet" in record["files"]
    assert not any(f.startswith(("raw/", "interim/")) for f in record["files"])
    body = _git(source["root"], "log", "-1", "--format=%B", record["commit"])
    assert "pixbin-command: pixbin build --bin-size-s 0.01" in body
    assert f"pixbin-version: {__version__}" in body
    info = file_history(source["root"], "binned/rewarded_push.h5")
    assert info["commit"] == record["commit"]
    assert info["parameters"] == PARAMS
    assert info["command"] == "pixbin build --bin-size-s 0.01"


def test_commit_message_trailers_use_the_one_json_encoder() -> None:
    """The exact trailer text; parameters go through pixbin.fileio.to_json (numpy, paths, sets)."""
    params = {"bin_size_s": np.float64(0.01), "n": np.int64(3), "out": Path("binned"), "ids": {"b", "a"}, "w": np.array([-1.0, 2.0])}
    assert commit_message("  bin all\n", ["pixbin", "build", "--out", "my dir"], params) == (
        "bin all\n\n"
        "pixbin-command: pixbin build --out 'my dir'\n"
        'pixbin-parameters: {"bin_size_s": 0.01, "ids": ["a", "b"], "n": 3, "out": "binned", "w": [-1.0, 2.0]}\n'
        f"pixbin-version: {__version__}"
    )
    assert commit_message("x", None, None) == f"x\n\npixbin-version: {__version__}"
    with pytest.raises(VersioningError, match="cannot be written as JSON"):
        commit_message("x", None, {"f": object()})


def test_binaries_go_to_annex_and_text_to_git(source: dict) -> None:
    root = source["root"]
    st = status(root)
    s = f"processed/{SESSION}"
    for annexed in ("binned/rewarded_push.h5", f"{s}/units.parquet", f"{s}/action_labels_0.npy", f"{s}/sync_0.png", f"{s}/blob"):
        assert annexed in st.annexed, annexed
        assert annexed in st.annexed_present
        assert (root / annexed).is_symlink()  # locked annex file
    for in_git in (f"{s}/lag.json", f"{s}/sync.json", f"{s}/.records/sync.json", f"{s}/notes", ".gitattributes", ".gitignore"):
        assert in_git in st.git, in_git
        assert not (root / in_git).is_symlink()
    # the rules themselves, as git sees them
    attr = _git(root, "check-attr", "annex.largefiles", "--", "x/y.H5", "x/y.tar.gz", "x/y.csv", "x/y.TDMS")
    assert "x/y.H5: annex.largefiles: anything" in attr
    assert "x/y.tar.gz: annex.largefiles: anything" in attr
    assert "x/y.TDMS: annex.largefiles: anything" in attr
    assert "x/y.csv: annex.largefiles: largerthan=" in attr


def test_interim_and_temporary_files_are_never_saved(source: dict) -> None:
    root = source["root"]
    tracked = _git(root, "ls-files").splitlines()
    assert not [p for p in tracked if p.startswith("interim/") or ".tmp-" in p]
    st = status(root)
    assert not [p for p in st.unsaved if p.startswith("interim/") or ".tmp-" in p]
    assert f"raw/{SESSION}/probe.tar.gz" in st.unsaved  # raw/ is only saved when asked for
    with pytest.raises(VersioningError, match="interim"):
        save(root, ["interim"], "should be refused")


def test_ensure_dataset_and_save_are_idempotent(source: dict) -> None:
    root = source["root"]
    head = _git(root, "rev-parse", "HEAD")
    assert ensure_dataset(root) == root
    assert save(root, None, "nothing new", command=COMMAND, parameters=PARAMS) is None
    assert _git(root, "rev-parse", "HEAD") == head
    assert (root / ".gitattributes").read_text().count("pixbin versioning rules (") == 1


def test_second_save_after_a_change_records_a_new_commit(source: dict) -> None:
    root = source["root"]
    target = root / "binned" / "missed_tone.h5"
    _replace_h5(target, seed=99)
    params = {"bin_size_s": 0.02, "action": "missed_tone"}
    record = save(root, ["binned/missed_tone.h5"], "rebin missed_tone", command="pixbin build --action missed_tone", parameters=params)
    assert record is not None
    assert record["files"] == ["binned/missed_tone.h5"]
    body = _git(root, "log", "-1", "--format=%B")
    assert body.startswith("rebin missed_tone")
    assert "pixbin-command: pixbin build --action missed_tone" in body
    assert 'pixbin-parameters: {"action": "missed_tone", "bin_size_s": 0.02}' in body
    assert file_history(root, target)["parameters"] == params
    assert "binned/missed_tone.h5" in status(root).annexed


def test_clone_get_drop_get(source: dict, tmp_path: Path) -> None:
    dest = clone(source["root"], tmp_path / "collab" / "data")
    action = dest / "binned" / "rewarded_push.h5"
    assert action.is_symlink() and not action.exists()  # pointer only, no content yet
    assert json.loads((dest / "processed" / SESSION / "lag.json").read_text()) == [{"lag_start": 3, "lag_end": -2}]
    assert get(dest, "binned/rewarded_push.h5") == [action]
    assert _sha256(action) == source["sha"]["binned/rewarded_push.h5"]
    assert not (dest / "binned" / "missed_tone.h5").exists()  # only what was asked for
    assert drop(dest, [action]) == [action]
    assert action.is_symlink() and not action.exists()
    assert status(dest).annexed_present == ()
    assert get(dest, [action]) == [action]
    assert _sha256(action) == source["sha"]["binned/rewarded_push.h5"]


def test_helpers_refuse_with_clear_errors(source: dict, tmp_path: Path) -> None:
    root = source["root"]
    with pytest.raises(VersioningError, match="never-made.h5"):
        get(root, "binned/never-made.h5")
    with pytest.raises(VersioningError, match="outside the dataset"):
        get(root, tmp_path / "elsewhere.h5")
    only_here = root / "binned" / "only_here.npy"
    np.save(only_here, np.arange(50))
    assert save(root, [only_here], "a file never pushed anywhere") is not None
    with pytest.raises(VersioningError, match="push"):  # the only copy: DataLad refuses
        drop(root, only_here)
    assert only_here.exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(VersioningError, match="not an empty folder"):
        clone(root, tmp_path / "busy")
    with pytest.raises(VersioningError, match="not a DataLad dataset"):
        status(tmp_path / "busy")


def test_run_recorded_keeps_a_rerunnable_record(source: dict) -> None:
    root = source["root"]
    code = "import pathlib; pathlib.Path('binned/summary.npy').write_bytes(bytes(range(200)))"
    record = run_recorded(root, [sys.executable, "-c", code], inputs=["binned/rewarded_push.h5"], outputs=["binned/summary.npy"], message="summarise")
    assert record is not None and record["files"] == ["binned/summary.npy"]
    info = file_history(root, "binned/summary.npy")
    assert info["run_record"]["outputs"] == ["binned/summary.npy"]
    assert info["run_record"]["exit"] == 0
    assert "binned/summary.npy" in status(root).annexed
    with pytest.raises(VersioningError, match="outputs"):
        run_recorded(root, [sys.executable, "-c", "pass"], outputs=[])
    with pytest.raises(VersioningError, match="datalad run"):
        run_recorded(root, [sys.executable, "-c", "raise SystemExit(3)"], outputs=["binned/x.npy"])


def test_publish_to_ria_store_and_clone_by_alias(source: dict, tmp_path: Path) -> None:
    """The commands of docs/VERSIONING.md, run as a user would (CLI, offline RIA store)."""
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    datalad = shutil.which("datalad", path=env["PATH"])
    if datalad is None:
        pytest.skip("datalad command not found beside the interpreter")
    store = tmp_path / "store"

    def run(*args: str, cwd: Path) -> None:
        proc = subprocess.run([datalad, *args], cwd=cwd, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"datalad {' '.join(args)}: {proc.stderr}"

    run("create-sibling-ria", "-s", "store", "--new-store-ok", "--alias", "pixbin-data", f"ria+file://{store}", cwd=source["root"])
    run("push", "--to", "store", cwd=source["root"])
    run("clone", f"ria+file://{store}#~pixbin-data", "data", cwd=tmp_path)
    run("get", "-d", "data", "data/binned/rewarded_push.h5", cwd=tmp_path)
    assert _sha256(tmp_path / "data" / "binned" / "rewarded_push.h5") == source["sha"]["binned/rewarded_push.h5"]


def test_refuses_data_dir_whose_files_an_enclosing_repo_tracks(tmp_path: Path) -> None:
    """As in the pixbin repository itself when it tracks data/*/.gitkeep placeholders."""
    project = tmp_path / "project"
    (project / "data" / "raw").mkdir(parents=True)
    (project / "data" / "raw" / ".gitkeep").write_text("")
    _git(tmp_path, "init", "-q", str(project))
    _git(project, "add", "data/raw/.gitkeep")
    _git(project, "commit", "-q", "-m", "placeholders")
    with pytest.raises(VersioningError, match=r"rm -r -q --cached data"):
        ensure_dataset(project / "data")


def test_works_when_git_annex_is_not_on_path(tmp_path: Path) -> None:
    """Users run pixbin from a venv without activating it: PATH lacks the venv's git-annex."""
    python = REPO_ROOT / ".venv" / "bin" / "python"
    python = python if python.exists() else Path(sys.executable)
    git = shutil.which("git")
    assert git is not None
    stripped = os.pathsep.join(dict.fromkeys([str(Path(git).parent), "/usr/bin", "/bin"]))
    if shutil.which("git-annex", path=stripped):
        pytest.skip(f"git-annex is installed system-wide in {stripped}; cannot strip it from PATH")
    script = (
        "import os, sys\n"
        "import pixbin.versioning as v\n"
        "assert 'datalad' not in sys.modules, 'datalad imported at import time'\n"
        f"assert os.environ['PATH'] == {stripped!r}, 'PATH changed at import time'\n"
        "root = v.ensure_dataset(sys.argv[1])\n"
        "(root / 'binned' / 'a.npy').write_bytes(bytes(range(100)))\n"
        "print(v.save(root, None, 'x')['files'], v.status(root).annexed)\n"
    )
    env = {
        "PATH": stripped,
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "PYTHONPATH": str(REPO_ROOT / "code"),
        **{k: v for k, v in os.environ.items() if k.startswith("GIT_")},
    }
    proc = subprocess.run([str(python), "-c", script, str(tmp_path / "data")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "['binned/a.npy'] ('binned/a.npy',)" in proc.stdout
