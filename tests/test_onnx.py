"""ONNX export (``aam-ds export-onnx``) and ONNX prediction (``aam-ds predict --model model.onnx``):
onnxruntime's outputs equal PyTorch's on batches of different sizes with padding ASVs, for a
regression and a classification (with covariates) export, and both formats give the same TSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_predict import predict_cli, run, write_demo_subset, write_untrained_export

from aam_ds.errors import AamInputError
from aam_ds.evaluation.predictions import read_predictions


@pytest.fixture(scope="module")
def exports(cache, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """model.pt and its model.onnx, for a regression and a classification export with a covariate."""
    from aam_ds.inference.onnx import export_onnx

    folder = tmp_path_factory.mktemp("onnx")
    tasks = {
        "regression": {"loss.task": "regression", "data.targets": "[age]"},
        "classification": {"loss.task": "classification", "data.targets": "[body_site]", "data.covariates": "[subject]"},
    }
    found = {}
    for task, overrides in tasks.items():
        pt = write_untrained_export(folder / task / "model.pt", cache, **overrides)
        found[task] = (pt, export_onnx(pt, folder / task / "model.onnx"))
    return found


def batches(inputs, sizes: list[int]):
    """Collated batches of ``sizes`` consecutive samples of ``inputs``, each sample cut to a different
    number of its ASVs, so that every multi-sample batch has padding rows."""
    from aam_ds.data.dataset import SampleDataset, collate
    from aam_ds.data.select import SampleRow

    rows = [
        SampleRow(r.sample_index, r.asv_index[:k], r.counts[:k])
        for i, r in enumerate(inputs.rows)
        for k in [1 + (7 * i) % len(r.asv_index)]
    ]
    dataset = SampleDataset(rows, inputs.tokens, None, inputs.covariates)
    start = 0
    for size in sizes:
        yield collate([dataset[i] for i in range(start, start + size)])
        start += size


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_onnxruntime_matches_pytorch_on_batches_of_any_shape(exports, demo, task):
    from aam_ds.export import build_exported_model, load_export
    from aam_ds.inference.onnx import OnnxModel
    from aam_ds.inference.predict import prepare_inputs

    pt, onnx_path = exports[task]
    export = load_export(pt)
    model, graph = build_exported_model(export), OnnxModel(onnx_path)
    assert graph.description.spec == export.spec and graph.description.targets == export.targets
    inputs = prepare_inputs(export, demo.table, metadata=demo.metadata)
    shapes = set()
    for batch in batches(inputs, [1, 2, 5, 17, 40]):
        args = (batch["tokens"], batch["counts"], {"sample_embedding", "task"}, batch.get("covariates"))
        with torch.no_grad():
            expected = model(*args)
        got = graph(*args)
        shapes.add(tuple(batch["counts"].shape))
        assert (batch["counts"] == 0).any() == (len(batch["counts"]) > 1)  # padding rows in the multi-sample batches
        for name in ("sample_embedding", "task"):
            assert got[name].shape == expected[name].shape
            np.testing.assert_allclose(got[name].numpy(), expected[name].numpy(), atol=1e-4, rtol=0)
    assert len({a for _, a in shapes}) > 1  # different numbers of ASVs as well as of samples


def test_onnx_file_records_what_predict_needs(exports):
    from aam_ds.inference.onnx import OnnxModel

    graph = OnnxModel(exports["regression"][1])
    assert graph.input_names == ["tokens", "counts"] and graph.output_names == ["sample_embedding", "task"]
    assert graph.description.spec["data"]["max_seq_len"] == 48 and graph.description.targets["target_names"] == ["age"]
    state = torch.load(exports["regression"][0], weights_only=False)["state_dict"]
    np.testing.assert_allclose(graph.target_normalizer.mean.numpy(), state["target_normalizer.mean"].numpy())
    assert float(graph.target_normalizer.std[0]) > 1  # the ages' spread, in years: de-normalisation is not a no-op
    classifier = OnnxModel(exports["classification"][1])
    assert classifier.input_names == ["tokens", "counts", "covariates"] and classifier.target_normalizer is None
    with pytest.raises(AamInputError, match="runs on the CPU"):
        classifier.to("cuda")


def test_predict_gives_the_same_predictions_from_both_formats(exports, demo):
    from aam_ds.inference.predict import predict_table

    for task, (pt, onnx_path) in exports.items():
        torch_path = predict_table(pt, demo.table, metadata=demo.metadata, passes=2, subset_fraction=0.7)[0]
        onnx = predict_table(onnx_path, demo.table, metadata=demo.metadata, passes=2, subset_fraction=0.7)[0]
        assert onnx.sample_ids == torch_path.sample_ids and onnx.task == torch_path.task == task
        for field in ("values", "std", "probabilities"):
            if getattr(torch_path, field) is not None:
                np.testing.assert_allclose(getattr(onnx, field), getattr(torch_path, field), atol=1e-4, rtol=1e-5)


@pytest.mark.slow
def test_cli_exports_and_predicts_the_same_tsv(exports, demo, tmp_path):
    import sys

    pt = exports["regression"][0]
    onnx_path = tmp_path / "age.onnx"
    printed = run([sys.executable, "-m", "aam_ds.cli", "export-onnx", "--model", str(pt), "--out", str(onnx_path)], timeout=180)
    assert f"wrote {onnx_path} (opset 18)" in printed
    table = write_demo_subset(tmp_path / "table.tsv", demo.table, list(range(0, 300, 7)))
    tsvs = []
    for model in (pt, onnx_path):
        out = tmp_path / f"{model.suffix[1:]}.tsv"
        predict_cli("--model", str(model), "--table", str(table), "--out", str(out), "--device", "cpu")
        tsvs.append(out)
    torch_rows, onnx_rows = (path.read_text().splitlines() for path in tsvs)
    assert torch_rows[0] == onnx_rows[0] and len(torch_rows) == len(onnx_rows) == 44
    a, b = (read_predictions(path, "age", "regression") for path in tsvs)
    assert a.sample_ids == b.sample_ids
    np.testing.assert_allclose(b.values, a.values, atol=1e-4, rtol=1e-5)


def test_refuses_files_that_are_not_aam_onnx_exports(tmp_path):
    from aam_ds.inference.predict import load_predictor

    with pytest.raises(AamInputError, match="ONNX model not found"):
        load_predictor(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(AamInputError, match="cannot be read as an ONNX model"):
        load_predictor(tmp_path / "junk.onnx")


@pytest.mark.slow
def test_pretraining_export_gives_the_sample_embedding(cache, demo, tmp_path):
    from aam_ds.export import build_exported_model, load_export
    from aam_ds.inference.onnx import OnnxModel, export_onnx
    from aam_ds.inference.predict import prepare_inputs
    from aam_ds.prediction import embed_inputs

    pt = write_untrained_export(tmp_path / "model.pt", cache, finetuning=False)
    graph = OnnxModel(export_onnx(pt, tmp_path / "model.onnx"))
    assert graph.output_names == ["sample_embedding"]
    export = load_export(pt)
    inputs = prepare_inputs(export, write_demo_subset(tmp_path / "table.tsv", demo.table, list(range(0, 300, 5))))
    expected = embed_inputs(build_exported_model(export), inputs, batch_size=64)
    np.testing.assert_allclose(embed_inputs(graph, inputs, batch_size=64), expected, atol=1e-4, rtol=0)
    with pytest.raises(AamInputError, match="pretraining export"):
        from aam_ds.inference.predict import predict_table

        predict_table(tmp_path / "model.onnx", tmp_path / "table.tsv")
