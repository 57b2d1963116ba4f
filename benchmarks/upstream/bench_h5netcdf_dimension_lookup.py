"""Open time of ``xr.open_datatree(engine="h5netcdf")`` with h5netcdf as released and patched.

Writes, with h5netcdf itself, netCDF-4 files of N groups (N = 1, 10, 50, 100 by default), each
with 3 dimension scales and 10 variables labelled by them, then opens each file in a fresh
interpreter, once with the h5netcdf installed and once with ``--patched`` (a folder holding the
patched ``h5netcdf`` package, put first on ``PYTHONPATH``; nothing is installed), and prints a
JSON table of seconds; ``--files`` adds existing files (e.g. pixbin action files). Make the patched copy with::

    pip download --no-deps --no-binary :all: h5netcdf==1.8.2 && tar xzf h5netcdf-1.8.2.tar.gz
    patch -d h5netcdf-1.8.2 -p1 < benchmarks/upstream/h5netcdf-dimension-scale-by-identity.diff
    python benchmarks/upstream/bench_h5netcdf_dimension_lookup.py --patched h5netcdf-1.8.2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import h5netcdf
import numpy as np

TIME_ONE = """
import sys, time, xarray as xr, h5netcdf
t0 = time.perf_counter()
with xr.open_datatree(sys.argv[1], engine="h5netcdf") as tree:
    n = sum(len(node.variables) for node in tree.subtree)
print(time.perf_counter() - t0, n, h5netcdf.__file__)
"""


def write(path: Path, n_groups: int) -> None:
    """N groups x (3 dimension scales + 10 variables), as xarray writes a Dataset per group."""
    with h5netcdf.File(path, "w") as f:
        for g in range(n_groups):
            grp = f.create_group(f"group_{g:03d}")
            grp.dimensions = {"trial": 12, "time": 100, "unit": 3}
            for dim, size in grp.dimensions.items():
                grp.create_variable(dim, (dim,), data=np.arange(size.size))
            for v in range(10):
                grp.create_variable(f"v{v}", ("trial", "time", "unit"), data=np.zeros((12, 100, 3), "f4"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patched", type=Path, required=True, help="folder holding the patched h5netcdf package")
    p.add_argument("--groups", type=int, nargs="+", default=[1, 10, 50, 100])
    p.add_argument("--files", type=Path, nargs="*", default=[],
                   help="netCDF-4 files to time as well (e.g. pixbin action files of bench_read.py)")
    args = p.parse_args()
    results: dict[str, dict[str, float]] = {"released": {}, "patched": {}}
    with tempfile.TemporaryDirectory() as folder:
        cases = []
        for n in args.groups:
            write(Path(folder) / f"groups-{n}.nc", n)
            cases.append((f"{n} groups", Path(folder) / f"groups-{n}.nc"))
        cases += [(path.name, path) for path in args.files]
        for case, path in cases:
            for label, extra in (("released", None), ("patched", str(args.patched.resolve()))):
                env = dict(os.environ)
                if extra:
                    env["PYTHONPATH"] = extra + os.pathsep + env.get("PYTHONPATH", "")
                out = subprocess.run([sys.executable, "-c", TIME_ONE, str(path)], env=env, check=True,
                                     capture_output=True, text=True).stdout.split()
                results[label][case] = round(float(out[0]), 3)
                print(f"{case:25s} {label:8s} {float(out[0]):8.3f} s  ({out[1]} variables; {out[2]})",
                      file=sys.stderr)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
