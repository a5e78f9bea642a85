"""Evaluates a trained model's OOD detection and in-distribution accuracy.

  ice-tf evaluate --model=runs/ice
  ice-tf evaluate --model=runs/ice --scores=ice,msp,energy --set=protocol=full
  ice-tf evaluate --model=other.keras --set=in_dataset=cifar10,ood_datasets=svhn+textures
  ice-tf evaluate --model=runs/demo/ce/seed1 --scores=msp,odin,mahalanobis

`--model` is a run folder (its config.json gives the datasets and the score) or a
.keras file: an ice-tf model, or any Keras classifier ending in a Dense layer (its
logits give the scores); then the datasets come from the defaults and `--set`, e.g.
`--set=in_dataset=npz:mine.npz`. Every set is adapted to the model's input: resized,
converted to its channels and normalised as the model records (else with the
in-distribution set's constants). `--ood=label=PATH` adds OOD sets from a folder of
images, a `.npy` or a `.npz` of images; it replaces the run's sets unless
`--keep_ood_datasets`. `--set` takes
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

from absl import app, flags  # noqa: E402

from ice_tf.cli import experiment_flags, runner  # noqa: E402
import ice_tf.models  # noqa: E402,F401  (registers the custom classes for loading)
from ice_tf import detectors, experiment, ownership  # noqa: E402
from ice_tf.experiment import evaluation, run_data, run_folder  # noqa: E402
from ice_tf.experiment.config import ExperimentConfig  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """Defines the flags of `ice-tf evaluate` (once per process: `run` calls it).

    Example:
      define_flags()  # then flags.FLAGS(argv)
    """
    flags.DEFINE_string("model", None, "A run folder (with model.keras and config.json) or a .keras file.")
    flags.DEFINE_list("scores", [], f"Scores to evaluate ({', '.join(detectors.names())}); default: the run's.")
    flags.DEFINE_string("set", "", "Config overrides, key=value,key=value (lists joined with '+').")
    flags.DEFINE_multi_string("ood", [], "label=PATH: an OOD set from an image folder, .npy or "
                              ".npz of images (repeatable).")
    flags.DEFINE_bool("keep_ood_datasets", False, "Evaluate --ood sets besides the run's own.")
    flags.DEFINE_string("output", None, "Output JSON path; default: evaluation-<protocol>.json beside the model.")
    experiment_flags.define_detector_flags()
    flags.mark_flag_as_required("model")
    flags.register_validator(
        "scores", lambda names: all(n in detectors.names() for n in names),
        f"--scores must be among {', '.join(detectors.names())}.",
    )


def load_run(model_path):
    """(model, config, model_path) from a run folder or a .keras file.

    Example:
      model, config, path = load_run("runs/demo/ice/seed1")
    """
    if os.path.isdir(model_path):
        try:
            return experiment.load_run(model_path)
        except FileNotFoundError as error:
            raise app.UsageError(str(error)) from None
    if not model_path.endswith(".keras"):
        raise app.UsageError(f"--model={model_path} is neither a run folder nor a .keras file.")
    if not os.path.exists(model_path):
        raise app.UsageError(f"{model_path} does not exist; train it first with ice-tf train.")
    model = ice_tf.models.read_model(model_path, "--model")
    if not isinstance(model, ice_tf.models.OODModel):
        # A plain classifier: its Dense layer becomes a linear head, weights kept.
        model = ice_tf.models.OODModel.from_classifier(model, head="linear")
    return model, ExperimentConfig(loss="ice" if model.gaussian_head else "ce"), model_path


def check_outputs_replaceable(output):
    """Refuses, before any work, to replace an --output JSON (or the .md beside it) that
    ice-tf evaluate did not write.

    Example:
      check_outputs_replaceable("runs/demo/ice/seed1/evaluation-oe.json")
    """
    ownership.check_replaceable(output, run_folder.is_evaluation_record, "a record ice-tf evaluate wrote")
    ownership.check_replaceable(os.path.splitext(output)[0] + ".md",
                                lambda text: text.startswith("### "),
                                "a report ice-tf evaluate wrote")


def ood_spec(item):
    """--ood label=PATH as an OOD set spec: a folder (image_folder), .npy or .npz.

    Example:
      ood_spec("isun=/data/iSUN")  # 'isun=image_folder:/data/iSUN'
    """
    label, sep, path = item.partition("=")
    if not sep or not label or not path:
        raise app.UsageError(f"--ood={item!r}: use label=PATH (a folder, .npy or .npz).")
    if os.path.isdir(path):
        kind = "image_folder"
    elif path.endswith((".npy", ".npz")):
        kind = path[-3:]
    else:
        raise app.UsageError(f"--ood={item!r}: {path!r} is neither a folder nor a .npy/.npz file.")
    return f"{label}={kind}:{path}"


def main(argv):
    """Evaluates the model with every score asked for and writes JSON and markdown.

    Example:
      run(["ice-tf evaluate", "--model=runs/demo/ice/seed1"])
    """
    experiment_flags.quiet_tensorflow_logging(FLAGS)
    del argv
    model, config, model_path = load_run(FLAGS.model)
    overrides = experiment_flags.parse_overrides(FLAGS.set)
    extra = tuple(ood_spec(item) for item in FLAGS.ood)
    if extra:
        keep = config.replace(**overrides).ood_datasets if FLAGS.keep_ood_datasets else ()
        overrides["ood_datasets"] = (*keep, *extra)
    config = config.replace(**overrides).validate()
    # Every set opens and decodes, or one line says which does not.
    run_data.check_sources(config.replace(schedule="scratch"), outliers=False)
    adapt = run_data.model_input(model, config)
    in_ds, ood_ds = run_data.make_eval_data(config, adapt)
    output = FLAGS.output or os.path.join(
        os.path.dirname(os.path.abspath(model_path)), f"evaluation-{config.protocol}.json"
    )
    check_outputs_replaceable(output)
    reports, all_results = [], {}
    for score in FLAGS.scores or [config.score_name]:
        print(f"Score {score}:")
        _, results = evaluation.evaluate_run_with_detector(
            score, model, config, model_path, (in_ds, ood_ds), adapt,
            **experiment_flags.detector_options(FLAGS))
        all_results[score] = results
        reports.append(evaluation.results_markdown(results, title=f"{os.path.basename(model_path)}: {score}"))
    experiment.write_atomic(output, json.dumps(all_results, indent=2) + "\n")
    experiment.write_atomic(os.path.splitext(output)[0] + ".md", "\n".join(reports))
    print("\n".join(reports))
    print(f"Written: {output}")


run = runner.command(define_flags, main, __doc__)


if __name__ == "__main__":
    run()
