"""Exports a trained model (.keras) as a serving SavedModel.

  ice-tf export --model=runs/ice/model.keras --output=exported/ice

The SavedModel's `serving_default` takes `images` (raw pixels in 0-255 when the model
records its normalisation, as script-trained runs do; `serve_uint8` and
`serve_normalized` are the other signatures) and returns `probabilities`,
`confidence` (exp(max h) for the Gaussian head, max softmax otherwise), `score`
and `outputs`; it loads with plain `tf.saved_model.load`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from ice_tf.cli import experiment_flags, runner  # noqa: E402

import ice_tf.models  # noqa: E402,F401  (registers the custom classes for loading)
from ice_tf import export, scores  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """Defines the flags of `ice-tf export` (once per process: `run` calls it).

    Example:
      define_flags()  # then flags.FLAGS(argv)
    """
    flags.DEFINE_string("model", None, "A .keras file written by ice-tf train.")
    flags.DEFINE_string("output", None, "Output SavedModel folder.")
    flags.DEFINE_string("score", None, f"Score output: {', '.join(scores.names())}; unset = the head's default.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing output folder.")
    flags.mark_flags_as_required(["model", "output"])
    flags.register_validator("model", lambda p: p.endswith(".keras"), "--model must be a .keras file.")
    flags.register_validator(
        "score", lambda s: s is None or s in scores.names(), f"--score must be one of {scores.names()}."
    )


def main(argv):
    """Exports --model as a SavedModel at --output.

    Example:
      run(["ice-tf export", "--model=runs/ice/model.keras", "--output=exported"])
    """
    experiment_flags.quiet_tensorflow_logging(FLAGS)
    del argv
    model = ice_tf.models.read_model(FLAGS.model, "--model")
    path = export.export_saved_model(model, FLAGS.output, score=FLAGS.score, overwrite=FLAGS.overwrite)
    print(f"SavedModel written to {path}")


run = runner.command(define_flags, main, __doc__)


if __name__ == "__main__":
    run()
