"""The embedded demo dataset: a seeded, realistic stand-in for a 16S study.

A random rooted binary tree (coalescent shape, branch lengths in substitutions per site) carries
ASV sequences evolved from a random root by Jukes-Cantor substitution, so sequence similarity
tracks the phylogeny. Samples come from subjects (several each) at body sites; each ASV's
log-abundance has a phylogenetically correlated (Brownian-motion) response to ``body_site`` and
``age``, so UniFrac distances and the metadata are both learnable. Files written:

- ``table.biom``   BIOM v2.1 HDF5, observation IDs = the sequences (only observed ASVs)
- ``tree.nwk``     rooted Newick over every tip, tip names = the sequences
- ``metadata.tsv`` QIIME 2 metadata: ``age`` (numeric, years), ``body_site``, ``subject`` (categorical)
- ``sequences.fasta`` the ASV sequences keyed by ID (= sequence)
- ``truth.tsv``    the generating effects per observed ASV (``asv_id``, then one column per metadata
  variable): ``age`` is the change of the ASV's log-abundance score per year of age, and
  ``body_site_<site>`` its log-abundance offset at that site (a sample's ASVs and reads are drawn
  from ``exp`` of these scores plus baseline, subject and noise terms, see ``_sample_counts``), so
  ``|age|`` is the truth that an age model's per-ASV importance can be scored against. Effects are
  centred over all ASVs: a shift shared by every ASV changes no sample's composition.

:class:`DemoDesign` varies the study: an age signal carried by a few clades only
(:data:`SPARSE_AGE`, 30 % of the tips), where ``truth.tsv``'s ``age`` is exactly 0 for the ASVs
outside them. The default design writes the files above unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import biom
import h5py
import numpy as np

from aam_ds.io_utils import atomic_path, atomic_write_text

GENERATOR_VERSION = 2  # 2: truth.tsv
N_TIPS = 300
N_SUBJECTS = 60
SAMPLES_PER_SUBJECT = 5
BODY_SITES = ("gut", "oral", "skin")
ROOT_LENGTH = 150
MIN_LENGTH = 100
TREE_HEIGHT = 0.25  # expected root-to-tip substitutions per site
AGE_MEAN, AGE_SD = 50.0, 17.0  # age is standardised with these in the composition model
AGE_EFFECT, SITE_EFFECT = 1.5, 2.0  # weights of the age and body-site responses in the log-abundance score


@dataclass(frozen=True)
class DemoDesign:
    """How the demo study is drawn; the default is the demo dataset of every run and test.

    - ``age_clades``: 0 = every ASV responds to age (a Brownian trait over the whole tree);
      ``f > 0`` = only the ASVs of disjoint clades of 5-40 tips, drawn until they hold a fraction
      ``f`` of the tips, respond (the Brownian trait minus its mean over them, so that the response
      shifts no composition as a whole); the other ASVs' age effect is exactly 0, as for the many
      taxa of a real study that do not change with age
    - ``age_effect``: weight of the age response in the log-abundance score
    """

    age_clades: float = 0.0
    age_effect: float = AGE_EFFECT


SPARSE_AGE = DemoDesign(age_clades=0.3, age_effect=2.5)  # the design `aam-ds explain` is scored on (tests/test_explain.py)


@dataclass(frozen=True)
class DemoPaths:
    table: Path
    tree: Path
    metadata: Path
    sequences: Path
    truth: Path


def demo_paths(out_dir: str | Path) -> DemoPaths:
    """Paths of the demo files (table, tree, metadata, sequences, truth) in ``out_dir``."""
    out_dir = Path(out_dir)
    return DemoPaths(
        out_dir / "table.biom", out_dir / "tree.nwk", out_dir / "metadata.tsv", out_dir / "sequences.fasta", out_dir / "truth.tsv"
    )


def generate_demo(out_dir: str | Path, seed: int = 0, design: DemoDesign = DemoDesign()) -> DemoPaths:
    """Write the demo dataset for ``seed`` and ``design`` (default: the standard demo data) into
    ``out_dir`` (atomically, file by file); return the paths."""
    rng = np.random.default_rng(seed)
    parent, length = _random_tree(N_TIPS, rng)
    seqs = _evolve_sequences(parent, length, N_TIPS, rng)
    sample_ids, age, site, subject = _sample_design(rng)
    counts, effects = _sample_counts(parent, length, N_TIPS, age, site, subject, rng, design)  # [samples, tips], name -> [tips]
    observed = np.flatnonzero(counts.sum(axis=0) > 0)
    paths = demo_paths(out_dir)
    table = biom.Table(counts[:, observed].T, [seqs[i] for i in observed], sample_ids)
    with atomic_path(paths.table) as tmp, h5py.File(tmp, "w") as handle:
        table.to_hdf5(handle, f"aam-ds demo generator v{GENERATOR_VERSION} seed {seed}")
    atomic_write_text(paths.tree, _newick(parent, length, seqs))
    lines = ["sample-id\tage\tbody_site\tsubject", "#q2:types\tnumeric\tcategorical\tcategorical"]
    lines += [f"{s}\t{a:.2f}\t{BODY_SITES[b]}\tsubject{u:02d}" for s, a, b, u in zip(sample_ids, age, site, subject)]
    atomic_write_text(paths.metadata, "\n".join(lines) + "\n")
    atomic_write_text(paths.sequences, "".join(f">{s}\n{s}\n" for s in seqs))
    header = "\t".join(["asv_id", *effects])
    rows = ["\t".join([seqs[i], *(f"{values[i]:.6g}" for values in effects.values())]) for i in observed]
    atomic_write_text(paths.truth, "\n".join([header, *rows]) + "\n")
    return paths


def demo_data(cache_dir: str | Path, seed: int = 0) -> DemoPaths:
    """The demo dataset under ``<cache_dir>/demo/<seed>``, generated on first use and reused after."""
    out_dir = Path(cache_dir).expanduser() / "demo" / str(seed)
    marker = out_dir / "COMPLETE"
    expected = f"aam-ds demo v{GENERATOR_VERSION}\n"
    if not (marker.is_file() and marker.read_text() == expected):
        generate_demo(out_dir, seed)
        atomic_write_text(marker, expected)
    return demo_paths(out_dir)


def _random_tree(n_tips: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Coalescent tree: ``parent`` int64 ``[2n-1]`` (root's = -1), branch ``length`` float64 ``[2n-1]``.

    Tips are nodes ``0..n-1``; every internal node has a larger index than its children; the root is ``2n-2``.
    """
    n_nodes = 2 * n_tips - 1
    parent = np.full(n_nodes, -1, dtype=np.int64)
    height = np.zeros(n_nodes)
    lineages = list(range(n_tips))
    now = 0.0
    for node in range(n_tips, n_nodes):
        k = len(lineages)
        now += rng.exponential(2.0 / (k * (k - 1)))
        a, b = sorted(rng.choice(k, size=2, replace=False), reverse=True)
        for child in (lineages.pop(a), lineages.pop(b)):
            parent[child] = node
        height[node] = now
        lineages.append(node)
    length = np.zeros(n_nodes)
    length[:-1] = height[parent[:-1]] - height[:-1]
    length *= TREE_HEIGHT / now * rng.lognormal(0.0, 0.3, size=n_nodes)  # rate variation across branches
    length[-1] = 0.0
    return parent, length


def _evolve_sequences(parent: np.ndarray, length: np.ndarray, n_tips: int, rng: np.random.Generator) -> list[str]:
    """Jukes-Cantor evolution from a random root; tips are distinct prefixes of 100-150 nt."""
    n_nodes = len(parent)
    states = np.empty((n_nodes, ROOT_LENGTH), dtype=np.int64)
    states[-1] = rng.integers(0, 4, ROOT_LENGTH)
    for node in range(n_nodes - 2, -1, -1):  # parents before children
        p_change = 0.75 * (1.0 - np.exp(-4.0 * length[node] / 3.0))
        changed = rng.random(ROOT_LENGTH) < p_change
        shift = rng.integers(1, 4, ROOT_LENGTH)  # a change always lands on a different base
        states[node] = np.where(changed, (states[parent[node]] + shift) % 4, states[parent[node]])
    tip_length = rng.integers(MIN_LENGTH, ROOT_LENGTH + 1, n_tips)
    alphabet = np.array(list("ACGT"))
    seqs = ["".join(alphabet[states[i, : tip_length[i]]]) for i in range(n_tips)]
    seen: set[str] = set()
    for i, seq in enumerate(seqs):  # identical tips would give duplicate IDs: nudge one base
        while seq in seen:
            pos = int(rng.integers(len(seq)))
            seq = seq[:pos] + "ACGT"[("ACGT".index(seq[pos]) + 1) % 4] + seq[pos + 1 :]
        seen.add(seq)
        seqs[i] = seq
    return seqs


def _sample_design(rng: np.random.Generator) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Sample IDs, ``age`` (years) ``[S]``, body-site code ``[S]``, subject code ``[S]``."""
    subject = np.repeat(np.arange(N_SUBJECTS), SAMPLES_PER_SUBJECT)
    subject_age = rng.uniform(20.0, 80.0, N_SUBJECTS)
    age = subject_age[subject] + rng.uniform(0.0, 2.0, len(subject))  # a longitudinal study
    site = rng.integers(0, len(BODY_SITES), len(subject))
    sample_ids = [f"demo.{s:02d}.{k}" for s in range(N_SUBJECTS) for k in range(SAMPLES_PER_SUBJECT)]
    return sample_ids, age, site, subject


def _brownian_traits(parent: np.ndarray, length: np.ndarray, n_traits: int, rng: np.random.Generator) -> np.ndarray:
    """Brownian motion down the tree, scaled to unit variance at the tips: ``[n_traits, n_nodes]``."""
    values = np.zeros((n_traits, len(parent)))
    for node in range(len(parent) - 2, -1, -1):
        values[:, node] = values[:, parent[node]] + rng.normal(0.0, np.sqrt(length[node]), n_traits)
    return values / values.std(axis=1, keepdims=True)


def _sample_counts(
    parent: np.ndarray,
    length: np.ndarray,
    n_tips: int,
    age: np.ndarray,
    site: np.ndarray,
    subject: np.ndarray,
    rng: np.random.Generator,
    design: DemoDesign,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Read counts ``int64 [S, n_tips]`` (each sample keeps its 40-120 most favoured ASVs, 2k-8k reads)
    and each ASV's effects ``float64 [n_tips]`` by metadata variable (see ``truth.tsv``)."""
    traits = _brownian_traits(parent, length, 2 + len(BODY_SITES), rng)[:, :n_tips]
    baseline, age_response, site_response = traits[0], traits[1], traits[2:]
    responds = np.ones(n_tips, dtype=bool)
    if design.age_clades > 0:
        responds = _in_clades(parent, n_tips, design.age_clades, rng)
        age_response = (age_response - age_response[responds].mean()) * responds  # balanced: its mean over ASVs is 0
    z_age = (age - AGE_MEAN) / AGE_SD
    subject_effect = rng.normal(0.0, 0.7, (N_SUBJECTS, n_tips))
    logits = (
        baseline
        + SITE_EFFECT * site_response[site]
        + design.age_effect * z_age[:, None] * age_response
        + subject_effect[subject]
        + rng.normal(0.0, 0.5, (len(age), n_tips))
    )
    counts = np.zeros(logits.shape, dtype=np.int64)
    for s in range(len(age)):
        kept = np.argsort(-logits[s])[: rng.integers(40, 121)]
        weights = np.exp(logits[s, kept] - logits[s, kept].max())
        counts[s, kept] = rng.multinomial(int(rng.integers(2000, 8001)), weights / weights.sum())
    effects = {"age": design.age_effect / AGE_SD * age_response}
    effects |= {f"body_site_{name}": SITE_EFFECT * site_response[k] for k, name in enumerate(BODY_SITES)}
    centred = {name: values - values.mean() for name, values in effects.items()}  # see truth.tsv
    centred["age"][~responds] = 0.0  # exactly, not the rounding error of centring a balanced response
    return counts, centred


def _in_clades(parent: np.ndarray, n_tips: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``bool [n_tips]``: True on the tips of disjoint clades of 5-40 tips drawn until they hold
    ``fraction`` of the tips."""
    tips_below = [[i] for i in range(n_tips)] + [[] for _ in range(len(parent) - n_tips)]
    for node in range(len(parent) - 1):
        tips_below[parent[node]] += tips_below[node]
    chosen = np.zeros(n_tips, dtype=bool)
    for node in rng.permutation(np.arange(n_tips, len(parent))):
        tips = tips_below[node]
        if 5 <= len(tips) <= 40 and not chosen[tips].any():
            chosen[tips] = True
        if chosen.sum() >= fraction * n_tips:
            break
    return chosen


def _newick(parent: np.ndarray, length: np.ndarray, names: list[str]) -> str:
    """Rooted Newick with tip names ``names`` and branch lengths (children precede parents by index)."""
    children: list[list[int]] = [[] for _ in parent]
    for node, p in enumerate(parent[:-1]):
        children[p].append(node)
    text: list[str] = list(names) + [""] * (len(parent) - len(names))
    for node in range(len(names), len(parent)):
        text[node] = "(" + ",".join(f"{text[c]}:{length[c]:.6f}" for c in children[node]) + ")"
        for c in children[node]:
            text[c] = ""  # free memory of consumed subtrees
    return text[-1] + ";\n"
