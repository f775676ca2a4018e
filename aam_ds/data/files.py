"""Reading any input file as the tools of the field do: compressed, with a byte-order mark, CRLF.

Every reader of a user file (feature tables, trees, metadata, FASTA, distance matrices) takes its
bytes from :func:`read_input_bytes` and its text from :func:`decode_text` / :func:`read_input_text`:

- gzip, bzip2 and xz files are decompressed transparently (detected from the content, not the suffix);
  zstd and other archives are refused with an error that names the compression;
- a UTF-8 byte-order mark is dropped; UTF-16 text with a byte-order mark (Excel's "Unicode text") is
  decoded; any other non-UTF-8 text is an error naming the first bad byte, its line and the likely
  encoding; binary content is an error that says so;
- CRLF (Windows) and CR (classic Mac) line endings become LF.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from pathlib import Path

from aam_ds.errors import AamInputError

# magic bytes -> (name, decompressor or None when not supported)
_COMPRESSIONS = (
    (b"\x1f\x8b", "gzip", gzip.decompress),
    (b"BZh", "bzip2", bz2.decompress),
    (b"\xfd7zXZ\x00", "xz", lzma.decompress),
    (b"\x28\xb5\x2f\xfd", "zstd", None),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip", None),
)
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_DELIMITERS = ((",", "comma"), (";", "semicolon"), ("|", "pipe"))


def decompress(raw: bytes, source: str) -> bytes:
    """``raw`` decompressed (repeatedly, for e.g. a gzip of a gzip) when it is gzip / bzip2 / xz.

    Raises
    ------
    AamInputError
        A truncated or corrupt compressed stream, or an unsupported compression (zstd, 7-Zip).
    """
    for _ in range(3):
        found = next(((name, fn) for magic, name, fn in _COMPRESSIONS if raw.startswith(magic)), None)
        if found is None:
            return raw
        name, fn = found
        if fn is None:
            raise AamInputError(
                source, f"is {name}-compressed, which aam-ds does not read", "decompress it first (or recompress it with gzip)"
            )
        try:
            raw = fn(raw)
        except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error) as exc:
            raise AamInputError(
                source,
                f"is {name}-compressed but the compressed data is truncated or corrupt ({exc})",
                "re-download or re-compress the file (`gzip -t FILE` tests a gzip file)",
            ) from exc
    return raw


def read_input_bytes(path: str | Path) -> bytes:
    """The content of ``path``, decompressed when it is gzip / bzip2 / xz (see :func:`decompress`)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AamInputError(str(path), f"cannot be read ({exc.strerror or exc})", "check the path and its permissions") from exc
    return decompress(raw, str(path))


def decode_text(raw: bytes, source: str, what: str = "text") -> str:
    """``raw`` as text: UTF-8 (a byte-order mark dropped) or UTF-16 with a byte-order mark; LF line ends.

    Parameters
    ----------
    raw : bytes
        Decompressed file content.
    source : str
        The file, for error messages.
    what : str
        What the file should be (``"a tab-separated table"``, ``"a Newick tree"``), for error messages.

    Raises
    ------
    AamInputError
        Binary content (NUL bytes), or text in another encoding than UTF-8, naming the byte and line.
    """
    if raw.startswith(_UTF16_BOMS):
        text = raw.decode("utf-16")
    else:
        if b"\x00" in raw[:4096]:
            raise AamInputError(
                source,
                f"is binary data in no format or compression known here, not {what} (it starts with {raw[:8]!r}); "
                "the file may be corrupt, truncated or of another kind",
                f"give {what}: re-export or re-download it",
            )
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise AamInputError(
                source,
                f"is not UTF-8 text: byte 0x{raw[exc.start]:02x} on line {line} (position {exc.start}) is not valid UTF-8; "
                "the file is probably Latin-1 / Windows-1252 encoded",
                "save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8 FILE > FILE.utf8`)",
            ) from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_input_text(path: str | Path, what: str = "text") -> str:
    """The text of ``path``: :func:`read_input_bytes` then :func:`decode_text`."""
    return decode_text(read_input_bytes(path), str(path), what)


def delimiter_problem(line: str) -> str | None:
    """For a header line with no tab: which other separator it uses (``"comma-separated"`` ...), else None."""
    if "\t" in line:
        return None
    for char, name in _DELIMITERS:
        if char in line:
            return f"{name}-separated"
    return "space-separated" if len(line.split()) > 1 else None
