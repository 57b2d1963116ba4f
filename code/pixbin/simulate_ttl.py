"""TTL lines of the simulated rigs: whether a digital line is high at given sample times.

Shared by every writer of simulated recordings (the SpikeGLX SY word, the behaviour DAQ's 0/5 V
channels and camera TTL, :mod:`pixbin.synthetic`'s sync-only sessions).
"""

from __future__ import annotations

import numpy as np

__all__ = ["high", "square_wave"]


def high(t: np.ndarray, onsets: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """True where ``t`` lies in [onsets_i, offsets_i) for some i (onsets sorted).

    Parameters
    ----------
    t : ndarray
        Sample times (s).
    onsets, offsets : ndarray
        Start and stop (s) of each high interval, ``onsets`` sorted and the intervals disjoint.

    Returns
    -------
    ndarray of bool, shaped like ``t``.
    """
    i = np.searchsorted(onsets, t, side="right") - 1
    ok = i >= 0
    out = np.zeros(t.shape, dtype=bool)
    out[ok] = t[ok] < offsets[i[ok]]
    return out


def square_wave(t: np.ndarray, rising: np.ndarray, high_s: float) -> np.ndarray:
    """True where ``t`` lies in [rising_i, rising_i + high_s) for some i (rising sorted).

    Parameters
    ----------
    t : ndarray
        Sample times (s).
    rising : ndarray
        Sorted rising-edge times (s) of the pulses.
    high_s : float
        How long each pulse stays high (s).

    Returns
    -------
    ndarray of bool, shaped like ``t``.
    """
    return high(t, rising, rising + high_s)
