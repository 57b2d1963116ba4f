"""pixbin: raw mouse Neuropixels + behaviour sessions -> synchronised, binned, versioned tensors."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pixbin")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

from pixbin.errors import PixbinError

__all__ = ["PixbinError", "__version__", "load_session"]


def __getattr__(name: str):
    """``pixbin.load_session`` (the pynapple bridge), imported on first use."""
    if name == "load_session":
        from pixbin.bridge import load_session

        return load_session
    raise AttributeError(f"module 'pixbin' has no attribute {name!r}")
