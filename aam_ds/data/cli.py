"""``aam-ds shard``: convert a BIOM HDF5 table into a sharded on-disk dataset for ``data.table: DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path

from aam_ds.cli_args import add_spec_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``aam-ds shard`` to ``parser``."""
    parser.add_argument("--table", type=Path, required=True, help="BIOM HDF5 table or FeatureTable[Frequency] .qza, read by sample slices")
    parser.add_argument("--tree", type=Path, default=None, help="rooted Newick or Phylogeny[Rooted] .qza, copied in (UniFrac)")
    parser.add_argument("--metadata", type=Path, default=None, help="QIIME 2 metadata TSV: samples without a row are refused or dropped")
    parser.add_argument("--sequences", type=Path, default=None, help="FASTA or FeatureData[Sequence] .qza when the IDs are not sequences")
    parser.add_argument("--out", type=Path, required=True, help="new folder to write (shards, asvs.arrow, manifest.json)")
    parser.add_argument("--samples-per-shard", type=int, default=65536, help="samples per Arrow file")
    add_spec_arguments(parser, set_help="a data field the rows depend on, e.g. --set data.max_asvs=64 (repeatable)")


def run(args: argparse.Namespace) -> int:
    """Write the sharded dataset of ``--table`` with the spec's data settings; returns 0."""
    from aam_ds.data.shard_write import describe, write_shards
    from aam_ds.errors import AamInputError
    from aam_ds.spec import load_spec

    if args.samples_per_shard <= 0:
        raise AamInputError("--samples-per-shard", f"must be positive, got {args.samples_per_shard}", "give e.g. 65536")
    data = load_spec(args.spec, args.overrides).data
    check_asvs, not_tips = None, []
    if args.tree is not None:
        from aam_ds.distances.branches import tip_nodes_for
        from aam_ds.distances.tree import read_tree

        tree = read_tree(args.tree)

        def check_asvs(asv_ids: list[str]) -> None:  # the kept ASVs must be tips of the tree (or data.drop_missing_tips)
            not_tips.append(len(asv_ids) - len(tip_nodes_for(asv_ids, str(args.table), tree, data.drop_missing_tips)[0]))

    manifest = write_shards(args.table, args.out, data, args.tree, args.metadata, args.sequences, args.samples_per_shard, check_asvs)
    print(f"wrote {describe(manifest, args.out)}; train on it with data.table: {args.out}")
    if not_tips and not_tips[0]:
        print(
            f"{not_tips[0]} of the {manifest['asvs']} ASVs are not tips of the tree {args.tree}: kept in the folder, "
            "UniFrac leaves them out (data.drop_missing_tips=true)"
        )
    return 0
