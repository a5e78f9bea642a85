"""Training-time analyses: the paper's three causes of in-distribution incompatibility,
measured during training.

  statistics  pure functions: contradictory gradients (Eqs. 0.6-0.8), distribution shift
              (Fig. 3), confidence histograms (Fig. 5), summary tables.
  probes      the Keras callbacks that measure them on fixed probe images once per epoch,
              picked by name from the registry `probes.PROBES`.

`ANALYSES` names them; a run asks for some with `ExperimentConfig(analyses=...)`, and
`ice_tf.experiment.run_folder.read_analyses` reads their records back.

Example:
    from ice_tf.analysis import statistics
    statistics.contradictory_fractions(loss, labels, logits_in, logits_out)["contradictory_out"]
"""

import importlib
import warnings

# The analyses a run may record, each to <run>/analysis/<name>.jsonl; `probes.PROBES` has
# one entry for each. Here, free of TensorFlow, so that the config can check the names.
ANALYSES = ("gradient_meter", "shift", "confidence")

# Names that `ice_tf.analysis` held when it was one module, and where they live now.
_MOVED_NAMES = {
    "analysis_path": "ice_tf.experiment.run_folder",
    "read_analyses": "ice_tf.experiment.run_folder",
    "read_jsonl": "ice_tf.experiment.run_folder",
    "ANALYSIS_DIR": "ice_tf.experiment.run_folder",
}


def __getattr__(name):
    if name in ("statistics", "probes"):
        return importlib.import_module(f"ice_tf.analysis.{name}")
    if name in _MOVED_NAMES:
        warnings.warn(f"ice_tf.analysis.{name} is now {_MOVED_NAMES[name]}.{name}.",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED_NAMES[name]), name)
    statistics = importlib.import_module("ice_tf.analysis.statistics")
    if name in statistics.__all__:
        # `ice_tf.analysis` was one module, the statistics, until the probes joined it.
        return getattr(statistics, name)
    raise AttributeError(f"module 'ice_tf.analysis' has no attribute {name!r}")
