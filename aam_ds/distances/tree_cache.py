"""Parsed trees cached on disk, keyed by the SHA-256 of their Newick text.

A reference tree (an insertion tree of 207k tips, a Greengenes2 backbone of millions) is parsed once;
later runs on the same text load ``<cache_dir>/trees/<sha256>.npz`` (arrays plus the tip names joined
by NUL bytes), written atomically. An unreadable or inconsistent entry is parsed again and replaced.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from aam_ds.distances.tree import Tree, parse_newick
from aam_ds.io_utils import atomic_path

CACHE_VERSION = 1  # part of the key: bump when the parser's output changes


def cached_parse(text: str, source: str, cache_dir: str | Path) -> Tree:
    """:func:`parse_newick` of ``text`` through the cache under ``<cache_dir>/trees``.

    Parameters
    ----------
    text : str
        The Newick text.
    source : str
        The file it came from, kept as the tree's ``source`` (error messages name it).
    cache_dir : str or Path
        The cache root (``data.cache_dir``, ``~`` expanded).

    Returns
    -------
    Tree
        Identical to ``parse_newick(text, source)``.
    """
    data = text.encode("utf-8")
    key = hashlib.sha256(data + f"\0aam-ds tree cache v{CACHE_VERSION}".encode()).hexdigest()
    path = Path(cache_dir).expanduser() / "trees" / f"{key}.npz"
    if path.is_file():
        tree = _load(path, source)
        if tree is not None:
            return tree
    tree = parse_newick(data, source)
    names = "\0".join(tree.tip_names).encode("utf-8")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, parent=tree.parent, length=tree.length, tip_nodes=tree.tip_nodes, names=np.frombuffer(names, dtype=np.uint8))
    return tree


def _load(path: Path, source: str) -> Tree | None:
    """The cached tree, or None when the entry cannot be read or does not hold together."""
    try:
        with np.load(path) as entry:
            parent, length, tip_nodes = entry["parent"], entry["length"], entry["tip_nodes"]
            names = entry["names"].tobytes().decode("utf-8").split("\0")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, UnicodeDecodeError):
        return None
    if len(names) != len(tip_nodes) or len(parent) != len(length):
        return None
    return Tree(parent, length, tip_nodes, names, source)
