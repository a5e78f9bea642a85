"""Trains, evaluates and exports one model.

  python scripts/train.py --flagfile=flags/experiments/cifar10_wrn_finetune_ice.flags
  python scripts/train.py --flagfile=flags/demo.flags --loss=ice --output_dir=runs/ice
  python scripts/train.py --flagfile=... --dry_run      # mock data, one step, no output

The run folder gets flags.txt (re-runnable), config.json, metrics.jsonl,
tensorboard/, checkpoints/, model.keras, saved_model/, results.json and
results.md (see ice_tf.experiment).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

import experiment_flags  # noqa: E402
from ice_tf import evaluation, experiment  # noqa: E402

experiment_flags.define_flags()
FLAGS = flags.FLAGS


def main(argv):
    experiment_flags.quiet_tensorflow_logging(FLAGS)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = experiment_flags.config_from_flags(FLAGS)
    if config.dry_run:
        logs = experiment.dry_run(config)
        print("dry run OK: " + ", ".join(f"{k}={v:.4g}" for k, v in logs.items()))
        return
    os.makedirs(config.output_dir, exist_ok=True)
    experiment.write_atomic(
        os.path.join(config.output_dir, "flags.txt"), experiment_flags.to_flagfile(config)
    )
    results = experiment.run(config)
    print()
    print(evaluation.results_markdown(results, title=f"{config.loss} on {config.in_dataset}"))
    print(f"Run folder: {config.output_dir}")


if __name__ == "__main__":
    app.run(main)
