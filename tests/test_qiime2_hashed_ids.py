"""QIIME 2's default output: a FeatureTable[Frequency] and a Phylogeny[Rooted] whose feature IDs
are MD5 hashes of the ASVs, with the DNA in a FeatureData[Sequence] artifact (rep-seqs.qza).
Pretraining reads all three; without the sequences the error names the artifact to give."""

from __future__ import annotations

import hashlib
import io
import math
import re
from pathlib import Path

import biom
import h5py
import pytest
from test_finetune import in_process_world  # noqa: F401 (the fixture tears the in-process world down)

from aam_ds.data.sequences import read_fasta
from aam_ds.data.table import load_table
from aam_ds.engine import trainer
from aam_ds.errors import AamInputError
from aam_ds.spec import load_spec
from aam_ds.tracking import read_metrics


def md5(sequence: str) -> str:
    """QIIME 2's feature ID of an ASV: the MD5 hex digest of its sequence."""
    return hashlib.md5(sequence.encode("ascii")).hexdigest()


def biom_hdf5_bytes(table: biom.Table) -> bytes:
    """``table`` as BIOM v2.1 HDF5 file bytes (the payload of a FeatureTable[Frequency])."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        table.to_hdf5(handle, "aam-ds test")
    return buffer.getvalue()


@pytest.fixture
def hashed_artifacts(demo_paths, make_qza, tmp_path) -> dict[str, Path]:
    """The demo table, tree and sequences as QIIME 2 writes them: IDs are MD5 hashes of the sequences."""
    sequences = read_fasta(demo_paths.sequences)
    demo = load_table(demo_paths.table)
    table = biom.Table(demo.counts.T.tocsr(), [md5(sequences[i]) for i in demo.asv_ids], demo.sample_ids)
    newick = re.sub(r"(?<=[(,])([ACGT]+)(?=:)", lambda tip: md5(sequences[tip.group(1)]), demo_paths.tree.read_text())
    assert not re.search(r"[ACGT]{40}", newick)  # every tip renamed
    fasta = "".join(f">{md5(s)}\n{s}\n" for s in sequences.values())
    return {
        "table": make_qza(tmp_path / "table.qza", "FeatureTable[Frequency]", "feature-table.biom", biom_hdf5_bytes(table)),
        "tree": make_qza(tmp_path / "rooted-tree.qza", "Phylogeny[Rooted]", "tree.nwk", newick.encode()),
        "sequences": make_qza(tmp_path / "rep-seqs.qza", "FeatureData[Sequence]", "dna-sequences.fasta", fasta.encode()),
    }


def spec_for(artifacts: dict[str, Path], run_dir: Path, with_sequences: bool = True):
    """A three-step pretraining spec (tiny model) on the hashed artifacts."""
    settings = {
        "data.table": artifacts["table"],
        "data.tree": artifacts["tree"],
        "data.cache_dir": run_dir.parent / "cache",
        "data.max_asvs": 16,
        "data.max_seq_len": 48,
        "model.preset": "tiny",
        "schedule.steps": 3,
        "parallel.micro_batch_size": 8,
        "parallel.zero_stage": 0,
        "tracking.run_dir": run_dir,
        "tracking.rich": "false",
    }
    if with_sequences:
        settings["data.sequences"] = artifacts["sequences"]
    return load_spec(None, [f"{k}={v}" for k, v in settings.items()])


def test_pretrains_on_hashed_ids_with_rep_seqs(hashed_artifacts, tmp_path):
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in load_table(hashed_artifacts["table"]).asv_ids)
    run_dir = tmp_path / "run"
    result = trainer.pretrain(spec_for(hashed_artifacts, run_dir))
    assert result.step == 3 and (run_dir / "model.pt").is_file()
    losses = [r["metrics"]["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert len(losses) == 3 and all(math.isfinite(loss) and loss > 0 for loss in losses)


def test_hashed_ids_without_sequences_name_the_artifact(hashed_artifacts, tmp_path):
    with pytest.raises(AamInputError) as err:
        trainer.pretrain(spec_for(hashed_artifacts, tmp_path / "run", with_sequences=False))
    message = str(err.value)
    assert "are not DNA sequences" in message and "MD5 hashes" in message
    assert "FeatureData[Sequence]" in message and "rep-seqs.qza" in message and "data.sequences" in message
