"""Nucleotide vocabulary, ASV sequences (from IDs or FASTA / .qza) and tokenisation.

Tokens: ``PAD=0, A=1, C=2, G=3, T=4, N=5, MASK=6`` (``VOCAB_SIZE=7``), the model's vocabulary
(:mod:`aam_ds.model.vocabulary`). Tokenised ASVs are a
``uint8 [M, max_len]`` array, right-padded with ``PAD`` and truncated to ``max_len``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from aam_ds.data.files import decode_text, read_input_bytes
from aam_ds.data.qiime2 import is_qza, read_qza
from aam_ds.errors import AamInputError
from aam_ds.model.vocabulary import PAD, A, C, G, N, T

AmbiguityPolicy = Literal["error", "as_n", "drop_asv"]
AMBIGUOUS = "NRYSWKMBDHV"  # IUPAC codes other than A, C, G, T

_INVALID, _AMBIGUOUS = 255, 254
_LOOKUP = np.full(256, _INVALID, dtype=np.uint8)
for _base, _token in zip("ACGT", (A, C, G, T)):
    _LOOKUP[ord(_base)] = _LOOKUP[ord(_base.lower())] = _token
for _code in AMBIGUOUS:
    _LOOKUP[ord(_code)] = _LOOKUP[ord(_code.lower())] = _AMBIGUOUS

_SEQUENCE_LIKE = re.compile(r"[A-Za-z.\-]+")


def read_fasta(path: str | Path) -> dict[str, str]:
    """Read a FASTA file or a FeatureData[Sequence] .qza into ``{id: sequence}`` (first word of the header).

    The file may be gzip / bzip2 / xz-compressed, carry a byte-order mark and CRLF line endings;
    ``;`` lines and ``#`` lines before the first record are comments.
    """
    path = Path(path)
    if not path.is_file():
        raise AamInputError(str(path), "sequence file not found", "check data.sequences (FASTA or FeatureData[Sequence] .qza)")
    raw = read_qza(path, "FeatureData[Sequence]") if is_qza(path) else read_input_bytes(path)
    text = decode_text(raw, str(path), "a FASTA file")
    records: dict[str, str] = {}
    name: str | None = None
    chunks: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith(";") or (name is None and line.startswith("#")):
            continue
        if line.startswith(">"):
            if name is not None:
                _add_record(records, name, "".join(chunks), path)
            name, chunks = (line[1:].split() or [""])[0], []
            if not name:
                raise AamInputError(str(path), f"line {number}: a '>' header without an ID", "give every record an ID")
        elif name is None:
            raise AamInputError(str(path), f"line {number} comes before the first '>' header", "the file must be FASTA")
        else:
            chunks.append(line)
    if name is not None:
        _add_record(records, name, "".join(chunks), path)
    if not records:
        raise AamInputError(str(path), "contains no FASTA records", "give a FASTA file with one '>ID' record per ASV")
    return records


def _add_record(records: dict[str, str], name: str, sequence: str, path: Path) -> None:
    if name in records:
        raise AamInputError(str(path), f"sequence ID {name!r} appears twice", "keep one record per ASV")
    if not sequence:
        raise AamInputError(str(path), f"record {name!r} has an empty sequence", "remove it or give its sequence")
    records[name] = sequence


def asv_sequences(asv_ids: Sequence[str], sequences: str | Path | None, table_source: str) -> list[str]:
    """The DNA sequence of every ASV, in ``asv_ids`` order.

    With ``sequences`` given (FASTA / .qza) each ID is looked up there; otherwise the IDs themselves
    must be the sequences (as with deblur / DADA2 tables).
    """
    if sequences is not None:
        records = read_fasta(sequences)
        missing = [i for i in asv_ids if i not in records]
        if missing:
            raise AamInputError(
                str(sequences),
                f"{len(missing)} of {len(asv_ids)} ASVs of {table_source} have no sequence, e.g. {missing[:5]}",
                "give a FASTA / FeatureData[Sequence] with a record for every ASV of the table (same IDs)",
            )
        return [records[i] for i in asv_ids]
    not_dna = [i for i in asv_ids if not _SEQUENCE_LIKE.fullmatch(i)]
    if not_dna:
        raise AamInputError(
            table_source,
            f"{len(not_dna)} of {len(asv_ids)} feature IDs are not DNA sequences (e.g. {not_dna[:3]}; MD5 hashes, "
            "QIIME 2's default feature IDs, or reference-database numbers), so the ASVs' DNA is unknown",
            "give the QIIME 2 artifact FeatureData[Sequence] of these features (e.g. rep-seqs.qza from DADA2 or "
            "deblur) or a FASTA keyed by these IDs: data.sequences in the run spec, --sequences on the command line",
        )
    return list(asv_ids)


def tokenize(
    seqs: Sequence[str],
    max_len: int,
    policy: AmbiguityPolicy = "error",
    ids: Sequence[str] | None = None,
    source: str = "ASV sequences",
) -> np.ndarray:
    """Tokenise sequences into ``uint8 [M, max_len]`` (right-padded with PAD, truncated to ``max_len``).

    Lower case is accepted. IUPAC ambiguity codes follow ``policy``: ``error`` refuses them, ``as_n``
    maps them to ``N``, ``drop_asv`` leaves that ASV's row all ``PAD`` (see :func:`dropped_rows`).
    Any other character is an error naming the ASV and the character. ``ids`` name the ASVs in
    messages (default: the sequences); ``source`` names the file or field they came from.
    """
    if policy not in ("error", "as_n", "drop_asv"):
        raise ValueError(f"unknown ambiguity policy {policy!r}")
    ids = list(ids) if ids is not None else list(seqs)
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    buffer = "".join(seqs).encode("utf-8", errors="replace")
    if len(buffer) != lengths.sum():  # non-ASCII characters: find the first one by name
        _raise_bad_character(seqs, ids, source, lambda c: not c.isascii())
    codes = _LOOKUP[np.frombuffer(buffer, dtype=np.uint8)]
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    if (codes == _INVALID).any():
        _raise_bad_character(seqs, ids, source, lambda c: _LOOKUP[ord(c)] == _INVALID)
    ambiguous = codes == _AMBIGUOUS
    drop = np.zeros(len(seqs), dtype=bool)
    if ambiguous.any():
        owners = np.unique(np.searchsorted(offsets, np.flatnonzero(ambiguous), side="right") - 1)
        if policy == "error":
            first = owners[0]
            bad = sorted({c for c in seqs[first] if c.upper() in AMBIGUOUS})
            raise AamInputError(
                source,
                f"{len(owners)} ASVs contain IUPAC ambiguity codes, e.g. ASV {ids[first]!r} has {bad}",
                "set data.ambiguous_bases to 'as_n' (read them as N) or 'drop_asv' (drop those ASVs)",
            )
        codes = np.where(ambiguous, N, codes).astype(np.uint8)
        drop[owners] = policy == "drop_asv"
    tokens = np.full((len(seqs), max_len), PAD, dtype=np.uint8)
    kept = np.minimum(lengths, max_len)
    rows = np.repeat(np.arange(len(seqs)), kept)
    cols = np.arange(kept.sum()) - np.repeat(np.cumsum(kept) - kept, kept)
    tokens[rows, cols] = codes[np.repeat(offsets[:-1], kept) + cols]
    tokens[drop] = PAD
    return tokens


def dropped_rows(tokens: np.ndarray) -> np.ndarray:
    """Boolean ``[M]``: rows left all-PAD by ``tokenize(..., policy='drop_asv')``."""
    return ~tokens.any(axis=1)


def _raise_bad_character(seqs: Sequence[str], ids: Sequence[str], source: str, is_bad) -> None:
    for asv, seq in zip(ids, seqs):
        for position, char in enumerate(seq, start=1):
            if is_bad(char):
                raise AamInputError(
                    source,
                    f"ASV {asv!r} has the character {char!r} at position {position}, which is not a nucleotide "
                    f"(allowed: ACGT and IUPAC codes {AMBIGUOUS}, any case)",
                    "remove alignment gaps and other symbols from the sequences, or drop that ASV",
                )
    raise AssertionError("no bad character found")
