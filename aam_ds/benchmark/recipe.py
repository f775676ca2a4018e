"""Benchmark recipes: the training budget of ``aam-ds benchmark``, read from readable YAML files.

``--budget quick|standard|full`` picks ``aam_ds/benchmark/recipes/<budget>.yaml``, package data that an
installed package (a wheel, the container) carries too; ``configs/benchmark`` of the repository links
to that folder. ``--budget path/to/recipe.yaml`` reads any file of the same shape::

    description: one line
    baselines: {rf_trees: 500}
    spec: {model: {preset: tiny}, data: {max_asvs: 1024}}   # run-spec sections both AAM stages share
    pretrain:                      # label-free, on all samples; null = no pretraining (then from_pretrained: false)
      epochs: 5                    # steps = epochs x samples / global batch, clipped to [min_steps, max_steps]
      min_steps: 100
      max_steps: 400
      spec: {optim: {lr: 0.002}, ...}      # this stage's run-spec sections, as in a run.yaml
      small_table:                 # optional: for tables of fewer than `samples` samples, these
        samples: 500               # fields replace the stage's (epochs, min_steps, max_steps) and
        min_steps: 200             # these spec sections are merged over its spec
        spec: {model: {freeze_sequence_encoder: true}}
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from aam_ds.errors import AamInputError

BUDGETS = ("quick", "standard", "full")
RECIPE_DIR = Path(__file__).resolve().parent / "recipes"  # package data (pyproject: tool.setuptools.package-data)


@dataclass(frozen=True)
class StageBudget:
    """How long one training stage runs, and the run-spec sections it sets."""

    epochs: float
    min_steps: int
    max_steps: int
    spec: dict[str, Any]
    evaluations: int = 1
    from_pretrained: bool = True
    small_table: dict[str, Any] | None = None  # {samples: N, [epochs, min_steps, max_steps], [spec]}

    def for_table(self, n_samples: int) -> "StageBudget":
        """The budget for a table of ``n_samples`` samples: this one, or under ``small_table.samples``
        its small-table variant (the fields it gives replace these, its spec is merged over this spec)."""
        small = self.small_table
        if small is None or n_samples >= int(small["samples"]):
            return self
        fields = {name: type(getattr(self, name))(small[name]) for name in ("epochs", "min_steps", "max_steps") if name in small}
        return replace(self, **fields, spec=merged(self.spec, small.get("spec") or {}), small_table=None)

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
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "rf_trees": self.rf_trees,
            "spec": self.shared,
            "pretrain": asdict(self.pretrain) if self.pretrain else None,
            "finetune": asdict(self.finetune),
        }


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
            name=budget if budget in BUDGETS else path.stem,
            description=str(raw.get("description", "")),
            rf_trees=int(raw["baselines"]["rf_trees"]),
            pretrain=_stage(raw["pretrain"]) if raw["pretrain"] is not None else None,
            finetune=_stage(raw["finetune"]),
            source=str(path),
            shared=dict(raw.get("spec") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise AamInputError(
            str(path), f"is not a benchmark recipe ({type(exc).__name__}: {exc})", f"follow the layout of {RECIPE_DIR / 'standard.yaml'}"
        ) from None
    if recipe.pretrain is None and recipe.finetune.from_pretrained:
        raise AamInputError(
            str(path),
            "has no pretrain stage but finetune.from_pretrained is true",
            "add a pretrain section, or set finetune.from_pretrained: false",
        )
    return recipe


def _stage(raw: dict[str, Any]) -> StageBudget:
    small = raw.get("small_table")
    if small is not None and (
        not isinstance(small, dict) or "samples" not in small or set(small) - {"samples", "epochs", "min_steps", "max_steps", "spec"}
    ):
        raise ValueError("small_table needs `samples` and may give only epochs, min_steps, max_steps and spec")
    return StageBudget(
        float(raw["epochs"]),
        int(raw["min_steps"]),
        int(raw["max_steps"]),
        dict(raw.get("spec") or {}),
        int(raw.get("evaluations", 1)),
        bool(raw.get("from_pretrained", True)),
        small,
    )


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Nested spec sections ``over`` merged into a copy of ``base`` (``over`` wins)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def flatten(sections: dict[str, Any], prefix: str = "") -> list[str]:
    """Nested spec sections -> ``--set`` style ``dotted.key=value`` overrides (lists and scalars as YAML)."""
    items = []
    for key, value in sections.items():
        if isinstance(value, dict):
            items += flatten(value, f"{prefix}{key}.")
        else:
            items.append(f"{prefix}{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}")
    return items
