"""Evaluates a trained model's OOD detection and in-distribution accuracy.

  python scripts/evaluate.py --model=runs/ice
  python scripts/evaluate.py --model=runs/ice --scores=ice,msp,energy --set=protocol=full
  python scripts/evaluate.py --model=other.keras --set=in_dataset=cifar10,ood_datasets=svhn+textures
  python scripts/evaluate.py --model=runs/demo/ce/seed1 --scores=msp,odin,mahalanobis

`--model` is a run folder (its config.json gives the datasets and the score) or a
.keras file (then the datasets come from the defaults and `--set`). `--set` takes
config overrides key=value (lists joined with '+'). Reports per OOD set and the
mean: AUROC, AUPR-In, AUPR-Out, FPR95 under both conventions, and accuracy;
written as JSON and markdown next to the model.

`--scores` also takes the post-hoc detectors `odin` (--odin_temperature,
--odin_epsilon) and `mahalanobis` (--mahalanobis_epsilon). Mahalanobis statistics
are fitted once on the run's training images and saved beside the model as
mahalanobis_stats.npz, tied to the model file's hash; later evaluations reuse them
and refit them when the model changed (or with --refit).
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from absl import app, flags  # noqa: E402

import experiment_flags  # noqa: E402
import ice_tf.models  # noqa: E402,F401  (registers the custom classes for loading)
from ice_tf import detectors, evaluation, experiment, run_data  # noqa: E402
from ice_tf.config import ExperimentConfig  # noqa: E402

flags.DEFINE_string("model", None, "A run folder (with model.keras and config.json) or a .keras file.")
flags.DEFINE_list("scores", [], f"Scores to evaluate ({', '.join(detectors.names())}); default: the run's.")
flags.DEFINE_string("set", "", "Config overrides, key=value,key=value (lists joined with '+').")
flags.DEFINE_string("output", None, "Output JSON path; default: evaluation-<protocol>.json beside the model.")
experiment_flags.define_detector_flags()
flags.mark_flag_as_required("model")
flags.register_validator(
    "scores", lambda names: all(n in detectors.names() for n in names),
    f"--scores must be among {', '.join(detectors.names())}.",
)
FLAGS = flags.FLAGS


def load_run(model_path):
    """(model, config, model_path) from a run folder or a .keras file."""
    if os.path.isdir(model_path):
        try:
            return experiment.load_run(model_path)
        except FileNotFoundError as error:
            raise app.UsageError(str(error)) from None
    if model_path.endswith(".keras"):
        config = ExperimentConfig()
    else:
        raise app.UsageError(f"--model={model_path} is neither a run folder nor a .keras file.")
    if not os.path.exists(model_path):
        raise app.UsageError(f"{model_path} does not exist; train it first with scripts/train.py.")
    return keras.models.load_model(model_path, compile=False), config, model_path


def main(argv):
    experiment_flags.quiet_tensorflow_logging(FLAGS)
    del argv
    model, config, model_path = load_run(FLAGS.model)
    overrides = experiment_flags.parse_overrides(FLAGS.set)
    config = config.replace(**overrides).validate()
    in_ds, ood_ds = run_data.make_eval_data(config)
    reports, all_results = [], {}
    for score in FLAGS.scores or [config.score_name]:
        print(f"Score {score}:")
        detector = detectors.for_run(score, config, model_path,
                                     **experiment_flags.detector_options(FLAGS))
        experiment_flags.fit_if_needed(detector, model, config)
        results = evaluation.evaluate_model(
            model, in_ds, ood_ds, score=detector, protocol=config.protocol,
            num_draws=config.eval_draws, seed=config.seed,
        )
        all_results[score] = results
        reports.append(evaluation.results_markdown(results, title=f"{os.path.basename(model_path)}: {score}"))
    output = FLAGS.output or os.path.join(
        os.path.dirname(os.path.abspath(model_path)), f"evaluation-{config.protocol}.json"
    )
    experiment.write_atomic(output, json.dumps(all_results, indent=2) + "\n")
    experiment.write_atomic(os.path.splitext(output)[0] + ".md", "\n".join(reports))
    print("\n".join(reports))
    print(f"Written: {output}")


if __name__ == "__main__":
    app.run(main)
