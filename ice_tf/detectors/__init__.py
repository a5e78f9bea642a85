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

import os

from ice_tf import run_folder
from ice_tf import scores as scores_lib
from ice_tf.detectors.base import (STATS_FILE, Detector, OutputScore, load_arrays,  # noqa: F401
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


def default_stats_path(model_path, detector="mahalanobis"):
    """Where a run's fitted `detector` keeps its statistics: `<run>/mahalanobis_stats.npz`
    (`<run>/<detector>_stats.npz`) for a run's model.keras, `<name>_<detector>_stats.npz`
    beside any other .keras file.

    Example:
      default_stats_path("runs/ice/model.keras")  # 'runs/ice/mahalanobis_stats.npz'
      default_stats_path("runs/ice/model.keras", "knn")  # 'runs/ice/knn_stats.npz'
    """
    model_path = os.path.abspath(model_path)
    directory, base = os.path.split(model_path)
    stats_file = run_folder.stats_file(detector)
    if base == run_folder.MODEL_FILE:
        return os.path.join(directory, stats_file)
    return os.path.join(directory, f"{os.path.splitext(base)[0]}_{stats_file}")


def for_run(name, config, model_path, *, odin_temperature=1000.0, odin_epsilon=0.0014,
            mahalanobis_epsilon=0.0, stats_path=None, refit=False):
    """A detector for a trained run: std from the run's in-distribution normalisation, and
    the statistics of a fitted detector (Mahalanobis and the feature detectors) cached
    beside the model file (`default_stats_path`), tied to the model file's hash and to
    the training images used (dataset, limit, seed).

    Example:
      detector = for_run("mahalanobis", config, "runs/ice/model.keras")
    """
    from ice_tf import data  # imported here: data loading is heavy for users of the scores only.

    if name not in names():
        raise ValueError(f"Unknown detector {name!r}; valid detectors: {', '.join(names())}.")
    std = data.normalization(config.in_dataset)[1]
    if name == "odin":
        return ODIN(temperature=odin_temperature, epsilon=odin_epsilon, std=std)
    if name not in _POST_HOC:
        return OutputScore(name)
    if not _POST_HOC[name].needs_fit:
        return _POST_HOC[name]()
    fingerprint = {
        "model": model_fingerprint(model_path),
        "train": {"dataset": config.in_dataset, "split": "train", "limit": config.limit_train,
                  "seed": config.seed if config.limit_train else None},
    }
    cached = dict(fingerprint=fingerprint, refit=refit,
                  stats_path=stats_path or default_stats_path(model_path, name))
    if name == "mahalanobis":
        return Mahalanobis(epsilon=mahalanobis_epsilon, std=std, **cached)
    return FEATURE_DETECTORS[name](**cached)


__all__ = [
    "Detector", "OutputScore", "ODIN", "Mahalanobis", "names", "get", "for_run",
    "default_stats_path", "class_statistics", "tied_precision",
    "model_fingerprint", "save_statistics", "load_statistics", "STATS_FILE",
    "FeatureDetector", "KNN", "ViM", "ReAct", "ASH", "SCALE", "RelativeMahalanobis",
    "FEATURE_DETECTORS", "vim_dimension", "save_arrays", "load_arrays", "training_features",
]
