"""Training-step throughput of the OOD methods on one backbone.

Measures the wall-clock time of one training step, exactly the step that
`OODModel.fit` runs (`model.make_train_function()`, then
`model.train_function(iterator)` on a distributed iterator over a `tf.data`
dataset), for each method in `--methods`, and prints a markdown table.

Setup, for every method:
  * one `OODModel` per method (same backbone architecture, `--num_classes`
    classes), built up front; `ce`, `oe`, `energy` and `bce` use the linear head
    (Eq. 0.1), `ice` and `ice_minus` the Gaussian head (Eq. 0.11);
  * SGD(0.1, momentum 0.9, Nesterov) and `weight_decay=5e-4`, as in training;
  * random float32 images (fixed batches repeated, so the input pipeline costs
    next to nothing) and random labels.

What each row measures:
  * `oe`, `energy`, `bce`, `ice`, `ice_minus`: one step on `--batch_in`
    in-distribution images plus `--batch_out` outliers, i.e. one forward and
    backward pass over batch_in + batch_out images (384 by default).
  * `ce`: by default plain cross-entropy on the `--batch_in` in-distribution
    images only (128 by default), as the plain baseline trains; its step does
    about a third of the work of the others, so compare it through images/s.
    With `--ce_uses_outliers`, `ce` instead gets batch_in + batch_out
    in-distribution images per step, the same compute as the outlier methods:
    the cost of the backbone plus a linear head and plain CE.

Columns: median seconds per step, min-max over the timed steps, images per
second (images per step / median), the median step time divided by that of
`ce` and that of `oe`, and the median over rounds of the per-round ratio to
`oe` (each round times every method once, so this ratio pairs steps run close
in time). `x oe` is the number to compare between `oe`, `energy` and `ice`,
which process the same images per step (e.g. the target ICE <= 1.02x OE).

Timing: every model first runs `--warmup` untimed steps (the first one traces
the step function). Then `--steps` rounds run one timed step of every method,
round-robin, reversing the order every round, so that load from other processes
on a shared machine hits all methods alike. Each timed call ends only when its
returned logs are fetched to numpy. Reported times are medians. Ratios are only
comparable within one run (same machine, same load); absolute times vary
between runs and machines.

Run:
  python scripts/benchmark.py                       # WRN-40-2, 32x32x3, 128 + 256
  python scripts/benchmark.py --backbone small_cnn --steps 1 --warmup 1   # quick check
  python scripts/benchmark.py --methods oe,ice --steps 20 --json_out /tmp/bench.json
"""

from __future__ import annotations

import gc
import json
import logging
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from ice_tf import losses  # noqa: E402

FLAGS = flags.FLAGS

# Head used by each method, by the rule the experiments use (Gaussian for ICE and ICE⁻).
HEAD_FOR = {name: losses.spec(name).default_head for name in losses.names()}

flags.DEFINE_string("backbone", "wrn40_2", "Backbone name from ice_tf.backbones.names().")
flags.DEFINE_integer("batch_in", 128, "In-distribution images per step.", lower_bound=1)
flags.DEFINE_integer("batch_out", 256, "Outlier images per step.", lower_bound=1)
flags.DEFINE_integer("image_size", 32, "Image height and width.", lower_bound=1)
flags.DEFINE_integer("channels", 3, "Image channels.", lower_bound=1)
flags.DEFINE_integer("num_classes", 10, "Number of classes K.", lower_bound=2)
flags.DEFINE_list("methods", ["ce", "oe", "energy", "ice"],
                  f"Comma-separated methods to time, among {', '.join(HEAD_FOR)}.")
flags.DEFINE_integer("steps", 10, "Timed steps (rounds) per method.", lower_bound=1)
flags.DEFINE_integer("warmup", 2, "Untimed steps per method before timing; the first one traces "
                     "the step function.", lower_bound=0)
flags.DEFINE_bool("ce_uses_outliers", False,
                  "Feed `ce` batch_in + batch_out in-distribution images per step, the compute "
                  "of the outlier methods, instead of batch_in images.")
flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA.")
flags.DEFINE_bool("deterministic", False, "Time the steps under op determinism (--deterministic "
                  "of the training scripts).")
flags.DEFINE_integer("seed", 0, "Random seed for weights and data.")
flags.DEFINE_string("json_out", None, "Optional path of a JSON file with the raw results.")


@flags.validator("methods", message=f"methods must be distinct names among {', '.join(HEAD_FOR)}")
def _check_methods(methods):
    return bool(methods) and len(set(methods)) == len(methods) and all(m in HEAD_FOR for m in methods)


def machine_info():
    """CPU model, core counts, Python/TensorFlow/Keras versions."""
    import keras
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "gpus": gpus,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def images_per_step(method, batch_in, batch_out, ce_uses_outliers):
    if method == "ce" and not ce_uses_outliers:
        return batch_in
    return batch_in + batch_out


def _make_dataset(method, config, rng):
    """A repeated dataset of one fixed random batch, in the format `fit` gets for `method`."""
    import tensorflow as tf

    shape = (config["image_size"], config["image_size"], config["channels"])
    n_img = images_per_step(method, config["batch_in"], config["batch_out"], config["ce_uses_outliers"])
    if method == "ce":
        # Plain CE gets (images, labels) batches, without outliers.
        x = rng.standard_normal((n_img, *shape), dtype="float32")
        y = rng.integers(0, config["num_classes"], n_img).astype("int64")
        return tf.data.Dataset.from_tensors((x, y)).repeat()
    x = rng.standard_normal((config["batch_in"], *shape), dtype="float32")
    y = rng.integers(0, config["num_classes"], config["batch_in"]).astype("int64")
    x_out = rng.standard_normal((config["batch_out"], *shape), dtype="float32")
    return tf.data.Dataset.from_tensors(((x, y), x_out)).repeat()


class _Runner:
    """One compiled model and the iterator its train function reads from."""

    def __init__(self, method, config, rng):
        import keras

        from ice_tf import models

        self.method = method
        self.head = HEAD_FOR[method]
        self.images = images_per_step(
            method, config["batch_in"], config["batch_out"], config["ce_uses_outliers"]
        )
        shape = (config["image_size"], config["image_size"], config["channels"])
        self.model = models.build_model(config["backbone"], shape, config["num_classes"], head=self.head)
        optimizer = keras.optimizers.SGD(learning_rate=0.1, momentum=0.9, nesterov=True)
        self.model.compile(optimizer, loss=method, weight_decay=5e-4, jit_compile=config["jit_compile"])
        # As in fit: the dataset goes through the model's strategy, then one step per call.
        dataset = _make_dataset(method, config, rng)
        distributed = self.model.distribute_strategy.experimental_distribute_dataset(dataset)
        self.iterator = iter(distributed)
        self.model.make_train_function()
        self.times = []
        self.last_logs = None

    def step(self):
        """Runs one training step; returns its wall-clock seconds (logs fetched to numpy)."""
        start = time.perf_counter()
        logs = self.model.train_function(self.iterator)
        logs = {name: float(value.numpy()) for name, value in logs.items()}
        elapsed = time.perf_counter() - start
        self.last_logs = logs
        return elapsed


class _NoRetracingWarning(logging.Filter):
    """Drops TensorFlow's retracing warning: each model traces its own step function once."""

    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


def run_benchmark(config, log=print):
    """Builds, warms up and times every method; returns a list of per-method result dicts."""
    import keras
    import numpy as np
    import tensorflow as tf

    tf.get_logger().addFilter(_NoRetracingWarning())

    keras.utils.set_random_seed(config["seed"])
    rng = np.random.default_rng(config["seed"])
    runners = []
    for method in config["methods"]:
        log(f"building {method} ({HEAD_FOR[method]} head)...")
        runners.append(_Runner(method, config, rng))
    jit_used = {r.method: bool(r.model.jit_compile) for r in runners}

    for runner in runners:
        start = time.perf_counter()
        for _ in range(config["warmup"]):
            runner.step()
        log(f"warm-up {runner.method}: {config['warmup']} steps in {time.perf_counter() - start:.1f}s")

    gc.collect()
    order = list(runners)
    for round_index in range(config["steps"]):
        for runner in order:
            runner.times.append(runner.step())
        log(f"round {round_index + 1}/{config['steps']}: "
            + ", ".join(f"{r.method} {r.times[-1]:.3f}s" for r in runners))
        order.reverse()

    by_method = {r.method: r for r in runners}
    results = []
    for runner in runners:
        times = runner.times
        median = statistics.median(times)
        result = {
            "method": runner.method,
            "head": runner.head,
            "images_per_step": runner.images,
            "times_s": times,
            "median_s": median,
            "min_s": min(times),
            "max_s": max(times),
            "images_per_s": runner.images / median,
            "jit_compile": jit_used[runner.method],
            "last_logs": runner.last_logs,
        }
        for ref in ("ce", "oe"):
            other = by_method.get(ref)
            if other is None:
                result[f"ratio_to_{ref}"] = None
                result[f"paired_ratio_to_{ref}"] = None
            else:
                result[f"ratio_to_{ref}"] = median / statistics.median(other.times)
                result[f"paired_ratio_to_{ref}"] = statistics.median(
                    a / b for a, b in zip(times, other.times)
                )
        results.append(result)
    return results


def _ratio(value):
    return "–" if value is None else f"{value:.3f}×"


def format_report(results, machine, config):
    """The machine description and the markdown table, as one string."""
    xla = sorted({r["jit_compile"] for r in results})
    lines = [
        f"Machine: {machine['cpu']}, {machine['usable_cores']} usable cores "
        f"(os.cpu_count() = {machine['cpu_count']}), GPUs: {', '.join(machine['gpus']) or 'none'}",
        f"Software: Python {machine['python']}, TensorFlow {machine['tensorflow']}, "
        f"Keras {machine['keras']}; XLA (jit_compile): {'yes' if xla == [True] else 'no' if xla == [False] else 'mixed'}",
        f"Setup: backbone {config['backbone']}, images {config['image_size']}x{config['image_size']}x"
        f"{config['channels']}, K = {config['num_classes']}, batch_in {config['batch_in']} + batch_out "
        f"{config['batch_out']}, ce uses outliers: {config['ce_uses_outliers']}; "
        f"{config['warmup']} warm-up + {config['steps']} timed steps per method, interleaved; "
        f"op determinism: {'on' if config.get('deterministic') else 'off'}",
        "",
        "| method | head | images/step | median s/step | min–max s | images/s | × ce | × oe | × oe (paired) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['method']} | {r['head']} | {r['images_per_step']} | {r['median_s']:.4f} | "
            f"{r['min_s']:.4f}–{r['max_s']:.4f} | {r['images_per_s']:.1f} | "
            f"{_ratio(r['ratio_to_ce'])} | {_ratio(r['ratio_to_oe'])} | {_ratio(r['paired_ratio_to_oe'])} |"
        )
    if any(r["method"] == "ce" for r in results) and not config["ce_uses_outliers"]:
        lines.append("")
        lines.append(
            f"Note: ce processes only {config['batch_in']} images per step (no outliers); the other "
            f"methods process {config['batch_in'] + config['batch_out']}. Compare ce by images/s."
        )
    lines.append("")
    lines.append(
        "× ce / × oe: ratio of median step times; × oe (paired): median of per-round ratios. "
        "Ratios are comparable only within one run."
    )
    return "\n".join(lines)


def _config_from_flags():
    return {
        "backbone": FLAGS.backbone,
        "batch_in": FLAGS.batch_in,
        "batch_out": FLAGS.batch_out,
        "image_size": FLAGS.image_size,
        "channels": FLAGS.channels,
        "num_classes": FLAGS.num_classes,
        "methods": list(FLAGS.methods),
        "steps": FLAGS.steps,
        "warmup": FLAGS.warmup,
        "ce_uses_outliers": FLAGS.ce_uses_outliers,
        "jit_compile": FLAGS.jit_compile,
        "deterministic": FLAGS.deterministic,
        "seed": FLAGS.seed,
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = _config_from_flags()
    from ice_tf import backbones

    if config["backbone"] not in backbones.names():
        raise app.UsageError(
            f"unknown backbone {config['backbone']!r}; valid: {', '.join(backbones.names())}"
        )

    def log(message):
        print(message, file=sys.stderr, flush=True)

    if config["deterministic"]:
        from ice_tf import experiment

        experiment.enable_determinism()
    machine = machine_info()
    results = run_benchmark(config, log=log)
    print(format_report(results, machine, config), flush=True)
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump({"machine": machine, "config": config, "results": results}, f, indent=2)
        log(f"wrote {FLAGS.json_out}")


if __name__ == "__main__":
    app.run(main)
