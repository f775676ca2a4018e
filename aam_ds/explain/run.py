"""``aam-ds explain`` end to end: export + table -> attention maps and importance tables / plots in a folder.

Files written to ``out_dir`` (docs/explain.md says how to read each):

- ``importance.tsv``: one row per ASV: ``label`` (its name in the plots, :func:`short_id`),
  ``taxon`` (with a taxonomy), ``n_samples`` (explained
  samples holding it), ``mean_relative_abundance``, then per method ``<method>`` (score) and
  ``<method>_rank`` (1 = most important), and ``permutation_ci_low`` / ``_high``;
  ``importance_by_taxon.tsv``: the scores summed per taxon (with ``--taxonomy``);
- ``top_asvs.png`` (and ``top_taxa.png``): the top features by each method;
- ``attributions.tsv`` (integrated gradients): each explained sample's attribution to each ASV;
- ``attention_asv.tsv``: per ASV the mean pooling weights and attention received;
- ``attention.npz`` with, per plotted sample ``s``, ``<s>/asv_ids``, ``<s>/layers``
  ``[n_layers, H, k, k]``, ``<s>/pool``, ``<s>/pool_weighted``, ``<s>/nucleotide_layers``
  ``[n_asv_layers, H, L, L]`` and ``<s>/nucleotide_pool`` ``[L]`` (of the sample's top-pooled ASV);
  ``attention_<i>.png``, ``pool_<i>.png``, ``nucleotides_<i>.png`` for the ``i``-th plotted sample.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from aam_ds.data.metadata import ID_HEADERS, align_metadata, categorical_codes, load_metadata, numeric_targets
from aam_ds.data.sequences import PAD
from aam_ds.errors import AamInputError, notice
from aam_ds.explain import importance as imp
from aam_ds.explain import plots
from aam_ds.explain.attention import attention_maps, nucleotide_attention, sample_attention
from aam_ds.explain.forward import ExplainData, SampleForward, explain_data
from aam_ds.explain.taxonomy import check_taxonomy_covers, load_taxonomy, short_taxon, taxa_of
from aam_ds.export import Export, build_exported_model, load_export
from aam_ds.inference.predict import prepare_inputs, task_description
from aam_ds.io_utils import atomic_path

NEEDS_TASK = ("integrated_gradients", "permutation", "removal")


@dataclass
class ExplainOptions:
    """What ``aam-ds explain`` computes (see its ``--help``)."""

    methods: tuple[str, ...] | None = None  # None: default_methods
    metadata: Path | None = None
    target: str | None = None
    taxonomy: Path | None = None
    taxon_level: int = 6
    samples: Path | None = None
    show: int = 3
    repeats: int = 5
    steps: int = 32
    baseline_asvs: int = imp.BASELINE_ASVS
    seed: int = 0
    batch_size: int = 32
    device: str = "cpu"


def explain_table(
    model: str | Path,
    table: str | Path,
    out_dir: str | Path,
    options: ExplainOptions,
    sequences: str | Path | None = None,
    progress: Callable[[int], Callable[[int], None]] | None = None,
) -> pd.DataFrame:
    """Explain ``model`` (a ``model.pt``) on ``table``; write the files of the module docstring and
    return the per-ASV importance table. Raises AamInputError for unknown methods or targets,
    permutation / removal without true values, and whatever ``aam-ds predict`` refuses."""
    out_dir = Path(out_dir)
    check_options(options, out_dir)
    export = load_export(Path(model))
    methods = options.methods or default_methods(export, options, str(model))
    if any(m in NEEDS_TASK for m in methods):
        task_description(export, str(model))
    taxonomy = load_taxonomy(options.taxonomy) if options.taxonomy is not None else None
    ids = _sample_ids(options.samples)
    data = explain_data(prepare_inputs(export, table, sequences, options.metadata), ids, str(options.samples))
    if taxonomy is not None:
        check_taxonomy_covers(taxonomy, data.asv_ids, options.taxonomy)
    target = resolve_target(export, options, data.sample_ids)
    check_methods(methods, target)
    if "permutation" in methods and options.repeats == 1:
        notice("--repeats 1: permutation importance gets no confidence interval (give 2 or more repeats for one)")
    if export.probe is not None:
        notice(f"{model}: a probe ensemble; explain reads its fine-tuned network (share {export.probe['weight']:g}), not its linear probe")
    forward = SampleForward(build_exported_model(export, ensemble=False), data, options.device, options.batch_size)
    n, k = data.counts.shape
    total = n + n * ("integrated_gradients" in methods) + k * sum(m in methods for m in ("permutation", "removal"))
    advance = progress(total) if progress is not None else None
    out_dir.mkdir(parents=True, exist_ok=True)
    maps = attention_maps(forward, advance)
    write_attention(out_dir, forward, maps, options.show)
    scores = importance_scores(forward, target, maps, replace(options, methods=methods), advance, out_dir)
    table = write_importance(out_dir, data, scores, taxonomy, options.taxon_level, target)
    table.attrs["n_samples"] = n
    return table


def check_options(options: ExplainOptions, out_dir: Path) -> None:
    """Refuse, before any work, option values that cannot run (AamInputError naming the flag)."""
    unknown = sorted(set(options.methods or ()) - set(imp.METHODS))
    if unknown:
        raise AamInputError("--method", f"unknown methods {unknown}", f"choose from {list(imp.METHODS)}")
    counts = {
        "--steps": options.steps,
        "--baseline-asvs": options.baseline_asvs,
        "--repeats": options.repeats,
        "--batch-size": options.batch_size,
    }
    for flag, value in counts.items():
        if value < 1:
            raise AamInputError(flag, f"must be at least 1, got {value}", "give a positive number")
    if out_dir.exists() and not out_dir.is_dir():
        raise AamInputError(f"--out-dir {out_dir}", "is a file, not a folder", "give a folder path (it is created if missing)")


def default_methods(export: Export, options: ExplainOptions, source: str) -> tuple[str, ...]:
    """The methods without ``--method``: every one with ``--metadata``, else integrated gradients and
    attention; attention alone for a pretraining export (no task head), with a notice."""
    if export.targets is None:
        notice(f"{source}: a pretraining export (no task head): attention maps only; importance needs a fine-tuned model")
        return ("attention",)
    return imp.METHODS if options.metadata is not None else ("integrated_gradients", "attention")


def _sample_ids(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise AamInputError(
            str(path), "sample ID file not found", "give a text file with one sample ID per line (e.g. <run_dir>/splits/val.txt)"
        )
    lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if lines and lines[0].split("\t")[0].lower() in ID_HEADERS:  # a QIIME 2 metadata-style header: "sample-id"
        lines = lines[1:]
    return [line.split("\t")[0] for line in lines]


def resolve_target(export: Export, options: ExplainOptions, sample_ids: list[str]) -> imp.Target | None:
    """The explained output (``--target``, default the model's first) and, with ``--metadata``, its true values."""
    if export.targets is None:
        return None
    names, classes = export.targets["target_names"], export.targets["class_names"]
    name = options.target or names[0]
    if name not in names:
        raise AamInputError(f"--target {name}", f"the model predicts {names}, not {name!r}", f"choose one of {names}")
    target = imp.Target(name, names.index(name), tuple(classes) if classes else None)
    if options.metadata is None:
        return target
    frame = align_metadata(load_metadata(options.metadata), sample_ids, "the explained samples")
    if target.classes is None:
        target.values = numeric_targets(frame, [name], "--target")[:, 0].astype(np.float64)
        return target
    codes, found = categorical_codes(frame, name, "--target")
    unknown = [c for c in found if c not in target.classes]
    if unknown:
        raise AamInputError(
            f"{options.metadata} column {name!r}",
            f"classes {unknown[:5]} were not seen in training ({list(target.classes)})",
            "explain only samples of the training classes (--samples)",
        )
    target.values = np.array([target.classes.index(c) for c in found], dtype=np.int64)[codes]
    return target


def check_methods(methods: tuple[str, ...], target: imp.Target | None) -> None:
    """Refuse, before any work, methods that need true values the run does not have."""
    for method in methods:  # a method that needs a task head was refused with the export (task_description)
        if method in ("permutation", "removal"):
            imp.require_values(target, method)


def importance_scores(
    forward: SampleForward,
    target: imp.Target | None,
    maps,
    options: ExplainOptions,
    advance: Callable[[int], None] | None,
    out_dir: Path,
) -> dict[str, imp.Score]:
    """Each requested method's per-ASV :class:`Score` (integrated gradients' per-sample attributions
    are written to ``out_dir`` on the way)."""
    scores: dict[str, imp.Score] = {}
    for method in options.methods:
        if method == "attention":
            scores[method] = imp.Score(maps.pool.mean(axis=0).astype(np.float64))
        elif method == "integrated_gradients":
            attributions = imp.integrated_gradients(forward, target, options.steps, advance, options.baseline_asvs)
            write_attributions(out_dir, forward.data, attributions)
            scores[method] = imp.attribution_score(attributions, target)
        elif method == "permutation":
            scores[method] = imp.permutation_importance(forward, target, options.repeats, options.seed, advance)
        else:
            scores[method] = imp.removal_importance(forward, target, advance)
    return scores


def write_attributions(out_dir: Path, data: ExplainData, attributions: np.ndarray) -> None:
    """``attributions.tsv``: integrated gradients' attribution ``[N, K]`` of each explained sample (row)
    to each ASV (column); a row adds up to the sample's prediction minus the expected sample's."""
    _write_tsv(
        pd.DataFrame(attributions, index=pd.Index(data.sample_ids, name="sample-id"), columns=data.asv_ids), out_dir / "attributions.tsv"
    )


def importance_table(data: ExplainData, scores: dict[str, imp.Score], taxa: list[str] | None) -> pd.DataFrame:
    """The per-ASV table of the module docstring (rows in descending order of the first method's score)."""
    relative = data.counts / data.counts.sum(axis=1, keepdims=True)
    table = pd.DataFrame(
        {"n_samples": (data.counts > 0).sum(axis=0), "mean_relative_abundance": relative.mean(axis=0)},
        index=pd.Index(data.asv_ids, name="asv_id"),
    )
    if taxa is not None:
        table.insert(0, "taxon", taxa)
    table.insert(0, "label", [_label(a, t) for a, t in zip(data.asv_ids, taxa or [None] * len(data.asv_ids))])
    for method, score in scores.items():
        table[method] = score.values
        table[f"{method}_rank"] = table[method].rank(ascending=False, method="min").astype(int)
        if score.low is not None:
            table[f"{method}_ci_low"], table[f"{method}_ci_high"] = score.low, score.high
    return table.sort_values(next(iter(scores)), ascending=False) if scores else table


def write_importance(
    out_dir: Path, data: ExplainData, scores: dict[str, imp.Score], taxonomy: pd.Series | None, level: int, target: imp.Target | None
) -> pd.DataFrame:
    """Write importance.tsv and the top-ASV / top-taxon plots from per-ASV ``scores`` (by taxon at ``level`` with a taxonomy); returns the table."""
    taxa = taxa_of(data.asv_ids, taxonomy, level) if taxonomy is not None else None
    table = importance_table(data, scores, taxa)
    _write_tsv(table, out_dir / "importance.tsv")
    if not scores:
        return table
    what = f"{target.name}" if target is not None else "the sample embedding"
    methods = list(scores)
    classification = target is not None and bool(target.classes)
    plots.plot_top_features(out_dir / "top_asvs.png", table, methods, "label", f"top ASVs for {what}", classification)
    if taxa is not None:
        by_taxon = table.groupby("taxon")[methods].sum()
        for method in methods:
            by_taxon[f"{method}_rank"] = by_taxon[method].rank(ascending=False, method="min").astype(int)
        by_taxon = by_taxon.sort_values(methods[0], ascending=False)
        _write_tsv(by_taxon, out_dir / "importance_by_taxon.tsv")
        plots.plot_top_features(
            out_dir / "top_taxa.png",
            by_taxon.assign(label=[short_taxon(t) for t in by_taxon.index]),
            methods,
            "label",
            f"top taxa for {what} (ASV scores summed per taxon)",
            classification,
        )
    return table


def _label(asv_id: str, taxon: str | None) -> str:
    return f"{short_taxon(taxon)} {short_id(asv_id)}" if taxon else short_id(asv_id)


def short_id(asv_id: str) -> str:
    """A feature ID for plot labels: its first 10 characters, or for an ID that is the DNA sequence
    itself (whose first characters are shared by many ASVs), ``md5:`` and the first 8 hex digits of
    its MD5, the QIIME 2 feature ID of that sequence."""
    if len(asv_id) > 32 and set(asv_id.upper()) <= set("ACGTN"):
        return "md5:" + hashlib.md5(asv_id.upper().encode()).hexdigest()[:8]
    return asv_id[:10] + ("…" if len(asv_id) > 10 else "")


def _write_tsv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", float_format="%.6g")


def write_attention(out_dir: Path, forward: SampleForward, maps, show: int) -> None:
    """``attention_asv.tsv``, and for the first ``show`` samples the NPZ arrays and the three plots."""
    data = forward.data
    present = np.maximum((data.counts > 0).sum(axis=0), 1)
    frame = pd.DataFrame(
        {
            "n_samples": (data.counts > 0).sum(axis=0),
            "mean_pool": maps.pool.sum(axis=0) / present,
            "mean_pool_weighted": maps.pool_weighted.sum(axis=0) / present,
            "mean_received": maps.received.sum(axis=0) / present,
        },
        index=pd.Index(data.asv_ids, name="asv_id"),
    )
    _write_tsv(frame.sort_values("mean_pool", ascending=False), out_dir / "attention_asv.tsv")
    arrays: dict[str, np.ndarray] = {}
    for i, sample in enumerate(data.sample_ids[: max(show, 0)]):
        arrays |= _plot_sample(out_dir, forward, i, sample)
    with atomic_path(out_dir / "attention.npz") as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def _plot_sample(out_dir: Path, forward: SampleForward, row: int, sample: str) -> dict[str, np.ndarray]:
    data = forward.data
    found = sample_attention(forward, row)
    labels = [short_id(data.asv_ids[c]) for c in found["columns"]]
    if len(found["layers"]):
        plots.plot_sample_attention(out_dir / f"attention_{row}.png", found["layers"], labels, f"sample {sample}: ASV-to-ASV attention")
    plots.plot_pool_weights(
        out_dir / f"pool_{row}.png",
        found["pool"],
        found["pool_weighted"],
        labels,
        f"sample {sample}: attention pooling into the sample embedding",
    )
    top = int(found["columns"][np.argmax(found["pool"])])
    tokens = torch.from_numpy(data.tokens[[top]].astype(np.int64)).to(forward.device)
    nucleotides = nucleotide_attention(forward.model, tokens)
    sequence = "".join("-ACGTN"[t] for t in data.tokens[top] if t != PAD)
    plots.plot_nucleotide_attention(
        out_dir / f"nucleotides_{row}.png",
        nucleotides.layers[:, 0],
        nucleotides.pool[0],
        sequence,
        f"sample {sample}: nucleotide attention within its top-pooled ASV {data.asv_ids[top][:16]}",
    )
    return {
        f"{sample}/asv_ids": np.array([data.asv_ids[c] for c in found["columns"]]),
        f"{sample}/layers": found["layers"],
        f"{sample}/pool": found["pool"],
        f"{sample}/pool_weighted": found["pool_weighted"],
        f"{sample}/nucleotide_layers": nucleotides.layers[:, 0],
        f"{sample}/nucleotide_pool": nucleotides.pool[0],
    }
