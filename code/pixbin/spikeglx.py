"""SpikeGLX files: tolerant ``.meta`` parsing, memory-mapped ``.bin`` access, SY-word sync edges,
the LF stream's channels (saved subset, µV per bit, geometry).

This is the one module that reads SpikeGLX ``.meta`` files.

- The sample count of a stream comes from the size of its ``.bin`` file; ``fileSizeBytes`` in the
  ``.meta`` is used only when the ``.bin`` is absent, and a disagreement is logged (stubs and
  copied-but-truncated files are common, e.g. realdata ``Noise4Sam_g0``). A ``.bin`` whose
  size, like the ``fileSizeBytes`` of its ``.meta``, is not a whole number of ``nSavedChans``
  samples has another channel count than the ``.meta`` says, and is refused.
- Rates are ``imSampRate`` / ``niSampRate`` as float, never rounded.
- The sync word of an imec stream is the SY channel, saved after the AP and LF channels
  (``snsApLfSy``); SpikeGLX's 1 Hz sync square wave is bit 6 of it.
- Probe geometry is probeinterface's job (:func:`read_probe`), not re-implemented here. The one
  exception: probeinterface (<= 0.4.2) reads ``snsSaveChanSubset`` as readout channels and fails
  on a real LF ``.meta`` (``384:768``, LF channels in acquisition numbering); it is then given a
  copy of the meta whose subset lists the readout channels.
- An LF stream (:func:`lf_source`): its saved data channels (``snsSaveChanSubset``, the SY
  channel left out, LF channels mapped back to readout channels 0…383), their positions and
  ``imAiRangeMax / imMaxInt / lfGain × 1e6`` µV per bit (LF gains from the IMRO table).
- A NIDQ stream's sync line (:func:`nidq_sync_line`, :func:`nidq_sync_edges`) is where its meta
  says, read as SpikeGLX's CatGT reads it: ``syncNiChanType=0`` a digital line, ``syncNiChan``
  counting the lines of the digital words that follow the acquired analog channels
  (``acqMnMaXaDw``; bit ``syncNiChan % 16`` of word ``syncNiChan // 16``); ``syncNiChanType=1``
  the analog channel ``syncNiChan`` (acquisition numbering) thresholded at ``syncNiThresh`` volts,
  ``V = int16 × niAiRangeMax / niMaxInt / gain`` (gain ``niMNGain`` for MN, ``niMAGain`` for MA,
  1 for XA channels; ``niMaxInt`` 32768 in metas older than the key). The saved column comes from
  ``snsSaveChanSubset``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pixbin.clock import digital_edge_position
from pixbin.edges import EdgeDetector, Edges, digital_edges
from pixbin.errors import MetaError

__all__ = [
    "read_meta",
    "parse_meta",
    "meta_with",
    "SpikeGlxStream",
    "stream_info",
    "memmap_bin",
    "iter_sync_word",
    "read_sync_word",
    "sync_edges",
    "read_probe",
    "LfSource",
    "lf_source",
    "NidqSyncLine",
    "nidq_sync_line",
    "nidq_sync_edges",
    "SYNC_BIT",
]

log = logging.getLogger(__name__)

SYNC_BIT = 6
"""Bit of the imec SY word that carries SpikeGLX's sync square wave."""

_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$|^[+-]?\d+[eE][+-]?\d+$")
_BYTES_PER_VALUE = 2  # int16


def _parse_value(text: str) -> Any:
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return text


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a SpikeGLX ``.meta`` file into a dict.

    Lines are ``key=value``, split at the first ``=``; values that are plain integers or decimal
    numbers become ``int``/``float``, everything else stays a string (e.g. ``"384,0,1"``,
    ``"2.0.169"``). ``~`` keys are kept with their tilde. Blank lines and a byte-order mark are
    tolerated; a line without ``=`` is logged and skipped.

    Raises
    ------
    MetaError
        If the file is missing, unreadable or holds no ``key=value`` line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise MetaError(f"{path}: cannot read SpikeGLX meta ({exc})") from exc
    return parse_meta(text, path)


def parse_meta(text: str, source: str | os.PathLike) -> dict[str, Any]:
    """Parse the text of a SpikeGLX ``.meta`` as :func:`read_meta` does; ``source`` names it in
    messages. MetaError when it holds no ``key=value`` line."""
    meta: dict[str, Any] = {}
    for n, line in enumerate(text.lstrip("\ufeff").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            log.warning("%s:%d: ignoring line without key=value: %r", source, n, line[:80])
            continue
        meta[key.strip()] = _parse_value(value.strip())
    if not meta:
        raise MetaError(f"{source}: no key=value lines; not a SpikeGLX .meta file")
    return meta


def meta_with(text: str, values: Mapping[str, Any]) -> str:
    """The text of a ``.meta`` with the value of each key in ``values`` replaced in its line
    (other lines as they are; keys it lacks are not added)."""
    lines = []
    for line in text.splitlines():
        key = line.partition("=")[0].strip()
        lines.append(f"{key}={values[key]}" if key in values else line)
    return "\n".join(lines) + "\n"


def _ints(meta: Mapping[str, Any], key: str, path: Path | str, n: int) -> tuple[int, ...]:
    """``key`` as ``n`` comma-separated integers."""
    value = meta.get(key)
    if value is None:
        raise MetaError(f"{path}: missing key {key!r}")
    try:
        values = tuple(int(v) for v in str(value).split(","))
    except ValueError:
        raise MetaError(f"{path}: {key}={value!r}, expected comma-separated integers") from None
    if len(values) != n:
        raise MetaError(f"{path}: {key}={value!r}, expected {n} comma-separated integers")
    return values


@dataclass(frozen=True)
class SpikeGlxStream:
    """One SpikeGLX stream (``.meta`` + optional ``.bin``).

    Attributes
    ----------
    meta_path, bin_path : Path, Path or None
        The files (``bin_path`` None when no ``.bin`` sits beside the ``.meta``).
    kind : str
        ``"ap"``, ``"lf"``, ``"nidq"`` or ``"obx"`` (from the file name, else ``typeThis``).
    rate_hz : float
        ``imSampRate`` (imec) or ``niSampRate``/``obSampRate``, as float.
    n_saved_chans : int
        ``nSavedChans``.
    n_samples : int
        Samples per channel, from the ``.bin`` size when present, else from ``fileSizeBytes``.
    n_samples_from : str
        ``"file"`` or ``"meta"``.
    sync_channel : int or None
        Column of the first SY word (imec: after AP and LF channels; nidq: the first digital
        word), None when the stream saved none.
    first_sample : int
        ``firstSample``: index of the file's sample 0 in the stream since acquisition start.
    meta : dict
        The parsed ``.meta``.
    """

    meta_path: Path
    bin_path: Path | None
    kind: str
    rate_hz: float
    n_saved_chans: int
    n_samples: int
    n_samples_from: str
    sync_channel: int | None
    first_sample: int
    meta: dict[str, Any]

    @property
    def duration_s(self) -> float:
        """``n_samples / rate_hz``."""
        return self.n_samples / self.rate_hz


#: Meta keys that identify the probe a file was recorded from (AP and LF files of one probe agree).
PROBE_IDENTITY_KEYS = ("imDatPrb_sn", "imDatPrb_type", "imDatPrb_pn")


def check_same_probe(ap_meta: str | os.PathLike, lf_meta: str | os.PathLike) -> None:
    """Refuse an LF ``.meta`` whose probe (serial number, type, part number) is not the AP
    ``.meta``'s: a file of another probe or recording under this probe's name."""
    ap, lf = read_meta(ap_meta), read_meta(lf_meta)
    for key in PROBE_IDENTITY_KEYS:
        if key in ap and key in lf and str(ap[key]) != str(lf[key]):
            raise MetaError(f"{lf_meta}: {key}={lf[key]}, but the AP meta {Path(ap_meta).name} has "
                            f"{key}={ap[key]}; expected the AP and LF files of one probe (is this the "
                            "LF file of another probe or recording?)")


def _kind(meta_path: Path, meta: Mapping[str, Any]) -> str:
    name = meta_path.name.lower()
    for kind in ("ap", "lf", "nidq", "obx"):
        if f".{kind}." in name:
            return kind
    t = str(meta.get("typeThis", ""))
    if t == "nidq":
        return "nidq"
    if t == "obx":
        return "obx"
    if t == "imec":
        ap, lf, _ = _ints(meta, "snsApLfSy", meta_path, 3)
        return "lf" if (lf and not ap) else "ap"
    raise MetaError(f"{meta_path}: cannot tell the stream kind (file name or typeThis={t!r})")


def _bin_for(meta_path: Path) -> Path:
    return meta_path.with_suffix(".bin")


def stream_info(
    meta: str | os.PathLike, bin_path: str | os.PathLike | None = None
) -> SpikeGlxStream:
    """Describe a SpikeGLX stream from its ``.meta`` (and ``.bin``, found beside it by default).

    Parameters
    ----------
    meta : path-like
        The ``.meta`` file.
    bin_path : path-like, optional
        The ``.bin`` file; default: the ``.meta`` path with suffix ``.bin`` if it exists.

    Raises
    ------
    MetaError
        Missing or malformed rate / channel-count keys, or a ``.bin`` too small for one sample.
    """
    meta_path = Path(meta)
    return _stream(meta_path, read_meta(meta_path), bin_path)


def _stream(
    meta_path: Path, m: Mapping[str, Any], bin_path: str | os.PathLike | None
) -> SpikeGlxStream:
    m = dict(m)
    kind = _kind(meta_path, m)
    rate_key = {"ap": "imSampRate", "lf": "imSampRate", "nidq": "niSampRate", "obx": "obSampRate"}[kind]
    rate = m.get(rate_key)
    if not isinstance(rate, (int, float)) or not rate > 0:
        raise MetaError(f"{meta_path}: {rate_key}={rate!r}, expected a positive number")
    n_chans = m.get("nSavedChans")
    if not isinstance(n_chans, int) or n_chans <= 0:
        raise MetaError(f"{meta_path}: nSavedChans={n_chans!r}, expected a positive integer")

    if kind in ("ap", "lf"):
        ap, lf, sy = _ints(m, "snsApLfSy", meta_path, 3)
        if ap + lf + sy != n_chans:
            raise MetaError(
                f"{meta_path}: snsApLfSy={m['snsApLfSy']} sums to {ap + lf + sy}, "
                f"but nSavedChans={n_chans}"
            )
        sync_channel = ap + lf if sy else None
    elif kind == "nidq" and "snsMnMaXaDw" in m:
        mn, ma, xa, dw = _ints(m, "snsMnMaXaDw", meta_path, 4)
        sync_channel = mn + ma + xa if dw else None
    else:
        sync_channel = None

    row_bytes = n_chans * _BYTES_PER_VALUE
    meta_size = m.get("fileSizeBytes")
    if bin_path is None:
        candidate = _bin_for(meta_path)
        bin_path = candidate if candidate.is_file() else None
    else:
        bin_path = Path(bin_path)
        if not bin_path.is_file():
            raise MetaError(f"{bin_path}: .bin file not found (meta {meta_path})")
    if bin_path is not None:
        size = bin_path.stat().st_size
        n_samples, rest = divmod(size, row_bytes)
        source = "file"
        if rest and isinstance(meta_size, int) and meta_size % row_bytes:
            # SpikeGLX writes whole samples: neither size fits, so the channel count is wrong
            raise MetaError(
                f"{meta_path}: fileSizeBytes={meta_size} and the .bin's {size} bytes are not a "
                f"whole number of {n_chans}-channel int16 samples ({row_bytes} bytes each): "
                f"nSavedChans={n_chans} is not the file's channel count; use the .meta "
                "SpikeGLX wrote with the .bin"
            )
        if rest:
            log.warning(
                "%s: size %d bytes is not a whole number of %d-channel int16 samples; "
                "ignoring the last %d bytes", bin_path, size, n_chans, rest,
            )
        if isinstance(meta_size, int) and meta_size != size:
            log.warning(
                "%s: fileSizeBytes=%d in %s but the file has %d bytes; using the file "
                "(%d samples)", bin_path, meta_size, meta_path.name, size, n_samples,
            )
    else:
        if not isinstance(meta_size, int) or meta_size < 0:
            raise MetaError(
                f"{meta_path}: no .bin beside it and fileSizeBytes={meta_size!r}; "
                "cannot count samples"
            )
        n_samples = meta_size // row_bytes
        source = "meta"
    first = m.get("firstSample", 0)
    if not isinstance(first, int):
        log.warning("%s: firstSample=%r is not an integer; taking 0", meta_path, first)
        first = 0
    return SpikeGlxStream(
        meta_path=meta_path,
        bin_path=bin_path,
        kind=kind,
        rate_hz=float(rate),
        n_saved_chans=n_chans,
        n_samples=int(n_samples),
        n_samples_from=source,
        sync_channel=sync_channel,
        first_sample=int(first),
        meta=m,
    )


def _as_stream(bin_path: str | os.PathLike, meta: Any) -> SpikeGlxStream:
    if isinstance(meta, SpikeGlxStream):
        if meta.bin_path is not None and Path(bin_path) == meta.bin_path:
            return meta
        return stream_info(meta.meta_path, bin_path)
    if isinstance(meta, (str, os.PathLike)):
        return stream_info(meta, bin_path)
    if isinstance(meta, Mapping):  # a parsed .meta: name the .meta beside the .bin in messages
        bin_path = Path(bin_path)
        return _stream(bin_path.with_suffix(".meta"), meta, bin_path)
    raise TypeError(f"meta must be a path, a dict or a SpikeGlxStream, got {type(meta).__name__}")


def memmap_bin(bin_path: str | os.PathLike, meta: str | os.PathLike | Mapping[str, Any] | SpikeGlxStream) -> np.memmap:
    """Read-only ``np.memmap`` of a ``.bin``: int16, shape ``(n_samples, n_saved_chans)``.

    The sample count comes from the file size (see :func:`stream_info`).
    """
    s = _as_stream(bin_path, meta)
    if s.n_samples == 0:
        raise MetaError(f"{s.bin_path}: holds no complete sample of {s.n_saved_chans} channels")
    return np.memmap(s.bin_path, dtype=np.int16, mode="r", shape=(s.n_samples, s.n_saved_chans))


def _sync_column(s: SpikeGlxStream, channel: int | None) -> int:
    ch = s.sync_channel if channel is None else channel
    if ch is None:
        raise MetaError(f"{s.meta_path}: this stream saved no sync (SY) channel (snsApLfSy)")
    if not 0 <= ch < s.n_saved_chans:
        raise MetaError(f"{s.meta_path}: channel {ch} outside 0..{s.n_saved_chans - 1}")
    return ch


def iter_sync_word(
    bin_path: str | os.PathLike,
    meta: str | os.PathLike | Mapping[str, Any] | SpikeGlxStream,
    chunk_samples: int = 65_536,
    *,
    channel: int | None = None,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Stream the SY column (or ``channel``) in chunks: yields ``(first sample index, int16 words)``.

    The file is read sequentially into one reusable buffer of ``chunk_samples`` rows, so memory
    stays at ``chunk_samples * n_saved_chans * 2`` bytes whatever the file size.
    """
    s = _as_stream(bin_path, meta)
    col = _sync_column(s, channel)
    if s.n_samples == 0:
        raise MetaError(f"{s.bin_path}: holds no complete sample of {s.n_saved_chans} channels "
                        f"({s.bin_path.stat().st_size} bytes); the .bin is empty or cut short")
    if chunk_samples <= 0:
        raise ValueError(f"chunk_samples must be positive, got {chunk_samples}")
    stop = s.n_samples if stop is None else min(stop, s.n_samples)
    if start < 0 or start > stop:
        raise ValueError(f"invalid sample range [{start}, {stop}) for {s.bin_path}")
    nch = s.n_saved_chans
    buf = np.empty((min(chunk_samples, max(stop - start, 1)), nch), dtype=np.int16)
    with open(s.bin_path, "rb", buffering=0) as f:
        f.seek(start * nch * _BYTES_PER_VALUE)
        pos = start
        while pos < stop:
            n = min(len(buf), stop - pos)
            view = buf[:n]
            got = f.readinto(memoryview(view).cast("B"))
            if got != view.nbytes:
                raise MetaError(
                    f"{s.bin_path}: short read at sample {pos}: expected {view.nbytes} bytes, "
                    f"got {got}"
                )
            yield pos, view[:, col].copy()
            pos += n


def read_sync_word(
    bin_path: str | os.PathLike,
    meta: str | os.PathLike | Mapping[str, Any] | SpikeGlxStream,
    start: int,
    stop: int,
    *,
    channel: int | None = None,
) -> np.ndarray:
    """The SY words of samples ``[start, stop)`` (a short window; uses the memmap)."""
    s = _as_stream(bin_path, meta)
    col = _sync_column(s, channel)
    start = max(0, int(start))
    stop = min(s.n_samples, int(stop))
    if stop <= start:
        return np.empty(0, np.int16)
    mm = memmap_bin(s.bin_path, s)
    return np.array(mm[start:stop, col])


def sync_edges(
    bin_path: str | os.PathLike,
    meta: str | os.PathLike | Mapping[str, Any] | SpikeGlxStream,
    bit: int = SYNC_BIT,
    *,
    chunk_samples: int = 65_536,
    channel: int | None = None,
) -> Edges:
    """Digital edges of one bit of the SY word, in samples of that stream.

    Positions are the integer index of the first sample at the new level (float64). The file is
    streamed (:func:`iter_sync_word`); the first sample cannot be an edge.
    """
    s = _as_stream(bin_path, meta)
    rising: list[np.ndarray] = []
    falling: list[np.ndarray] = []
    previous: int | None = None
    for start, words in iter_sync_word(s.bin_path, s, chunk_samples, channel=channel):
        e = digital_edges(words, bit, start_index=start, previous=previous)
        rising.append(e.rising)
        falling.append(e.falling)
        previous = int((int(words[-1]) & 0xFFFF) >> bit & 1)
    cat = (lambda parts: np.concatenate(parts) if parts else np.empty(0))
    edges = Edges(cat(rising), cat(falling))
    log.info("%s: bit %d: %d rising, %d falling edges in %d samples",
             s.bin_path, bit, len(edges.rising), len(edges.falling), s.n_samples)
    return edges


def read_probe(meta: str | os.PathLike, *, readout: np.ndarray | None = None):
    """Probe geometry and channel map from a ``.meta`` via :func:`probeinterface.read_spikeglx`.

    Parameters
    ----------
    meta : path-like
        An imec ``.meta``.
    readout : array of int, optional
        The readout channels (0–383 on NP1.0) saved in the file, for a meta whose
        ``snsSaveChanSubset`` is not written in readout numbering: SpikeGLX lists an LF file's
        channels as ``384:768`` (acquisition numbering), which probeinterface (<= 0.4.2) reads as
        readout channels and fails on (``tests/test_spikeglx.py``). probeinterface is then given
        a copy of the meta whose subset lists ``readout``.

    Returns
    -------
    probeinterface.Probe
        One contact per saved data channel (the SY channel is not a contact).
    """
    import probeinterface

    path = Path(meta)
    pn = read_meta(path).get("imDatPrb_pn")
    try:
        if readout is None:
            return probeinterface.read_spikeglx(path)
        subset = "snsSaveChanSubset=" + ",".join(str(int(c)) for c in readout)
        with tempfile.TemporaryDirectory(prefix="pixbin-meta-") as tmp:
            copy = Path(tmp) / path.name
            copy.write_text("".join(
                (subset if line.startswith("snsSaveChanSubset=") else line) + "\n"
                for line in path.read_text(errors="replace").splitlines()
            ))
            return probeinterface.read_spikeglx(copy)
    except Exception as exc:  # probeinterface raises AssertionError/KeyError/ValueError
        raise MetaError(
            f"{path}: probeinterface cannot build the probe geometry from this .meta "
            f"(imDatPrb_pn={pn!r}): {type(exc).__name__}: {exc}"
        ) from exc


# --------------------------------------------------------------------------- LF stream
@dataclass(frozen=True)
class LfSource(SpikeGlxStream):
    """An LF stream (:class:`SpikeGlxStream`, with its ``.bin``) and its data channels.

    Attributes
    ----------
    data_columns : ndarray of int
        Column of each data channel in the file (the SY column excluded).
    channel_ids : ndarray of int
        Readout channel (0–383 on NP1.0) of each data column.
    uv_per_bit : ndarray of float
        ``imAiRangeMax / imMaxInt / lf_gain * 1e6`` per data channel (``imMaxInt`` 512 when
        absent; LF gains from the IMRO table).
    x_um, y_um : ndarray of float
        Contact positions (probeinterface geometry).
    """

    data_columns: np.ndarray
    channel_ids: np.ndarray
    uv_per_bit: np.ndarray
    x_um: np.ndarray
    y_um: np.ndarray


def _number(meta: Mapping[str, Any], path: Path, key: str, default: float | None = None) -> float:
    """``key`` as float (``default`` when absent and a default is given)."""
    if key not in meta and default is None:
        raise MetaError(f"{path}: required key {key!r} is missing from the .meta")
    value = meta.get(key, default)
    try:
        return float(value)
    except ValueError:
        raise MetaError(f"{path}: {key}={value!r} is not a valid float") from None


def _saved_channels(s: SpikeGlxStream, acq: tuple[int, ...]) -> np.ndarray:
    """Acquisition indices of the saved channels of an imec stream, in file order
    (``snsSaveChanSubset``; ``acq`` is ``acqApLfSy``)."""
    text = str(s.meta.get("snsSaveChanSubset", "all")).strip()
    if text == "all":
        n_ap, n_lf, n_sy = _ints(s.meta, "snsApLfSy", s.meta_path, 3)
        if n_ap == 0:
            # an LF file saving everything: LF channels then SY, in acquisition numbering
            return np.r_[acq[0] + np.arange(n_lf), acq[0] + acq[1] + np.arange(n_sy)]
        return np.arange(s.n_saved_chans)
    return _channel_list(s, text)


def _channel_list(s: SpikeGlxStream, text: str) -> np.ndarray:
    """The channels of a ``snsSaveChanSubset`` list (``0:383,768``), checked against
    ``nSavedChans``."""
    chans: list[int] = []
    try:
        for part in text.split(","):
            if ":" in part:
                a, b = part.split(":")
                chans.extend(range(int(a), int(b) + 1))
            elif part.strip():
                chans.append(int(part))
    except ValueError:
        raise MetaError(
            f"{s.meta_path}: snsSaveChanSubset={text!r} is not a list of channels or ranges"
        ) from None
    if len(chans) != s.n_saved_chans:
        raise MetaError(
            f"{s.meta_path}: snsSaveChanSubset={text!r} lists {len(chans)} channels but "
            f"nSavedChans={s.n_saved_chans}"
        )
    return np.asarray(chans, dtype=np.int64)


def lf_source(lf_bin: str | os.PathLike, lf_meta: str | os.PathLike) -> LfSource:
    """Parse an LF ``.meta``, size its ``.bin`` and describe its data channels.

    Parameters
    ----------
    lf_bin, lf_meta : path-like
        The SpikeGLX LF binary and its meta. A wide-band stream (``acqApLfSy`` with no LF
        channel: the AP file of an NP2.0-type probe, or one split by CatGT into ``.lf``) keeps
        its AP numbering and gain (``imChan0apGain``, else 80).

    Returns
    -------
    LfSource

    Raises
    ------
    MetaError
        Naming the file, the key and the expected and found values (:func:`stream_info`'s
        checks, fewer than 2 samples, no LF channel saved, no LF gain, a probe probeinterface
        cannot build).
    """
    meta_path = Path(lf_meta)
    s = _stream(meta_path, read_meta(meta_path), lf_bin)
    if s.n_samples < 2:
        raise MetaError(f"{s.bin_path}: expected at least 2 samples of {s.n_saved_chans} "
                        f"channels, found {s.bin_path.stat().st_size} bytes")
    acq = _ints(s.meta, "acqApLfSy", meta_path, 3)
    n_ap, n_lf, _ = acq
    saved = _saved_channels(s, acq)
    is_lf = (saved >= n_ap) & (saved < n_ap + n_lf)
    is_ap = saved < n_ap
    if is_lf.any():
        data_columns = np.flatnonzero(is_lf)
        readout = saved[is_lf] - n_ap
        probe = read_probe(meta_path, readout=readout)  # the subset is in LF numbering
    elif n_lf == 0 and is_ap.any():
        # a wide-band stream split by CatGT into .lf: channels keep AP numbering
        data_columns = np.flatnonzero(is_ap)
        readout = saved[is_ap]
        probe = read_probe(meta_path)
    else:
        raise MetaError(f"{meta_path}: no LF channels among the saved channels "
                        f"(snsSaveChanSubset={s.meta.get('snsSaveChanSubset')!r}, "
                        f"acqApLfSy={s.meta.get('acqApLfSy')!r})")
    ann = probe.contact_annotations
    ids = np.asarray(ann.get("channel_ids", probe.device_channel_indices), dtype=np.int64)
    gains = ann.get("lf_gains")
    if gains is None and not is_lf.any():
        # a single-band probe (NP2.0 and kin): one gain for every channel of the wide band,
        # imChan0apGain in newer metas, else NP2.0's fixed 80
        gains = np.full(len(ids), _number(s.meta, meta_path, "imChan0apGain", 80))
    if gains is None:
        raise MetaError(
            f"{meta_path}: the IMRO table gives no LF gain per channel (probe "
            f"{s.meta.get('imDatPrb_pn')!r}); expected an NP1.0-style table "
            "(chan bank ref apGain lfGain hpFilt)"
        )
    lookup = {int(c): i for i, c in enumerate(ids)}
    missing = [int(c) for c in readout if int(c) not in lookup]
    if missing:
        raise MetaError(
            f"{meta_path}: readout channel(s) {missing[:10]} are saved but not in the probe "
            f"geometry ({len(ids)} contacts)"
        )
    rows = np.array([lookup[int(c)] for c in readout], dtype=np.int64)
    pos = np.asarray(probe.contact_positions, dtype=np.float64)[rows]
    lf_gain = np.asarray(gains, dtype=np.float64)[rows]
    ai_max = _number(s.meta, meta_path, "imAiRangeMax")
    max_int = _number(s.meta, meta_path, "imMaxInt", 512)
    if np.any(lf_gain <= 0):
        raise MetaError(f"{meta_path}: LF gains must be > 0, found {np.unique(lf_gain)}")
    return LfSource(
        **vars(s), data_columns=data_columns.astype(np.int64),
        channel_ids=readout.astype(np.int64), uv_per_bit=ai_max / max_int / lf_gain * 1e6,
        x_um=pos[:, 0], y_um=pos[:, 1],
    )


# --------------------------------------------------------------------------- NIDQ sync line
#: ``niMaxInt`` of metas written before SpikeGLX recorded the key (16-bit NI boards).
_NI_MAX_INT_DEFAULT = 32768


@dataclass(frozen=True)
class NidqSyncLine:
    """Where a NIDQ stream recorded SpikeGLX's sync pulser (from ``syncNiChanType``/``syncNiChan``).

    Attributes
    ----------
    kind : str
        ``"digital"`` (a bit of a digital word) or ``"analog"`` (a thresholded analog channel).
    column : int
        Column of the ``.bin`` holding it.
    bit : int or None
        The bit of that digital word (digital lines).
    threshold_v : float or None
        ``syncNiThresh`` (analog channels).
    volts_per_bit : float or None
        ``niAiRangeMax / niMaxInt / gain`` (analog channels).
    description : str
        The line in words, for messages and ``sync.json``.
    """

    kind: str
    column: int
    bit: int | None
    threshold_v: float | None
    volts_per_bit: float | None
    description: str


def _meta_int(s: SpikeGlxStream, key: str, why: str) -> int:
    value = s.meta.get(key)
    if not isinstance(value, int):
        raise MetaError(f"{s.meta_path}: {key}={value!r}, expected an integer ({why}); "
                        "expected the .meta SpikeGLX wrote with this NIDQ file")
    return value


def _saved_column(s: SpikeGlxStream, channel: int, what: str) -> int:
    """The ``.bin`` column of acquired NIDQ channel ``channel`` (``snsSaveChanSubset``)."""
    text = str(s.meta.get("snsSaveChanSubset", "all")).strip()
    saved = np.arange(s.n_saved_chans) if text == "all" else _channel_list(s, text)
    found = np.flatnonzero(saved == channel)
    if not found.size:
        raise MetaError(f"{s.meta_path}: the sync line ({what}, acquired channel {channel}) was not "
                        f"saved (snsSaveChanSubset={text!r}); no sync edges can be read from it")
    return int(found[0])


def nidq_sync_line(meta: str | os.PathLike | SpikeGlxStream) -> NidqSyncLine:
    """The sync line a NIDQ ``.meta`` declares: a digital bit or an analog channel and threshold.

    Raises
    ------
    MetaError
        Not a NIDQ stream, ``syncNiChanType``/``syncNiChan`` missing or unknown, a channel the
        stream did not acquire or save, or (analog) no ``syncNiThresh``/``niAiRangeMax``/gain;
        the message names the file and the keys.
    """
    s = meta if isinstance(meta, SpikeGlxStream) else stream_info(meta)
    if s.kind != "nidq":
        raise MetaError(f"{s.meta_path}: expected a NIDQ stream, found kind {s.kind!r}")
    why = "where the NIDQ recorded the sync pulser"
    kind = _meta_int(s, "syncNiChanType", why + ": 0 = digital line, 1 = analog channel")
    channel = _meta_int(s, "syncNiChan", why)
    if kind not in (0, 1) or channel < 0:
        raise MetaError(f"{s.meta_path}: syncNiChanType={kind}, syncNiChan={channel}; expected "
                        "syncNiChanType 0 (digital line) or 1 (analog channel) and syncNiChan >= 0")
    mn, ma, xa, dw = _ints(s.meta, "acqMnMaXaDw", s.meta_path, 4)
    if kind == 0:
        word, bit = divmod(channel, 16)
        if word >= dw:
            raise MetaError(f"{s.meta_path}: syncNiChan={channel} (digital line: bit {bit} of "
                            f"digital word {word}) but acqMnMaXaDw={s.meta['acqMnMaXaDw']} declares "
                            f"{dw} digital word(s)")
        what = f"digital line {channel}"
        column = _saved_column(s, mn + ma + xa + word, what)
        return NidqSyncLine("digital", column, bit, None, None,
                            f"{what} (bit {bit} of word XD{word}, column {column})")
    if channel >= mn + ma + xa:
        raise MetaError(f"{s.meta_path}: syncNiChan={channel} (analog channel) but "
                        f"acqMnMaXaDw={s.meta['acqMnMaXaDw']} declares {mn + ma + xa} analog "
                        "channel(s)")
    what = f"analog channel {channel}"
    column = _saved_column(s, channel, what)
    saved_mn, saved_ma, _, _ = _ints(s.meta, "snsMnMaXaDw", s.meta_path, 4)
    gain = (_number(s.meta, s.meta_path, "niMNGain") if column < saved_mn else
            _number(s.meta, s.meta_path, "niMAGain") if column < saved_mn + saved_ma else 1.0)
    threshold = _number(s.meta, s.meta_path, "syncNiThresh")
    range_max = _number(s.meta, s.meta_path, "niAiRangeMax")
    max_int = _number(s.meta, s.meta_path, "niMaxInt", _NI_MAX_INT_DEFAULT)
    values = {"gain": gain, "niAiRangeMax": range_max, "niMaxInt": max_int}
    if not all(math.isfinite(v) and v > 0 for v in values.values()) or not math.isfinite(threshold):
        raise MetaError(f"{s.meta_path}: {what}: {values}, syncNiThresh={threshold}; expected "
                        "positive gain, range and niMaxInt and a finite threshold")
    volts_per_bit = range_max / max_int / gain
    return NidqSyncLine("analog", column, None, threshold, volts_per_bit,
                        f"{what} (column {column}) above {threshold:g} V")


def nidq_sync_edges(
    bin_path: str | os.PathLike,
    meta: str | os.PathLike | Mapping[str, Any] | SpikeGlxStream,
    *,
    chunk_samples: int = 65_536,
    debounce_samples: float = 0.0,
) -> Edges:
    """Sync edges of a NIDQ stream on the line its meta declares (:func:`nidq_sync_line`), as
    sample positions of that stream (:mod:`pixbin.clock`'s convention).

    A digital line's edge is the midpoint between the last sample at the old level and the first
    at the new one; an analog channel's is where it crossed ``syncNiThresh`` (high at or above
    it, low below: SpikeGLX's one threshold), interpolated between the two samples around it,
    with transition pairs closer than ``debounce_samples`` dropped. Streamed
    (:func:`iter_sync_word`); the first sample cannot be an edge.
    """
    s = _as_stream(bin_path, meta)
    line = nidq_sync_line(s)
    if line.kind == "digital":
        e = sync_edges(s.bin_path, s, line.bit, chunk_samples=chunk_samples, channel=line.column)
        return Edges(digital_edge_position(e.rising), digital_edge_position(e.falling))
    detector = EdgeDetector(low=np.nextafter(line.threshold_v, -np.inf), high=line.threshold_v,
                            min_interval_samples=debounce_samples, interpolate=True)
    for start, words in iter_sync_word(s.bin_path, s, chunk_samples, channel=line.column):
        detector.feed(words.astype(np.float64) * line.volts_per_bit, start)
    edges = detector.result()
    log.info("%s: %s: %d rising, %d falling edges in %d samples", s.bin_path, line.description,
             len(edges.rising), len(edges.falling), s.n_samples)
    return edges
