"""The distance metrics aam-ds knows: one table read by the run spec (``data.metric``, ``data.alpha``,
``data.pseudocount``), ``aam-ds distances`` (``--metric`` choices and parameter flags), ``aam-ds benchmark``,
the metric builder (:func:`aam_ds.distances.metric.build_metric`) and the ``ssu`` engine.

A metric is its name, the torch kernel that compares two sets of per-sample rows (a function of
:mod:`aam_ds.distances.unifrac` or :mod:`aam_ds.distances.ecological`, named here and imported only
when a metric is built, so that reading this table imports no torch), the rows it compares
(``branches``: per-sample branch proportions, which need a phylogeny; ``counts``: the table's counts;
``log_counts``: ``log(1 + counts / pseudocount)`` for the CLR) and the parameters it takes.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal

from aam_ds.errors import AamInputError, notice


@dataclass(frozen=True)
class MetricParameter:
    """A metric's numeric setting: spec field ``data.<name>``, flag ``--<name>``.

    ``bounds``: pydantic ``Field`` constraints (``ge``, ``gt``, ``le``, ``lt``), checked by the spec and by
    :func:`check_parameter`.
    """

    name: str
    default: float
    description: str
    bounds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Metric:
    """One metric: ``kernel`` names ``<module>.<function>`` in aam_ds.distances, called as
    ``kernel(a [m, K], b [n, K], weight [K], **parameters) -> [m, n]``; ``cpu_kernel``, where given,
    is used on the CPU instead, on the sparse rows: ``cpu_kernel(a CSR [m, K], b CSR [n, K] or None,
    weight [K] numpy) -> numpy [m, n]``."""

    name: str
    kernel: str
    rows: Literal["branches", "counts", "log_counts"]
    description: str
    parameters: tuple[str, ...] = ()
    cpu_kernel: str | None = None

    @property
    def needs_tree(self) -> bool:
        """UniFrac: the rows are branch proportions, so a rooted phylogeny is needed (and ``ssu`` can compute it)."""
        return self.rows == "branches"


PARAMETERS: dict[str, MetricParameter] = {
    p.name: p
    for p in (
        MetricParameter("alpha", 0.5, "generalised UniFrac alpha", {"ge": 0.0, "le": 1.0}),
        MetricParameter("pseudocount", 1.0, "Aitchison: counts + pseudocount before the CLR", {"gt": 0.0}),
    )
}

REGISTRY: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("unweighted", "unifrac.unweighted", "branches", "unweighted UniFrac", cpu_kernel="unifrac_cpu.unweighted"),
        Metric(
            "weighted_normalized",
            "unifrac.weighted_normalized",
            "branches",
            "weighted UniFrac, normalised",
            cpu_kernel="unifrac_cpu.weighted_normalized",
        ),
        Metric(
            "weighted_unnormalized",
            "unifrac.weighted_unnormalized",
            "branches",
            "weighted UniFrac, unnormalised",
            cpu_kernel="unifrac_cpu.weighted_unnormalized",
        ),
        Metric("generalized", "unifrac.generalized", "branches", "generalised UniFrac (Chen et al. 2012)", ("alpha",)),
        Metric("braycurtis", "ecological.braycurtis", "counts", "Bray-Curtis"),
        Metric("jaccard", "ecological.jaccard", "counts", "Jaccard (presence / absence)"),
        Metric("aitchison", "ecological.aitchison", "log_counts", "Aitchison (Euclidean distance of CLR)", ("pseudocount",)),
    )
}

METRIC_NAMES: tuple[str, ...] = tuple(REGISTRY)
TREE_METRICS: tuple[str, ...] = tuple(m.name for m in REGISTRY.values() if m.needs_tree)
DEFAULT_METRIC = "unweighted"

# the names QIIME 2 (``qiime diversity beta-phylogenetic``) and scikit-bio give our metrics; their ``weighted_unifrac``,
# and so a bare ``weighted``, is the unnormalised one
ALIASES: dict[str, str] = {
    "unweighted_unifrac": "unweighted",
    "weighted": "weighted_unnormalized",
    "weighted_unifrac": "weighted_unnormalized",
    "weighted_normalized_unifrac": "weighted_normalized",
    "generalized_unifrac": "generalized",
}
ALIAS_TEXT = ", ".join(f"{alias} = {name}" for alias, name in ALIASES.items())


def metric_name(name: str, source: str | None = None) -> str:
    """The registered name of metric ``name`` or of its alias (:data:`ALIASES`); an unknown name is returned as given.

    With ``source`` (the flag or field that gave it) an alias is resolved with a notice naming the metric it stands for."""
    if source is not None and name in ALIASES:
        other = "; the normalised one is weighted_normalized" if ALIASES[name] == "weighted_unnormalized" else ""
        notice(f"{source}: {name} is read as {ALIASES[name]} ({REGISTRY[ALIASES[name]].description}){other}")
    return ALIASES.get(name, name)


def get_metric(name: str, source: str = "data.metric") -> Metric:
    """The registry entry of ``name`` (a registered name or an alias of one, :data:`ALIASES`).

    Raises
    ------
    AamInputError
        ``name`` is neither registered nor an alias (naming ``source``, the flag or field that gave it, every
        choice and the aliases).
    """
    if metric_name(name) not in REGISTRY:
        raise AamInputError(source, f"unknown metric {name!r}", f"choose one of {', '.join(METRIC_NAMES)} (also accepted: {ALIAS_TEXT})")
    return REGISTRY[metric_name(name)]


def metric_flag(name: str) -> str:
    """argparse ``type`` of a ``--metric`` flag: the registered name of ``name`` or of its alias.

    Raises
    ------
    argparse.ArgumentTypeError
        an unknown name (argparse prints it with the flag, every choice and the aliases, and exits with status 2).
    """
    if metric_name(name) not in REGISTRY:
        choices = ", ".join(repr(m) for m in METRIC_NAMES)
        raise argparse.ArgumentTypeError(f"invalid choice: {name!r} (choose from {choices}; also accepted: {ALIAS_TEXT})")
    return metric_name(name, "--metric")


def needs_tree(name: str | None, source: str = "data.metric") -> bool:
    """Whether metric ``name`` (None: no metric chosen) needs a phylogeny; an unknown name raises as :func:`get_metric`."""
    return name is not None and get_metric(name, source).needs_tree


def check_parameter(name: str, value: float, source: str) -> float:
    """``value`` of parameter ``name`` within its bounds (the spec's checks, for flags); returns it.

    Raises
    ------
    AamInputError
        the value lies outside the bounds (naming ``source`` and the allowed range).
    """
    bounds = PARAMETERS[name].bounds
    tests = {
        "ge": value >= bounds.get("ge", value),
        "gt": "gt" not in bounds or value > bounds["gt"],
        "le": value <= bounds.get("le", value),
        "lt": "lt" not in bounds or value < bounds["lt"],
    }
    if not all(tests.values()):
        symbols = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
        allowed = " and ".join(f"{symbols[k]} {v}" for k, v in bounds.items())
        raise AamInputError(source, f"{name} = {value} is out of range", f"give a value {allowed}")
    return value
