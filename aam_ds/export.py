"""The consolidated export: one ``torch.save`` file that fine-tuning, predict and the benchmark load.

Written by rename at the end of training (``<run_dir>/model.pt``), it holds the fp32 state dict
(gathered from ZeRO partitions for stages 1-3, see :mod:`aam_ds.engine.checkpoint`), the run spec
as JSON, the model constructor arguments and the target description (names, classes, normaliser
mean / std): everything fine-tuning and predict need. This module sits below both
:mod:`aam_ds.engine` (which writes exports) and :mod:`aam_ds.inference` (which reads them).

The model package depends on torch alone; :func:`model_config` is where the run spec's model
section becomes the model's :class:`~aam_ds.model.config.ModelConfig`, for a model the engine
builds and for one rebuilt from an export (whose spec JSON keeps the model section, so exports
written before ModelConfig existed load unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from aam_ds.errors import AamInputError
from aam_ds.io_utils import atomic_path
from aam_ds.model.config import ModelConfig

EXPORT_FORMAT = "aam-ds-export/1"
EXPORT_NAME = "model.pt"  # the consolidated export in the run folder


@dataclass
class Export:
    """A loaded consolidated export."""

    state_dict: dict[str, torch.Tensor]
    spec: dict[str, Any]
    model_args: dict[str, Any]
    targets: dict[str, Any] | None
    step: int
    probe: dict[str, Any] | None = None  # a probe ensemble's other half (aam_ds.model.probe_ensemble): see probe_part


def write_export(path: Path, export: Export) -> None:
    """Write the consolidated export by rename (a crash leaves any previous export intact)."""
    payload = {
        "format": EXPORT_FORMAT,
        "state_dict": export.state_dict,
        "spec": export.spec,
        "model_args": export.model_args,
        "targets": export.targets,
        "step": export.step,
        **({"probe": export.probe} if export.probe is not None else {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_export(path: Path) -> Export:
    """Read a consolidated export.

    Raises:
        AamInputError: the file is missing, unreadable or not an aam-ds export.
    """
    path = Path(path)
    if not path.is_file():
        raise AamInputError(str(path), "model export not found", "point to the model.pt written at the end of pretraining")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise AamInputError(str(path), f"cannot be read as a model export ({exc})", "re-export it from its checkpoint") from exc
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT:
        raise AamInputError(str(path), "is not an aam-ds model export", "use the model.pt written by `aam-ds pretrain`")
    return Export(payload["state_dict"], payload["spec"], payload["model_args"], payload["targets"], payload["step"], payload.get("probe"))


def model_config(model: Any) -> ModelConfig:
    """The :class:`ModelConfig` of the run spec's model section: a ``ModelSpec``, or its JSON (a dict,
    as an export's ``spec["model"]`` holds it; validated, presets applied, as the spec does).

    Raises:
        pydantic.ValidationError: a dict that is not a valid model section.
    """
    from aam_ds.spec import ModelSpec

    spec = model if isinstance(model, ModelSpec) else ModelSpec.model_validate(model)
    return ModelConfig(**{f.name: getattr(spec, f.name) for f in fields(ModelConfig)})


def build_exported_model(export: Export, ensemble: bool = True) -> torch.nn.Module:
    """A fresh AAMModel with the export's architecture and weights (fp32, CPU, eval mode); for an
    export with a probe ensemble (and ``ensemble``), the :class:`~aam_ds.model.probe_ensemble.ProbeEnsemble`
    of that network and its probe. ``ensemble=False``: the fine-tuned network alone."""
    from aam_ds.model.aam import AAMModel

    model = AAMModel(model_config(export.spec["model"]), **export.model_args)
    model.load_state_dict(export.state_dict)
    if export.probe is None or not ensemble:
        return model.eval()
    from aam_ds.model.probe_ensemble import LinearProbe, ProbeEnsemble

    part = export.probe
    pretrained = AAMModel(model_config(part["model_spec"]), **part["model_args"])
    pretrained.load_state_dict(part["state_dict"])
    probe = LinearProbe(part["mean"], part["scale"], part["coef"], part["intercept"])
    return ProbeEnsemble(model, pretrained, probe, part["weight"]).eval()


def probe_part(pretrained: Export, linear: dict[str, Any], weight: float, folds: int) -> dict[str, Any]:
    """An export's ``probe`` entry: the pretrained model the probe reads (weights, architecture), the
    linear map (``mean``, ``scale`` ``[D]``, ``coef`` ``[O, D]``, ``intercept`` ``[O]``), the fine-tuned
    model's share ``weight`` and the inner folds that chose it."""
    return {
        "state_dict": pretrained.state_dict,
        "model_spec": pretrained.spec["model"],
        "model_args": pretrained.model_args,
        **{name: torch.as_tensor(linear[name], dtype=torch.float32) for name in ("mean", "scale", "coef", "intercept")},
        "weight": float(weight),
        "inner_folds": int(folds),
    }
