"""One worker of a local multi-worker cluster, for tests/test_multi_worker.py.

  TF_CONFIG=... python tests/multi_worker_runner.py steps INIT.npz OUT.npz
      two training steps of a small ICE model on fixed global batches, from the
      weights in INIT.npz; writes the final weights to OUT.npz ("{}" in it: the
      worker's index).
  python tests/multi_worker_runner.py reference INIT.npz OUT.npz
      the same on one device, from fresh weights that it also writes to INIT.npz.
  TF_CONFIG=... python tests/multi_worker_runner.py run FOLDER [--kill-at=EPOCH:STEP]
      ice_tf.experiment.run of a tiny deterministic config with strategy=multi_worker
      into FOLDER (the chief's run folder; other workers write elsewhere).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ice_tf import distribute  # noqa: E402

# Before any other TensorFlow op, as a multi-worker strategy must be made.
STRATEGY = distribute.get_strategy("default" if sys.argv[1] == "reference" else "multi_worker")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import blob_data, zipped_dataset  # noqa: E402

from ice_tf import models  # noqa: E402

SHAPE, CLASSES, BATCH_IN, BATCH_OUT = (8, 8, 1), 3, 16, 32


def build_and_compile(strategy):
    """The small ICE model of the step test, compiled as training compiles it."""
    model = models.build_model("small_cnn", SHAPE, CLASSES, head="gaussian", strategy=strategy,
                               width=4, feature_dim=8)
    with strategy.scope():
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True), loss="ice",
                      weight_decay=5e-4)
    return model


def global_batches():
    images, labels, outliers = blob_data(num_in=BATCH_IN * 2, num_out=BATCH_OUT * 2,
                                         num_classes=CLASSES, shape=SHAPE)
    return zipped_dataset(images, labels, outliers, BATCH_IN, BATCH_OUT)


def steps(init_path, out_path):
    model = build_and_compile(STRATEGY)
    model.set_weights(list(np.load(init_path).values()))
    dataset = distribute.distribute_per_worker(STRATEGY, global_batches())
    model.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0)
    np.savez(out_path.format(STRATEGY.cluster_resolver.task_id), *model.get_weights())


def reference(init_path, out_path):
    keras.utils.set_random_seed(0)
    model = build_and_compile(STRATEGY)
    np.savez(init_path, *model.get_weights())
    model.fit(global_batches(), epochs=1, steps_per_epoch=2, verbose=0)
    np.savez(out_path, *model.get_weights())


def run(folder, kill_at=None):
    from fault_runner import TINY_DETERMINISTIC, KillAt

    from ice_tf import experiment
    from ice_tf.experiment.config import ExperimentConfig

    settings = dict(TINY_DETERMINISTIC, epochs=2, analyses=(), precision="float32")
    config = ExperimentConfig(**settings, strategy="multi_worker", output_dir=folder)
    extra = [KillAt(*map(int, kill_at.split(":")))] if kill_at else []
    experiment.run(config, verbose=1, callbacks=extra)


if __name__ == "__main__":
    if sys.argv[1] in ("steps", "reference"):
        {"steps": steps, "reference": reference}[sys.argv[1]](sys.argv[2], sys.argv[3])
    else:
        kill = next((a.split("=", 1)[1] for a in sys.argv[3:] if a.startswith("--kill-at=")), None)
        run(sys.argv[2], kill)
