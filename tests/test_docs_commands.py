"""Every command of README.md and docs/ works as written (issue 16).

Each command line of the ```bash blocks of README.md and docs/*.md (and the indented benchmark
commands of docs/benchmarks.md) is either run here, verbatim and in the README's order, in a
folder laid out as the README assumes (run.yaml, table.biom, metadata.tsv, ... made from the demo
data at a small size), or listed in ``NOT_RUN`` with the reason and the test that covers it. A
command added to the docs without either fails the first test. The walkthrough then checks that
the pretrain -> fine-tune -> predict -> evaluate chain leaves both models and both histories intact.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_qza
from tests.test_readme_commands import DIST_VARIABLES, readme_run_yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# command (as written, continuation lines joined) -> why it is not run by the walkthrough
NOT_RUN = {
    "OMP_NUM_THREADS=1 python launch/pretrain.py --set model.preset=tiny --set schedule.steps=300 --set schedule.log_every=25 "
    "--set parallel.micro_batch_size=8 --set parallel.zero_stage=0 --set parallel.precision=bf16": "the 300-step bf16 loss "
    "curve of docs/benchmarks.md (minutes); tests/test_engine_units.py trains a bf16 DeepSpeed engine on the CPU",
    "bash scripts/test.sh": "the test suite itself: CI runs it (.ci/run)",
    "sphinx-build -W -b html docs docs/_build/html": "tests/test_docs_build.py builds the site into a temporary folder",
    "source .venv/bin/activate": "the walkthrough runs with this environment's bin/ first on PATH",
    "deepspeed --hostfile hostfile --master_addr node001 --master_port 29500 launch/pretrain.py --spec run.yaml "
    "--ds-config ds_configs/zero2.json": "needs nodes reachable by pdsh/ssh: tests/test_multinode.py runs it as written, "
    "over a real sshd for node001/node002 on loopback addresses",
    "sbatch launch/slurm_pretrain.sbatch run.yaml ds_configs/zero2.json": "needs SLURM: tests/test_multinode.py submits it "
    "to a real two-node SLURM (with the CPU-node options the README gives)",
    "sbatch launch/slurm_pretrain.sbatch run.yaml ds_configs/zero2.json --resume": "needs SLURM: tests/test_multinode.py "
    "resubmits it after scancel",
    "aam-ds benchmark --table table.qza --tree rooted-tree.qza --sequences rep-seqs.qza --metadata sample-metadata.tsv "
    "--target body_site --split grouped --group-column host_subject_id --budget standard --out-dir bench-body-site": "an hour at the standard budget: tests/test_benchmark.py runs the command with --budget quick, and "
    "tests/test_qiime2_hashed_ids.py trains on artifacts with hashed IDs and rep-seqs",
    "aam-ds explain --model runs/mp-body-site/model.pt --table mp-table.biom --sequences rep-seqs.qza --metadata "
    "../shared/data/small/moving_pictures.sample-metadata.tsv --target BodySite --taxonomy "
    "../shared/data/small/moving_pictures.taxonomy.tsv --out-dir explain-body-site": "needs the moving-pictures tutorial's rep-seqs.qza, which ../shared/data lacks: tests/test_explain.py runs "
    "`aam-ds explain` on a model fine-tuned on the demo data",
    "aam-ds finetune --set data.table=mp-table.biom --set data.sequences=rep-seqs.qza --set "
    "data.metadata=../shared/data/small/moving_pictures.sample-metadata.tsv --set loss.task=classification --set "
    "data.targets=[BodySite] --set model.preset=tiny --set loss.pairwise_weight=0 --set loss.nucleotide_weight=0 --set "
    "data.max_asvs=64 --set data.max_seq_len=120 --set schedule.steps=80 --set data.split.kind=stratified --set "
    "data.split.column=BodySite --set data.split.val_fraction=0.3 --set tracking.run_dir=runs/mp-body-site": "the fine-tuning behind the explain example above (same reason); tests/test_qiime2_hashed_ids.py trains on "
    "hashed IDs with rep-seqs",
    "mlflow server --backend-store-uri sqlite:///mlflow.db --port 5000": "a server that runs until stopped: tests start one "
    "(conftest.py, mlflow_server) for tests/test_tracking_mlflow.py and tests/test_tune.py",
    "deepspeed launch/pretrain.py --spec run.yaml --ds-config ds_configs/zero2.json --set tracking.mlflow=http://localhost:5000": "needs that server on port 5000: tests/test_tracking_mlflow.py runs a 2-rank pretraining against a real server",
    "aam-ds tune --spec run.yaml --space space.yaml --trials 30 --storage sqlite:///tune.db": "30 trials: tests/test_tune.py runs "
    "the command on the demo data with a tiny budget (pruning, resuming after a kill, best spec, fine-tuning trials)",
    "torchrun --nproc_per_node 4 -m aam_ds.cli tune --spec run.yaml --space space.yaml --trials 30 --storage sqlite:///tune.db": "30 trials: tests/test_tune.py runs a 2-rank trial under torchrun",
    **dict.fromkeys(
        [
            "podman run --rm localhost/aam-ds:cpu --help",
            'podman run --rm -v "$PWD:/data" localhost/aam-ds:cpu predict --model /data/model.pt --table /data/new.biom '
            "--out /data/predictions.tsv",
            "podman run --rm --entrypoint bash localhost/aam-ds:cpu -c 'cd /opt/aam-ds/app && deepspeed launch/pretrain.py "
            "--spec configs/demo.yaml --set tracking.run_dir=$HOME/runs/demo'",
        ],
        "needs podman and the image that container/build.sh builds (minutes, not in CI); the script runs --help, the quick "
        "start under deepspeed and export-onnx inside it (README, 'Container images')",
    ),
}
TEMPLATE = "cat > run.yaml <<'EOF'"  # written by lay_out: the README's template, pointed at the demo files, shrunk
BENCHMARK_SCRIPT = re.compile(r"python (bench/\S+\.py)")  # docs/benchmarks.md: minutes to hours each; --help is checked


def command_lines(path: Path) -> list[str]:
    """Commands of the ```bash blocks of ``path`` (comments dropped, ``\\`` continuations joined,
    here-document bodies skipped) and, in docs/benchmarks.md, of its indented blocks."""
    lines, commands, in_block, heredoc_end = path.read_text().splitlines(), [], False, None
    pending = ""
    for line in lines:
        if line.startswith("```"):
            in_block = line.strip() == "```bash"
            continue
        indented = path.name == "benchmarks.md" and line.startswith("    ") and not line.startswith("     ")
        if not (in_block or indented or pending):
            continue
        if heredoc_end is not None:
            heredoc_end = None if line.strip() == heredoc_end else heredoc_end
            continue
        text = line.split(" # ")[0].rstrip() if not line.lstrip().startswith("#") else ""
        if not text.strip():
            continue
        pending = f"{pending} {text.strip()}".strip()
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        if (match := re.search(r"<<'(\w+)'", pending)) is not None:
            heredoc_end = match.group(1)
        commands.append(pending)
        pending = ""
    return commands


def all_commands() -> list[tuple[str, str]]:
    return [(path.name, command) for path in DOCS for command in command_lines(path)]


def test_every_documented_command_is_run_or_explained():
    readme = [c for name, c in all_commands() if name == "README.md"]
    assert "bash scripts/quickstart.sh" in readme and len(readme) >= 15  # the parser sees the README's blocks
    walked = set(walkthrough_commands())
    for name, command in all_commands():
        if BENCHMARK_SCRIPT.search(command):
            continue
        assert command in walked or command in NOT_RUN, f"{name}: `{command}` is neither run by this walkthrough nor in NOT_RUN"


def test_benchmark_commands_in_docs_name_real_scripts():
    for name, command in all_commands():
        if (match := BENCHMARK_SCRIPT.search(command)) is not None:
            result = subprocess.run(
                [sys.executable, match.group(1), "--help"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            assert result.returncode == 0, f"{name}: {command}: {result.stderr[-2000:]}"


def walkthrough_commands() -> list[str]:
    """The README's commands that the walkthrough runs, in order."""
    return [c for name, c in all_commands() if name == "README.md" and c not in NOT_RUN]


def small_run_yaml() -> dict:
    """The README's run.yaml template pointed at files named as the README names them, at a size
    a 2-core CPU runs in seconds (the template's bf16 stays)."""
    spec = readme_run_yaml()
    spec["data"].update(
        table="feature-table.biom", tree="tree.nwk", sequences="rep-seqs.fasta", metadata="sample-metadata.tsv", max_asvs=16, max_seq_len=48
    )
    spec["model"]["preset"] = "tiny"
    spec["parallel"].update(global_batch_size=16, micro_batch_size=8)
    spec["schedule"] = {"steps": 4, "warmup_steps": 1}
    spec["tracking"] = {"rich": False}
    return spec


def lay_out(folder: Path, demo_paths) -> None:
    """The files the README's commands name, made from the demo data."""
    for name in ("launch", "ds_configs"):
        (folder / name).symlink_to(ROOT / name)
    for name in ("feature-table.biom", "table.biom", "new.biom"):
        (folder / name).symlink_to(demo_paths.table)
    (folder / "tree.nwk").symlink_to(demo_paths.tree)
    (folder / "rep-seqs.fasta").symlink_to(demo_paths.sequences)
    write_qza(folder / "rep-seqs.qza", "FeatureData[Sequence]", "dna-sequences.fasta", demo_paths.sequences.read_bytes())
    write_qza(folder / "rooted-tree.qza", "Phylogeny[Rooted]", "tree.nwk", demo_paths.tree.read_bytes())
    metadata = demo_paths.metadata.read_text().replace("\tsubject", "\thost_subject_id", 1)  # the README's column name
    for name in ("metadata.tsv", "sample-metadata.tsv"):
        (folder / name).write_text(metadata)
    (folder / "run.yaml").write_text(yaml.safe_dump(small_run_yaml()))


def as_run(command: str, folder: Path) -> tuple[list[str], Path]:
    """argv and working folder of a README command on this machine: two ranks instead of four; the
    quick start runs in the checkout (its setup step is idempotent), shortened, into ``folder``."""
    argv = shlex.split(command)
    if argv[:2] == ["torchrun", "--nproc_per_node"]:
        argv[2] = "2"
    if argv == ["bash", "scripts/quickstart.sh"]:
        argv += [
            "--set",
            "schedule.steps=3",
            "--set",
            "schedule.warmup_steps=1",
            "--set",
            "tracking.rich=false",
            "--set",
            f"tracking.run_dir={folder / 'runs' / 'quickstart'}",
        ]
        return argv, ROOT
    return argv, folder


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_readme_walkthrough_runs_as_written_and_keeps_every_model(demo_paths, tmp_path, documented_master_port):
    lay_out(tmp_path, demo_paths)
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARIABLES}
    env |= {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    runs = tmp_path / "runs"
    kept: dict[Path, str] = {}
    for command in walkthrough_commands():
        if command == TEMPLATE:
            continue
        argv, cwd = as_run(command, tmp_path)
        result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"`{command}` failed:\n{(result.stdout + result.stderr)[-4000:]}"
        if command.startswith("deepspeed launch/finetune.py"):
            pretrained, finetuned = (runs / "pretrain-latest").resolve(), (runs / "finetune-latest").resolve()
            assert pretrained != finetuned
            for path in (pretrained / "model.pt", pretrained / "metrics.jsonl", finetuned / "model.pt", finetuned / "metrics.jsonl"):
                kept[path] = digest(path)
    # the chain: predictions, evaluation, the forest's folds, cross-validation, every model and history intact
    assert (tmp_path / "predictions.tsv").is_file() and any((tmp_path / "eval").iterdir())
    assert (tmp_path / "rf" / "folds.tsv").is_file() and (runs / "cv-latest" / "oof_predictions.tsv").is_file()
    assert kept and all(digest(path) == value for path, value in kept.items())
    assert (runs / "quickstart" / "model.pt").is_file()
    pretrain_runs = sorted(p.name for p in runs.iterdir() if p.name.startswith("pretrain-") and not p.is_symlink())
    assert len(pretrain_runs) >= 5  # each pretraining command wrote its own folder; the --resume continued one
