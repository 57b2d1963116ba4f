"""pixbin.binned_read on a several-session action file: ``open_action`` (one h5py pass) and
``BinnedBackend`` give exactly the DataTree of plain ``xr.open_datatree(engine="h5netcdf")``, never
use h5netcdf's path lookup of dimension scales for the file pixbin writes (issue #19: that lookup
costs O(sessions²)), and ``open_action(sessions=..., areas=...)`` opens just those groups.

No timings here: benchmarks/bench_read.py measures them (docs/PERFORMANCE.md, "Reading many sessions").
"""

from __future__ import annotations

import logging
import pickle
import warnings
from pathlib import Path
from typing import Any

import h5netcdf
import h5py
import numpy as np
import pytest
import xarray as xr
from test_dataset import SESSION_A, SESSION_B, UNITS_A, UNITS_B, make_processed_session

from pixbin import binned_read
from pixbin.binned_read import BinnedBackend, open_action, open_group
from pixbin.binned_write import combine_action
from pixbin.dataset import DatasetConfig, build_session
from pixbin.errors import DatasetError

ACTION = "rewarded_push"
#: four sessions from two processed folders (the session id only names the group)
SESSIONS = {SESSION_A: SESSION_A, SESSION_B: SESSION_B, "211101_VR50": SESSION_A, "211102_VR51": SESSION_B}


@pytest.fixture(scope="module")
def action_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("processed")
    out = tmp_path_factory.mktemp("binned")
    make_processed_session(root, SESSION_A, UNITS_A, seed=1)
    make_processed_session(root, SESSION_B, UNITS_B, seed=2)
    d = DatasetConfig.default().to_dict()
    d["actions"] = [a for a in d["actions"] if a["name"] == ACTION]
    d["include_lfp"] = True
    config = DatasetConfig.from_dict(d)
    for session, folder in SESSIONS.items():
        build_session(root / folder, session, config, out)
    return combine_action(out, ACTION, sorted(SESSIONS))


def _leaves(tree: xr.DataTree) -> list[str]:
    return [node.path for node in tree.subtree if node.has_data]


def _assert_same(a: xr.Dataset, b: xr.Dataset, where: str, skip: tuple[str, ...] = ()) -> None:
    """Identical names, order, dims, dtypes, attributes, encodings (but ``skip``) and (bit for
    bit) values."""
    assert a.identical(b), where
    assert list(a.variables) == list(b.variables) and dict(a.sizes) == dict(b.sizes), where
    for name in a.variables:
        va, vb = a.variables[name], b.variables[name]
        assert va.dims == vb.dims and va.dtype == vb.dtype, f"{where}:{name}"
        assert va.encoding.keys() == vb.encoding.keys(), f"{where}:{name}"
        for key in set(va.encoding) - set(skip):
            assert str(va.encoding[key]) == str(vb.encoding[key]), f"{where}:{name} encoding {key}"
        x, y = va.to_numpy(), vb.to_numpy()
        assert x.tobytes() == y.tobytes() if x.dtype != object else x.tolist() == y.tolist(), f"{where}:{name}"


def _assert_same_tree(plain: xr.DataTree, fast: xr.DataTree) -> None:
    assert [n.path for n in fast.subtree] == [n.path for n in plain.subtree]
    assert fast.encoding == plain.encoding
    for node in plain.subtree:
        a, b = node.to_dataset(inherit=False), fast[node.path].to_dataset(inherit=False)
        assert a.encoding == b.encoding, node.path
        assert [v.chunks for v in a.variables.values()] == [v.chunks for v in b.variables.values()], node.path
        _assert_same(a.load(), b.load(), node.path)


def _no_h5netcdf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any use of h5netcdf by open_action fail (the fast reader takes every group pixbin writes)."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("open_action fell back to h5netcdf")
    monkeypatch.setattr(binned_read, "_File", refuse)


def test_open_action_gives_the_plain_datatree(action_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with xr.open_datatree(action_file, engine="h5netcdf", chunks={}) as plain:
        _no_h5netcdf(monkeypatch)
        with open_action(action_file) as fast:
            assert sorted(fast.children) == sorted(f"session_{s}" for s in SESSIONS)
            assert len(list(fast[f"session_{SESSION_A}"].subtree)) == 13  # 2 areas x (area + 5 Datasets) + session
            assert all(v.chunks is not None for n in fast.subtree for v in n.data_vars.values())  # dask-backed
            _assert_same_tree(plain, fast)
    # other chunks, as xr.open_datatree chunks them
    with xr.open_datatree(action_file, engine="h5netcdf", chunks=-1) as plain, \
            open_action(action_file, chunks=-1) as fast:
        _assert_same_tree(plain, fast)


def test_open_action_values_survive_pickling_and_reopening(action_file: Path) -> None:
    """The lazy arrays travel to dask workers (pickled) and reopen the file after close()."""
    leaf = f"session_{SESSION_B}/CA1/spike_data"
    with xr.open_dataset(action_file, group=leaf, engine="h5netcdf") as plain:
        expected = plain["spike_counts"].load()
    fast = open_action(action_file)
    counts = fast[leaf]["spike_counts"]
    copied = pickle.loads(pickle.dumps(counts))
    fast.close()
    assert counts.compute().identical(expected) and copied.compute().identical(expected)


def test_open_action_restricted_to_sessions_and_areas(action_file: Path) -> None:
    with open_action(action_file) as full:
        full_paths = [n.path for n in full.subtree]
        picked = [SESSION_B, "session_211101_VR50"]
        with open_action(action_file, sessions=picked, areas=["MOs"]) as part:
            expected = ["/", f"/session_{SESSION_B}", "/session_211101_VR50"] + [
                p for p in full_paths if p.split("/")[1:3] in ([f"session_{SESSION_B}", "MOs"],
                                                               ["session_211101_VR50", "MOs"])]
            assert sorted(n.path for n in part.subtree) == sorted(expected)
            assert len(expected) == 3 + 2 * 6
            for node in part.subtree:
                _assert_same(full[node.path].to_dataset(inherit=False).load(),
                             node.to_dataset(inherit=False).load(), node.path)
        with open_action(action_file, areas=["CA1"]) as part:
            assert sorted(part.children) == sorted(full.children)
            assert {p.split("/")[2] for p in (n.path for n in part.subtree) if p.count("/") >= 2} == {"CA1"}
        with open_action(action_file, sessions=[SESSION_A]) as part:
            assert [n.path for n in part.subtree] == ["/"] + [p for p in full_paths
                                                             if p.startswith(f"/session_{SESSION_A}")]


def test_open_action_refuses_names_the_file_lacks(action_file: Path) -> None:
    with pytest.raises(DatasetError, match=r"no session group \['session_990101_VR1'\]; the file holds .*211101_VR50"):
        open_action(action_file, sessions=["990101_VR1"])
    with pytest.raises(DatasetError, match=r"no area \['VISp'\].*they hold areas \['CA1', 'MOs'\]"):
        open_action(action_file, areas=["MOs", "VISp"])
    with pytest.raises(DatasetError, match="lists of names"):
        open_action(action_file, areas="MOs")


def test_values_are_those_of_the_session_files(action_file: Path) -> None:
    """What combine_action copied is what build_session wrote, read through the fast reader."""
    with open_action(action_file) as combined:
        for session in SESSIONS:
            single = action_file.parent / "sessions" / f"session_{session}" / f"{ACTION}.h5"
            with xr.open_datatree(single, engine="h5netcdf") as written:
                leaves = _leaves(written)
                assert leaves == [p for p in _leaves(combined) if p.startswith(f"/session_{session}/")]
                for leaf in leaves:
                    _assert_same(written[leaf].to_dataset(inherit=False).load(),
                                 combined[leaf].to_dataset(inherit=False).load(), leaf, skip=("source",))


def test_open_group_gives_the_plain_dataset(action_file: Path) -> None:
    with xr.open_datatree(action_file, engine="h5netcdf") as plain:
        leaves = _leaves(plain)
    assert len(leaves) == 4 * 2 * 5
    for leaf in leaves:
        with xr.open_dataset(action_file, group=leaf, engine="h5netcdf") as a, open_group(action_file, leaf) as b:
            _assert_same(a.load(), b.load(), leaf)
    # a subtree, as xr.open_datatree(group=...) gives it
    group = f"session_{SESSION_B}/MOs"
    with xr.open_datatree(action_file, engine="h5netcdf", group=group) as a, \
            xr.open_datatree(action_file, engine=BinnedBackend, group=group) as b:
        assert [n.path for n in a.subtree] == [n.path for n in b.subtree]
        for node in a.subtree:
            _assert_same(node.to_dataset(inherit=False), b[node.path].to_dataset(inherit=False), node.path)


def test_no_variable_needs_the_hdf5_path_lookup(action_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The property the fix relies on: every dimension of every variable resolves by object
    identity to a dimension scale in the variable's scope, so h5netcdf's own lookup
    (``H5Iget_name`` per variable and axis, a search of the file) is never reached."""
    reached: list[str] = []
    original = h5netcdf.Variable._lookup_dimensions

    def spy(self: Any) -> tuple[str, ...]:
        if "DIMENSION_LIST" in self._h5ds.attrs:
            reached.append(self._h5path)
        return original(self)

    monkeypatch.setattr(h5netcdf.Variable, "_lookup_dimensions", spy)
    with open_action(action_file) as fast:
        n_variables = sum(len(n.to_dataset(inherit=False).variables) for n in fast.subtree)
    assert n_variables > 4 * 90 and reached == []


def test_h5py_layout_the_fix_relies_on(action_file: Path) -> None:
    """Every non-scale dataset of every leaf group has one dimension scale per axis, each a
    dataset of that same group (self-contained groups, docs/FORMAT.md)."""
    with h5py.File(action_file, "r") as f:
        n_checked = 0
        for session in SESSIONS:
            for area in f[f"session_{session}"].values():
                for leaf in area.values():
                    scales = {leaf[k].id: k for k in leaf if leaf[k].attrs.get("CLASS") == b"DIMENSION_SCALE"}
                    assert scales, leaf.name
                    for name in leaf:
                        ds = leaf[name]
                        if ds.attrs.get("CLASS") == b"DIMENSION_SCALE":
                            continue
                        refs = ds.attrs["DIMENSION_LIST"]
                        assert len(refs) == ds.ndim, ds.name
                        assert all(len(r) == 1 and f[r[-1]].id in scales for r in refs), ds.name
                        n_checked += 1
    assert n_checked > 4 * 60


def _kinds_file(path: Path) -> Path:
    """A netCDF-4 file (not pixbin's) with every kind of attribute and of CF-encoded variable the
    fast reader reads itself or leaves to xarray's decoding."""
    ds = xr.Dataset(
        {"chunked": (("x", "name"), np.arange(15.0).reshape(5, 3)),
         "int_fill": ("x", np.array([1, -1, 3, 4, -1], dtype=np.int32)),
         "float_fill": ("x", np.array([1, 9, 3, 4, 5], dtype="f4")),
         "packed": ("x", np.arange(5, dtype=np.int16), {"scale_factor": 0.5, "add_offset": 1.0}),
         "days": ("x", np.arange(5.0), {"units": "days since 2000-01-01"}),
         "secs": ("x", np.arange(5.0), {"units": "seconds"}),
         "flag": ("x", np.array([0, 1, 1, 0, 1], dtype="i1"), {"dtype": "bool"}),
         "label": ("x", np.array(["a", "bb", "", "d", "e"], dtype=object)),
         "scalar": ((), np.float64(2.5)),
         "uint": ("name", np.array([1, 2, 3], dtype="u8"))},
        coords={"x": np.arange(5) * 10, "name": np.array(["ab", "c", "déf"], dtype=object)})
    encoding = {"chunked": {"chunksizes": (2, 2), "zlib": True, "shuffle": True},
                "int_fill": {"_FillValue": np.int32(-1)}, "float_fill": {"_FillValue": np.float32(9)},
                "packed": {"_FillValue": None}, "days": {"_FillValue": None}}
    ds.to_netcdf(path, engine="h5netcdf", encoding=encoding)
    with h5py.File(path, "a") as f:
        f["uint"].attrs["coordinates"] = "label"
        f.attrs["root_note"] = "root"
        attrs = f["chunked"].attrs
        attrs["int_scalar"], attrs["int_one"], attrs["floats"] = np.int16(-3), np.array([7], "i4"), [1.5, 2.5]
        attrs["matrix"], attrs["matrix_one"] = np.arange(4, dtype="i2").reshape(2, 2), np.arange(2, dtype="i2")[None]
        attrs["fixed"], attrs["fixed_one_char"] = np.bytes_(b"fixed text"), np.bytes_(b"z")
        attrs["fixed_list"] = np.array([b"ab", b"cd"], dtype="S2")
        attrs["vlen"] = "vlen text é"
        attrs["vlen_list"] = np.array(["u", "vw"], dtype=h5py.string_dtype())
        attrs["vlen_one"] = np.array(["only"], dtype=h5py.string_dtype())
        attrs["empty"], attrs["empty_string"] = h5py.Empty("f8"), h5py.Empty(h5py.string_dtype(length=1))
        attrs["enum"] = np.array(2, dtype=h5py.enum_dtype({"a": 1, "b": 2}, basetype="i1"))
        attrs["nothing"] = np.zeros(0, dtype="i4")
    return path


def test_every_attribute_and_variable_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attributes of every HDF5 kind (read with h5py's low-level API, or by h5py itself) and
    variables decoded by the fast reader (numbers, NaN fill, strings) or by xarray (fill values,
    packing, times, booleans) give the plain DataTree, for every way of chunking, without h5netcdf."""
    path = _kinds_file(tmp_path / "kinds.h5")
    for chunks in ({}, -1, {"x": 2}, "auto"):
        with xr.open_datatree(path, engine="h5netcdf", chunks=chunks) as plain:
            _no_h5netcdf(monkeypatch)
            with open_action(path, chunks=chunks) as fast:
                _assert_same_tree(plain, fast)
        monkeypatch.undo()
    with open_action(path) as fast:
        ds = fast.to_dataset(inherit=False)
        assert ds["chunked"].chunks == ((2, 2, 1), (2, 1))  # the stored chunks
        assert ds.attrs == {"root_note": "root"}
        attrs = ds["chunked"].attrs
        assert (attrs["int_scalar"], attrs["int_one"]) == (-3, 7)
        assert (attrs["fixed"], attrs["fixed_one_char"]) == ("fixed text", "z")
        assert (attrs["fixed_list"], attrs["vlen"], attrs["vlen_list"], attrs["vlen_one"]) == (
            ["ab", "cd"], "vlen text é", ["u", "vw"], "only")
        assert attrs["matrix"].shape == (2, 2) and attrs["matrix_one"].tolist() == [0, 1] and attrs["enum"] == 2
        assert attrs["empty"].size == 0 and attrs["empty_string"] == "" and attrs["nothing"].size == 0
        loaded = ds.load()
        np.testing.assert_array_equal(loaded["int_fill"], [1, np.nan, 3, 4, np.nan])
        np.testing.assert_array_equal(loaded["float_fill"], np.array([1, np.nan, 3, 4, 5], "f4"))
        np.testing.assert_array_equal(loaded["packed"], np.arange(5) * 0.5 + 1)
        assert loaded["days"].values[1] == np.datetime64("2000-01-02") and loaded["flag"].dtype == bool
        assert loaded["label"].dtype == "<U2" and loaded["name"].values.tolist() == ["ab", "c", "déf"]
        assert "label" in ds.coords and ds["uint"].encoding["coordinates"] == "label"


def test_groups_the_fast_reader_leaves(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Big-endian values, and an attribute xarray cannot decode as UTF-8, are read through
    h5netcdf, as plainly."""
    xr.Dataset({"v": ("x", np.arange(3, dtype=">i4"))}).to_netcdf(tmp_path / "big_endian.h5", engine="h5netcdf")
    xr.Dataset({"v": ("x", np.arange(3))}).to_netcdf(tmp_path / "latin1.h5", engine="h5netcdf")
    with h5py.File(tmp_path / "latin1.h5", "a") as f:
        f["v"].attrs["note"] = np.bytes_(b"\xe9")  # one byte: h5netcdf leaves it to xarray, which warns
    for name, problem in (("big_endian", "dtype >i4"), ("latin1", "attribute note is not UTF-8")):
        path = tmp_path / f"{name}.h5"
        with warnings.catch_warnings(), caplog.at_level(logging.DEBUG, logger="pixbin.binned_read"):
            warnings.simplefilter("ignore", UnicodeWarning)
            with xr.open_datatree(path, engine="h5netcdf", chunks={}) as plain, open_action(path) as fast:
                _assert_same_tree(plain, fast)
        assert f"/v: {problem}; read through h5netcdf" in caplog.text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnicodeWarning)
        with open_action(tmp_path / "latin1.h5") as fast:
            assert fast.to_dataset(inherit=False)["v"].attrs["note"] == b"\xe9"


def _nested_file(path: Path, inner_dim: str) -> Path:
    with h5netcdf.File(path, "w") as f:
        f.dimensions = {"time": 4}
        f.create_variable("time", ("time",), data=np.arange(4.0))
        g = f.create_group("g")
        g.dimensions = {"chan": 3}
        g.create_variable("v", ("time", "chan"), data=np.arange(12.0).reshape(4, 3))
        h = g.create_group("h")
        h.dimensions = {inner_dim: 2}
        h.create_variable("w", (inner_dim, "time"), data=np.arange(8).reshape(2, 4))
        n_chan = 2 if inner_dim == "chan" else 3  # the nearest "chan"
        h.create_variable("u", ("time", "chan"), data=np.arange(4 * n_chan).reshape(4, n_chan))
    return path


def test_dimensions_of_parent_groups(tmp_path: Path) -> None:
    """Generic netCDF-4 files whose variables use dimensions of ancestor groups (not what pixbin
    writes) open the same through BinnedBackend as through h5netcdf."""
    path = _nested_file(tmp_path / "nested.h5", "pair")
    with xr.open_datatree(path, engine="h5netcdf", chunks={}) as a, open_action(path) as b:
        _assert_same_tree(a, b)  # open_action leaves these groups to h5netcdf (through BinnedBackend)
    with xr.open_datatree(path, engine="h5netcdf") as a, xr.open_datatree(path, engine=BinnedBackend) as b:
        assert [n.path for n in a.subtree] == [n.path for n in b.subtree] == ["/", "/g", "/g/h"]
        for node in a.subtree:
            _assert_same(node.to_dataset(inherit=False).load(), b[node.path].to_dataset(inherit=False).load(),
                         node.path)
        assert b["g/h"].to_dataset(inherit=False)["w"].dims == ("pair", "time")
    # a dimension of the group that shadows one of its parent (a DataTree refuses it; a group opens)
    path = _nested_file(tmp_path / "shadow.h5", "chan")
    for group in ("/", "g", "g/h"):
        with xr.open_dataset(path, group=group, engine="h5netcdf") as a, \
                xr.open_dataset(path, group=group, engine=BinnedBackend) as b:
            _assert_same(a.load(), b.load(), group)
    with xr.open_dataset(path, group="g/h", engine=BinnedBackend) as b:
        assert dict(b.sizes) == {"chan": 2, "time": 4}
