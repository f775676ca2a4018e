"""The README's "Your own data" block works as written: its run.yaml template, pointed at the demo
data, runs with the README's `deepspeed launch/pretrain.py --spec run.yaml --ds-config
ds_configs/zero2.json` line (batch sizes and precision from the template, ZeRO from the file)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEEPSPEED = Path(sys.executable).parent / "deepspeed"  # the launcher of this environment
DIST_VARIABLES = {"MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"}


def readme_section(title: str) -> list[str]:
    """The lines of README.md from the ``## title`` heading to the next ``## `` heading."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index(f"## {title}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def readme_run_yaml() -> dict:
    """The run spec written by the ``cat > run.yaml <<'EOF'`` here-document of "Your own data"."""
    lines = readme_section("Your own data")
    start = lines.index("cat > run.yaml <<'EOF'") + 1
    end = lines.index("EOF", start)
    return yaml.safe_load("\n".join(lines[start:end]))


def readme_pretrain_command() -> list[str]:
    """The ``deepspeed launch/pretrain.py ...`` line of "Your own data", as argv."""
    line = next(line for line in readme_section("Your own data") if line.startswith("deepspeed launch/pretrain.py"))
    return shlex.split(line)


def test_readme_template_pretrains_with_the_readme_command(demo_paths, tmp_path, documented_master_port):
    spec = readme_run_yaml()
    assert spec["parallel"] == {"global_batch_size": 256, "micro_batch_size": 32, "precision": "bf16"}
    assert spec["data"]["sequences"] == "rep-seqs.qza"
    spec["data"].update(
        table=str(demo_paths.table),
        tree=str(demo_paths.tree),
        metadata=str(demo_paths.metadata),
        sequences=str(demo_paths.sequences),
        cache_dir=str(tmp_path / "cache"),
    )
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(spec))
    for name in ("launch", "ds_configs"):  # the command's relative paths, as in a checkout
        (tmp_path / name).symlink_to(ROOT / name)

    command = readme_pretrain_command()
    assert command == ["deepspeed", "launch/pretrain.py", "--spec", "run.yaml", "--ds-config", "ds_configs/zero2.json"]
    # Only the run's size shrinks for a 2-core CPU: the base preset and 256 ASVs x 150 nt per sample
    # would take minutes a step. Batch sizes, bf16 (which DeepSpeed runs on CPU) and ZeRO-2 stay.
    overrides = ["schedule.steps=2", "model.preset=tiny", "data.max_asvs=16", "data.max_seq_len=48", "tracking.rich=false"]
    argv = [str(DEEPSPEED), *command[1:], *(arg for item in overrides for arg in ("--set", item))]
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARIABLES}
    env |= {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]

    run_dir = (tmp_path / "runs" / "pretrain-latest").resolve()
    assert (run_dir / "model.pt").is_file()
    used = json.loads((run_dir / "spec.json").read_text())["parallel"]
    assert (used["precision"], used["micro_batch_size"], used["grad_accum_steps"], used["zero_stage"]) == ("bf16", 32, 8, 2)
    ds_config = json.loads((run_dir / "ds_config.json").read_text())
    assert ds_config["bf16"]["enabled"] and ds_config["train_micro_batch_size_per_gpu"] == 32
