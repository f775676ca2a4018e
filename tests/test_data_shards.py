"""The sharded on-disk dataset (`aam-ds shard`, `data.table: DIR`): the same samples, batches and losses as
the in-memory path; bad folders refused with the file and the fix (issue 13, item 1)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from test_engine_train import BIN, checked, launch, run_args, torchrun, train_losses

from aam_ds.data.prepare import prepare_data
from aam_ds.data.shard_write import write_shards
from aam_ds.engine.distributed import DistContext
from aam_ds.engine.setup import build_objective, training_asvs
from aam_ds.engine.steps import train_batches
from aam_ds.errors import AamInputError
from aam_ds.spec import RunSpec

# preprocessing that exercises every step: rarefaction (drops shallow samples), ASV selection, token length
DATA = {"rarefy_depth": 2500, "max_asvs": 16, "max_seq_len": 48, "asv_selection": "random"}


def spec_of(table: Path, cache: Path, tree: Path, **data) -> RunSpec:
    return RunSpec.model_validate(
        {"data": {"table": str(table), "tree": str(tree), "cache_dir": str(cache), **DATA, **data}, "model": {"preset": "tiny"}}
    )


@pytest.fixture(scope="module")
def sharded(demo_paths, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "demo"
    spec = spec_of(demo_paths.table, out.parent, demo_paths.tree)
    write_shards(demo_paths.table, out, spec.data, tree=demo_paths.tree, samples_per_shard=70)
    return out


def test_shards_hold_the_in_memory_preprocessed_samples(demo_paths, sharded, tmp_path):
    memory = prepare_data(spec_of(demo_paths.table, tmp_path, demo_paths.tree))
    shards = prepare_data(spec_of(sharded, tmp_path, demo_paths.tree))
    assert len(json.loads((sharded / "manifest.json").read_text())["shards"]) > 1
    assert list(shards.table.sample_ids) == memory.table.sample_ids
    assert shards.table.asv_ids == memory.table.asv_ids and np.array_equal(shards.tokens, memory.tokens)
    assert shards.drops == memory.drops and memory.drops  # rarefaction dropped some, and the accounting says so
    for mine, theirs in zip(shards.rows, memory.rows, strict=True):
        assert mine.sample_index == theirs.sample_index
        assert np.array_equal(mine.asv_index, theirs.asv_index) and np.array_equal(mine.counts, theirs.counts)
    assert np.array_equal(training_asvs(shards), training_asvs(memory))
    rows = np.array([5, 0, 77, 12])
    assert (shards.table.take_samples(rows).counts != memory.table.counts[rows]).nnz == 0


@pytest.mark.parametrize("world, workers", [(1, 0), (1, 2), (2, 0), (2, 2)])
def test_batches_and_distance_targets_equal_the_in_memory_ones(demo_paths, sharded, tmp_path, world, workers):
    memory_spec, shard_spec = (spec_of(table, tmp_path, demo_paths.tree, num_workers=workers) for table in (demo_paths.table, sharded))
    memory, shards = prepare_data(memory_spec), prepare_data(shard_spec)
    targets = [build_objective(s, d, torch.device("cpu"), None).distance_target for s, d in ((memory_spec, memory), (shard_spec, shards))]
    for rank in range(world):
        ctx = DistContext(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"), backend="gloo")
        streams = [train_batches(d, s, ctx, 16)[1] for s, d in ((memory_spec, memory), (shard_spec, shards))]
        for _ in range(16):  # past the end of the first epoch (about 240 training samples)
            a, b = (next(s) for s in streams)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
            assert torch.equal(targets[0].batch(a["sample_index"]), targets[1].batch(b["sample_index"]))


def corrupt(folder: Path, how: str) -> None:
    manifest = folder / "manifest.json"
    if how == "missing manifest":
        manifest.unlink()
    elif how == "changed shard":
        shard = folder / "shard-00001.arrow"
        shard.write_bytes(shard.read_bytes()[:-8] + b"\0" * 8)
    elif how == "missing shard":
        (folder / "shard-00002.arrow").unlink()


@pytest.mark.parametrize(
    "how, names", [("missing manifest", "manifest.json"), ("changed shard", "shard-00001.arrow"), ("missing shard", "shard-00002.arrow")]
)
def test_a_damaged_folder_is_refused_naming_the_file(demo_paths, sharded, tmp_path, how, names):
    folder = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(sharded), str(folder)], check=True)
    corrupt(folder, how)
    with pytest.raises(AamInputError, match=names) as info:
        prepare_data(spec_of(folder, tmp_path, demo_paths.tree))
    assert "aam-ds shard" in str(info.value)


def test_other_data_settings_than_the_folder_was_built_with_are_refused(demo_paths, sharded, tmp_path):
    with pytest.raises(AamInputError, match=r"manifest.json.*max_asvs.*16.*32"):
        prepare_data(spec_of(sharded, tmp_path, demo_paths.tree, max_asvs=32))


def test_shard_command_writes_a_folder_and_refuses_to_write_into_a_used_one(demo_paths, tmp_path):
    aam, out = str(BIN / "aam-ds"), tmp_path / "shards"
    command = [
        aam,
        "shard",
        "--table",
        str(demo_paths.table),
        "--tree",
        str(demo_paths.tree),
        "--out",
        str(out),
        "--set",
        "data.max_asvs=8",
    ]
    checked(subprocess.run(command, capture_output=True, text=True))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["samples"] == 300 and manifest["spec"]["max_asvs"] == 8 and "tree.nwk" in manifest["files"]
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode != 0 and "not empty" in again.stderr and "Traceback" not in again.stderr
    modes = {path.name: path.stat().st_mode & 0o777 for path in out.iterdir()}
    assert len(set(modes.values())) == 1, modes  # the manifest is as readable as the shards (a shared lab folder)

    other_tree = tmp_path / "other.nwk"
    other_tree.write_text("((X:1,Y:1):1,Z:2);\n")
    misfit = subprocess.run([*command[:4], "--tree", str(other_tree), "--out", str(tmp_path / "misfit")], capture_output=True, text=True)
    assert misfit.returncode == 2 and "are not tips of the tree" in misfit.stderr and "Traceback" not in misfit.stderr
    assert not list((tmp_path / "misfit").glob("*.arrow"))  # refused before any shard was written


def test_a_table_that_is_not_biom_hdf5_is_refused_with_the_conversion(demo_paths, tmp_path):
    text_table = tmp_path / "t.tsv"
    text_table.write_text("#OTU ID\tS1\nA\t3\n")
    with pytest.raises(AamInputError, match="biom convert"):
        write_shards(text_table, tmp_path / "o", RunSpec().data)


@pytest.mark.slow
def test_two_ranks_two_workers_from_shards_killed_and_resumed_train_as_in_memory(demo, tmp_path):
    """The in-memory run's losses, step by step, from a sharded copy of its table on 2 ranks with 2 DataLoader
    workers each, killed after its first checkpoint and resumed mid-epoch (the demo data's training split
    holds about 240 samples, 30 micro-batches of 4 per rank)."""
    cache, folder = tmp_path / "cache", tmp_path / "shards"
    write_shards(
        demo.table,
        folder,
        spec_of(demo.table, cache, demo.tree, rarefy_depth=None, asv_selection="abundance").data,
        demo.tree,
        None,
        None,
        100,
    )
    common = {"checkpoint.every_steps": 2, "schedule.steps": 6, "data.tree": demo.tree}
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    checked(launch(torchrun(2, *run_args(straight, cache, **common, **{"data.table": demo.table}))))
    expected = train_losses(straight)
    assert sorted(expected) == list(range(1, 7))
    sharded = {**common, "data.table": folder, "data.num_workers": 2}
    latest = broken / "checkpoints" / "latest"
    killed = launch(torchrun(2, *run_args(broken, cache, **sharded)), kill_when=latest.is_file)
    assert killed.returncode != 0, "the run finished before it could be killed"
    assert int(latest.read_text().strip().removeprefix("step")) < 6
    checked(launch(torchrun(2, *run_args(broken, cache, **sharded), "--resume")))
    assert train_losses(broken) == expected  # bit-identical, steps before and after the kill


@pytest.mark.slow
def test_one_rank_from_shards_trains_with_the_in_memory_losses(demo, tmp_path):
    """The 1-rank, 0-worker corner of the grid above, trained: the same losses, step by step, from shards."""
    cache, folder = tmp_path / "cache", tmp_path / "shards"
    data = spec_of(demo.table, cache, demo.tree, rarefy_depth=None, asv_selection="abundance").data
    write_shards(demo.table, folder, data, demo.tree, None, None, 100)
    common = {"schedule.steps": 4, "data.tree": demo.tree}
    memory, shards = tmp_path / "memory", tmp_path / "from_shards"
    checked(launch(torchrun(1, *run_args(memory, cache, **common, **{"data.table": demo.table}))))
    checked(launch(torchrun(1, *run_args(shards, cache, **common, **{"data.table": folder}))))
    expected = train_losses(memory)
    assert sorted(expected) == list(range(1, 5)) and train_losses(shards) == expected
