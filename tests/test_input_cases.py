"""The four kinds of input fault from the field's bug reports (issue 10), each case folder of
../shared/cases as a test, plus siblings of each kind built here from small files.

Kinds: degenerate trees and empty column sets; samples without reads; compressed and slightly
unusual files (gzip, BOM, CRLF, comment lines); metadata type inference. docs/input-problems.md
lists them with the test of each.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import yaml

from aam_ds.data.metadata import categorical_codes, load_metadata, numeric_targets
from aam_ds.data.prepare import prepare_data
from aam_ds.data.sequences import tokenize
from aam_ds.data.splits import split_samples
from aam_ds.data.table import FeatureTable, load_table
from aam_ds.distances import cli as distances_cli
from aam_ds.distances.full import full_matrix
from aam_ds.distances.metric import METRICS, UNIFRAC_METRICS, build_metric
from aam_ds.distances.target import build_distance_target
from aam_ds.distances.tree import parse_newick, read_tree
from aam_ds.engine.crossval import fold_rows
from aam_ds.errors import AamInputError, AamNotice
from aam_ds.evaluation.cli import infer_task
from aam_ds.spec import build_spec


def _case_spec(case: Path, tmp: Path, **data) -> dict:
    """A case's run.yaml with paths made absolute (its tables are given as TSV) and the cache in ``tmp``."""
    raw = yaml.safe_load((case / "run.yaml").read_text())
    for key in ("table", "tree", "metadata"):
        if key in raw["data"]:
            raw["data"][key] = str(case / raw["data"][key].replace(".biom", ".tsv"))
    raw["data"].update(cache_dir=str(tmp / "cache"), **data)
    return raw


# --------------------------------------------------------------------------------------------
# kind 1: degenerate trees and empty column sets


def test_case_15_a_tree_without_lengths_is_refused_by_every_metric_naming_the_file(shared_cases, tmp_path):
    case = shared_cases / "15-tree-without-lengths"
    for metric in UNIFRAC_METRICS:
        with pytest.raises(AamInputError, match="tree_no_lengths.nwk: has no branch of positive length"):
            distances_cli.main(
                [
                    "--table",
                    str(case / "table.tsv"),
                    "--tree",
                    str(case / "tree_no_lengths.nwk"),
                    "--metric",
                    metric,
                    "--out",
                    str(tmp_path / "d.h5"),
                    "--no-progress",
                ]
            )
    spec = build_spec(_case_spec(case, tmp_path))  # pretraining's on-the-fly targets
    with pytest.raises(AamInputError, match="train_tree_no_lengths.nwk: has no branch of positive length"):
        build_distance_target(spec.data, load_table(spec.data.table))
    assert not (tmp_path / "d.h5").exists()


@pytest.mark.skipif(shutil.which("ssu") is None, reason="biocore's ssu binary is not installed (Debian unifrac-tools)")
@pytest.mark.parametrize("metric", UNIFRAC_METRICS)
def test_ssu_engine_refuses_a_tree_without_lengths_naming_the_users_file(tmp_path, metric):
    (tmp_path / "table.tsv").write_text("#OTU ID\tS1\tS2\nA\t1\t0\nB\t0\t2\nC\t3\t1\n")
    (tmp_path / "cladogram.nwk.gz").write_bytes(__import__("gzip").compress(b"((A,B)x,C)root;\n"))
    with pytest.raises(AamInputError) as info:
        distances_cli.main(
            [
                "--table",
                str(tmp_path / "table.tsv"),
                "--tree",
                str(tmp_path / "cladogram.nwk.gz"),
                "--metric",
                metric,
                "--engine",
                "ssu",
                "--out",
                str(tmp_path / "d.h5"),
            ]
        )
    assert str(tmp_path / "cladogram.nwk.gz") in str(info.value) and "aam-ssu-" not in str(info.value)


@pytest.mark.parametrize(
    "newick",
    ["((A:0,B:0):0,C:0);", "((A,B)Firmicutes,C)Bacteria;", "(A,B,C):2.5;", "((A:0,B:0.0)[&&NHX:S=x]:0e3,C:-0);"],
    ids=["explicit-zeros", "taxonomy-labels", "root-length-only", "comments-and-exponents"],
)
def test_trees_without_a_positive_branch_are_refused_from_any_container(tmp_path, make_qza, newick):
    import gzip

    plain = tmp_path / "t.nwk"
    plain.write_text(newick)
    (tmp_path / "t.nwk.gz").write_bytes(gzip.compress(newick.encode()))
    make_qza(tmp_path / "t.qza", "Phylogeny[Rooted]", "tree.nwk", newick.encode())
    for path in (plain, tmp_path / "t.nwk.gz", tmp_path / "t.qza"):
        with pytest.raises(AamInputError, match=f"{path.name}: has no branch of positive length"):
            read_tree(path)


def _degenerate_table() -> FeatureTable:
    """Samples E1-E3 have no reads, Z1 / Z2 only ASVs below zero-length branches, P1-P3 real branches."""
    counts = np.array(
        [
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],  # E1 E2 E3
            [0, 0, 4, 0, 0],
            [0, 0, 1, 2, 0],  # Z1 Z2: C, D: zero length all the way to the root
            [5, 1, 0, 0, 0],
            [0, 3, 0, 0, 2],
            [1, 0, 2, 0, 7],  # P1 P2 P3
        ],
        dtype=np.float64,
    )
    ids = ["E1", "Z1", "E2", "P1", "Z2", "E3", "P2", "P3"]  # empty and degenerate samples spread over blocks
    order = [0, 3, 1, 5, 4, 2, 6, 7]
    return FeatureTable(ids, list("ABCDE"), sp.csr_matrix(counts[order]), "degenerate")


DEGENERATE_TREE = "((A:1,(B:0.5,E:2):0.3):0.25,(C:0,D:0):0)root;"


@pytest.mark.parametrize("metric", METRICS)
def test_every_kernel_gives_the_defined_values_at_every_block_size(metric):
    """Blocks made only of samples sharing no branch of positive length (empty samples, samples on
    zero-length branches) give 0 between such samples, never an exception, at every block size."""
    table, tree = _degenerate_table(), parse_newick(DEGENERATE_TREE)
    built = build_metric(metric, table, tree if metric in UNIFRAC_METRICS else None)
    whole = full_matrix(built, block_size=len(table.sample_ids), progress=False)
    assert np.isfinite(whole).all() and np.allclose(whole, whole.T) and not np.diag(whole).any()
    for block_size in range(1, len(table.sample_ids)):
        np.testing.assert_allclose(full_matrix(built, block_size, progress=False), whole, atol=1e-12)
    rows = {s: i for i, s in enumerate(table.sample_ids)}
    nothing = ["E1", "E2", "E3"] + (["Z1", "Z2"] if metric in UNIFRAC_METRICS else [])
    index = [rows[s] for s in nothing]
    assert not whole[np.ix_(index, index)].any()
    batch = torch.tensor(index)
    assert not built.block(batch).any() and not built.block(batch, batch).any()  # batch targets of such samples


@pytest.mark.parametrize("metric", UNIFRAC_METRICS)
def test_a_table_on_only_zero_length_branches_gives_all_zero_matrices(metric):
    """The tree has positive lengths (so it is accepted) but none above this table's ASVs: no column is left."""
    tree = parse_newick("((A:0,B:0):0,(C:1,D:1):1)root;")
    table = FeatureTable(["S1", "S2", "S3"], ["A", "B"], sp.csr_matrix(np.array([[1.0, 0], [0, 2], [0, 0]])), "t")
    built = build_metric(metric, table, tree)
    for block_size in (1, 2, 3):
        assert not full_matrix(built, block_size, progress=False).any()


# --------------------------------------------------------------------------------------------
# kind 2: samples without reads


def _catch_notices(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [str(w.message) for w in caught if issubclass(w.category, AamNotice)]


@pytest.mark.parametrize("stage", ["pretraining", "fine-tuning"])
def test_case_04b_samples_without_reads_are_dropped_naming_them(shared_cases, tmp_path, stage):
    case = shared_cases / "04b-empty-sample-training"
    extra = {"loss": {"task": "regression"}} if stage == "fine-tuning" else {}
    raw = _case_spec(case, tmp_path, **({"targets": ["age"]} if extra else {}))
    data, notices = _catch_notices(lambda: prepare_data(build_spec({**raw, **extra})))
    assert "S05" not in data.table.sample_ids and len(data.table.sample_ids) == 15
    assert data.drops == {"no reads": 1} and data.sample_accounting().startswith("16 loaded, 1 dropped (no reads)")
    assert any("1 samples have no reads" in n and "'S05'" in n for n in notices)
    assert sum(len(rows) for rows in data.splits.values()) == 15  # no split (training or evaluation) holds it


def test_cross_validation_folds_leave_out_samples_without_reads(shared_cases, tmp_path):
    case = shared_cases / "04b-empty-sample-training"
    folds_file = tmp_path / "folds.tsv"  # e.g. written by rf-baseline on the full table: S05 is in it
    folds_file.write_text("sample_id\tfold\n" + "".join(f"S{i:02d}\t{i % 2}\n" for i in range(16)))
    raw = _case_spec(case, tmp_path, targets=["age"], split={"folds_file": str(folds_file), "val_fraction": 0.0})
    spec = build_spec({**raw, "loss": {"task": "regression"}})
    data, _ = _catch_notices(lambda: prepare_data(spec))
    held_out = fold_rows(spec.data.split, data)
    assert sorted(np.concatenate(held_out).tolist()) == list(range(15))


def test_baseline_evaluation_leaves_out_samples_without_reads(tmp_path):
    import argparse

    from aam_ds.evaluation.cli import add_rf_arguments, run_rf_baseline

    ids = [f"S{i}" for i in range(12)]
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 9, size=(4, 12))
    counts[:, [3, 7]] = 0
    (tmp_path / "t.tsv").write_text(
        "#OTU ID\t" + "\t".join(ids) + "\n" + "".join(f"A{j}\t" + "\t".join(map(str, row)) + "\n" for j, row in enumerate(counts))
    )
    (tmp_path / "m.tsv").write_text("sample-id\tage\n" + "".join(f"{s}\t{20 + i}\n" for i, s in enumerate(ids)))
    parser = argparse.ArgumentParser()
    add_rf_arguments(parser)
    args = parser.parse_args(
        [
            "--table",
            str(tmp_path / "t.tsv"),
            "--metadata",
            str(tmp_path / "m.tsv"),
            "--target",
            "age",
            "--folds",
            "2",
            "--trees",
            "5",
            "--out-dir",
            str(tmp_path / "rf"),
        ]
    )
    status, notices = _catch_notices(lambda: run_rf_baseline(args))
    assert status == 0 and any("2 samples have no reads" in n and "'S3', 'S7'" in n for n in notices)
    folds = (tmp_path / "rf" / "folds.tsv").read_text()
    assert "S3\t" not in folds and "S7\t" not in folds and folds.count("\n") == 11


def test_samples_left_without_reads_by_drop_asv_are_named_and_tokens_stay_aligned(tmp_path):
    counts = "#OTU ID\tS1\tS2\tS3\nh1\t4\t0\t1\nh2\t0\t3\t0\nh3\t1\t0\t0\nh4\t0\t0\t5\n"  # S2: only h2 (ambiguous)
    (tmp_path / "t.tsv").write_text(counts)
    (tmp_path / "rep.fasta").write_text(">h1\nACGTACGT\n>h2\nACGTRCGT\n>h3\nTTTTGGGG\n>h4\nCCCCAAAA\n")
    spec = build_spec(
        {
            "data": {
                "table": str(tmp_path / "t.tsv"),
                "sequences": str(tmp_path / "rep.fasta"),
                "max_seq_len": 8,
                "ambiguous_bases": "drop_asv",
                "cache_dir": str(tmp_path / "c"),
            }
        }
    )
    data, notices = _catch_notices(lambda: prepare_data(spec))
    assert data.table.sample_ids == ["S1", "S3"] and data.table.asv_ids == ["h1", "h3", "h4"]
    assert any("1 samples have no reads" in n and "['S2']" in n for n in notices)
    np.testing.assert_array_equal(data.tokens, tokenize(["ACGTACGT", "TTTTGGGG", "CCCCAAAA"], 8))


def test_the_notice_names_a_few_samples_and_the_count(tmp_path):
    ids = [f"S{i}" for i in range(10)]
    counts = np.zeros((10, 2))
    counts[[0, 9], 0] = 3
    (tmp_path / "t.tsv").write_text(
        "#OTU ID\t" + "\t".join(ids) + "\n" + "".join(f"A{j}\t" + "\t".join(str(int(c)) for c in counts[:, j]) + "\n" for j in range(2))
    )
    from aam_ds.data.table import without_empty_samples

    table, notices = _catch_notices(lambda: without_empty_samples(load_table(tmp_path / "t.tsv")))
    assert table.sample_ids == ["S0", "S9"] and table.asv_ids == ["A0"]
    assert notices == [
        f"{tmp_path / 't.tsv'}: 8 samples have no reads and are left out (nothing to learn from), e.g. ['S1', 'S2', 'S3', 'S4', 'S5']"
    ]


# --------------------------------------------------------------------------------------------
# kind 3: compressed and slightly unusual files


def test_case_09_compressed_tables_and_trees_read_as_the_plain_ones(shared_cases):
    case = shared_cases / "09-gzip-inputs"
    plain = load_table(case / "table.tsv")
    for name in ("table.tsv.gz", "table.json.biom.gz"):
        table = load_table(case / name)
        assert table.sample_ids == plain.sample_ids and table.asv_ids == plain.asv_ids
        assert (table.counts != plain.counts).nnz == 0
    tree, packed = read_tree(case / "tree.nwk"), read_tree(case / "tree.nwk.gz")
    assert packed.tip_names == tree.tip_names and np.array_equal(packed.parent, tree.parent)
    assert np.array_equal(packed.length, tree.length)


# (the siblings of this kind, per reader and per variant, are in tests/test_input_files.py)


# --------------------------------------------------------------------------------------------
# kind 4: metadata type inference


def test_case_11_numeric_looking_ids_stay_as_written(shared_cases):
    case = shared_cases / "11-numeric-looking-group-ids"
    inferred, declared = load_metadata(case / "metadata_inferred.tsv"), load_metadata(case / "metadata_declared.tsv")
    for column, n in (("host_subject_id", 8), ("site_code", 4)):
        codes, classes = categorical_codes(inferred, column, "data.split.group_column")
        declared_codes, declared_classes = categorical_codes(declared, column, "x")
        assert len(classes) == n and classes == declared_classes and np.array_equal(codes, declared_codes)
    assert {"010", "10"} <= set(categorical_codes(inferred, "site_code", "data.targets")[1])
    split = build_spec({"data": {"split": {"kind": "grouped", "group_column": "host_subject_id", "val_fraction": 0.25}}}).data.split
    for frame in (inferred, declared):
        splits = split_samples(len(frame), split, frame)
        assert len(splits["val"]) == 4  # 2 of 8 subjects, 25 % as asked (merged IDs gave 50 %)
    assert infer_task(inferred, "age") == "regression"
    np.testing.assert_array_equal(numeric_targets(inferred, ["age"]), numeric_targets(declared, ["age"]))


def test_strata_covariates_and_classes_keep_text_as_written(tmp_path):
    seqs = ["ACGTACGTAC" * 3, "TTGCAATGCA" * 3, "GGGCCCAAAT" * 3]
    ids = [f"S{i}" for i in range(8)]
    (tmp_path / "t.tsv").write_text(
        "#OTU ID\t"
        + "\t".join(ids)
        + "\n"
        + "".join(f"{s}\t" + "\t".join(str((i + j) % 4 + 1) for i in range(8)) + "\n" for j, s in enumerate(seqs))
    )
    codes = ["7", "07", "7", "07", "010", "10", "010", "10"]
    (tmp_path / "m.tsv").write_text("sample-id\tcode\tage\n" + "".join(f"{s}\t{c}\t{i}\n" for i, (s, c) in enumerate(zip(ids, codes))))
    base = {"table": str(tmp_path / "t.tsv"), "metadata": str(tmp_path / "m.tsv"), "cache_dir": str(tmp_path / "c")}
    data = prepare_data(
        build_spec(
            {
                "data": {
                    **base,
                    "covariates": ["code"],
                    "targets": ["code"],
                    "split": {"kind": "stratified", "column": "code", "val_fraction": 0.5},
                },
                "loss": {"task": "classification"},
            }
        )
    )
    assert data.class_names == ["010", "07", "10", "7"] and data.covariate_classes == [["010", "07", "10", "7"]]
    assert infer_task(data.metadata, "code") == "regression"  # numbers where numbers are asked for (rf-baseline's guess)
    val = [codes[i] for i in data.splits["val"]]
    assert sorted(val) == ["010", "07", "10", "7"]  # one of each of the 4 strata, not of 2 merged ones


@pytest.mark.parametrize(
    "text, cause",
    [
        ("sample-id,age,site\nS1,30,gut\n", "comma-separated"),
        ("sample-id;age\nS1;30\n", "semicolon-separated"),
        ("# exported\nsample-id age site\nS1 30 gut\n", "space-separated"),
    ],
)
def test_metadata_that_is_not_tab_separated_is_refused_saying_so(tmp_path, text, cause):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(AamInputError, match=f"m.csv: is {cause}, not tab-separated"):
        load_metadata(tmp_path / "m.csv")
