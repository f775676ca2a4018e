"""What a researcher sees on the command line: help texts that name their command and show
defaults, `aam-ds --help` without torch, quiet broken pipes, no DeepSpeed accelerator warning on a
CPU machine, no deprecated collectives, the README's `aam-ds cv` line working as written and ending
in one cross-fold table, and pytest saying whether the real data folder was found."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_engine_pairwise import run_ranks

from aam_ds.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
AAM_DS = Path(sys.executable).parent / "aam-ds"  # the console script of this environment
DIST_VARIABLES = {"MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"}
DS_WARNING = "Setting accelerator to CPU"


def clean_env(**extra: str) -> dict[str, str]:
    """This checkout first on the path, no rendezvous variables of an in-process world, and no
    DS_ACCELERATOR (so that aam-ds itself must avoid DeepSpeed's detection warning)."""
    drop = DIST_VARIABLES | {"DS_ACCELERATOR"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return env | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def run(args: list[str], cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=clean_env())


def shell(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=120, env=clean_env())


# --------------------------------------------------------------------------------------------
# help texts


def test_top_level_help_lists_every_command_without_importing_torch():
    code = (
        "import sys\nfrom aam_ds.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch imported:', 'torch' in sys.modules, 'deepspeed' in sys.modules)"
    )
    result = run([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("torch imported: False False")
    for command in (
        "spec",
        "ds-config",
        "shard",
        "distances",
        "predict",
        "evaluate",
        "rf-baseline",
        "benchmark",
        "pretrain",
        "finetune",
        "cv",
    ):
        assert re.search(rf"^\s+{command}\b", result.stdout, re.MULTILINE), command
    assert result.stderr == ""


def test_training_stage_help_names_its_command_and_shows_an_example():
    result = run([str(AAM_DS), "pretrain", "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: aam-ds pretrain ")
    assert "see `aam-ds pretrain --help`" not in result.stdout
    assert "example:\n  aam-ds pretrain --spec run.yaml" in result.stdout
    if not torch.cuda.is_available():
        assert DS_WARNING not in result.stdout + result.stderr  # imported DeepSpeed, but chose the CPU without a warning


def test_launch_script_help_keeps_the_examples_on_their_own_lines():
    result = run([sys.executable, "launch/finetune.py", "--help"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if "deepspeed --num_gpus 2 launch/finetune.py" in line)
    assert lines[first].rstrip().endswith("\\")
    assert lines[first + 1].strip().startswith("--set model.pretrained=")
    assert lines[first + 2].strip().startswith("python launch/finetune.py")


def option_helps(help_text: str) -> dict[str, str]:
    """Option -> its help text, from argparse's ``options:`` section (continuation lines joined)."""
    helps, option = {}, None
    for line in help_text.split("\noptions:\n", 1)[1].splitlines():
        if line.startswith("  -"):
            option = line.split()[0].rstrip(",")
            invocation_and_help = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            helps[option] = invocation_and_help[1] if len(invocation_and_help) > 1 else ""
        elif option and line.startswith("    "):
            helps[option] += " " + line.strip()
        else:
            option = None
    return helps


@pytest.mark.parametrize("command", [["ds-config"], ["spec", "show"], ["distances"], ["shard"], ["rf-baseline"], ["evaluate"]])
def test_every_option_has_help_and_shows_its_default(command, capsys):
    with pytest.raises(SystemExit) as exited:
        cli_main([*command, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: aam-ds {' '.join(command)} ")
    helps = option_helps(text)
    assert helps and all(helps.values()), {k: v for k, v in helps.items() if not v}
    if command == ["ds-config"]:
        assert "(default: print)" in helps["--out"]
    if command == ["rf-baseline"]:
        assert "(default: 500)" in helps["--trees"] and "(default: rf_baseline)" in helps["--out-dir"]
    if command == ["distances"]:
        assert "(default: unweighted)" in helps["--metric"] and "(default: fp64)" in helps["--dtype"]


# --------------------------------------------------------------------------------------------
# pipes


@pytest.mark.parametrize("reader", ["head -1", "true"])
@pytest.mark.parametrize("command", ["spec schema", "ds-config --stage 2"])
def test_output_into_a_closed_pipe_ends_quietly(command, reader):
    """`| true` closes the pipe before aam-ds writes anything: a certain broken pipe."""
    result = shell(f"{shlex.quote(str(AAM_DS))} {command} | {reader}; echo status ${{PIPESTATUS[0]}}")
    assert result.stderr == ""
    status = result.stdout.splitlines()[-1]
    assert status in ("status 0", "status 141")  # 141: what a program killed by SIGPIPE returns
    if reader == "head -1":
        assert result.stdout.splitlines()[0] == "{"


# --------------------------------------------------------------------------------------------
# the gathered embeddings' collective


def _gather_rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch.distributed as dist

    from aam_ds.engine.pairwise import gather_with_grad

    dist.init_process_group("gloo", rank=rank, world_size=world)
    local = torch.arange(6.0).reshape(3, 2).add(10 * rank).requires_grad_()
    weights = torch.arange(6.0 * world).reshape(3 * world, 2)
    gathered = gather_with_grad(local)
    (gathered * weights).sum().backward()
    torch.save({"gathered": gathered.detach(), "grad": local.grad}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_gather_with_grad_sums_each_ranks_gradient(tmp_path):
    """Every rank's loss uses all W*B rows; the gradient of a rank's own rows is the sum over the
    W identical losses, i.e. W x the weights of those rows."""
    out = str(tmp_path / "gather")
    assert run_ranks(_gather_rank, 2, out, timeout=120) == [0, 0]
    weights = torch.arange(12.0).reshape(6, 2)
    for rank in range(2):
        result = torch.load(f"{out}.{rank}")
        torch.testing.assert_close(result["gathered"], torch.cat([torch.arange(6.0).reshape(3, 2) + 10 * r for r in range(2)]))
        torch.testing.assert_close(result["grad"], 2 * weights[3 * rank : 3 * rank + 3])


# --------------------------------------------------------------------------------------------
# the README's cross-validation


def readme_command(name: str) -> list[str]:
    """The README's ``aam-ds NAME ...`` example (backslash continuations joined), as argv."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"aam-ds {name} "))
    parts = []
    for line in lines[start:]:
        parts.append(line.rstrip().removesuffix("\\"))
        if not line.rstrip().endswith("\\"):
            break
    return shlex.split(" ".join(parts))


def test_readme_cv_line_runs_and_ends_with_one_cross_fold_table(cache, demo, tmp_path):
    """The README's `aam-ds cv` line, on the demo data with a tiny model and 3 steps per fold, in a
    folder whose rf/folds.tsv came from `aam-ds rf-baseline --out-dir rf` (3 grouped folds)."""
    assert (
        cli_main(
            [
                "rf-baseline",
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
                "--trees",
                "10",
                "--out-dir",
                str(tmp_path / "rf"),
            ]
        )
        == 0
    )
    (tmp_path / "run.yaml").write_text(
        f"data: {{cache_dir: {cache}, max_asvs: 16, max_seq_len: 48}}\nmodel: {{preset: tiny}}\n"
        "schedule: {steps: 3, warmup_steps: 0}\nparallel: {micro_batch_size: 8}\ntracking: {rich: false}\n"
        "loss: {pairwise_weight: 0, nucleotide_weight: 0}\n"
    )
    command = readme_command("cv")
    assert command[:4] == ["aam-ds", "cv", "--spec", "run.yaml"]
    result = run([str(AAM_DS), *command[1:]], cwd=tmp_path, timeout=600)
    out = result.stdout
    assert result.returncode == 0, (out + result.stderr)[-3000:]

    run_dir = (tmp_path / "runs" / "cv-latest").resolve()
    for fold in range(3):  # each fold's header and summary name the fold
        assert f"aam-ds run {run_dir.name}-fold{fold}: " in out
        assert f"run summary: {run_dir.name}-fold{fold}" in out
    # a fold's validation scores say they come from a part of its training samples, not from its test samples
    assert out.count("validation 10 % of the fold's training part") == 3
    assert out.count("eval step 3 on val (10 % of the fold's training part) | ") == 3
    assert len(re.findall(r"│ val \(10 % of the fold's training part\) mae\s+│\s+\d", out)) == 3
    assert out.count("cross-validation of") == 1
    table = out[out.index("cross-validation of age (regression), 3 folds") :].splitlines()
    header = next(line for line in table if line.startswith("┃ fold"))
    assert re.findall(r"\w+", header)[:4] == ["fold", "mae", "rmse", "r2"]
    for row in ("fold 0", "fold 1", "fold 2", "mean ± std", "pooled"):
        assert any(re.match(rf"│ {row}\s+│\s+\d", line) for line in table), row
    assert "folds: rf/folds.tsv" in out
    assert re.search(rf"wrote \S*{run_dir.name}/folds.tsv, oof_predictions.tsv \(for aam-ds evaluate\), cv_metrics.json", out)
    assert all((run_dir / name).is_file() for name in ("folds.tsv", "oof_predictions.tsv", "cv_metrics.json"))
    if not torch.cuda.is_available():
        assert DS_WARNING not in out + result.stderr


# --------------------------------------------------------------------------------------------
# pytest's header


def test_pytest_header_says_whether_the_real_data_folder_was_found():
    """A run of one quick test file prints the real-data line once, found or absent as it is here."""
    result = run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--co", str(ROOT / "tests" / "test_data_rarefy.py")])
    assert result.returncode == 0, result.stdout[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("real data folder:")]
    shared = ROOT.parent / "shared" / "data"
    assert lines == [
        f"real data folder: {shared} "
        + (
            "(the tests that need it run)"
            if shared.is_dir()
            else "is absent, so the tests that need it skip (CI has it; see README, 'Quick start')"
        )
    ]


def test_run_header_accounts_for_every_sample_and_notices_are_one_line(cache, tmp_path):
    """Issue 16 item 9: the header says the demo data was generated and how many samples were
    loaded, dropped (why) and put in each split; a rarefaction drop is one `aam-ds: notice:` line,
    not a raw UserWarning with its source line."""
    result = run(
        [
            sys.executable,
            str(ROOT / "launch" / "pretrain.py"),
            "--set",
            "model.preset=tiny",
            "--set",
            "data.max_asvs=16",
            "--set",
            "data.max_seq_len=48",
            "--set",
            f"data.cache_dir={cache}",
            "--set",
            "data.rarefy_depth=4000",
            "--set",
            "schedule.steps=1",
            "--set",
            "schedule.warmup_steps=0",
            "--set",
            "tracking.rich=false",
            "--set",
            f"tracking.run_dir={tmp_path / 'run'}",
            "--set",
            "parallel.micro_batch_size=4",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    output = result.stdout + result.stderr
    header = next(line for line in output.splitlines() if line.startswith("aam-ds run:"))
    found = re.search(
        r"data demo data \(generated, seeded\) .*, samples 300 loaded, (\d+) dropped \(fewer reads than "
        r"data.rarefy_depth 4000\); train (\d+) / val (\d+)",
        header,
    )
    assert found is not None, header
    dropped, train, val = map(int, found.groups())
    assert dropped > 0 and dropped + train + val == 300
    notices = [line for line in output.splitlines() if "rarefaction to 4000 reads drops" in line]
    assert notices == [f"aam-ds: notice: rarefaction to 4000 reads drops {dropped} of 300 samples with fewer reads"]
    assert "UserWarning" not in output and "warnings.warn" not in output
