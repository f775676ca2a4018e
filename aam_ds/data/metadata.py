"""QIIME 2 sample metadata: loading, aligning to a table, extracting targets and covariates.

Conventions follow the QIIME 2 metadata format: the first column's header is an ID header, an
optional ``#q2:types`` row declares columns ``numeric`` or ``categorical``, other lines starting
with ``#`` are comments, empty cells are missing. Columns without a declared type keep their text as
written: numbers are inferred only where a column is used as a regression target (a group column's
``07`` and ``7`` are two groups, a class ``010`` is not the class ``10``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from aam_ds.data.files import delimiter_problem, read_input_text
from aam_ds.errors import AamInputError, notice

ID_HEADERS = frozenset(
    h.lower()
    for h in (
        "id",
        "sampleid",
        "sample id",
        "sample-id",
        "featureid",
        "feature id",
        "feature-id",
        "#SampleID",
        "#Sample ID",
        "#OTUID",
        "#OTU ID",
        "sample_name",
    )
)
MISSING_CLASS = "<missing>"


def load_metadata(path: str | Path) -> pd.DataFrame:
    """Load a QIIME 2 metadata TSV into a DataFrame indexed by sample ID (str).

    Columns declared ``numeric`` in a ``#q2:types`` row are float64 (NaN = missing). Every other
    column keeps its values as written (object dtype holding str, NaN = missing), so that group,
    class, stratum and covariate values such as ``07`` and ``7`` stay different; a column is read
    as numbers only where numbers are needed (regression targets: :func:`numeric_targets`; see
    :func:`is_numeric_column`). ``df.attrs["source"]`` records the file. The file may be gzip /
    bzip2 / xz-compressed, carry a UTF-8 byte-order mark and CRLF line endings.

    Raises
    ------
    AamInputError
        Missing file, not tab-separated, no QIIME 2 ID header, repeated IDs or columns, rows longer
        than the header, an unknown or violated ``#q2:types`` declaration.
    """
    path = Path(path)
    if not path.is_file():
        raise AamInputError(str(path), "metadata file not found", "check data.metadata (a QIIME 2 metadata TSV)")
    text = read_input_text(path, "a tab-separated QIIME 2 metadata file")
    rows = [[cell.strip() for cell in row] for row in csv.reader(io.StringIO(text), delimiter="\t")]
    rows = [r for r in rows if any(r)]
    header_at = _header_row(rows, path)
    header = rows[header_at]
    columns = header[1:]
    _check_unique(columns, path, "column name", "rename the repeated columns")
    types: dict[str, str] = {}
    body = []
    for row in rows[header_at + 1 :]:
        if row[0].lower() == "#q2:types":
            types = {c: t.lower() for c, t in zip(columns, row[1:]) if t}
        elif not row[0].startswith("#"):
            body.append(row + [""] * (len(header) - len(row)))
    ids = [r[0] for r in body]
    if any(not i for i in ids):
        raise AamInputError(str(path), "a row has an empty sample ID", "give every row an ID in the first column")
    _check_unique(ids, path, "sample ID", "keep one row per sample")
    too_long = [r[0] for r in body if len(r) > len(header) and any(r[len(header) :])]
    if too_long:
        raise AamInputError(
            str(path), f"rows {too_long[:5]} have more cells than the header has columns", "one tab-separated cell per column"
        )
    frame = pd.DataFrame([r[1 : len(header)] for r in body], index=pd.Index(ids, name=header[0]), columns=columns, dtype=object)
    frame = frame.replace("", np.nan)
    for column in columns:
        _apply_declared_type(frame, column, types.get(column), path)
    frame.attrs["source"] = str(path)
    return frame


def _header_row(rows: list[list[str]], path: Path) -> int:
    """Index of the ID header row (after comment lines); errors name a wrong delimiter or header."""
    header_at = next((i for i, r in enumerate(rows) if r[0].lower() in ID_HEADERS), None)
    if header_at is None or any(not r[0].startswith("#") for r in rows[:header_at]):
        first = next((r for r in rows if not r[0].startswith("#") or r[0].lower() in ID_HEADERS), rows[0] if rows else [""])
        if len(first) == 1 and delimiter_problem(first[0]):
            raise AamInputError(
                str(path),
                f"is {delimiter_problem(first[0])}, not tab-separated (its header line {first[0][:60]!r} has no tab)",
                "save it as tab-separated text (QIIME 2 metadata is a TSV; in a spreadsheet: 'Text (tab-delimited)')",
            )
        raise AamInputError(
            str(path),
            f"no recognised ID column header (the first column is headed {first[0][:60]!r})",
            "name the first column 'sample-id' (QIIME 2 also accepts id, sampleid, sample id, feature-id, #SampleID, #OTUID, sample_name)",
        )
    return header_at


def _apply_declared_type(frame: pd.DataFrame, column: str, declared: str | None, path: Path) -> None:
    """A column declared numeric becomes float64 (non-numbers are an error); others stay as written."""
    if declared not in (None, "numeric", "categorical"):
        raise AamInputError(str(path), f"#q2:types gives column {column!r} the unknown type {declared!r}", "use numeric or categorical")
    if declared != "numeric":
        return
    numeric = pd.to_numeric(frame[column], errors="coerce")
    unparsed = frame[column].notna() & numeric.isna()
    if unparsed.any():
        bad = frame.index[unparsed]
        raise AamInputError(
            str(path),
            f"column {column!r} is declared numeric but has non-numeric values, e.g. sample {bad[0]!r}: {frame.at[bad[0], column]!r}",
            "fix those cells, leave them empty (missing), or declare the column categorical",
        )
    frame[column] = numeric.astype(np.float64)


def is_numeric_column(values: pd.Series) -> bool:
    """True for a column of numbers: declared numeric (float dtype), or text whose every present value
    parses as a number (at least one present). Decides regression vs classification and numeric
    stratification; the values themselves stay as written."""
    if pd.api.types.is_numeric_dtype(values):
        return True
    present = values.dropna()
    return len(present) > 0 and bool(pd.to_numeric(present, errors="coerce").notna().all())


def _check_unique(values: Sequence[str], path: Path, what: str, fix: str) -> None:
    seen, dups = set(), []
    for v in values:
        if v in seen:
            dups.append(v)
        seen.add(v)
    if dups:
        raise AamInputError(str(path), f"repeated {what}s: {sorted(set(dups))[:5]}", fix)


def align_metadata(metadata: pd.DataFrame, sample_ids: Sequence[str], table_source: str, drop_missing: bool = False) -> pd.DataFrame:
    """Metadata rows in the order of ``sample_ids``.

    A table sample without a metadata row is an error, or (``drop_missing``) is left out with a
    warning, so the result may have fewer rows than ``sample_ids``.
    """
    source = metadata.attrs.get("source", "metadata")
    missing = [s for s in sample_ids if s not in metadata.index]
    if missing and (not drop_missing or len(missing) == len(sample_ids)):
        raise AamInputError(
            source,
            f"{len(missing)} of the {len(sample_ids)} samples of {table_source} have no metadata row, e.g. {missing[:5]}",
            "add rows for those samples, set data.drop_samples_without_metadata=true, or filter the table "
            "(`qiime feature-table filter-samples --m-metadata-file`); check that the IDs are spelled identically",
        )
    if missing:
        notice(f"{source}: dropping {len(missing)} table samples without metadata, e.g. {missing[:5]}")
    aligned = metadata.loc[[s for s in sample_ids if s in metadata.index]]
    aligned.attrs["source"] = source
    return aligned


def _column(metadata: pd.DataFrame, column: str, field: str) -> pd.Series:
    if column not in metadata.columns:
        raise AamInputError(
            f"{field}={column!r}",
            f"no such column in {metadata.attrs.get('source', 'the metadata')} (columns: {list(metadata.columns)[:20]})",
            "name an existing metadata column (names are case-sensitive)",
        )
    return metadata[column]


def numeric_targets(metadata: pd.DataFrame, columns: Sequence[str], field: str = "data.targets") -> np.ndarray:
    """``float32 [N, T]`` regression targets; missing or non-numeric values are errors naming the samples."""
    source = metadata.attrs.get("source", "metadata")
    out = np.empty((len(metadata), len(columns)), dtype=np.float32)
    for t, column in enumerate(columns):
        values = _column(metadata, column, field)
        numeric = pd.to_numeric(values, errors="coerce")
        non_numeric = values.notna() & numeric.isna()
        if non_numeric.any():
            bad = list(metadata.index[non_numeric])
            raise AamInputError(
                f"{source} column {column!r}",
                f"target values are not numeric in {len(bad)} samples, e.g. {bad[0]!r}: {values[bad[0]]!r}",
                "regression targets must be numbers; fix those cells or use loss.task=classification for categories",
            )
        missing = numeric.isna() | ~np.isfinite(numeric.to_numpy(dtype=np.float64, na_value=np.nan))
        if missing.any():
            bad = list(metadata.index[missing])
            raise AamInputError(
                f"{source} column {column!r}",
                f"target is missing (NaN / empty / inf) for {len(bad)} samples: {bad[:5]}",
                "fill those values, or drop those samples from the table before training",
            )
        out[:, t] = numeric.to_numpy(dtype=np.float64)
    return out


def categorical_codes(metadata: pd.DataFrame, column: str, field: str, allow_missing: bool = False) -> tuple[np.ndarray, list[str]]:
    """``(codes int64 [N], class names)`` of a categorical column; classes sorted by name.

    Values are the text as written (``07`` and ``7`` are two classes); a column declared numeric
    gives its numbers formatted by Python (``2.0``). Missing values are an error
    unless ``allow_missing``, in which case they become the class :data:`MISSING_CLASS`.
    """
    values = _column(metadata, column, field)
    missing = values.isna()
    if missing.any() and not allow_missing:
        bad = list(metadata.index[missing])
        raise AamInputError(
            f"{metadata.attrs.get('source', 'metadata')} column {column!r}",
            f"value is missing for {len(bad)} samples: {bad[:5]}",
            "fill those cells, or drop those samples from the table",
        )
    labels = values.map(str).where(~missing, MISSING_CLASS)
    classes = sorted(labels.unique())
    lookup = {c: i for i, c in enumerate(classes)}
    return labels.map(lookup).to_numpy(dtype=np.int64), classes
