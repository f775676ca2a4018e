"""`aam-ds distances` and `aam-ds shard` as a new user meets them (a new user's trial): the distances of a run are the
ones training compares (the spec's rarefaction with its seeded draws, the ASVs data.ambiguous_bases=drop_asv drops, a
sharded dataset folder's rows), an existing --out is kept unless --overwrite, the metric names of QIIME 2 and
scikit-bio are accepted, a sharded folder where a whole table is read in memory (aam-ds benchmark) is refused with what
to pass, and aam-ds shard's summary says how many samples and ASVs it dropped and why."""

from __future__ import annotations

import biom
import h5py
import numpy as np
import pytest
import torch
import yaml

from aam_ds.cli import main as cli_main
from aam_ds.data.prepare import prepare_data
from aam_ds.data.table import load_table
from aam_ds.distances.io import read_distance_matrix
from aam_ds.distances.target import build_distance_target
from aam_ds.errors import AamInputError
from aam_ds.spec import load_spec

# ASV IDs are their sequences; the second holds an ambiguous base (R)
ASVS = ["ACGTACGTAC", "ACGTRCGTAC", "TTTTGGGGCC", "GGGGCCCCAA", "CCCCAAAATT"]
NEWICK = "((ACGTACGTAC:0.1,ACGTRCGTAC:0.2):0.3,(TTTTGGGGCC:0.4,GGGGCCCCAA:0.5):0.2,CCCCAAAATT:0.7);\n"


def _tsv_table(path, rows: dict[str, list[int]]) -> str:
    """A classic BIOM TSV of ``rows`` (ASV -> reads in S1..S4)."""
    lines = ["#OTU ID\tS1\tS2\tS3\tS4", *(f"{asv}\t" + "\t".join(map(str, reads)) for asv, reads in rows.items())]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _distances(*args: str) -> tuple[list[str], np.ndarray]:
    out = args[args.index("--out") + 1]
    assert cli_main(["distances", *args, "--no-progress", "--device", "cpu"]) == 0
    return read_distance_matrix(out)


@pytest.fixture(scope="module")
def rarefied_run(demo_paths, tmp_path_factory):
    """A run spec of the demo table rarefied to 2,500 reads (drops shallow samples), and its distances file."""
    folder = tmp_path_factory.mktemp("rarefied")
    data = {"table": str(demo_paths.table), "tree": str(demo_paths.tree), "rarefy_depth": 2500, "metric": "weighted_normalized"}
    (folder / "run.yaml").write_text(yaml.safe_dump({"data": {**data, "cache_dir": str(folder / "cache")}, "model": {"preset": "tiny"}}))
    out = folder / "d.h5"
    _distances("--spec", str(folder / "run.yaml"), "--out", str(out))
    return folder / "run.yaml", out


def test_a_runs_distances_are_those_training_compares(rarefied_run, tmp_path, capsys):
    run, out = rarefied_run
    ids, matrix = read_distance_matrix(out)
    spec = load_spec(run, [])
    prepared = prepare_data(spec)
    assert ids == prepared.table.sample_ids and len(ids) < 300  # rarefaction dropped the shallow samples, as training does
    on_the_fly = build_distance_target(spec.data, prepared.table).batch(torch.arange(len(ids)))
    assert torch.allclose(on_the_fly.double(), torch.as_tensor(matrix), atol=1e-6)
    other_seed = _distances("--spec", str(run), "--rarefy-seed", "1", "--out", str(tmp_path / "seed1.h5"))[1]
    unrarefied = _distances("--spec", str(run), "--set", "data.rarefy_depth=null", "--out", str(tmp_path / "all.h5"))
    assert other_seed.shape == matrix.shape and not np.allclose(other_seed, matrix)
    assert len(unrarefied[0]) == 300
    capsys.readouterr()
    assert cli_main(["distances", "--spec", str(run), "--engine", "ssu", "--out", str(tmp_path / "ssu.h5")]) == 2
    assert "--engine ssu: reads the table as it is, but the run rarefies it" in capsys.readouterr().err


def test_asvs_with_ambiguous_bases_are_left_out_as_training_leaves_them_out(tmp_path):
    reads = {asv: [3 + i, 1, 4 * i, 2] for i, asv in enumerate(ASVS)}
    table = _tsv_table(tmp_path / "t.tsv", reads)
    without = _tsv_table(tmp_path / "clean.tsv", {asv: r for asv, r in reads.items() if "R" not in asv})
    dropped = _distances(
        "--table", table, "--metric", "braycurtis", "--set", "data.ambiguous_bases=drop_asv", "--out", str(tmp_path / "d.tsv")
    )
    assert np.array_equal(dropped[1], _distances("--table", without, "--metric", "braycurtis", "--out", str(tmp_path / "c.tsv"))[1])
    kept = _distances("--table", table, "--metric", "braycurtis", "--out", str(tmp_path / "all.tsv"))[1]  # the default keeps every ASV
    assert not np.array_equal(kept, dropped[1])


@pytest.mark.parametrize("suffix", [".h5", ".tsv"])
def test_an_existing_output_is_replaced_only_with_overwrite(tmp_path, capsys, suffix):
    table = _tsv_table(tmp_path / "t.tsv", {asv: [3 + i, 1, 4 * i, 2] for i, asv in enumerate(ASVS)})
    out = tmp_path / f"d{suffix}"
    jaccard = _distances("--table", table, "--metric", "jaccard", "--out", str(out))[1]
    before = out.read_bytes()
    capsys.readouterr()
    assert cli_main(["distances", "--table", table, "--metric", "braycurtis", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"aam-ds: error: {out}: exists" in err and "pass --overwrite" in err and "Traceback" not in err
    assert out.read_bytes() == before
    replaced = _distances("--table", table, "--metric", "braycurtis", "--out", str(out), "--overwrite")[1]
    assert not np.array_equal(replaced, jaccard)


def test_the_metric_names_of_qiime2_and_scikit_bio_are_accepted(tmp_path, capsys):
    table = _tsv_table(tmp_path / "t.tsv", {asv: [3 + i, 1, 4 * i, 2] for i, asv in enumerate(ASVS)})
    (tmp_path / "tree.nwk").write_text(NEWICK)
    flags = ["--table", table, "--tree", str(tmp_path / "tree.nwk")]
    for alias, name in (
        ("weighted", "weighted_unnormalized"),
        ("weighted_unifrac", "weighted_unnormalized"),
        ("unweighted_unifrac", "unweighted"),
    ):
        capsys.readouterr()
        by_alias = _distances(*flags, "--metric", alias, "--out", str(tmp_path / f"{alias}.tsv"))[1]
        assert f"aam-ds: notice: --metric: {alias} is read as {name}" in capsys.readouterr().err
        assert np.array_equal(by_alias, _distances(*flags, "--metric", name, "--out", str(tmp_path / f"{name}-{alias}.tsv"))[1])
    assert load_spec(None, ["data.metric=weighted_normalized_unifrac"]).data.metric == "weighted_normalized"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli_main(["distances", *flags, "--metric", "weigthed", "--out", str(tmp_path / "x.tsv")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "invalid choice: 'weigthed' (choose from 'unweighted', 'weighted_normalized'" in err
    assert "also accepted: unweighted_unifrac = unweighted, weighted = weighted_unnormalized" in err


def test_a_sharded_folder_gives_the_distances_of_its_rows_and_is_refused_where_a_whole_table_is_read(
    rarefied_run, demo_paths, tmp_path, capsys
):
    run, from_biom = rarefied_run
    folder = tmp_path / "shards"
    shard = ["shard", "--table", str(demo_paths.table), "--tree", str(demo_paths.tree), "--out", str(folder), "--spec", str(run)]
    assert cli_main(shard) == 0
    ids, matrix = _distances(
        "--table", str(folder), "--metric", "weighted_normalized", "--out", str(tmp_path / "d.h5")
    )  # the folder's tree
    biom_ids, biom_matrix = read_distance_matrix(from_biom)
    assert ids == biom_ids and np.array_equal(matrix, biom_matrix)  # the folder's rows: the same seeded draws
    capsys.readouterr()
    assert cli_main(["distances", "--table", str(folder), "--rarefy-depth", "1000", "--out", str(tmp_path / "x.h5")]) == 2
    assert "was built with data.rarefy_depth=2500, the run asks for 1000" in capsys.readouterr().err
    bench = [
        "benchmark",
        "--table",
        str(folder),
        "--metadata",
        str(demo_paths.metadata),
        "--target",
        "age",
        "--out-dir",
        str(tmp_path / "b"),
    ]
    assert cli_main(bench) == 2
    err = capsys.readouterr().err
    assert (
        f"--table {folder}: {folder} is a sharded dataset folder" in err and f"pass {demo_paths.table}, the table it was built from" in err
    )
    with pytest.raises(AamInputError, match="is a sharded dataset folder"):  # rf-baseline, predict, evaluate: load_table
        load_table(folder)
    assert cli_main(["distances", "--table", str(folder), "--engine", "ssu", "--out", str(tmp_path / "ssu.h5")]) == 2
    assert "--engine ssu: reads a BIOM file, not the sharded dataset folder" in capsys.readouterr().err


def test_shard_summary_counts_dropped_samples_and_asvs_with_their_reasons(tmp_path, capsys):
    # S4 is too shallow for the depth; ASV 2 is ambiguous, ASV 3 has no reads, ASV 4 only in S4, ASV 5 not in the tree
    counts = np.array([[12, 11, 10, 0], [5, 5, 5, 0], [0, 0, 0, 0], [0, 0, 0, 3], [4, 6, 8, 0]], dtype=float)
    with h5py.File(tmp_path / "t.biom", "w") as f:
        biom.Table(counts, ASVS, ["S1", "S2", "S3", "S4"]).to_hdf5(f, "test")
    (tmp_path / "tree.nwk").write_text(NEWICK.replace(",CCCCAAAATT:0.7", ""))
    settings = ["data.rarefy_depth=10", "data.ambiguous_bases=drop_asv", "data.drop_missing_tips=true"]
    command = ["shard", "--table", str(tmp_path / "t.biom"), "--tree", str(tmp_path / "tree.nwk"), "--out", str(tmp_path / "s")]
    assert cli_main([*command, *(a for s in settings for a in ("--set", s))]) == 0
    out = capsys.readouterr().out
    assert "3 samples (4 loaded, 1 dropped (fewer reads than data.rarefy_depth 10)), 2 ASVs (5 in the table, " in out
    assert "1 dropped (ambiguous bases, data.ambiguous_bases=drop_asv), 1 dropped (no reads in the table), " in out
    assert "1 dropped (no reads left in the kept samples after rarefaction and the sample drops))" in out
    assert f"1 of the 2 ASVs are not tips of the tree {tmp_path / 'tree.nwk'}: kept in the folder, UniFrac leaves them out" in out
