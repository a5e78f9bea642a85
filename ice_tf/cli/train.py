"""Trains, evaluates and exports one model.

  ice-tf train --flagfile=experiments/cifar10_wrn40_2_finetune_ice
  ice-tf train --flagfile=demo --loss=ice --output_dir=runs/ice
  ice-tf train --flagfile=... --dry_run      # mock data, one step, no output

The run folder gets flags.txt (re-runnable), config.json, metrics.jsonl,
tensorboard/, checkpoints/, model.keras, saved_model/, results.json and
results.md (see ice_tf.experiment.run_folder). The same command after a kill resumes from the
last finished epoch; a finished folder, or one of another config, is refused
unless --overwrite; a folder another process is writing is refused at once.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from ice_tf.cli import experiment_flags, runner  # noqa: E402
from ice_tf import experiment  # noqa: E402
from ice_tf.experiment import evaluation, run_folder  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """Defines the flags of `ice-tf train` (once per process: `run` calls it).

    Example:
      define_flags()  # then flags.FLAGS(argv)
    """
    experiment_flags.define_flags()
    experiment_flags.define_run_flags()


@experiment_flags.one_line_errors
def main(argv):
    """Trains, evaluates and exports one run (or dry-runs it).

    Example:
      run(["ice-tf train", "--flagfile=demo", "--dry_run"])
    """
    experiment_flags.quiet_tensorflow_logging(FLAGS)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = experiment_flags.config_from_flags(FLAGS)
    if config.dry_run:
        logs = experiment.dry_run(config)
        print("dry run OK: " + ", ".join(f"{k}={v:.4g}" for k, v in logs.items()))
        return
    results = experiment.run(config, overwrite=FLAGS.overwrite,
                             files={run_folder.FLAGS_FILE: experiment_flags.to_flagfile(config.resolved())})
    print()
    print(evaluation.results_markdown(results, title=f"{config.loss} on {config.in_dataset}"))
    print(f"Run folder: {config.output_dir}")


run = runner.command(define_flags, main, __doc__)


if __name__ == "__main__":
    run()
