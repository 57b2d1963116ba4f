"""One family of errors: every message names the file (and channel/group), what was expected,
what was found, and what to do."""

from __future__ import annotations

__all__ = [
    "PixbinError",
    "SessionError",
    "ExtractError",
    "MetaError",
    "TdmsError",
    "SyncError",
    "BehaviourError",
    "SortingError",
    "PoseError",
    "DatasetError",
    "ConfigError",
    "LockError",
]


class PixbinError(Exception):
    """Base class for every error pixbin raises on bad input or a failed check."""


class SessionError(PixbinError):
    """A session folder or its files do not match the expected layout."""


class ExtractError(PixbinError):
    """An archive or copy from raw/ to interim/ failed or is unsafe."""


class MetaError(PixbinError):
    """A SpikeGLX .meta file or its .bin companion is malformed."""


class TdmsError(PixbinError):
    """A TDMS file lacks a channel or a property, or a channel has the wrong size."""


class SyncError(PixbinError):
    """Sync edges could not be matched, or the clock fit is outside tolerance."""


class BehaviourError(PixbinError):
    """Behaviour channels could not be turned into events, actions or trials."""


class SortingError(PixbinError):
    """A sorter failed, or a Kilosort/phy folder is inconsistent."""


class PoseError(PixbinError):
    """Video, frame times or DeepLabCut output are inconsistent."""


class DatasetError(PixbinError):
    """The binned dataset cannot be built or read as FORMAT.md describes."""


class ConfigError(PixbinError):
    """A configuration file or parameter set is invalid (unknown key, wrong type)."""


class LockError(PixbinError):
    """Another pixbin process is writing to the same data/ folder."""
