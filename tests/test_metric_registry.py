"""One metric registry (aam_ds/distances/registry.py) drives the run spec, `aam-ds distances`, `aam-ds benchmark`
and the metric builder: same names, same parameters, same bounds, and every registered metric builds."""

from __future__ import annotations

import argparse
import re

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from aam_ds.benchmark import cli as benchmark_cli
from aam_ds.data.table import FeatureTable
from aam_ds.distances import cli as distances_cli
from aam_ds.distances.metric import build_metric
from aam_ds.distances.registry import METRIC_NAMES, PARAMETERS, REGISTRY, TREE_METRICS, get_metric
from aam_ds.distances.target import build_distance_target
from aam_ds.distances.tree import parse_newick
from aam_ds.errors import AamInputError
from aam_ds.spec import DataSpec, load_spec
from aam_ds.spec.flags import fill_from_spec

NEWICK = "((A:0.1,B:0.2):0.3,(C:0.4,D:0.5):0.25,E:0.9)root;"


@pytest.fixture(scope="module")
def table() -> FeatureTable:
    counts = np.array([[3, 0, 1, 0, 2], [0, 4, 1, 1, 0], [1, 1, 0, 5, 0], [2, 0, 0, 0, 7]], dtype=np.float64)
    return FeatureTable(["s1", "s2", "s3", "s4"], list("ABCDE"), sp.csr_matrix(counts), "toy.biom")


def _quoted(text: str) -> list[str]:
    return [name for name in re.findall(r"'([a-z_]+)'", text) if name != "bogus"]


def test_an_unknown_metric_gets_the_registrys_choices_everywhere(capsys):
    with pytest.raises(AamInputError) as from_spec:
        load_spec(None, ["data.metric=bogus"])
    assert _quoted(str(from_spec.value)) == list(METRIC_NAMES)
    for add_arguments, required in (
        (distances_cli.add_arguments, ["--table", "t", "--out", "o"]),
        (benchmark_cli.add_arguments, ["--table", "t", "--metadata", "m", "--target", "y"]),
    ):
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        with pytest.raises(SystemExit):
            parser.parse_args([*required, "--metric", "bogus"])
        assert _quoted(capsys.readouterr().err.split("choose from")[1]) == list(METRIC_NAMES)
    with pytest.raises(AamInputError, match="choose one of " + ", ".join(METRIC_NAMES)):
        get_metric("bogus")


def test_metric_parameters_share_defaults_and_bounds_between_the_spec_and_the_flags(tmp_path):
    parser = argparse.ArgumentParser()
    distances_cli.add_arguments(parser)
    args = parser.parse_args(["--table", "t", "--out", "o"])
    fill_from_spec(args, distances_cli.SPEC_FIELDS)  # what `aam-ds distances` does first, without --spec
    for name, parameter in PARAMETERS.items():
        assert getattr(args, name) == getattr(DataSpec(), name) == parameter.default
    too_big = {"alpha": "1.5", "pseudocount": "-1"}
    assert set(too_big) == set(PARAMETERS)
    for name, value in too_big.items():
        with pytest.raises(AamInputError, match=f"data.{name}"):
            load_spec(None, [f"data.{name}={value}"])
        with pytest.raises(AamInputError, match=f"--{name}.*out of range"):
            distances_cli.main(
                ["--table", str(tmp_path / "absent.biom"), "--metric", "braycurtis", f"--{name}", value, "--out", str(tmp_path / "d.tsv")]
            )


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_every_registered_metric_builds_and_is_a_distance(table, name):
    entry = REGISTRY[name]
    tree = parse_newick(NEWICK) if entry.needs_tree else None
    metric = build_metric(name, table, tree, alpha=0.3, pseudocount=0.5)
    d = metric.block(torch.arange(4))
    assert d.shape == (4, 4) and torch.equal(d, d.T) and torch.all(d.diagonal() == 0)
    assert torch.all(d[~torch.eye(4, dtype=torch.bool)] > 0)
    target = build_distance_target(DataSpec(metric=name, alpha=0.3, pseudocount=0.5), table) if not entry.needs_tree else None
    if target is not None:
        assert torch.allclose(target.batch(torch.arange(4)), d.float())
    if entry.needs_tree:
        with pytest.raises(AamInputError, match="needs a phylogeny"):
            build_metric(name, table, None)


def test_parameters_reach_only_the_metrics_that_take_them(table):
    tree = parse_newick(NEWICK)
    rows = torch.arange(4)
    for name in METRIC_NAMES:
        entry = REGISTRY[name]
        base = build_metric(name, table, tree if entry.needs_tree else None).block(rows)
        changed = build_metric(name, table, tree if entry.needs_tree else None, alpha=0.0, pseudocount=0.01).block(rows)
        assert torch.equal(base, changed) != bool(entry.parameters), name
    assert set(TREE_METRICS) == {"unweighted", "weighted_normalized", "weighted_unnormalized", "generalized"}
