"""The experiment machinery: one run of a config, end to end, and the run folder it writes.

  config       the frozen `ExperimentConfig` (free of TensorFlow).
  run_folder   the run folder's names, contract and every reader of its files
               (free of TensorFlow); run_lock: one process per run folder.
  run_data     a config's datasets: training batches, evaluation and OOD sets.
  checkpoint   resume: the training state per epoch and its fallback; the metrics log.
  evaluation   OOD evaluation under a protocol, with any named detector.
  analyses     the training-time analyses a config asks for (`ice_tf.analysis`).
  runner       `run(config)`: data, model, training, evaluation, export.

`ice_tf.experiment.run(config)` and the runner's other names are reachable from the
package as they were when it was one module.

Example:
    from ice_tf.experiment import ExperimentConfig, run
    run(ExperimentConfig(loss="ice", dry_run=True, output_dir="runs/smoke"))
"""

import importlib

SUBMODULES = ("analyses", "checkpoint", "config", "evaluation", "run_data", "run_folder",
              "run_lock", "runner")


def __getattr__(name):
    # Loaded on first use: the config and the run folder work without TensorFlow.
    if name in SUBMODULES:
        return importlib.import_module(f"ice_tf.experiment.{name}")
    if name in ("ExperimentConfig", "OODSetSpec"):
        return getattr(importlib.import_module("ice_tf.experiment.config"), name)
    runner = importlib.import_module("ice_tf.experiment.runner")
    try:
        return getattr(runner, name)
    except AttributeError:
        raise AttributeError(f"module 'ice_tf.experiment' has no attribute {name!r}") from None


def __dir__():
    return sorted([*globals(), *SUBMODULES, "ExperimentConfig", "OODSetSpec"])
