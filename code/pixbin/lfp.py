"""LFP: the SpikeGLX LF stream (~2.5 kHz) → 1 kHz on the probe clock, streamed in chunks.

Single-band probes (NP2.0 and kin) have no LF stream: their 30 kHz AP band goes through the same
resampler (the kernel designed for the source rate: ~12× more taps), in chunks of as many rows as
an LF chunk, so memory stays bounded as for an LF band.

Method (see docs/LFP_POSE.md):

- **Exact-position band-limited resampling.** Output sample ``k`` is the probe time
  ``t_k = k / rate_hz``; its position in LF samples is ``p_k = from_probe(t_k) * imSampRate(LF)``
  (identity clock map by default: the LF stream is sampled by the same device as AP). The value is
  ``y_k = sum_n x[n] h(p_k - n)`` with ``h`` a continuous windowed-sinc low-pass (cutoff
  half-way between ``passband_hz`` and ``stopband_hz``; a Kaiser window without its pedestal, so
  ``h`` falls continuously to 0; length and β from Kaiser's formulas, the numbers of
  :func:`scipy.signal.kaiserord`, checked against ``attenuation_db`` at every sub-sample phase:
  :func:`pixbin.resample.kernel_design`). The kernel is evaluated at the exact,
  non-integer positions, so the calibrated rate (e.g. 2499.995132 Hz) is used as it is, never
  rounded; for a rate of exactly 2500 Hz the result equals :func:`scipy.signal.resample_poly`
  (2/5) with the same filter sampled on the 5 kHz grid. Samples beyond the file's ends are
  mirrored (``x[-i] = x[i]``), which only affects the first and last ``~ taps/2`` LF samples.
- **Common-median reference** (optional): at each 1 kHz sample, the median across the probe's
  data channels (the SY channel is never part of the data) is subtracted. It is applied after the
  anti-alias filter, at 1 kHz (2.5 × fewer medians than at the LF rate); the subtracted median
  is stored as ``reference_uV`` so it can be added back.
- **Bounded memory.** Output chunks of ``chunk_s`` read exactly the LF rows their kernels need
  (chunk + margin) with plain reads (no whole-file array, no memory map that would grow the
  resident set), the next chunk is read while the current one is computed, and each chunk is
  written to the HDF5 file at once. Every output sample depends only on its own input rows, so
  chunk borders are invisible (bit-identical to a single-chunk run).

The hot loops (filter and median) are numba kernels: a plain numpy gather of ``taps × channels``
per output would need gigabytes per chunk, and no library evaluates a windowed-sinc at arbitrary
positions on int16 multichannel data in chunks.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit, prange

from pixbin import layout
from pixbin.clock import ClockMap, InvertibleClockMapLike
from pixbin.errors import ConfigError, MetaError
from pixbin.fileio import PROVENANCE_KEY, atomic_path, provenance, to_json
from pixbin.params import params_from_dict
from pixbin.progress import stage_bar
from pixbin.resample import _TABLE_STEPS, _kernel_table, kernel_design, resample_positions
from pixbin.spikeglx import LfSource, lf_source

__all__ = [
    "LfpParams",
    "run_lfp",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LfpParams:
    """Parameters of the LFP stage.

    Attributes
    ----------
    rate_hz : float
        Output rate on the probe clock (1 kHz: ``t = k / rate_hz``).
    passband_hz, stopband_hz : float
        Anti-alias low-pass: flat (within the ripple) up to ``passband_hz``, attenuated by
        ``attenuation_db`` from ``stopband_hz`` (must be ``<= rate_hz / 2``: nothing above the
        output Nyquist frequency survives).
    attenuation_db : float
        Stop-band attenuation (also sets the pass-band ripple, Kaiser design).
    cmr : bool
        Subtract the common median across data channels at each output sample.
    chunk_s : float
        Output seconds processed per chunk (memory ≈ 2.5 × 385 × 2 B × 1000 × chunk_s × 3).
    """

    rate_hz: float = 1000.0
    passband_hz: float = 400.0
    stopband_hz: float = 500.0
    attenuation_db: float = 60.0
    cmr: bool = True
    chunk_s: float = 10.0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LfpParams:
        """Build from a mapping, refusing unknown keys (the error lists the valid ones)."""
        return params_from_dict(cls, values, what="lfp parameter")

    def validate(self, source_rate_hz: float | None = None) -> None:
        """Refuse a filter that cannot anti-alias for this output (and source) rate."""
        if not self.rate_hz > 0:
            raise ConfigError(f"lfp rate_hz must be > 0, got {self.rate_hz}")
        if not 0 < self.passband_hz < self.stopband_hz <= self.rate_hz / 2:
            raise ConfigError(
                "lfp filter needs 0 < passband_hz < stopband_hz <= rate_hz / 2; got "
                f"passband_hz={self.passband_hz}, stopband_hz={self.stopband_hz}, "
                f"rate_hz={self.rate_hz}"
            )
        if source_rate_hz is not None and self.stopband_hz >= source_rate_hz / 2:
            raise ConfigError(
                f"lfp stopband_hz={self.stopband_hz} must be below the LF Nyquist frequency "
                f"{source_rate_hz / 2} Hz"
            )
        if not self.attenuation_db > 20:
            raise ConfigError(f"lfp attenuation_db must be > 20 dB, got {self.attenuation_db}")
        if not self.chunk_s > 0:
            raise ConfigError(f"lfp chunk_s must be > 0, got {self.chunk_s}")


# --------------------------------------------------------------------------- kernel
def _row_span(pos: np.ndarray, n_in: int, n_taps: int) -> tuple[int, int]:
    """Source rows ``[lo, hi)`` read by outputs at ``pos`` (after mirroring at the ends)."""
    radius = (n_taps - 1) // 2
    first = int(np.floor(pos.min())) - radius
    last = int(np.floor(pos.max())) - radius + n_taps - 1
    lo, hi = max(0, first), min(n_in, last + 1)
    if first < 0:
        hi = max(hi, min(n_in, -first + 1))
    if last > n_in - 1:
        lo = min(lo, max(0, 2 * (n_in - 1) - last))
    return lo, hi


@njit(parallel=True, nogil=True, fastmath=True, cache=True)
def _fir(x, lo, n_in, pos, valid, table, steps, n_taps, c0, scale, out):  # pragma: no cover
    """``out[k, c] = scale[c] * sum_n h(pos[k] - n) * x[n - lo, c0 + c]``, ends mirrored.

    ``table`` holds ``h`` every ``1 / steps`` source samples from ``-(radius + 1)``; rows with
    ``valid[k]`` False are NaN. Accumulates in float32 per output, so the value of an output
    depends only on its own source rows (chunking cannot change it).
    """
    n_out, n_ch = out.shape
    radius = (n_taps - 1) // 2
    origin = (radius + 1) * steps
    for k in prange(n_out):
        if not valid[k]:
            for c in range(n_ch):
                out[k, c] = np.nan
            continue
        p = pos[k]
        base = np.int64(np.floor(p)) - radius
        weights = np.empty(n_taps, np.float32)
        rows = np.empty(n_taps, np.int64)
        for j in range(n_taps):
            n = base + j
            u = (p - n) * steps + origin
            i = np.int64(u)
            f = u - i
            weights[j] = np.float32(table[i] * (1.0 - f) + table[i + 1] * f)
            if n < 0:
                n = -n
            if n > n_in - 1:
                n = 2 * (n_in - 1) - n
            rows[j] = n - lo
        acc = np.zeros(n_ch, np.float32)
        for j in range(n_taps):  # taps outer, channels inner: a SIMD loop over a contiguous row
            w = weights[j]
            row = x[rows[j], c0 : c0 + n_ch]
            for c in range(n_ch):
                acc[c] += w * np.float32(row[c])
        for c in range(n_ch):
            out[k, c] = acc[c] * scale[c]


@njit(nogil=True, cache=True)
def _moments(out, sum1, sum2):  # pragma: no cover - compiled
    """Add the per-column sum and sum of squares of the rows of ``out`` that are finite;
    return how many rows were added."""
    n, c = out.shape
    added = 0
    for k in range(n):
        if not np.isfinite(out[k, 0]):
            continue
        added += 1
        for j in range(c):
            v = np.float64(out[k, j])
            sum1[j] += v
            sum2[j] += v * v
    return added


@njit(nogil=True, cache=True, inline="always")
def _kth_key(keys, k):  # pragma: no cover - compiled
    """The ``k``-th smallest (0-based) of int32 ``keys``: bisection over the key range with a
    branch-free (SIMD) count per step, 32 steps whatever the data."""
    lo = np.int64(-2147483648)
    hi = np.int64(2147483647)
    n = keys.size
    while lo < hi:
        mid = (lo + hi) >> 1
        pivot = np.int32(mid)
        count = 0
        for j in range(n):
            count += keys[j] <= pivot
        if count >= k + 1:
            hi = mid
        else:
            lo = mid + 1
    return np.int32(lo)


@njit(parallel=True, nogil=True, cache=True)
def _cmr(out, reference):  # pragma: no cover - compiled
    """Subtract each row's median across columns in place; store it in ``reference``.

    Exact median of finite float32 rows: each value becomes an int32 key with the same order
    (``bits ^ ((bits >> 31) & 0x7fffffff)``), the middle key is found by bisection with SIMD
    counts, and one more pass gives the lower middle value for an even count. About 4 times
    faster than a quickselect on 384 channels, whose branches are unpredictable.
    """
    n, c = out.shape
    half = c // 2
    block = 64
    for b in prange((n + block - 1) // block):
        keys = np.empty(c, np.int32)
        for k in range(b * block, min(n, (b + 1) * block)):
            row = out[k]
            bits = row.view(np.int32)
            for j in range(c):
                i = bits[j]
                keys[j] = i ^ ((i >> 31) & np.int32(0x7FFFFFFF))
            kh = _kth_key(keys, half)
            upper = np.float32(0.0)
            lower = np.float32(-np.inf)
            below = 0
            for j in range(c):
                x = keys[j]
                lt = x < kh
                below += lt
                lower = max(lower, row[j] if lt else np.float32(-np.inf))
                if x == kh:
                    upper = row[j]
            if c % 2 == 1:
                v = upper
            elif below < half:  # the middle value repeats: both middles are equal
                v = upper
            else:
                v = np.float32(0.5) * (upper + lower)
            reference[k] = v
            for j in range(c):
                row[j] -= v


def _read_rows(fh, lo: int, hi: int, n_saved: int, into: np.ndarray | None = None) -> np.ndarray:
    """Rows ``[lo, hi)`` of an int16 file of ``n_saved`` columns (a plain read, no memory map),
    into the first rows of ``into`` when it is large enough (buffers are reused: fresh pages cost
    a page fault each)."""
    if into is not None and into.shape[0] >= hi - lo and into.shape[1] == n_saved:
        buf = into[: hi - lo]
    else:
        buf = np.empty((hi - lo, n_saved), dtype=np.int16)
    view = memoryview(buf).cast("B")
    offset = lo * n_saved * 2
    got = 0
    fh.seek(offset)
    while got < view.nbytes:
        n = fh.readinto(view[got:])
        if not n:
            raise MetaError(f"{fh.name}: short read at byte {offset + got} "
                            f"(expected rows {lo}..{hi} of {n_saved} channels)")
        got += n
    return buf


# --------------------------------------------------------------------------- stage
def run_lfp(
    *,
    lf_bin: str | os.PathLike,
    lf_meta: str | os.PathLike,
    out_dir: str | os.PathLike,
    params: LfpParams = LfpParams(),
    clock_map: InvertibleClockMapLike | None = None,
    probe_duration_s: float | None = None,
    stream: str = "imec0",
) -> dict[str, Any]:
    """LF stream → ``<out_dir>/<stream>.lf_processed.h5``: 1 kHz, probe clock, µV, float32.

    Parameters
    ----------
    lf_bin, lf_meta : path-like
        SpikeGLX LF binary and meta.
    out_dir : path-like
        ``processed/<session>/``.
    params : LfpParams
        Filter, CMR and chunking.
    clock_map : object with ``to_probe`` / ``from_probe``, optional
        The ``"imec0.lf"`` map of :class:`pixbin.clock.ClockMap`; identity when absent
        (LF sample ``j`` is at probe time ``j / imSampRate(LF)``).
    probe_duration_s : float, optional
        Probe (AP) duration; the output has ``floor(probe_duration_s * rate_hz)`` samples. Default:
        the LF duration on the probe clock. Samples outside the LF recording are NaN.
    stream : str
        Probe name used in the file name.

    Returns
    -------
    dict
        ``path``, ``n_samples``, ``n_channels``, ``rate_hz``, ``source_rate_hz``, ``filter``,
        ``cmr``, ``duration_s``, ``median_sd_uV``, ``seconds`` (wall time).

    Examples
    --------
    >>> run_lfp(lf_bin=raw / "x_g0_t0.imec0.lf.bin", lf_meta=raw / "x_g0_t0.imec0.lf.meta",
    ...         out_dir=processed)["path"].name  # doctest: +SKIP
    'imec0.lf_processed.h5'
    """
    import h5netcdf

    started = time.perf_counter()
    src = lf_source(lf_bin, lf_meta)
    design = kernel_design(src.rate_hz, params)
    table = _kernel_table(design)

    n_out = _output_length(src, params, clock_map, probe_duration_s)
    n_ch = src.data_columns.size
    out_path = layout.Processed(Path(out_dir)).lfp(stream)
    filt = _filter_record(params, design)
    log.info("LFP %s: %d LF samples at %r Hz -> %d samples at %g Hz, %d channels, %d taps",
             src.bin_path.name, src.n_samples, src.rate_hz, n_out, params.rate_hz, n_ch,
             design["n_taps"])

    with atomic_path(out_path) as tmp, open(src.bin_path, "rb") as fh, \
            h5netcdf.File(tmp, "w") as f:
        v_lfp, v_time, v_ref = _create_lfp_file(f, src, n_out, params.cmr)
        sum1, sum2, n_finite = _stream_chunks(fh, src, params, clock_map, design, table, n_out,
                                              v_lfp, v_time, v_ref)
        median_sd = _write_sd(f, sum1, sum2, n_finite)
        f.attrs.update(_file_attrs(src, params, clock_map, filt, median_sd, out_path.parent))
    seconds = time.perf_counter() - started
    log.info("LFP written to %s in %.1f s", out_path, seconds)
    return {
        "path": out_path,
        "n_samples": n_out,
        "n_channels": n_ch,
        "rate_hz": params.rate_hz,
        "source_rate_hz": src.rate_hz,
        "filter": filt,
        "cmr": params.cmr,
        "duration_s": n_out / params.rate_hz,
        "median_sd_uV": median_sd,
        "seconds": seconds,
    }


def _output_length(src: LfSource, params: LfpParams,
                   clock_map: InvertibleClockMapLike | None,
                   probe_duration_s: float | None) -> int:
    """Output samples: ``floor(probe_duration_s * rate_hz)``, the probe duration defaulting to
    the LF duration on the probe clock; MetaError below one sample."""
    if probe_duration_s is None:
        probe_duration_s = src.duration_s
        if clock_map is not None:
            probe_duration_s = float(np.asarray(clock_map.to_probe(np.array([src.duration_s])))[0])
    n_out = int(math.floor(round(probe_duration_s * params.rate_hz, 6)))
    if n_out < 1:
        raise MetaError(f"{src.meta_path}: recording too short for one {params.rate_hz} Hz "
                        f"sample (duration {probe_duration_s} s)")
    return n_out


def _filter_record(params: LfpParams, design: dict[str, Any]) -> dict[str, Any]:
    """The filter as recorded in the file's ``filter`` attribute and the summary."""
    return {
        "method": "Kaiser-windowed sinc evaluated at the exact source positions",
        "passband_hz": params.passband_hz, "stopband_hz": params.stopband_hz,
        "attenuation_db": params.attenuation_db, "cutoff_hz": design["cutoff_hz"],
        "beta": design["beta"], "half_width_samples": design["half_width_samples"],
        "n_taps": design["n_taps"], "edges": "mirrored",
        "stopband_attenuation_db": design["stopband_attenuation_db"],
        "passband_ripple": design["passband_ripple"],
    }


#: The LF band's rate (Hz, nominal): a wider band is read in chunks of as many rows.
_LF_BAND_HZ = 2500.0


def _stream_chunks(fh, src: LfSource, params: LfpParams,
                   clock_map: InvertibleClockMapLike | None, design: dict[str, Any],
                   table: np.ndarray, n_out: int, v_lfp, v_time, v_ref
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """Filter (and reference) the LF file chunk by chunk into the file's variables; the next
    chunk is read and the previous one written in the background while one is computed.
    Returns the per-channel sum and sum of squares of the finite outputs, and their count."""
    n_ch = src.data_columns.size
    # a wide band (30 kHz) takes chunks as short as an LF band's rows, so memory stays the same
    chunk_s = params.chunk_s * min(1.0, _LF_BAND_HZ / src.rate_hz)
    chunk = max(1, int(round(chunk_s * params.rate_hz)))
    scale = src.uv_per_bit.astype(np.float32)
    cols = src.data_columns
    contiguous = bool(np.all(np.diff(cols) == 1))

    def plan(k0: int) -> tuple:
        k1 = min(n_out, k0 + chunk)
        pos = resample_positions(np.arange(k0, k1), params.rate_hz, src.rate_hz, clock_map)
        valid = (pos >= 0) & (pos <= src.n_samples - 1)
        pos = np.where(valid, pos, 0.0)
        lo, hi = _row_span(pos, src.n_samples, design["n_taps"])
        return k0, k1, pos, valid, lo, hi

    def write(k0: int, k1: int, out: np.ndarray, ref: np.ndarray | None) -> None:
        v_lfp[k0:k1, :] = out
        v_time[k0:k1] = np.arange(k0, k1, dtype=np.float64) / params.rate_hz
        if v_ref is not None:
            v_ref[k0:k1] = ref

    sum1 = np.zeros(n_ch, np.float64)
    sum2 = np.zeros(n_ch, np.float64)
    n_finite = 0
    bar = stage_bar(f"LFP {Path(src.meta_path).stem}", total=n_out / params.rate_hz, unit="s",
                    bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]")
    with concurrent.futures.ThreadPoolExecutor(1) as reader, \
            concurrent.futures.ThreadPoolExecutor(1) as writer, bar:
        # two input and two output buffers, used in turn (one is read or written in the
        # background while the other is computed)
        rows_max = int(math.ceil(chunk * src.rate_hz / params.rate_hz * 1.01))
        rows_max += design["n_taps"] + 8
        inputs = [np.empty((rows_max, src.n_saved_chans), np.int16) for _ in range(2)]
        outputs = [np.empty((chunk, n_ch), np.float32) for _ in range(2)]
        starts = iter(range(0, n_out, chunk))
        current = plan(next(starts))
        pending = reader.submit(_read_rows, fh, current[4], current[5], src.n_saved_chans,
                                inputs[0])
        written = None
        turn = 0
        while current is not None:
            k0, k1, pos, valid, lo, hi = current
            data = pending.result()
            k_next = next(starts, None)
            current = plan(k_next) if k_next is not None else None
            if current is not None:  # read the next chunk while this one is computed
                pending = reader.submit(_read_rows, fh, current[4], current[5], src.n_saved_chans,
                                        inputs[1 - turn])
            c0 = int(cols[0])
            if not contiguous:
                data, c0 = np.ascontiguousarray(data[:, cols]), 0
            out = outputs[turn][: k1 - k0]
            _fir(data, lo, src.n_samples, pos, valid, table, _TABLE_STEPS, design["n_taps"],
                 c0, scale, out)
            del data
            ref = _subtract_median(out, valid) if v_ref is not None else None
            n_finite += _moments(out, sum1, sum2)
            if written is not None:  # one chunk in flight at most: memory stays bounded
                written.result()
            written = writer.submit(write, k0, k1, out, ref)
            turn = 1 - turn
            bar.update((k1 - k0) / params.rate_hz)
        if written is not None:
            written.result()
    return sum1, sum2, n_finite


def _subtract_median(out: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Subtract the median across channels from the ``valid`` rows of ``out`` in place; return
    the medians, float32, NaN on the other rows."""
    ref = np.full(out.shape[0], np.nan, np.float32)
    if valid.all():
        _cmr(out, ref)
    elif valid.any():
        part = np.ascontiguousarray(out[valid])
        part_ref = np.empty(part.shape[0], np.float32)
        _cmr(part, part_ref)
        out[valid], ref[valid] = part, part_ref
    return ref


def _write_sd(f, sum1: np.ndarray, sum2: np.ndarray, n_finite: int) -> float:
    """Write the per-channel standard deviation (``sd_uV``); return its median (NaN without
    finite outputs)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sum1 / n_finite
        sd = np.sqrt(np.maximum(sum2 / n_finite - mean**2, 0.0))
    var = f.create_variable("sd_uV", ("channel",), "f8", data=sd)
    var.attrs.update({"units": "uV", "long_name": "standard deviation of lfp per channel"})
    return float(np.median(sd)) if n_finite else float("nan")


def _clock_map_note(clock_map: InvertibleClockMapLike | None) -> str:
    """The map the LF samples were placed on the probe clock with (JSON of a ClockMap)."""
    if clock_map is None:
        return "identity"
    if isinstance(clock_map, ClockMap):
        return to_json({"stream": clock_map.stream, **clock_map.to_dict()})
    return type(clock_map).__name__


def _file_attrs(src: LfSource, params: LfpParams, clock_map: InvertibleClockMapLike | None,
                filt: dict[str, Any], median_sd: float, out_dir: Path) -> dict[str, Any]:
    """The LFP file's global attributes (source paths relative to ``out_dir``)."""
    return {
        "source_file": layout.recorded_path(src.bin_path, out_dir),
        "source_meta": layout.recorded_path(src.meta_path, out_dir),
        "source_rate_hz": src.rate_hz,
        "rate_hz": params.rate_hz,
        "clock": "probe (imec0 AP) seconds; t = k / rate_hz",
        "clock_map": _clock_map_note(clock_map),
        "filter": to_json(filt),
        "cmr": int(params.cmr),
        "median_sd_uV": median_sd,
        PROVENANCE_KEY: to_json(provenance(dataclasses.asdict(params))),
    }


def _create_lfp_file(f, src: LfSource, n_out: int, cmr: bool) -> tuple:
    """Dimensions, coordinates and the (empty, chunked) variables of the LFP file."""
    n_ch = src.data_columns.size
    f.dimensions = {"time": n_out, "channel": n_ch}
    v_time = f.create_variable("time", ("time",), "f8", chunks=(min(n_out, 1 << 16),))
    v_time.attrs.update({"units": "s", "long_name": "probe clock (imec0 AP) time"})
    var = f.create_variable("channel", ("channel",), "i8", data=src.channel_ids)
    var.attrs["long_name"] = "readout channel"
    for name, values in (("x_um", src.x_um), ("y_um", src.y_um)):
        var = f.create_variable(name, ("channel",), "f8", data=values)
        var.attrs["units"] = "um"
    v_lfp = f.create_variable("lfp", ("time", "channel"), "f4", chunks=(min(n_out, 1000), n_ch))
    v_lfp.attrs.update({"units": "uV", "coordinates": "x_um y_um"})
    v_ref = None
    if cmr:
        v_ref = f.create_variable("reference_uV", ("time",), "f4",
                                  chunks=(min(n_out, 1 << 16),))
        v_ref.attrs.update({"units": "uV", "long_name": "common median subtracted at each sample"})
    return v_lfp, v_time, v_ref
