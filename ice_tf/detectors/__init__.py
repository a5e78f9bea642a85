"""OOD detectors: output scores and the post-hoc detectors, by name.

A detector turns a batch of (normalised) images into OOD scores, higher meaning
more in-distribution, and also returns the head outputs of the clean images (for
accuracy). Some need statistics of the training set first (`fit`).

| name          | score                                                  | fit            |
|---------------|--------------------------------------------------------|----------------|
| `msp`, `max_logit`, `energy`, `ice` | `ice_tf.scores` of the head outputs | no         |
| `odin`        | max softmax(f(x')/T), x' perturbed (Liang et al. 2018) | no             |
| `mahalanobis` | max_c tied-Gaussian log-likelihood of z(x') (Lee et al. 2018) | means, Σ |
| `gen`         | generalized entropy of the softmax (Liu et al. 2023), an output score | no |
| `knn`, `vim`, `react`, `ash`, `scale`, `relative_mahalanobis` | on the features z (`detectors.features`) | see there |

Both post-hoc detectors follow the Energy code (wetliu/energy_ood,
`utils/score_calculation.py`): the input step is the sign of the gradient (a zero
gradient counts as +1), divided per channel by the normalisation std, so that ε is
measured in [0, 1] pixel units although the images are already normalised.

Example:
  detector = detectors.get("odin", std=data.normalization("cifar10")[1])
  scores, outputs = detector.score(model, images)
  mahalanobis = detectors.get("mahalanobis").fit(model, train_dataset)
  results = evaluation.evaluate_model(model, in_ds, ood_ds, score=mahalanobis)
"""

from __future__ import annotations


from ice_tf import scores as scores_lib
from ice_tf.detectors.base import (Detector, OutputScore, load_arrays,  # noqa: F401
                                   load_statistics, model_fingerprint, save_arrays,
                                   save_statistics, training_features)
from ice_tf.detectors.features import (ASH, FEATURE_DETECTORS, KNN, SCALE,  # noqa: F401
                                       FeatureDetector, ReAct, RelativeMahalanobis, ViM,
                                       vim_dimension)
from ice_tf.detectors.mahalanobis import Mahalanobis, class_statistics, tied_precision  # noqa: F401
from ice_tf.detectors.odin import ODIN

# ------------------------------------------------------------------- registry
_POST_HOC = {"odin": ODIN, "mahalanobis": Mahalanobis, **FEATURE_DETECTORS}


def names():
    """Every detector name: the output scores and the post-hoc detectors.

    Example:
      names()  # ['ash', 'energy', 'gen', 'ice', 'knn', 'mahalanobis', 'max_logit', ...]
    """
    return sorted([*scores_lib.names(), *_POST_HOC])


def get(name, **options):
    """The detector called `name` (a `Detector` is returned as is).

    Options go to the post-hoc detectors (e.g. `get("odin", temperature=1000,
    epsilon=0.0014, std=...)`); output scores take none.

    Example:
      get("odin", temperature=100.0)
    """
    if isinstance(name, Detector):
        return name
    if name in _POST_HOC:
        return _POST_HOC[name](**options)
    if isinstance(name, str) and name in scores_lib.names():
        if options:
            raise ValueError(f"score {name!r} takes no options; got {sorted(options)}.")
        return OutputScore(name)
    raise ValueError(f"Unknown detector {name!r}; valid detectors: {', '.join(names())}.")


# Names that lived here before the run-folder knowledge moved to the experiment layer.
_MOVED_NAMES = {"for_run": "ice_tf.experiment.evaluation", "default_stats_path":
                "ice_tf.experiment.evaluation", "STATS_FILE": "ice_tf.experiment.run_folder"}


def __getattr__(name):
    if name in _MOVED_NAMES:
        import importlib
        import warnings

        warnings.warn(f"ice_tf.detectors.{name} is now {_MOVED_NAMES[name]}.{name}.",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED_NAMES[name]), name)
    raise AttributeError(f"module 'ice_tf.detectors' has no attribute {name!r}")


def fitted_names():
    """The detectors fitted to training features, whose statistics a run keeps.

    Example:
      "knn" in fitted_names()  # True
    """
    return sorted(name for name, detector in _POST_HOC.items() if detector.needs_fit)


def detector_class(name):
    """The class of post-hoc detector `name` (None for a score of the outputs).

    Example:
      detector_class("knn")  # KNN
    """
    return _POST_HOC.get(name)


__all__ = [
    "Detector", "OutputScore", "ODIN", "Mahalanobis", "names", "get", "fitted_names",
    "detector_class", "class_statistics", "tied_precision",
    "model_fingerprint", "save_statistics", "load_statistics",
    "FeatureDetector", "KNN", "ViM", "ReAct", "ASH", "SCALE", "RelativeMahalanobis",
    "FEATURE_DETECTORS", "vim_dimension", "save_arrays", "load_arrays", "training_features",
]
