"""Every bad data input raises AamInputError naming the file or field at fault and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from aam_ds.data.metadata import align_metadata, load_metadata, numeric_targets
from aam_ds.data.prepare import prepare_data
from aam_ds.data.qiime2 import read_qza
from aam_ds.data.rarefy import rarefy
from aam_ds.data.sequences import asv_sequences, read_fasta, tokenize
from aam_ds.data.table import load_table
from aam_ds.errors import AamInputError
from aam_ds.spec import build_spec

SEQ1, SEQ2 = "ACGTACGTAC" * 3, "TTGCAATGCA" * 3


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _tsv_table(tmp: Path, body: str, name: str = "table.tsv") -> Path:
    return _write(tmp / name, "# Constructed from biom file\n#OTU ID\tS1\tS2\n" + body)


def _metadata(tmp: Path, rows: str, header: str = "sample-id\tage\tsite") -> Path:
    return _write(tmp / "meta.tsv", f"{header}\n{rows}")


def _prepare(tmp: Path, **data) -> None:
    """prepare_data on a two-ASV TSV table (IDs are sequences) with the given data.* settings."""
    table = _write(tmp / "seq_table.tsv", f"#OTU ID\tS1\tS2\tS3\n{SEQ1}\t5\t1\t3\n{SEQ2}\t2\t7\t4\n")
    prepare_data(build_spec({"data": {"table": str(table), "cache_dir": str(tmp / "cache"), **data}}))


def corrupt_biom(tmp, shared, make_qza):
    if shared is None:
        pytest.skip("needs ../shared/data for a real BIOM file to truncate")
    raw = (shared / "small/test-small.biom").read_bytes()
    (tmp / "broken.biom").write_bytes(raw[: len(raw) // 2])
    load_table(tmp / "broken.biom")


def garbage_biom(tmp, shared, make_qza):
    (tmp / "garbage.biom").write_bytes(bytes(range(256)) * 4)
    load_table(tmp / "garbage.biom")


def missing_table(tmp, shared, make_qza):
    load_table(tmp / "nowhere.biom")


def duplicate_samples_tsv(tmp, shared, make_qza):
    load_table(_write(tmp / "dup.tsv", "#OTU ID\tS1\tS1\nA1\t1\t2\nA2\t3\t4\n"))


def duplicate_asvs_tsv(tmp, shared, make_qza):
    load_table(_tsv_table(tmp, "A1\t1\t2\nA1\t3\t4\n"))


def negative_counts(tmp, shared, make_qza):
    load_table(_tsv_table(tmp, "A1\t1\t-2\nA2\t3\t4\n"))


def nan_counts(tmp, shared, make_qza):
    load_table(_tsv_table(tmp, "A1\t1\tnan\nA2\t3\t4\n"))


def non_numeric_count(tmp, shared, make_qza):
    load_table(_tsv_table(tmp, "A1\t1\tmany\nA2\t3\t4\n"))


def empty_table(tmp, shared, make_qza):
    load_table(_tsv_table(tmp, "A1\t0\t0\n"))


def non_acgt_character(tmp, shared, make_qza):
    tokenize([SEQ1, "ACGT-ACGT"], 20, "error", ids=["asv1", "asv2"], source="seqs.fasta")


def iupac_under_error_policy(tmp, shared, make_qza):
    tokenize([SEQ1, "ACGTRACGT"], 20, "error", ids=["asv1", "asv2"], source="seqs.fasta")


def ids_not_dna(tmp, shared, make_qza):
    asv_sequences(["4b5eeb300368260019c1fbc7a3c718fc", "197790"], None, "md5_table.biom")


def fasta_missing_asv(tmp, shared, make_qza):
    fasta = _write(tmp / "seqs.fasta", f">asv1\n{SEQ1}\n")
    asv_sequences(["asv1", "asv2"], fasta, "table.biom")


def fasta_bad_format(tmp, shared, make_qza):
    read_fasta(_write(tmp / "seqs.fasta", f"{SEQ1}\n>asv1\n{SEQ1}\n"))


def qza_wrong_type(tmp, shared, make_qza):
    qza = make_qza(tmp / "tree.qza", "Phylogeny[Unrooted]", "tree.nwk", b"(a:1,b:1);")
    read_qza(qza, "Phylogeny[Rooted]")


def table_qza_wrong_type(tmp, shared, make_qza):
    load_table(make_qza(tmp / "table.qza", "FeatureTable[RelativeFrequency]", "feature-table.biom", b""))


def metadata_lacks_samples(tmp, shared, make_qza):
    meta = load_metadata(_metadata(tmp, "S1\t30\tgut\n"))
    align_metadata(meta, ["S1", "S2", "S3"], "table.biom")


def metadata_no_id_header(tmp, shared, make_qza):
    load_metadata(_metadata(tmp, "S1\t30\tgut\n", header="subject\tage\tsite"))


def metadata_duplicate_ids(tmp, shared, make_qza):
    load_metadata(_metadata(tmp, "S1\t30\tgut\nS1\t31\toral\n"))


def metadata_declared_numeric_text(tmp, shared, make_qza):
    load_metadata(_metadata(tmp, "#q2:types\tnumeric\tcategorical\nS1\tthirty\tgut\n"))


def nan_target(tmp, shared, make_qza):
    meta = load_metadata(_metadata(tmp, "S1\t30\tgut\nS2\t\toral\n"))
    numeric_targets(meta, ["age"])


def non_numeric_target(tmp, shared, make_qza):
    _prepare(tmp, metadata=str(_metadata(tmp, "S1\t30\tgut\nS2\t40\toral\nS3\t50\tgut\n")), targets=["site"])


def unknown_target_column(tmp, shared, make_qza):
    _prepare(tmp, metadata=str(_metadata(tmp, "S1\t30\tgut\nS2\t40\toral\nS3\t50\tgut\n")), targets=["Age"])


def rarefy_depth_too_high(tmp, shared, make_qza):
    rarefy(load_table(_tsv_table(tmp, "A1\t5\t2\nA2\t3\t4\n")), depth=100)


def grouped_split_missing_column(tmp, shared, make_qza):
    meta = str(_metadata(tmp, "S1\t30\tgut\nS2\t40\toral\nS3\t50\tgut\n"))
    _prepare(tmp, metadata=meta, split={"kind": "grouped", "group_column": "host_subject_id"})


def stratified_split_without_metadata(tmp, shared, make_qza):
    _prepare(tmp, split={"kind": "stratified", "column": "site"})


# case -> fragments the message must contain (file or field, and the fix)
CASES = {
    corrupt_biom: ["broken.biom", "re-export"],
    garbage_biom: ["garbage.biom", "corrupt"],
    missing_table: ["nowhere.biom", "data.table"],
    duplicate_samples_tsv: ["dup.tsv", "duplicate sample IDs", "'S1'", "unique"],
    duplicate_asvs_tsv: ["table.tsv", "duplicate ASV IDs", "'A1'"],
    negative_counts: ["table.tsv", "negative", "'S2'", "raw read counts"],
    nan_counts: ["table.tsv", "non-finite", "'S2'"],
    non_numeric_count: ["table.tsv", "'many'", "'A1'", "'S2'"],
    empty_table: ["table.tsv", "zero", "Fix:"],
    non_acgt_character: ["seqs.fasta", "'asv2'", "'-'", "position 5", "Fix:"],
    iupac_under_error_policy: ["seqs.fasta", "'asv2'", "'R'", "data.ambiguous_bases"],
    ids_not_dna: ["md5_table.biom", "not DNA", "data.sequences"],
    fasta_missing_asv: ["seqs.fasta", "1 of 2", "'asv2'", "record for every ASV"],
    fasta_bad_format: ["seqs.fasta", "line 1", "FASTA"],
    qza_wrong_type: ["tree.qza", "Phylogeny[Unrooted]", "midpoint-root"],
    table_qza_wrong_type: ["table.qza", "FeatureTable[RelativeFrequency]", "raw counts"],
    metadata_lacks_samples: ["meta.tsv", "2 of the 3", "'S2'", "drop_samples_without_metadata"],
    metadata_no_id_header: ["meta.tsv", "'subject'", "sample-id"],
    metadata_duplicate_ids: ["meta.tsv", "'S1'", "one row per sample"],
    metadata_declared_numeric_text: ["meta.tsv", "'age'", "'thirty'", "categorical"],
    nan_target: ["meta.tsv", "'age'", "'S2'", "fill"],
    non_numeric_target: ["meta.tsv", "'site'", "not numeric", "classification"],
    unknown_target_column: ["data.targets", "'Age'", "case-sensitive"],
    rarefy_depth_too_high: ["data.rarefy_depth=100", "table.tsv", "deepest has 8", "at most 8"],
    grouped_split_missing_column: ["data.split.group_column", "'host_subject_id'", "existing metadata column"],
    stratified_split_without_metadata: ["data.metadata", "metadata TSV"],
}


@pytest.mark.parametrize("case", list(CASES), ids=[c.__name__ for c in CASES])
def test_bad_input_is_explained(case, tmp_path, make_qza):
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    with pytest.raises(AamInputError) as info:
        case(tmp_path, shared if shared.is_dir() else None, make_qza)
    message = str(info.value)
    assert "Fix:" in message and info.value.fix
    for fragment in CASES[case]:
        assert fragment in message, f"{fragment!r} missing from: {message}"
