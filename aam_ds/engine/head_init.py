"""LP-FT: a linear task head that starts as the linear probe of the pretrained sample embeddings.

With ``model.task_head=linear`` and ``model.task_head_init=linear_probe``, fine-tuning first embeds
the training split with the pretrained model (evaluation mode), fits the project's linear model on
those embeddings (:func:`aam_ds.evaluation.linear_baseline.linear_model`: standardise, then ridge
regression or L2 logistic regression with the penalty chosen by inner cross-validation) and writes
it into the head, the standardisation folded into the weights, so that step 0 predicts exactly what
the probe predicts. Fine-tuning then trains everything from there.

A randomly initialised head sends large, arbitrary gradients into the pretrained encoder during
the first steps and distorts the features it carries; starting from the probe keeps them (Kumar et
al. 2022). On the benchmark's small tables, where the fine-tuned model and the probe score alike,
the difference is measured in docs/benchmarks.md (issue 17).

References:
    Kumar, A., Raghunathan, A., Jones, R., Ma, T., Liang, P. (2022). Fine-Tuning can Distort
    Pretrained Features and Underperform Out-of-Distribution. ICLR 2022, arXiv:2202.10054.
"""

from __future__ import annotations

import numpy as np
import torch

from aam_ds.data.prepare import PreparedData
from aam_ds.errors import AamInputError
from aam_ds.evaluation.linear_baseline import linear_model
from aam_ds.model.aam import AAMModel
from aam_ds.prediction import embed_inputs, split_inputs

ABSENT_CLASS_LOGIT_GAP = 10.0  # a class absent from the training split starts this far below the lowest fitted logit


def init_head_from_probe(model: AAMModel, data: PreparedData, task: str, class_weights: bool, seed: int, device: torch.device) -> str:
    """Fit the linear probe on the training split and copy it into ``model``'s linear task head.

    Parameters
    ----------
    model : AAMModel
        With pretrained weights and a linear task head (``model.task_head=linear``); left in
        training mode on ``device``. Regression targets are fitted in the units of its
        ``target_normalizer`` (already fitted on the training split), as the head predicts them.
    data : PreparedData
        Its ``train`` split is embedded (every selected ASV of each sample, no augmentation).
    task : {'regression', 'classification'}
    class_weights : bool
        Classification: weight classes by inverse frequency (``class_weight='balanced'``), as
        ``loss.class_weights`` weights the fine-tuning loss.
    seed : int
        The inner cross-validation's seed (logistic regression).
    device : torch.device
        Where the embeddings are computed.

    Returns
    -------
    str
        For the run header ("task head: ..."): the samples fitted and the penalty chosen.

    Raises
    ------
    AamInputError
        The model's head is not linear, or a classification training split holds a single class.
    """
    head = model.task_head.mlp[-1] if model.task_head is not None else None
    if head is None or len(model.task_head.mlp) != 1:
        raise AamInputError("model.task_head_init", "linear_probe initialises a linear task head", "set model.task_head=linear")
    inputs = split_inputs(data, "train")
    embeddings = embed_inputs(model, inputs, device=device)
    model.train()
    rows = data.splits["train"]
    probe = linear_model(task, seed)
    if task == "regression":
        targets = model.target_normalizer.transform(torch.as_tensor(data.targets[rows]).float().to(device)).cpu().numpy()
        probe.fit(embeddings, targets)
        weight, bias = np.atleast_2d(probe[-1].coef_), np.atleast_1d(probe[-1].intercept_)
        penalty = f"ridge alpha {probe[-1].alpha_:.3g}"
    else:
        labels = data.targets[rows]
        if len(np.unique(labels)) < 2:
            raise AamInputError(
                "model.task_head_init", "the training split holds a single class, so no probe can be fitted", "use task_head_init=random"
            )
        if class_weights:
            probe.set_params(logisticregressioncv__class_weight="balanced")
        probe.fit(embeddings, labels)
        weight, bias = class_logits(probe[-1], len(data.class_names))
        penalty = f"logistic C {float(np.ravel(probe[-1].C_)[0]):.3g}"
    scaler = probe[0]
    weight = weight / scaler.scale_  # w·(x - mean)/scale + b = (w/scale)·x + (b - (w/scale)·mean)
    bias = bias - weight @ scaler.mean_
    with torch.no_grad():
        head.weight.zero_()  # covariate embeddings (after the sample embedding) start without effect
        head.weight[:, : weight.shape[1]] = torch.as_tensor(weight, dtype=head.weight.dtype)
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
    return f"the linear probe of {len(rows):,} training samples' pretrained embeddings ({penalty})"


def class_logits(estimator, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A fitted sklearn logistic regression -> per-class logit weights ``[n_classes, D]`` and biases
    ``[n_classes]`` whose softmax gives its probabilities (classes are the integer codes 0..n-1).

    Binary: sklearn's one logit z for ``classes_[1]`` becomes ±z/2 (softmax of (-z/2, z/2) is
    sigmoid(z)). A class absent from the fit gets weight 0 and a bias
    :data:`ABSENT_CLASS_LOGIT_GAP` below the lowest fitted one."""
    coef, intercept = estimator.coef_, estimator.intercept_
    if coef.shape[0] == 1:
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    weight = np.zeros((n_classes, coef.shape[1]))
    bias = np.full(n_classes, intercept.min() - ABSENT_CLASS_LOGIT_GAP)
    weight[estimator.classes_], bias[estimator.classes_] = coef, intercept
    return weight, bias
