"""Tokenised ASV sequences cached on disk, keyed by a content hash.

The key covers the sequences (in order), ``max_len``, the ambiguity policy and
:data:`FORMAT_VERSION`, so any change to the inputs or to the tokeniser's output format misses.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from aam_ds.data.sequences import AmbiguityPolicy, tokenize
from aam_ds.io_utils import atomic_path

FORMAT_VERSION = 1


@dataclass(frozen=True)
class CachedTokens:
    """``tokens``: ``uint8 [M, max_len]``; ``path``: the cache file; ``hit``: read from disk, not tokenised."""

    tokens: np.ndarray
    path: Path
    hit: bool


def token_cache_key(seqs: Sequence[str], max_len: int, policy: AmbiguityPolicy) -> str:
    """SHA-256 hex digest naming the token cache of ``seqs`` at ``max_len`` under ambiguity ``policy``."""
    digest = hashlib.sha256(f"aam-ds tokens v{FORMAT_VERSION}|{max_len}|{policy}|{len(seqs)}\n".encode())
    for seq in seqs:
        digest.update(seq.encode("utf-8", errors="replace"))
        digest.update(b"\n")
    return digest.hexdigest()


def cached_tokenize(
    seqs: Sequence[str],
    max_len: int,
    policy: AmbiguityPolicy,
    cache_dir: str | Path,
    ids: Sequence[str] | None = None,
    source: str = "ASV sequences",
) -> CachedTokens:
    """:func:`tokenize` with an on-disk cache under ``<cache_dir>/tokens/<key>.npy`` (written atomically)."""
    path = Path(cache_dir).expanduser() / "tokens" / f"{token_cache_key(seqs, max_len, policy)}.npy"
    if path.is_file():
        try:
            tokens = np.load(path, allow_pickle=False)
            if tokens.shape == (len(seqs), max_len) and tokens.dtype == np.uint8:
                return CachedTokens(tokens, path, hit=True)
        except (OSError, ValueError):
            pass  # unreadable cache entry: rebuild it below
    tokens = tokenize(seqs, max_len, policy, ids=ids, source=source)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, tokens, allow_pickle=False)
    return CachedTokens(tokens, path, hit=False)
