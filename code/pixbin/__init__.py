"""pixbin: raw mouse Neuropixels + behaviour sessions -> synchronised, binned, versioned tensors."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pixbin")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

from pixbin.errors import PixbinError

__all__ = ["PixbinError", "__version__"]
