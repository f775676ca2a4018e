"""CUDA checks, skipped without a GPU (CI has none): run by scripts/gpu_check.sh on a GPU machine.

The same code must give the same numbers on the GPU as on the CPU: distances exactly (fp64),
the model to float tolerance, and a real DeepSpeed pretraining run must train on the device.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ROOT = Path(__file__).resolve().parents[1]


def test_unifrac_batches_on_cuda_equal_cpu(tmp_path):
    from aam_ds.data.synthetic import generate_demo
    from aam_ds.data.table import load_table
    from aam_ds.distances.metric import build_metric
    from aam_ds.distances.tree import read_tree

    demo = generate_demo(tmp_path)
    table, tree = load_table(demo.table), read_tree(demo.tree)
    rows = torch.arange(0, 64)
    for name in ("unweighted", "weighted_normalized", "generalized", "braycurtis", "aitchison"):
        cpu = build_metric(name, table, tree, device="cpu").block(rows)
        gpu = build_metric(name, table, tree, device="cuda").block(rows.cuda())
        assert gpu.is_cuda
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-10, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_model_on_cuda_matches_cpu(dtype):
    from aam_ds.export import model_config
    from aam_ds.model.aam import AAMModel
    from aam_ds.spec import ModelSpec

    torch.manual_seed(0)
    model = AAMModel(model_config(ModelSpec(preset="tiny")), max_seq_len=32).eval()
    tokens = torch.randint(1, 5, (4, 6, 32))
    counts = torch.rand(4, 6) * 10
    counts[1, 3:] = 0  # padding rows
    want = {"sample_embedding", "nucleotide_logits"}
    with torch.no_grad():
        cpu = model(tokens, counts, want)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            gpu = model.cuda()(tokens.cuda(), counts.cuda(), want)
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    for key in want:
        assert torch.isfinite(gpu[key]).all()
        torch.testing.assert_close(gpu[key].float().cpu(), cpu[key], atol=tol, rtol=tol)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_deepspeed_pretraining_runs_on_the_gpu(tmp_path, precision):
    run_dir = tmp_path / "run"
    settings = {
        "model.preset": "tiny",
        "schedule.steps": 20,
        "schedule.warmup_steps": 2,
        "schedule.eval_every": 20,
        "data.max_asvs": 64,
        "data.max_seq_len": 64,
        "data.cache_dir": tmp_path / "cache",
        "tracking.run_dir": run_dir,
        "tracking.rich": "false",
        "parallel.precision": precision,
    }
    args = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    result = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "pretrain.py"), *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "model.pt").is_file()
    from aam_ds.tracking import read_metrics

    train = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert train[-1]["metrics"]["loss"] < train[0]["metrics"]["loss"]
