"""``aam-ds distances`` pays only for what it uses: its help, ``--engine ssu`` and unweighted and weighted UniFrac
on the CPU import no torch, scikit-learn or DeepSpeed (seen from ``sys.modules`` of a fresh interpreter, after
the command ran); a metric without a CPU kernel (generalised UniFrac) does import torch."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

HEAVY = ("torch", "sklearn", "deepspeed", "pandas")


def _modules_after(argv: list[str]) -> list[str]:
    """Run ``aam-ds`` with ``argv`` in a fresh interpreter; the heavy modules it imported."""
    code = (
        "import sys\nfrom aam_ds.cli import main\ntry:\n    code = main(sys.argv[1:])\nexcept SystemExit as exc:\n"
        "    code = exc.code\nassert code in (0, None), code\n"
        f"print('heavy:', *[m for m in {HEAVY!r} if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1].split()
    assert last[0] == "heavy:", result.stdout
    return last[1:]


def test_distances_help_imports_no_heavy_module():
    assert _modules_after(["distances", "--help"]) == []


@pytest.mark.skipif(shutil.which("ssu") is None, reason="biocore's ssu binary is not on PATH (apt install unifrac-tools)")
def test_ssu_engine_imports_no_torch(shared_data, tmp_path):
    small = shared_data / "small"
    out = tmp_path / "d.h5"
    argv = [
        "distances",
        "--engine",
        "ssu",
        "--table",
        str(small / "test-small.biom"),
        "--tree",
        str(small / "test-small-tree.nwk"),
        "--metric",
        "unweighted",
        "--out",
        str(out),
        "--threads",
        "1",
    ]
    assert [m for m in _modules_after(argv) if m != "pandas"] == []  # biom, which reads the table, imports pandas
    assert out.is_file()


@pytest.mark.slow  # three fresh interpreters, one importing torch: over 20 s on a loaded 2-core machine
def test_unweighted_and_weighted_on_the_cpu_import_no_torch_and_generalized_does(demo_paths, tmp_path):
    argv = [
        "distances",
        "--table",
        str(demo_paths.table),
        "--tree",
        str(demo_paths.tree),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--no-progress",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    for metric in ("unweighted", "weighted_normalized"):
        out = tmp_path / f"{metric}.h5"
        assert [m for m in _modules_after([*argv, "--metric", metric, "--out", str(out)]) if m != "pandas"] == []
        assert out.is_file()
    assert "torch" in _modules_after([*argv, "--metric", "generalized", "--out", str(tmp_path / "g.h5")])
