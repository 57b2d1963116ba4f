"""What the data dataset keeps where: the ``annex.largefiles`` rules and the ``.gitignore`` block.

Small text files (JSON, CSV, TSV, YAML, Markdown, SpikeGLX ``.meta``) are committed to git;
binaries (HDF5, NumPy, Parquet, raw ``.bin``, TDMS, archives, images, videos) go to git-annex;
``interim/`` and temporary files are ignored. :func:`pixbin.versioning.ensure_dataset` writes
these blocks into ``data/.gitattributes`` and ``data/.gitignore`` (:func:`write_block`) and
commits them; edit the constants here to change a rule.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ANNEX_EXTENSIONS",
    "GIT_TEXT_EXTENSIONS",
    "TEXT_MAX_IN_GIT",
    "OTHER_MAX_IN_GIT",
    "gitattributes_rules",
    "gitignore_rules",
    "write_block",
]

#: Suffixes whose files always go to git-annex (matched case-insensitively).
ANNEX_EXTENSIONS: tuple[str, ...] = (
    "h5", "hdf5", "nc", "nwb", "mat", "npy", "npz", "parquet", "feather", "arrow",
    "bin", "dat", "tdms", "tdms_index", "tar.gz", "tgz", "gz", "bz2", "xz", "zst", "zip", "7z",
    "png", "jpg", "jpeg", "tif", "tiff", "gif", "pdf", "mp4", "avi", "mkv", "mov",
    "pkl", "pickle", "pt", "pth", "ckpt", "pb",
)  # fmt: skip
#: Suffixes of text files kept in git (unless larger than ``TEXT_MAX_IN_GIT``).
GIT_TEXT_EXTENSIONS: tuple[str, ...] = (
    "json", "csv", "tsv", "md", "rst", "txt", "yaml", "yml", "toml", "cfg", "ini", "meta",
    "py", "log", "svg",
)  # fmt: skip
#: Text files above this size go to git-annex anyway (git-annex size syntax).
TEXT_MAX_IN_GIT = "10mb"
#: Files of any other suffix go to git-annex when binary (libmagic) or larger than this.
OTHER_MAX_IN_GIT = "1mb"

# The delimiters are in every existing dataset's .gitattributes/.gitignore: changing their text
# makes write_block append a second block instead of replacing the first.
_BEGIN = "# >>> pixbin versioning rules (written by pixbin.versioning; edit the constants there)"
_END = "# <<< pixbin versioning rules"
_IGNORE_BEGIN = "# >>> pixbin ignores (written by pixbin.versioning)"
_IGNORE_END = "# <<< pixbin ignores"
_IGNORE_LINES = (
    "/interim/",  # regenerable from raw/ (pixbin extract); never versioned
    ".*.tmp-*",  # leftovers of pixbin.fileio.atomic_path from a killed process
    "__pycache__/",
    ".ipynb_checkpoints/",
)


def _nocase(suffix: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in suffix)


def gitattributes_rules() -> str:
    """Return the pixbin block of the dataset's ``.gitattributes`` (``annex.largefiles`` rules).

    The last matching line wins in ``.gitattributes``, so the catch-all comes first, then text
    suffixes (git unless huge), then binary suffixes (always annex), then git's own dot-files.

    Returns
    -------
    str
        The block, from its ``# >>>`` line to its ``# <<<`` line, ending in a newline.
    """
    lines = [
        _BEGIN,
        "# any other file: annex when binary or large (mimeencoding needs git-annex with libmagic;",
        "# the suffix rules below do not)",
        f"* annex.largefiles=((mimeencoding=binary)and(largerthan=0))or(largerthan={OTHER_MAX_IN_GIT})",
        f"# text: git unless larger than {TEXT_MAX_IN_GIT}",
        *(f"*.{_nocase(s)} annex.largefiles=largerthan={TEXT_MAX_IN_GIT}" for s in GIT_TEXT_EXTENSIONS),
        "# binaries: always annex",
        *(f"*.{_nocase(s)} annex.largefiles=anything" for s in ANNEX_EXTENSIONS),
        "**/.git* annex.largefiles=nothing",
        ".datalad/** annex.largefiles=nothing",
        _END,
    ]
    return "\n".join(lines) + "\n"


def gitignore_rules() -> str:
    """Return the pixbin block of the dataset's ``.gitignore`` (``interim/``, temporary files).

    Returns
    -------
    str
        The block, from its ``# >>>`` line to its ``# <<<`` line, ending in a newline.
    """
    return "\n".join([_IGNORE_BEGIN, *_IGNORE_LINES, _IGNORE_END]) + "\n"


def write_block(path: Path, block: str) -> bool:
    """Put ``block`` (delimited by its first and last line) into ``path``; True when it changed.

    An existing block with the same delimiters is replaced in place; otherwise the block is
    appended. The rest of the file is kept.

    Parameters
    ----------
    path : the file (created if absent).
    block : the text, as returned by :func:`gitattributes_rules` or :func:`gitignore_rules`.

    Returns
    -------
    bool
        Whether the file was written.
    """
    begin, end = block.splitlines()[0], block.splitlines()[-1]
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        new = head + block + tail
    else:
        new = old + ("" if not old or old.endswith("\n") else "\n") + block
    if new == old:
        return False
    path.write_text(new, encoding="utf-8")
    return True
