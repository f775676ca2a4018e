"""`aam-ds distances` and `aam-ds rf-baseline` speak the run spec's vocabulary: `--spec` / `--set` fill every flag
that a spec field also decides (aam_ds/spec/flags.py); a flag given on the command line wins."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from aam_ds.cli import main as cli_main
from aam_ds.distances.io import read_distance_matrix

NEWICK = "((A:0.1,B:0.2):0.3,(C:0.4,D:0.5):0.25,E:0.9)root;\n"


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "t.tsv").write_text("#OTU ID\tS1\tS2\tS3\tS4\nA\t3\t0\t1\t2\nB\t0\t4\t1\t0\nC\t1\t1\t0\t0\nD\t0\t1\t5\t0\nE\t2\t0\t0\t7\n")
    (tmp_path / "tree.nwk").write_text(NEWICK)
    spec = {"data": {"table": str(tmp_path / "t.tsv"), "tree": str(tmp_path / "tree.nwk"), "metric": "generalized", "alpha": 0.25}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path


def _distances(tmp_path, name: str, *args: str) -> np.ndarray:
    out = tmp_path / f"{name}.tsv"
    assert cli_main(["distances", *args, "--out", str(out), "--no-progress"]) == 0
    return read_distance_matrix(out)[1]


def test_distances_take_the_runs_data_fields_and_flags_win(inputs, capsys):
    table, tree, spec = str(inputs / "t.tsv"), str(inputs / "tree.nwk"), str(inputs / "run.yaml")
    from_spec = _distances(inputs, "spec", "--spec", spec)
    by_flags = _distances(inputs, "flags", "--table", table, "--tree", tree, "--metric", "generalized", "--alpha", "0.25")
    assert np.array_equal(from_spec, by_flags)
    assert not np.array_equal(from_spec, _distances(inputs, "alpha05", "--table", table, "--tree", tree, "--metric", "generalized"))
    jaccard = _distances(inputs, "jaccard", "--table", table, "--metric", "jaccard")
    assert np.array_equal(_distances(inputs, "flag_wins", "--spec", spec, "--metric", "jaccard"), jaccard)
    assert np.array_equal(_distances(inputs, "set", "--spec", spec, "--set", "data.metric=jaccard"), jaccard)
    capsys.readouterr()
    assert cli_main(["distances", "--metric", "jaccard", "--out", str(inputs / "none.tsv")]) == 2
    assert "error: --table: no feature table given" in capsys.readouterr().err
    assert cli_main(["distances", "--spec", spec, "--set", "data.alpha=2", "--out", str(inputs / "bad.tsv")]) == 2
    assert "data.alpha: Input should be less than or equal to 1" in capsys.readouterr().err


def test_rf_baseline_takes_the_runs_table_target_and_split(demo, tmp_path, capsys):
    flags = [
        "--table",
        str(demo.table),
        "--metadata",
        str(demo.metadata),
        "--target",
        "age",
        "--split",
        "grouped",
        "--group-column",
        "subject",
        "--folds",
        "3",
        "--seed",
        "4",
    ]
    assert cli_main(["rf-baseline", *flags, "--trees", "5", "--out-dir", str(tmp_path / "flags")]) == 0
    spec = {
        "data": {
            "table": str(demo.table),
            "metadata": str(demo.metadata),
            "targets": ["age"],
            "split": {"kind": "grouped", "group_column": "subject", "folds": 3, "seed": 4},
        }
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(spec))
    assert cli_main(["rf-baseline", "--spec", str(tmp_path / "run.yaml"), "--trees", "5", "--out-dir", str(tmp_path / "spec")]) == 0
    assert (tmp_path / "spec" / "folds.tsv").read_text() == (tmp_path / "flags" / "folds.tsv").read_text()
    assert (tmp_path / "spec" / "rf_predictions.tsv").read_text() == (tmp_path / "flags" / "rf_predictions.tsv").read_text()
    capsys.readouterr()
    assert cli_main(["rf-baseline", "--table", str(demo.table), "--metadata", str(demo.metadata), "--out-dir", str(tmp_path / "x")]) == 2
    assert "error: --target: not given" in capsys.readouterr().err
