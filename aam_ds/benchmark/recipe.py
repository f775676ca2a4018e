"""Benchmark recipes: the training budget of ``aam-ds benchmark``, read from readable YAML files.

``--budget quick|standard|full`` picks ``configs/benchmark/<budget>.yaml`` of the repository (or of
the installed package's data); ``--budget path/to/recipe.yaml`` reads any file of the same shape::

    description: one line
    baselines: {rf_trees: 500}
    spec: {model: {preset: tiny}, data: {max_asvs: 1024}}   # run-spec sections both AAM stages share
    pretrain:                      # label-free, on all samples; null = no pretraining (then from_pretrained: false)
      epochs: 5                    # steps = epochs x samples / global batch, clipped to [min_steps, max_steps]
      min_steps: 100
      max_steps: 400
      spec: {optim: {lr: 0.002}, ...}      # this stage's run-spec sections, as in a run.yaml
    finetune:                      # per fold
      from_pretrained: true        # start from the pretrained export (false: from scratch, an ablation)
      epochs: 20
      min_steps: 200
      max_steps: 1300
      evaluations: 10              # validation evaluations per fold; the best is exported (0: no validation part, last step)
      spec: {...}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aam_ds.errors import AamInputError

BUDGETS = ("quick", "standard", "full")
RECIPE_DIR = Path(__file__).resolve().parents[2] / "configs" / "benchmark"


@dataclass(frozen=True)
class StageBudget:
    """How long one training stage runs, and the run-spec sections it sets."""

    epochs: float
    min_steps: int
    max_steps: int
    spec: dict[str, Any]
    evaluations: int = 1
    from_pretrained: bool = True

    def steps(self, n_samples: int, global_batch: int) -> int:
        """``epochs`` passes over ``n_samples`` in batches of ``global_batch``, within [min_steps, max_steps]."""
        return int(min(self.max_steps, max(self.min_steps, math.ceil(self.epochs * n_samples / global_batch))))


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    rf_trees: int
    pretrain: StageBudget | None
    finetune: StageBudget
    source: str
    shared: dict[str, Any]

    def stage_spec(self, stage: StageBudget) -> list[str]:
        """``--set`` overrides of one stage: the shared sections, then the stage's own."""
        return flatten(self.shared) + flatten(stage.spec)

    def as_dict(self) -> dict[str, Any]:
        """The recipe as recorded in the report."""
        stage = lambda s: {"epochs": s.epochs, "min_steps": s.min_steps, "max_steps": s.max_steps,  # noqa: E731
                           "evaluations": s.evaluations, "from_pretrained": s.from_pretrained, "spec": s.spec}
        return {"name": self.name, "description": self.description, "source": self.source, "rf_trees": self.rf_trees,
                "spec": self.shared, "pretrain": stage(self.pretrain) if self.pretrain else None, "finetune": stage(self.finetune)}


def load_recipe(budget: str) -> Recipe:
    """The recipe of a budget name (``quick``, ``standard``, ``full``) or of a YAML file path.

    Raises :class:`AamInputError` when the file is missing or a field is absent or malformed.
    """
    path = RECIPE_DIR / f"{budget}.yaml" if budget in BUDGETS else Path(budget)
    if not path.is_file():
        raise AamInputError(f"--budget {budget}", f"no recipe file {path}", f"use one of {', '.join(BUDGETS)} or a recipe YAML path")
    raw = yaml.safe_load(path.read_text()) or {}
    try:
        recipe = Recipe(
            name=budget if budget in BUDGETS else path.stem, description=str(raw.get("description", "")),
            rf_trees=int(raw["baselines"]["rf_trees"]), pretrain=_stage(raw["pretrain"]) if raw["pretrain"] is not None else None,
            finetune=_stage(raw["finetune"]), source=str(path), shared=dict(raw.get("spec") or {}),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise AamInputError(str(path), f"is not a benchmark recipe ({type(exc).__name__}: {exc})",
                            f"follow the layout of {RECIPE_DIR / 'standard.yaml'}") from None
    if recipe.pretrain is None and recipe.finetune.from_pretrained:
        raise AamInputError(str(path), "has no pretrain stage but finetune.from_pretrained is true",
                            "add a pretrain section, or set finetune.from_pretrained: false")
    return recipe


def _stage(raw: dict[str, Any]) -> StageBudget:
    return StageBudget(float(raw["epochs"]), int(raw["min_steps"]), int(raw["max_steps"]), dict(raw.get("spec") or {}),
                       int(raw.get("evaluations", 1)), bool(raw.get("from_pretrained", True)))


def flatten(sections: dict[str, Any], prefix: str = "") -> list[str]:
    """Nested spec sections -> ``--set`` style ``dotted.key=value`` overrides (lists and scalars as YAML)."""
    items = []
    for key, value in sections.items():
        if isinstance(value, dict):
            items += flatten(value, f"{prefix}{key}.")
        else:
            items.append(f"{prefix}{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}")
    return items
