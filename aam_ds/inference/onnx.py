"""ONNX export of a consolidated export (``aam-ds export-onnx``) and its runner for ``aam-ds predict``.

The ONNX graph maps one collated batch to the model's raw outputs:

- inputs ``tokens`` int64 ``[batch, asvs, L]`` (``L`` = the export's ``data.max_seq_len``; PAD rows
  for padding ASVs), ``counts`` float32 ``[batch, asvs]`` (0 on padding) and, only for a model with
  covariates, ``covariates`` int64 ``[batch, C]``: exactly what :func:`aam_ds.data.dataset.collate`
  returns. ``batch`` and ``asvs`` are dynamic axes.
- outputs ``sample_embedding`` float32 ``[batch, D]`` and, for a fine-tuned export, ``task`` float32
  ``[batch, T]`` (regression, normalised units) or ``[batch, n_classes]`` (logits).

The graph holds no preprocessing and no de-normalisation: ``aam-ds predict`` preprocesses the table
with :func:`aam_ds.inference.predict.prepare_inputs` and turns raw outputs into predictions with
:func:`aam_ds.prediction.predict_inputs` (the normaliser's ``inverse`` or the softmax), the torch
path's own code. What that code needs travels in the file's ``metadata_props``: ``aam_ds.format``
(:data:`ONNX_FORMAT`), ``aam_ds.spec`` (the run spec as JSON; its ``data`` section is the
preprocessing), ``aam_ds.model_args``, ``aam_ds.targets`` (target names, class names, covariate
classes), ``aam_ds.normalizer`` (``{"mean": [...], "std": [...]}`` per regression target, or null)
and ``aam_ds.step``.

Export path: ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` + onnxscript), opset
:data:`OPSET`. The TorchScript exporter (``dynamo=False``) was tried and its graph disagreed with
PyTorch by ~0.3 on the tiny preset, so it is not used. The exported copy of the model encodes all
present ASVs in one chunk (``asv_chunk_size`` only bounds training memory; a split would fix the
number of ASVs in the graph) and without the frozen-vector memo (a Python dict keyed by token
bytes, which cannot be traced; in evaluation mode it returns the same vectors). The ASV identity
hash, the boolean attention masks and the gather / scatter of present ASVs export as plain ONNX
ops (Mod, Where, NonZero, ScatterND). The graph runs on CPU through onnxruntime.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from aam_ds.data.dataset import SampleDataset, collate
from aam_ds.data.select import SampleRow
from aam_ds.data.sequences import A, T
from aam_ds.errors import AamInputError
from aam_ds.export import Export, build_exported_model, load_export
from aam_ds.io_utils import atomic_path
from aam_ds.model.normalization import TargetNormalizer

ONNX_FORMAT = "aam-ds-onnx/1"
OPSET = 18
EXAMPLE_ASVS = (7, 3, 5)  # ASVs per sample of the tracing batch: padding rows in two of its samples


class _Outputs(torch.nn.Module):
    """The model as a function of tensors alone: (tokens, counts[, covariates]) -> output tuple."""

    def __init__(self, model: torch.nn.Module, outputs: tuple[str, ...]):
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, tokens: torch.Tensor, counts: torch.Tensor, covariates: torch.Tensor | None = None):
        out = self.model(tokens, counts, set(self.outputs), covariates)
        return tuple(out[name] for name in self.outputs)


def example_batch(max_seq_len: int, n_covariates: int) -> dict[str, torch.Tensor]:
    """A collated batch of random ASVs (samples of :data:`EXAMPLE_ASVS` ASVs) to trace the graph with."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(A, T + 1, size=(max(EXAMPLE_ASVS), max_seq_len), dtype=np.uint8)
    rows = [SampleRow(i, np.arange(k), np.arange(1, k + 1, dtype=np.float32)) for i, k in enumerate(EXAMPLE_ASVS)]
    covariates = np.zeros((len(rows), n_covariates), dtype=np.int64) if n_covariates else None
    dataset = SampleDataset(rows, tokens, None, covariates)
    return collate([dataset[i] for i in range(len(rows))])


def onnx_metadata(export: Export) -> dict[str, str]:
    """The ``metadata_props`` of the ONNX file (see the module docstring)."""
    normalizer = None
    if "target_normalizer.mean" in export.state_dict:
        normalizer = {key: export.state_dict[f"target_normalizer.{key}"].double().tolist() for key in ("mean", "std")}
    return {
        "aam_ds.format": ONNX_FORMAT,
        "aam_ds.spec": json.dumps(export.spec),
        "aam_ds.model_args": json.dumps(export.model_args),
        "aam_ds.targets": json.dumps(export.targets),
        "aam_ds.normalizer": json.dumps(normalizer),
        "aam_ds.step": str(export.step),
    }


def export_onnx(model_path: str | Path, out: str | Path, opset: int = OPSET) -> Path:
    """Write the ONNX graph of the consolidated export ``model_path`` to ``out`` (atomically).

    Raises:
        AamInputError: ``model_path`` is missing, not an aam-ds export, or a probe ensemble.
    """
    export = load_export(Path(model_path))
    if export.probe is not None:
        raise AamInputError(
            str(model_path),
            "is a probe ensemble (model.probe_ensemble_folds): two networks and a linear probe, which one ONNX graph does not hold",
            "serve it with `aam-ds predict --model model.pt`, or fine-tune with model.probe_ensemble_folds=0 for an ONNX export",
        )
    model = build_exported_model(export)
    model.config = dataclasses.replace(model.config, asv_chunk_size=0, freeze_sequence_encoder=False)
    model.pack_asvs = False  # a graph of fixed operators: no data-dependent torch.unique (aam_ds.model.packing)
    outputs = ("sample_embedding", "task") if model.task_head is not None else ("sample_embedding",)
    batch = example_batch(model.max_seq_len, len(export.model_args.get("covariate_cardinalities", ())))
    names = ["tokens", "counts"] + (["covariates"] if "covariates" in batch else [])
    samples, asvs = torch.export.Dim("batch"), torch.export.Dim("asvs")
    axes = {"tokens": {0: samples, 1: asvs}, "counts": {0: samples, 1: asvs}, "covariates": {0: samples}}
    program = torch.onnx.export(
        _Outputs(model, outputs).eval(),
        tuple(batch[name] for name in names),
        dynamo=True,
        opset_version=opset,
        input_names=names,
        output_names=list(outputs),
        dynamic_shapes={name: axes[name] for name in names},
        verbose=False,
    )
    program.model.metadata_props.update(onnx_metadata(export))
    out = Path(out)
    with atomic_path(out) as tmp:
        program.save(str(tmp))
    return out


class OnnxModel:
    """An exported ONNX graph in an onnxruntime CPU session, called like :meth:`AAMModel.forward`
    by :func:`aam_ds.prediction.predict_inputs`.

    Attributes:
        description: the export's spec, model arguments and targets (an :class:`Export` without weights).
        target_normalizer: the training targets' normaliser (regression), or None.
    """

    def __init__(self, path: str | Path):
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise AamInputError(str(path), "ONNX model not found", "write it with `aam-ds export-onnx --model model.pt --out model.onnx`")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a damaged file
            raise AamInputError(str(path), f"cannot be read as an ONNX model ({exc})", "re-export it with `aam-ds export-onnx`") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("aam_ds.format") != ONNX_FORMAT:
            raise AamInputError(
                str(path),
                "is not an aam-ds ONNX export (no aam_ds.format in its metadata)",
                "export the model.pt with `aam-ds export-onnx`",
            )
        self.description = Export(
            {},
            json.loads(meta["aam_ds.spec"]),
            json.loads(meta["aam_ds.model_args"]),
            json.loads(meta["aam_ds.targets"]),
            int(meta["aam_ds.step"]),
        )
        normalizer = json.loads(meta["aam_ds.normalizer"])
        self.target_normalizer = None
        if normalizer is not None:
            self.target_normalizer = TargetNormalizer(len(normalizer["mean"]))
            self.target_normalizer.mean.copy_(torch.tensor(normalizer["mean"]))
            self.target_normalizer.std.copy_(torch.tensor(normalizer["std"]))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def to(self, device: str | torch.device) -> "OnnxModel":
        """Refuses any device but the CPU (the session runs on onnxruntime's CPU provider)."""
        if torch.device(device).type != "cpu":
            raise AamInputError(
                "--device",
                f"an ONNX model runs on the CPU through onnxruntime, not on {device}",
                "use --device cpu, or predict with the model.pt on the GPU",
            )
        return self

    def eval(self) -> "OnnxModel":
        """Returns self (the graph has no training mode)."""
        return self

    def __call__(
        self, tokens: torch.Tensor, counts: torch.Tensor, want: set[str] | frozenset[str], covariates: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The outputs named in ``want`` (float32 tensors, see the module docstring) of one collated batch."""
        names = sorted(want)
        unknown = set(names) - set(self.output_names)
        if unknown:
            raise ValueError(f"OnnxModel: outputs {sorted(unknown)} are not in this graph, which has {self.output_names}")
        feeds = {"tokens": tokens.cpu().numpy(), "counts": counts.cpu().numpy()}
        if "covariates" in self.input_names:
            feeds["covariates"] = covariates.cpu().numpy()
        return {name: torch.from_numpy(value) for name, value in zip(names, self.session.run(names, feeds))}
