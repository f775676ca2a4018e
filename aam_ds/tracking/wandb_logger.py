"""Weights & Biases on rank 0: the spec as config, train/eval metrics, a distance scatter per eval, the
run's files (spec, export, evaluation plots and reports) as artifacts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from aam_ds.errors import AamInputError
from aam_ds.io_utils import atomic_write_text
from aam_ds.tracking.base import DistanceScatter, RunLogger

if TYPE_CHECKING:
    from aam_ds.spec import RunSpec

WANDB_MODES = ("online", "offline", "disabled")
MAX_SCATTER_POINTS = 5000  # pairs drawn per eval; a batch of B samples has B(B-1)/2


def resolve_wandb_mode(spec_mode: str) -> str:
    """``$WANDB_MODE`` when set (W&B's own aliases dryrun/run accepted), else ``tracking.wandb``."""
    env = os.environ.get("WANDB_MODE", "").strip()
    if not env:
        return spec_mode
    mode = {"dryrun": "offline", "run": "online"}.get(env, env)
    if mode not in WANDB_MODES:
        raise AamInputError(
            "$WANDB_MODE", f"unknown W&B mode '{env}'", "set it to online, offline or disabled, or unset it to use tracking.wandb"
        )
    return mode


class WandbLogger(RunLogger):
    """One W&B run whose files live under ``<run_dir>/wandb``.

    With ``checkpoint.resume`` the run ID saved in ``<run_dir>/wandb_run_id`` is reused, so a
    resumed training run continues the same W&B run.
    """

    def __init__(self, mode: str, run_dir: Path):
        self.mode = mode
        self.run_dir = Path(run_dir)
        self._run: Any = None

    def start(self, spec: RunSpec, total_steps: int, extra: dict[str, Any] | None = None) -> None:
        import wandb

        id_file = self.run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if spec.checkpoint.resume and id_file.is_file() else None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=spec.tracking.project,
            name=spec.tracking.name,
            dir=self.run_dir,
            mode=self.mode,
            id=run_id,
            resume="allow",
            config={**spec.model_dump(mode="json"), "run": {"total_steps": total_steps, **(extra or {})}},
            settings=wandb.Settings(quiet=True),  # the console prints the summary; W&B keeps its essentials
        )
        atomic_write_text(id_file, self._run.id + "\n")

    def log_train(self, step: int, epoch: int, metrics: dict[str, float], samples_per_s: float, lr: float) -> None:
        row = {f"train/{name}": float(value) for name, value in metrics.items()}
        row.update({"train/epoch": epoch, "train/samples_per_s": float(samples_per_s), "train/lr": float(lr)})
        self._run.log(row, step=step)

    def log_eval(self, step: int, metrics: dict[str, float], distance_scatter: DistanceScatter | None = None) -> None:
        row: dict[str, Any] = {f"eval/{name}": float(value) for name, value in metrics.items()}
        if distance_scatter is not None:
            row["eval/distance_scatter"] = self._scatter(step, *distance_scatter)
        self._run.log(row, step=step)

    def _scatter(self, step: int, predicted: np.ndarray, true: np.ndarray) -> Any:
        import wandb

        points = np.column_stack([np.ravel(true), np.ravel(predicted)]).astype(np.float64)
        if len(points) > MAX_SCATTER_POINTS:
            points = points[np.random.default_rng(step).choice(len(points), MAX_SCATTER_POINTS, replace=False)]
        table = wandb.Table(columns=["true distance", "predicted distance"], data=points.tolist())
        return wandb.plot.scatter(table, "true distance", "predicted distance", title="predicted vs true distance")

    keeps_files = True

    def log_artifacts(self, paths: Sequence[Path], folder: str = "") -> None:
        """One W&B artifact (type ``run-files``) named after the run and ``folder``, holding ``paths``;
        PNG plots are also logged as images, so they show in the run's media panel."""
        import wandb

        if self._run is None:
            return
        name = "-".join(part for part in (self._run.name or self._run.id, folder or "files") if part)
        artifact = wandb.Artifact(wandb.util.make_artifact_name_safe(name), type="run-files")
        for path in map(Path, paths):
            if path.is_dir():
                artifact.add_dir(str(path), name=path.name)
            elif path.is_file():
                artifact.add_file(str(path), name=path.name)
        self._run.log_artifact(artifact)
        images = {f"{folder or 'files'}/{p.stem}": wandb.Image(str(p)) for p in map(Path, paths) if p.suffix == ".png"}
        if images:
            self._run.log(images)

    def finish(self, summary: dict[str, float]) -> None:
        if self._run is not None:
            self._run.summary.update({name: float(value) for name, value in summary.items()})
        self.close()

    def close(self, failed: bool = False) -> None:
        """Finish the run (exit code 1 marks it failed) and stop W&B's service process, which
        completes the run's files on disk (its atexit hook is unreliable under launchers)."""
        if self._run is not None:
            import wandb

            self._run.finish(exit_code=1 if failed else 0)
            self._run = None
            wandb.teardown()
