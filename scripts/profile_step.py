"""Where the time of one training step goes: TensorFlow's profiler, op by op, summed by kind.

  python scripts/profile_step.py                                  # WRN-40-2, oe and ice, fp32 and bf16
  python scripts/profile_step.py --methods=ice --precisions=mixed_bfloat16 --steps=2
  python scripts/profile_step.py --batchnorm=keras,fused          # before and after the fused kernel
  python scripts/profile_step.py --dropout=keras,ice_tf           # Keras' dropout against ice-tf's

For every method, precision policy, BatchNorm implementation (`--batchnorm`: `fused`,
the backbones' `ice_tf.layers.FusedBatchNormalization`, or `keras`, Keras 3's own
BatchNormalization) and dropout (`--dropout`: `ice_tf`, the backbones' `ice_tf.layers.Dropout`,
or `keras`, Keras 3's own), the script builds the step that `fit` runs (as scripts/benchmark.py
does: fixed random batches of `--batch_in` + `--batch_out` images), runs `--warmup` steps,
then traces `--steps` steps with `tf.profiler` and reads the framework op statistics of the
trace. Each op's self time goes to one kind:

  convolutions          Conv2D forward
  convolution gradients Conv2DBackpropInput / Conv2DBackpropFilter
  casts                 Cast (the float32 <-> bfloat16 casts that mixed precision inserts)
  BatchNorm             the ops of BatchNormalization layers (fused kernel or Keras' moments,
                        normalisation and their gradients), outside the casts
  dropout               the random masks of the WRNs' dropout and their application
  optimizer and decay   the SGD update and the weight decay added to the gradients
  head                  the Gaussian or linear head and its gradient
  ReLU and elementwise  activations, residual additions and their gradients
  other                 the rest (loss, metrics, reductions, control flow)

Printed: milliseconds per step of each kind (ops on the two cores overlap, so the kinds can
add up to more than the step's wall time), its share of the total op time, and the median
wall time of the traced steps. Profiles slow the step a little; compare kinds, and time
steps with scripts/benchmark.py.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import re
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("backbone", "wrn40_2", "Backbone name from ice_tf.backbones.names().")
flags.DEFINE_list("methods", ["oe", "ice"], "Methods to profile.")
flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Precision policies.")
flags.DEFINE_list("batchnorm", ["fused"], "BatchNorm implementations: fused, keras.")
flags.DEFINE_list("dropout", ["ice_tf"], "Dropout implementations: ice_tf, keras.")
flags.DEFINE_integer("batch_in", 128, "In-distribution images per step.", lower_bound=1)
flags.DEFINE_integer("batch_out", 256, "Outlier images per step.", lower_bound=1)
flags.DEFINE_integer("image_size", 32, "Image height and width.", lower_bound=1)
flags.DEFINE_integer("steps", 3, "Traced steps.", lower_bound=1)
flags.DEFINE_integer("warmup", 2, "Untraced steps first (the first traces the function).",
                     lower_bound=1)

KINDS = ("convolutions", "convolution gradients", "casts", "BatchNorm", "dropout",
         "optimizer and decay", "head", "ReLU and elementwise", "other")
ELEMENTWISE = {"Relu", "ReluGrad", "AddV2", "Add", "AddN", "Mul", "Sub", "Maximum", "Select",
               "SelectV2", "Identity", "BiasAdd", "BiasAddGrad", "Neg", "Square", "RealDiv"}


def op_kind(op_type, name):
    """The kind of one op of the trace, from its type and its name scope."""
    scope = name.lower()
    if "Conv2DBackprop" in op_type:
        return "convolution gradients"
    if "Conv2D" in op_type:
        return "convolutions"
    if op_type == "Cast":
        return "casts"
    if "dropout" in scope:
        return "dropout"
    if ("batchnorm" in op_type.lower() or "_bn/" in scope or "_bn_1/" in scope
            or "/moments/" in scope or "batchnorm" in scope):
        return "BatchNorm"
    if ("sgd" in scope or "optimizer" in scope or "weight_decay" in scope
            or op_type.startswith("ResourceApply") or op_type in ("AssignSubVariableOp",
                                                                 "AssignAddVariableOp")):
        return "optimizer and decay"
    if re.search(r"(^|/)head(_\d+)?/", scope):
        return "head"
    if op_type in ELEMENTWISE or op_type.startswith("_MklNative") or "relu" in scope:
        return "ReLU and elementwise"
    return "other"


def read_op_stats(logdir):
    """[(op type, op name, total self time in µs)] of a trace's framework op statistics."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    data, ok = plugin.xspace_to_tools_data(paths, "framework_op_stats", {})
    if not ok:
        raise SystemExit("error: the profiler's op statistics could not be read.")
    table = json.loads(data)[0]
    columns = [column["id"] for column in table["cols"]]
    rows = []
    for row in table["rows"]:
        values = dict(zip(columns, [cell["v"] if cell else None for cell in row["c"]]))
        if values["type"] == "IDLE":
            continue
        rows.append((values["type"], values["operation"], float(values["total_self_time"])))
    return rows


def build_step(method, policy, batchnorm, dropout, config):
    import keras
    import numpy as np
    import tensorflow as tf

    from ice_tf import layers, losses, models, precision
    from ice_tf.backbones import _common

    rng = np.random.default_rng(0)
    shape = (config["image_size"], config["image_size"], 3)
    original, original_dropout = _common.FusedBatchNormalization, layers.Dropout
    if batchnorm == "keras":
        _common.FusedBatchNormalization = keras.layers.BatchNormalization
    if dropout == "keras":
        layers.Dropout = keras.layers.Dropout
    try:
        with precision.policy(policy):
            keras.utils.set_random_seed(0)
            model = models.build_model(config["backbone"], shape, 10,
                                       head=losses.spec(method).default_head)
            model.compile(keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True), loss=method,
                          weight_decay=5e-4)
    finally:
        _common.FusedBatchNormalization, layers.Dropout = original, original_dropout
    x = rng.standard_normal((config["batch_in"], *shape), dtype="float32")
    y = rng.integers(0, 10, config["batch_in"])
    if losses.spec(method).uses_outliers:
        outliers = rng.standard_normal((config["batch_out"], *shape), dtype="float32")
        dataset = tf.data.Dataset.from_tensors(((x, y), outliers)).repeat()
    else:
        dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
    iterator = iter(model.distribute_strategy.experimental_distribute_dataset(dataset))
    model.make_train_function()
    return lambda: model.train_function(iterator)


def profile(method, policy, batchnorm, dropout, config):
    """{kind: ms per step}, the median wall seconds of the traced steps."""
    import tensorflow as tf

    step = build_step(method, policy, batchnorm, dropout, config)
    for _ in range(config["warmup"]):
        step()
    logdir = tempfile.mkdtemp(prefix="ice-tf-profile-")
    try:
        walls = []
        tf.profiler.experimental.start(logdir)
        try:
            for _ in range(config["steps"]):
                start = time.perf_counter()
                step()
                walls.append(time.perf_counter() - start)
        finally:
            tf.profiler.experimental.stop()
        by_kind = dict.fromkeys(KINDS, 0.0)
        for op_type, name, self_us in read_op_stats(logdir):
            by_kind[op_kind(op_type, name)] += self_us / 1000.0 / config["steps"]
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    return by_kind, statistics.median(walls)


def markdown(profiles):
    """One column per profiled configuration, one row per kind."""
    labels = list(profiles)
    lines = ["| kind | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    totals = {label: sum(profiles[label][0].values()) for label in labels}
    for kind in KINDS:
        cells = [f"{profiles[label][0][kind]:.0f} ({100 * profiles[label][0][kind] / totals[label]:.0f}%)"
                 for label in labels]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines.append("| **all ops** (ms of op time per step) | "
                 + " | ".join(f"{totals[label]:.0f}" for label in labels) + " |")
    lines.append("| wall time per step (ms, traced) | "
                 + " | ".join(f"{1000 * profiles[label][1]:.0f}" for label in labels) + " |")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    unknown = set(FLAGS.batchnorm) - {"fused", "keras"}
    if unknown:
        raise app.UsageError(f"--batchnorm takes fused and/or keras, not {sorted(unknown)}")
    unknown = set(FLAGS.dropout) - {"ice_tf", "keras"}
    if unknown:
        raise app.UsageError(f"--dropout takes ice_tf and/or keras, not {sorted(unknown)}")
    config = {"backbone": FLAGS.backbone, "batch_in": FLAGS.batch_in, "batch_out": FLAGS.batch_out,
              "image_size": FLAGS.image_size, "steps": FLAGS.steps, "warmup": FLAGS.warmup}
    profiles = {}
    for batchnorm, dropout, policy, method in itertools.product(
            FLAGS.batchnorm, FLAGS.dropout, FLAGS.precisions, FLAGS.methods):
        label = (f"{method}, {policy}" + (f", {batchnorm} BN" if len(FLAGS.batchnorm) > 1 else "")
                 + (f", {dropout} dropout" if len(FLAGS.dropout) > 1 else ""))
        print(f"profiling {label}...", flush=True)
        profiles[label] = profile(method, policy, batchnorm, dropout, config)
    print(f"\n{FLAGS.backbone}, {FLAGS.batch_in} + {FLAGS.batch_out} images of "
          f"{FLAGS.image_size}x{FLAGS.image_size}x3; ms per step (share of op time)\n")
    print(markdown(profiles))


if __name__ == "__main__":
    app.run(main)
