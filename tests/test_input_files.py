"""Every text input (tables, trees, metadata, FASTA, distance matrices, folds files) read as the field's tools
read it: gzip / bzip2 / xz-compressed, with a UTF-8 byte-order mark, CRLF or CR line endings,
UTF-16 with a byte-order mark, a leading comment; unreadable files get errors naming the real
cause (issue 10, kind 3; the case folder 09 is in tests/test_input_cases.py)."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
from pathlib import Path
from typing import Callable

import biom
import h5py
import numpy as np
import pytest

from aam_ds.data.metadata import load_metadata
from aam_ds.data.sequences import read_fasta
from aam_ds.data.table import load_table
from aam_ds.distances.io import read_distance_matrix, write_distance_matrix
from aam_ds.distances.tree import read_tree
from aam_ds.errors import AamInputError
from aam_ds.evaluation.folds import read_folds

TABLE_TSV = "#OTU ID\tS1\tS2\tS3\nA\t1\t0\t4\nB\t2\t3\t0\n"
METADATA = "sample-id\tage\tsite\nS1\t30\tgut\nS2\t\toral cavity\n"
NEWICK = "((A:1,B:0.5)x:0.25,C:2)root;\n"
FASTA = ">A some description\nACGT\nAC\n>B\nGGTT\n"
DISTANCES = "\tS1\tS2\tS3\nS1\t0\t0.5\t1\nS2\t0.5\t0\t0.25\nS3\t1\t0.25\t0\n"


def _table_json() -> str:
    return biom.Table(np.array([[1, 0, 4], [2, 3, 0]]), ["A", "B"], ["S1", "S2", "S3"]).to_json("test")


def _same_table(got, want) -> bool:
    return got.sample_ids == want.sample_ids and got.asv_ids == want.asv_ids and (got.counts != want.counts).nnz == 0


def _same_tree(got, want) -> bool:
    return got.tip_names == want.tip_names and np.array_equal(got.parent, want.parent) and np.array_equal(got.length, want.length)


def _same_matrix(got, want) -> bool:
    return got[0] == want[0] and np.array_equal(got[1], want[1])


# reader name -> (file name, plain text, comment line to put first or None, loader, equality)
READERS: dict[str, tuple[str, Callable[[], str], str | None, Callable, Callable]] = {
    "table-tsv": ("table.tsv", lambda: TABLE_TSV, "# Constructed from biom file\n", load_table, _same_table),
    "table-json": ("table.biom", _table_json, None, load_table, _same_table),
    "metadata": ("metadata.tsv", lambda: METADATA, "# exported from the lab sheet\n", load_metadata, lambda a, b: a.equals(b)),
    "tree": ("tree.nwk", lambda: NEWICK, "[a Newick comment, e.g. from FastTree]\n", read_tree, _same_tree),
    "fasta": ("seqs.fasta", lambda: FASTA, "# sequences exported by DADA2\n", read_fasta, lambda a, b: a == b),
    "distances": ("dm.tsv", lambda: DISTANCES, "# unweighted UniFrac\n", read_distance_matrix, _same_matrix),
    "folds": (
        "folds.tsv",
        lambda: "sample_id\tfold\nS1\t0\nS2\t1\nS3\t0\n",
        None,
        lambda p: read_folds(p, ["S1", "S2", "S3"]),
        lambda a, b: len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b)),
    ),
}

VARIANTS: dict[str, Callable[[str], bytes]] = {
    "gzip": lambda text: gzip.compress(text.encode()),
    "bzip2": lambda text: bz2.compress(text.encode()),
    "xz": lambda text: lzma.compress(text.encode()),
    "gzip-of-gzip": lambda text: gzip.compress(gzip.compress(text.encode())),
    "utf8-bom": lambda text: b"\xef\xbb\xbf" + text.encode(),
    "crlf": lambda text: text.replace("\n", "\r\n").encode(),
    "cr": lambda text: text.replace("\n", "\r").encode(),
    "utf16-bom": lambda text: text.encode("utf-16"),
    "bom-crlf-gzip": lambda text: gzip.compress(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode()),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("reader", READERS)
def test_text_inputs_read_the_same_in_every_variant(tmp_path, reader, variant):
    name, text, _, load, same = READERS[reader]
    plain = tmp_path / name
    plain.write_text(text())
    other = tmp_path / f"variant-{name}"
    other.write_bytes(VARIANTS[variant](text()))
    assert same(load(other), load(plain))


@pytest.mark.parametrize("reader", [r for r, spec in READERS.items() if spec[2] is not None])
def test_a_leading_comment_line_is_read_as_a_comment(tmp_path, reader):
    name, text, comment, load, same = READERS[reader]
    (tmp_path / name).write_text(text())
    (tmp_path / f"commented-{name}").write_text(comment + text())
    assert same(load(tmp_path / f"commented-{name}"), load(tmp_path / name))


def test_compressed_binary_formats_read_transparently(tmp_path):
    table = biom.Table(np.array([[1, 0, 4], [2, 3, 0]]), ["A", "B"], ["S1", "S2", "S3"])
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        table.to_hdf5(f, "test")
    (tmp_path / "table.biom.gz").write_bytes(gzip.compress(buffer.getvalue()))
    (tmp_path / "table.tsv").write_text(TABLE_TSV)
    assert _same_table(load_table(tmp_path / "table.biom.gz"), load_table(tmp_path / "table.tsv"))

    ids, matrix = ["S1", "S2"], np.array([[0.0, 0.5], [0.5, 0.0]])
    for suffix in (".h5", ".npy"):
        write_distance_matrix(tmp_path / f"dm{suffix}", ids, matrix)
        packed = tmp_path / f"dm{suffix}.gz"
        packed.write_bytes(gzip.compress((tmp_path / f"dm{suffix}").read_bytes()))
        assert _same_matrix(read_distance_matrix(packed), (ids, matrix))  # dm.npy.gz finds dm.ids.txt


def _truncated_gzip(text: str) -> bytes:
    packed = gzip.compress(text.encode())
    return packed[: len(packed) // 2]


ERRORS = {
    "truncated-gzip-table": (
        "table.tsv.gz",
        lambda: _truncated_gzip(TABLE_TSV * 50),
        load_table,
        "gzip-compressed but the compressed data is truncated or corrupt",
    ),
    "truncated-gzip-tree": ("tree.nwk.gz", lambda: _truncated_gzip(NEWICK * 50), read_tree, "gzip-compressed but"),
    "zstd-metadata": ("metadata.tsv.zst", lambda: b"\x28\xb5\x2f\xfd" + bytes(20), load_metadata, "zstd-compressed"),
    "latin1-metadata": (
        "metadata.tsv",
        lambda: METADATA.replace("oral cavity", "cavit\xe9 orale").encode("latin-1"),
        load_metadata,
        "not UTF-8 text: byte 0xe9 on line 3",
    ),
    "latin1-fasta": ("seqs.fasta", lambda: (">caf\xe9\nACGT\n").encode("latin-1"), read_fasta, "not UTF-8 text: byte 0xe9 on line 1"),
    "csv-table": ("table.csv", lambda: TABLE_TSV.replace("\t", ",").encode(), load_table, "is comma-separated, not tab-separated"),
    "csv-distances": (
        "dm.csv",
        lambda: DISTANCES.replace("\t", ",").encode(),
        read_distance_matrix,
        "is comma-separated, not tab-separated",
    ),
    "binary-tree": ("tree.nwk", lambda: bytes(range(256)), read_tree, "binary data in no format or compression known here"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_unreadable_files_name_the_real_cause(tmp_path, case):
    name, content, load, cause = ERRORS[case]
    path: Path = tmp_path / name
    path.write_bytes(content())
    with pytest.raises(AamInputError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: ") and cause in str(info.value) and info.value.fix


@pytest.mark.skipif(__import__("shutil").which("ssu") is None, reason="biocore's ssu binary is not installed (Debian unifrac-tools)")
def test_ssu_engine_reads_compressed_and_bom_crlf_inputs_as_the_torch_engine(tmp_path):
    from aam_ds.distances import cli

    (tmp_path / "table.tsv.gz").write_bytes(gzip.compress(TABLE_TSV.encode()))
    (tmp_path / "tree.nwk").write_bytes(b"\xef\xbb\xbf" + NEWICK.replace("C:2", "(C:2,D:1):0.5").replace("\n", "\r\n").encode())
    for engine in ("torch", "ssu"):
        cli.main(
            [
                "--table",
                str(tmp_path / "table.tsv.gz"),
                "--tree",
                str(tmp_path / "tree.nwk"),
                "--metric",
                "weighted_normalized",
                "--engine",
                engine,
                "--out",
                str(tmp_path / f"{engine}.h5"),
                "--no-progress",
            ]
        )
    ours, theirs = read_distance_matrix(tmp_path / "torch.h5"), read_distance_matrix(tmp_path / "ssu.h5")
    assert ours[0] == theirs[0] and np.allclose(ours[1], theirs[1], atol=1e-12) and ours[1].any()
