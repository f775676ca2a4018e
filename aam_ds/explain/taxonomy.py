"""QIIME 2 taxonomy (``FeatureData[Taxonomy]``: a .qza or its exported ``taxonomy.tsv``) and the
aggregation of per-ASV importance scores per taxon."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from aam_ds.data.qiime2 import is_qza, read_qza
from aam_ds.errors import AamInputError, notice

UNASSIGNED = "Unassigned"


def load_taxonomy(path: str | Path) -> pd.Series:
    """Taxon string by feature ID from a QIIME 2 taxonomy TSV (``Feature ID``, ``Taxon``[, ``Confidence``])
    or a ``FeatureData[Taxonomy]`` .qza. Raises AamInputError for a missing file or columns."""
    path = Path(path)
    if not path.is_file():
        raise AamInputError(str(path), "taxonomy file not found", "give the taxonomy.tsv exported from QIIME 2 or the taxonomy.qza")
    text = read_qza(path, "FeatureData[Taxonomy]").decode() if is_qza(path) else path.read_text()
    frame = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, comment=None)
    frame = frame[~frame.iloc[:, 0].astype(str).str.startswith("#")]  # a '#q2:types' row
    id_column = next((c for c in frame.columns if c.lower() in ("feature id", "featureid", "feature-id", "id")), None)
    if id_column is None or "Taxon" not in frame.columns:
        raise AamInputError(
            str(path),
            f"has columns {list(frame.columns)[:5]}, not 'Feature ID' and 'Taxon'",
            "give a QIIME 2 taxonomy TSV (`qiime tools export --input-path taxonomy.qza`)",
        )
    return frame.set_index(id_column)["Taxon"].fillna(UNASSIGNED).astype(str)


def taxon_at_level(taxon: str, level: int) -> str:
    """The first ``level`` ranks of ``taxon`` (``k__Bacteria; p__Firmicutes; ...``), dropping empty
    trailing ranks such as ``g__`` / ``s__`` (so a genus-less ASV is labelled by its family)."""
    ranks = [r.strip() for r in taxon.split(";")][:level]
    while ranks and (ranks[-1].endswith("__") or not ranks[-1]):
        ranks.pop()
    return "; ".join(ranks) or UNASSIGNED


def short_taxon(taxon: str) -> str:
    """The deepest named rank of a taxon string, for plot labels (``g__Bacteroides``)."""
    return taxon.split(";")[-1].strip() or taxon


def taxa_of(asv_ids: list[str], taxonomy: pd.Series, level: int) -> list[str]:
    """Taxon of each ASV at ``level`` ranks; ASVs missing from the taxonomy are ``Unassigned``."""
    return [taxon_at_level(taxonomy.get(a, UNASSIGNED), level) for a in asv_ids]


def check_taxonomy_covers(taxonomy: pd.Series, asv_ids: list[str], source: str | Path) -> None:
    """Refuse (AamInputError) a taxonomy that names none of the explained ASVs (another table's, or
    hashes against sequences); a notice when some are missing (they count as Unassigned)."""
    missing = [a for a in asv_ids if a not in taxonomy.index]
    if len(missing) == len(asv_ids):
        raise AamInputError(
            str(source),
            f"names none of the table's {len(asv_ids)} ASVs (e.g. {asv_ids[0][:40]!r}; it has e.g. {str(taxonomy.index[0])[:40]!r})",
            "give the taxonomy of this table's features, with the same feature IDs (MD5 hashes or sequences)",
        )
    if missing:
        notice(f"{source}: {len(missing)} of the {len(asv_ids)} explained ASVs are not in it; they count as {UNASSIGNED}")
