"""Reading QIIME 2 artifacts (.qza) directly, without QIIME 2 installed.

A .qza is a zip archive holding ``<uuid>/metadata.yaml`` (with the semantic ``type:``) and the
payload under ``<uuid>/data/``. We support the artifact types a run (and ``aam-ds explain``) needs and return the
payload file's raw bytes.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import yaml

from aam_ds.errors import AamInputError

# semantic type -> payload file inside <uuid>/data/
PAYLOAD_FILES: dict[str, str] = {
    "FeatureTable[Frequency]": "feature-table.biom",
    "Phylogeny[Rooted]": "tree.nwk",
    "FeatureData[Sequence]": "dna-sequences.fasta",
    "FeatureData[Taxonomy]": "taxonomy.tsv",
}

_WRONG_TYPE_FIX: dict[str, str] = {
    "FeatureTable[Frequency]": "give the FeatureTable[Frequency] artifact of raw counts (not relative frequencies or "
    "presence/absence), or export it with `qiime tools export` and pass the feature-table.biom",
    "Phylogeny[Rooted]": "give a rooted tree artifact (root an unrooted one with `qiime phylogeny midpoint-root`), "
    "or pass a rooted Newick file",
    "FeatureData[Sequence]": "give the FeatureData[Sequence] artifact of the ASVs (e.g. the rep-seqs.qza from DADA2 or "
    "deblur), or pass a FASTA file",
    "FeatureData[Taxonomy]": "give the FeatureData[Taxonomy] artifact (e.g. from `qiime feature-classifier classify-sklearn`), "
    "or its exported taxonomy.tsv",
}


def is_qza(path: str | Path) -> bool:
    """True when ``path`` is a zip archive (the container format of QIIME 2 artifacts)."""
    return Path(path).is_file() and zipfile.is_zipfile(path)


def read_qza(path: str | Path, expected_type: str) -> bytes:
    """Return the payload bytes of a .qza artifact after checking its semantic type.

    ``expected_type`` is one of :data:`PAYLOAD_FILES` (``FeatureTable[Frequency]`` -> BIOM HDF5 bytes,
    ``Phylogeny[Rooted]`` -> Newick bytes, ``FeatureData[Sequence]`` -> FASTA bytes).
    """
    if expected_type not in PAYLOAD_FILES:
        raise ValueError(f"unsupported artifact type {expected_type!r}; known: {sorted(PAYLOAD_FILES)}")
    path = Path(path)
    if not path.is_file():
        raise AamInputError(str(path), "QIIME 2 artifact not found", "check the path in the run spec")
    with _open_zip(path) as archive:
        found = _read_type(archive, path)
        if found != expected_type:
            raise AamInputError(
                str(path),
                f"is a QIIME 2 artifact of type {found}, but {expected_type} is needed here",
                _WRONG_TYPE_FIX[expected_type],
            )
        payload = PAYLOAD_FILES[expected_type]
        members = [n for n in archive.namelist() if n.split("/")[1:] == ["data", payload]]
        if not members:
            raise AamInputError(
                str(path),
                f"artifact of type {found} has no data/{payload} inside",
                "re-export the artifact from QIIME 2; the archive looks incomplete",
            )
        return archive.read(members[0])


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise AamInputError(
            str(path), f"is not a readable QIIME 2 artifact (zip archive): {exc}", "re-export or re-download the .qza"
        ) from exc


def _read_type(archive: zipfile.ZipFile, path: Path) -> str:
    metadata = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/metadata.yaml")]
    if not metadata:
        raise AamInputError(
            str(path),
            "zip archive has no <uuid>/metadata.yaml, so it is not a QIIME 2 artifact",
            "pass a .qza produced by QIIME 2, or the exported file itself (BIOM, Newick, FASTA)",
        )
    try:
        info = yaml.safe_load(archive.read(metadata[0]))
        return str(info["type"])
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise AamInputError(
            str(path), f"metadata.yaml has no readable 'type:' entry ({exc})", "re-export the artifact from QIIME 2"
        ) from exc
