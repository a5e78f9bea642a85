"""A tiny deterministic run for the fault tests, in its own process.

  python tests/fault_runner.py FOLDER [FOLDER ...] [--kill-at=EPOCH:STEP]

Trains each folder in turn with the same config (only output_dir differs); with
--kill-at, the last folder's run kills its own process (SIGKILL, as a crash or an
out-of-memory kill would) when it reaches that step of that epoch (1-based).
"""

import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from ice_tf import experiment  # noqa: E402
from ice_tf.experiment.config import ExperimentConfig  # noqa: E402

TINY_DETERMINISTIC = dict(
    backbone="small_cnn", loss="ice", limit_train=192, batch_in=32, batch_out=64, epochs=3,
    learning_rate=0.01, eval_limit=100, eval_draws=1, ood_datasets=("gaussian",),
    analyses=("confidence",), analysis_probe_size=16, export=False, deterministic=True,
)


class KillAt(keras.callbacks.Callback):
    def __init__(self, epoch, step):
        super().__init__()
        self.epoch, self.step, self._current = epoch, step, 0

    def on_epoch_begin(self, epoch, logs=None):
        self._current = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if (self._current, batch + 1) == (self.epoch, self.step):
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv):
    kill_at = [a for a in argv if a.startswith("--kill-at=")]
    folders = [a for a in argv if not a.startswith("--")]
    for index, folder in enumerate(folders):
        callbacks = []
        if kill_at and index == len(folders) - 1:
            epoch, step = map(int, kill_at[0].split("=", 1)[1].split(":"))
            callbacks = [KillAt(epoch, step)]
        config = ExperimentConfig(output_dir=folder, **TINY_DETERMINISTIC)
        experiment.run(config, verbose=0, callbacks=callbacks)


if __name__ == "__main__":
    main(sys.argv[1:])
