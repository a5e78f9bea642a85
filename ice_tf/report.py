"""Evaluate any Keras model in one call: `ice_tf.evaluate`.

    report = ice_tf.evaluate(model, (x_test, y_test), {"svhn": x_svhn, "noise": x_noise})
    print(report.to_markdown())
    report.plot_roc("roc.png")

The model may be an `OODModel` or a plain Keras classifier ending in a Dense layer
(converted with `OODModel.from_classifier(head="linear")`, weights kept; its scores
come from the Dense layer's logits). Data may be arrays or `tf.data` datasets.
"""

from __future__ import annotations

import json

from ice_tf import data, detectors, export, models
from ice_tf.experiment import evaluation


class EvaluationReport:
    """Per-set and mean metrics of each score, with accuracy.

    Attributes:
      results: {score: the `ice_tf.experiment.evaluation.evaluate_model` dict} (fractions in [0, 1]).
      scores: {score: {"in": scores, set: scores}} raw scores (higher = more in-distribution).
      accuracy: in-distribution accuracy.

    Example:
      report.results["ice"]["mean"]["auroc"]["mean"]
    """

    def __init__(self, results, raw_scores):
        self.results = results
        self.scores = raw_scores

    @property
    def accuracy(self):
        return next(iter(self.results.values()))["accuracy"]

    def auroc(self, score=None, ood_set=None):
        """AUROC of `score` (default: the first) on `ood_set` (default: the mean over sets)."""
        result = self.results[score or next(iter(self.results))]
        return (result["mean"] if ood_set is None else result["sets"][ood_set])["auroc"]["mean"]

    def to_markdown(self):
        """One markdown table per score (percentages)."""
        return "\n".join(evaluation.results_markdown(result, title=f"score: {score}")
                         for score, result in self.results.items())

    def to_json(self):
        """The results as a JSON string."""
        return json.dumps(self.results, indent=2)

    def plot_roc(self, path):
        """Writes ROC curves (one panel per OOD set, one curve per score) as a PNG."""
        from ice_tf.figures import plotting

        sets = [label for label in next(iter(self.scores.values())) if label != "in"]
        figure, _ = plotting.roc_figure(self.scores, sets)
        return plotting.save_png(figure, path)

    def __repr__(self):
        first = next(iter(self.results))
        return (f"EvaluationReport(scores={list(self.results)}, accuracy={self.accuracy:.4f}, "
                f"mean AUROC ({first})={self.auroc():.4f})")


def _check_image_shape(shape, model, what):
    """Images of another size or channel count than the model takes are refused in one
    line (the command line resizes its sets; arrays given here are the caller's to match)."""
    try:
        expected = tuple(model.image_shape or ())
    except (AttributeError, ValueError):
        return  # a subclassed backbone that does not know its input shape
    found = tuple(shape)[-3:]
    if expected and len(found) == 3 and None not in found and found != expected:
        raise ValueError(
            f"{what} has images of shape {found}, but the model takes {expected}: resize or convert "
            "them first (ice_tf.data.images.prepare does so for uint8 or [0, 1] pixels, as the "
            "command line does), then normalise them as the in-distribution images.")


def evaluate(model, in_data, ood_data, *, scores=None, protocol="full", num_draws=10, seed=0,
             train_data=None, feature_layer=None, odin_std=1.0, batch_size=256, verbose=1):
    """OOD detection of every OOD set against in-distribution data, and accuracy.

    AUPR is average precision, as scikit-learn and the OE/Energy code compute it; it
    differs from OpenOOD's and pytorch-ood's trapezoidal AUPR where scores tie. FPR95
    is reported under both conventions (`ice_tf.metrics`).

    Args:
      model: an `OODModel`, or a plain Keras classifier ending in a Dense layer.
      in_data: `(x, y)` arrays or a dataset of `(x, y)` (unbatched or batched).
      ood_data: {name: images}, each an array, a dataset of images or of (images, labels).
      scores: detector names (`ice_tf.detectors.names()`: msp, max_logit, energy, ice,
        odin, mahalanobis); default the model's own (`ice` for a Gaussian head, the
        compiled method's score, else `msp`).
      protocol: "full" (every image once) or "oe" (`num_draws` draws of len(in)/5 OOD images).
      train_data: training `(x, y)`, needed by `mahalanobis` (class means, tied covariance).
      feature_layer: for a plain classifier, the layer whose outputs are the features
        (default: the input of its last Dense layer).
      odin_std: the per-channel std the inputs were divided by, for ODIN's input step.

    Returns:
      An `EvaluationReport`.

    Example:
      report = ice_tf.evaluate(classifier, (x_test, y_test), {"noise": x_noise},
                               scores=["msp", "mahalanobis"], train_data=(x_train, y_train))
    """
    if not isinstance(model, models.OODModel):
        model = models.OODModel.from_classifier(model, head="linear", feature_layer=feature_layer)
    if isinstance(scores, str):
        scores = [scores]
    scores = list(scores or [export.default_score(model)])
    unknown = [name for name in scores if name not in detectors.names()]
    if unknown:
        raise ValueError(f"unknown scores {unknown}; valid: {', '.join(detectors.names())}.")
    if not isinstance(ood_data, dict) or not ood_data:
        raise ValueError("ood_data must be a non-empty dict {name: images}.")
    in_dataset = data.batched(in_data, batch_size, shuffle=False)
    ood_datasets = {}
    for name, images in ood_data.items():
        images = data.images_only(images, what=f"OOD set {name!r}")
        _check_image_shape(images.element_spec.shape, model, f"OOD set {name!r}")
        ood_datasets[name] = images.map(lambda x: (x, 0)).batch(batch_size)
    results, raw_scores = {}, {}
    for index, name in enumerate(scores, 1):
        options = {"std": odin_std} if name in ("odin", "mahalanobis") else {}
        if verbose:
            print(f"[{index}/{len(scores)}] {name}: {1 + len(ood_datasets)} sets")
        fit_data = None if train_data is None else (
            lambda: data.batched(train_data, batch_size, shuffle=False))
        results[name], raw_scores[name] = evaluation.evaluate_with_detector(
            model, detectors.get(name, **options), in_dataset, ood_datasets, fit_data=fit_data,
            protocol=protocol, num_draws=num_draws, seed=seed, verbose=verbose,
            return_scores=True)
    return EvaluationReport(results, raw_scores)


__all__ = ["evaluate", "EvaluationReport"]
