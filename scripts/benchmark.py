"""Training throughput of the OOD methods, and against the PyTorch reference code.

Two modes:
  * `--mode=step` (default): the wall-clock time of one training step, exactly the
    step that `OODModel.fit` runs (`model.make_train_function()`, then
    `model.train_function(iterator)` on a distributed iterator over a `tf.data`
    dataset of fixed random batches, so the input pipeline costs next to nothing).
  * `--mode=epoch`: one whole epoch of `model.fit` on the embedded benchmark
    (13,000 Fashion-MNIST images with 256 outliers per 128, the demo's input
    pipeline with augmentation), data loading included.

Rows: every method of `--methods` under every policy of `--precisions`
(`ice_tf.precision`; `auto` is the default one of this machine) and every
setting of `--xla`. `ce`, `oe`, `energy` and `bce` use the linear head (Eq. 0.1),
`ice` and `ice_minus` the Gaussian head (Eq. 0.11); SGD(0.1, momentum 0.9,
Nesterov), `weight_decay=5e-4`, as in training.

With `--against=torch` the run also times the Outlier Exposure reference step,
written as in hendrycks/outlier-exposure (`scripts/torch_reference.py`: the
reference WRN, one forward pass over the concatenated batch, its OE loss, SGD
with a per-batch cosine schedule), in the reference's NCHW layout and in
channels-last, each in float32 and under PyTorch's bfloat16 autocast
(`--torch_precisions`), and with `--torch_compile` each also through
`torch.compile`; in epoch mode through a PyTorch `DataLoader` with the
reference's augmentation. PyTorch is installed by the script into its own
environment (`--torch_env`, created when missing; never a dependency of ice-tf)
and runs in a worker process, interleaved with ice-tf's steps. Every row is
compared with the **fastest PyTorch row of the same precision** (ice-tf's float32
with PyTorch's float32, mixed_bfloat16 with the bfloat16 autocast) of the same run.

What each row measures:
  * `oe`, `energy`, `bce`, `ice`, `ice_minus`, and the torch rows: one step on
    `--batch_in` in-distribution images plus `--batch_out` outliers (384 by default).
  * `ce`: plain cross-entropy on the `--batch_in` images only, as the plain
    baseline trains; with `--ce_uses_outliers` it gets batch_in + batch_out
    in-distribution images, the same compute as the others.

Columns: median seconds per step (or epoch), min-max, images per second, the
median time divided by that of `ce` and of `oe` of the same precision and XLA
setting, the median of the per-round ratios to that `oe`, the speed-up over the
fastest PyTorch row of the same precision (its median time divided by the row's;
above 1: ice-tf is faster), and the median peak resident memory of the process
during the row's steps (scripts/peak_memory.py; the process holds every row's model,
so compare the rows of one side with each other, the two sides roughly).

Timing: every row first runs `--warmup` untimed steps (the first one traces the
step function). Then `--steps` rounds time one step (epoch) of every row,
round-robin, reversing the order every round, so that load from other processes
hits all rows alike. Ratios are comparable only within one run. A busy machine
slows TensorFlow's multi-threaded step more than PyTorch's: the script prints the
load average before and after the run (/proc/loadavg) and warns when it starts above
the usable cores' count plus one; run it on a quiet machine.

Run:
  python scripts/benchmark.py                       # WRN-40-2, 32x32x3, 128 + 256, default precision
  python scripts/benchmark.py --methods=oe,ice --precisions=float32,mixed_bfloat16 --against=torch
  python scripts/benchmark.py --mode=epoch --backbone=small_cnn --methods=oe --against=torch
  python scripts/benchmark.py --backbone=small_cnn --steps=1 --warmup=1   # quick check
"""

from __future__ import annotations

import gc
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from ice_tf import losses  # noqa: E402

FLAGS = flags.FLAGS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_WORKER = os.path.join(REPO, "scripts", "torch_reference.py")
TORCH_LAYOUTS = ("nchw", "channels_last")  # the first is the reference code's
# ice-tf's precision policy -> the PyTorch precision of the same arithmetic.
SAME_PRECISION = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peak_memory import PeakMemory  # noqa: E402  (shared with torch_reference.py)

# Head used by each method, by the rule the experiments use (Gaussian for ICE and ICE⁻).
HEAD_FOR = {name: losses.spec(name).default_head for name in losses.names()}

flags.DEFINE_enum("mode", "step", ["step", "epoch"], "Time training steps on fixed batches, or "
                  "whole epochs of fit on the embedded benchmark (data loading included).")
flags.DEFINE_string("backbone", "wrn40_2", "Backbone name from ice_tf.backbones.names().")
flags.DEFINE_integer("batch_in", 128, "In-distribution images per step.", lower_bound=1)
flags.DEFINE_integer("batch_out", 256, "Outlier images per step.", lower_bound=1)
flags.DEFINE_integer("image_size", 32, "Image height and width (step mode).", lower_bound=1)
flags.DEFINE_integer("channels", 3, "Image channels (step mode).", lower_bound=1)
flags.DEFINE_integer("num_classes", 10, "Number of classes K (step mode).", lower_bound=2)
flags.DEFINE_list("methods", ["ce", "oe", "energy", "ice"],
                  f"Comma-separated methods to time, among {', '.join(HEAD_FOR)}.")
flags.DEFINE_list("precisions", ["auto"], "Precision policies to time each method under "
                  "(ice_tf.precision: auto, the default of training on this machine, float32, "
                  "mixed_bfloat16, mixed_float16).")
flags.DEFINE_list("xla", ["off"], "XLA settings to time each method under: off, on.")
flags.DEFINE_bool("jit_compile", False, "Same as --xla=on (older commands).")
flags.DEFINE_integer("steps", 10, "Timed rounds: steps, or epochs with --mode=epoch.",
                     lower_bound=1)
flags.DEFINE_integer("warmup", 2, "Untimed steps per row before timing; the first one traces "
                     "the step function.", lower_bound=0)
flags.DEFINE_bool("ce_uses_outliers", False,
                  "Feed `ce` batch_in + batch_out in-distribution images per step, the compute "
                  "of the outlier methods, instead of batch_in images.")
flags.DEFINE_bool("deterministic", False, "Time the steps under op determinism (--deterministic "
                  "of the training scripts).")
flags.DEFINE_integer("intra_op_threads", 0, "TensorFlow intra-op threads (0: its default).",
                     lower_bound=0)
flags.DEFINE_integer("inter_op_threads", 0, "TensorFlow inter-op threads (0: its default).",
                     lower_bound=0)
flags.DEFINE_enum("against", None, ["torch"], "Also time the PyTorch reference step (OE, "
                  "WRN-40-2 or small_cnn), interleaved.")
flags.DEFINE_string("torch_env", os.path.join(REPO, ".venv-torch"),
                    "Virtual environment with PyTorch; created and filled when missing.")
flags.DEFINE_string("torch_pip_args", "torch numpy",
                    "What pip installs into a new --torch_env (e.g. add --index-url for CPU wheels).")
flags.DEFINE_list("torch_precisions", ["float32", "bfloat16"],
                  "PyTorch precisions: float32, bfloat16 (torch.autocast on the CPU).")
flags.DEFINE_bool("torch_compile", False, "Also time each PyTorch configuration through "
                  "torch.compile (the first step compiles; minutes).")
flags.DEFINE_integer("torch_threads", 0, "PyTorch threads (0: its default).", lower_bound=0)
flags.DEFINE_integer("torch_workers", 2, "DataLoader worker processes (epoch mode).", lower_bound=0)
flags.DEFINE_integer("seed", 0, "Random seed for weights and data.")
flags.DEFINE_string("json_out", None, "Optional path of a JSON file with the raw results.")


@flags.validator("methods", message=f"methods must be distinct names among {', '.join(HEAD_FOR)}")
def _check_methods(methods):
    return bool(methods) and len(set(methods)) == len(methods) and all(m in HEAD_FOR for m in methods)


@flags.validator("xla", message="xla takes off and/or on")
def _check_xla(values):
    return bool(values) and set(values) <= {"off", "on"} and len(set(values)) == len(values)


@flags.validator("precisions", message="precisions are among auto, float32, mixed_bfloat16, "
                 "mixed_float16")
def _check_precisions(values):
    from ice_tf import precision

    return bool(values) and all(v in precision.PRECISIONS for v in values)


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
    from ice_tf import losses

    if not losses.spec(method).uses_outliers and not ce_uses_outliers:
        return batch_in
    return batch_in + batch_out


def _make_dataset(method, config, rng):
    """A repeated dataset of one fixed random batch, in the format `fit` gets for `method`."""
    import tensorflow as tf

    shape = (config["image_size"], config["image_size"], config["channels"])
    n_img = images_per_step(method, config["batch_in"], config["batch_out"], config["ce_uses_outliers"])
    from ice_tf import losses

    if not losses.spec(method).uses_outliers:
        # A method without outliers gets (images, labels) batches.
        x = rng.standard_normal((n_img, *shape), dtype="float32")
        y = rng.integers(0, config["num_classes"], n_img).astype("int64")
        return tf.data.Dataset.from_tensors((x, y)).repeat()
    x = rng.standard_normal((config["batch_in"], *shape), dtype="float32")
    y = rng.integers(0, config["num_classes"], config["batch_in"]).astype("int64")
    x_out = rng.standard_normal((config["batch_out"], *shape), dtype="float32")
    return tf.data.Dataset.from_tensors(((x, y), x_out)).repeat()


def epoch_config(method, config):
    """The `ExperimentConfig` of an epoch-mode row: the demo's data and schedule."""
    from ice_tf.experiment.config import ExperimentConfig

    return ExperimentConfig(
        in_dataset="embedded_fashion_mnist", outlier_dataset="embedded_outliers",
        ood_datasets=(), loss=method, backbone=config["backbone"], epochs=100,
        learning_rate=0.1, batch_in=config["batch_in"], batch_out=config["batch_out"],
        seed=config["seed"], output_dir=os.devnull).validate()


class _Row:
    """One timed configuration: `step()` runs one step (or epoch), returns seconds."""

    framework = "ice-tf"

    def __init__(self, method, head, precision, xla, images):
        self.method, self.head, self.precision, self.xla = method, head, precision, xla
        self.images, self.times, self.last_logs = images, [], None
        self.peak_mb = []

    @property
    def arithmetic(self):
        """The precision compared across frameworks: float32, bfloat16 or float16."""
        return SAME_PRECISION.get(self.precision, self.precision)

    def timed_step(self):
        """One step, its seconds and the process's peak memory during it."""
        with PeakMemory() as memory:
            seconds = self.step()
        self.times.append(seconds)
        if memory.peak_mb is not None:
            self.peak_mb.append(memory.peak_mb)

    @property
    def label(self):
        return self.method


class _TensorFlowRow(_Row):
    """One compiled `OODModel` and the iterator its train function reads from."""

    def __init__(self, method, policy, xla, config, rng):
        import keras

        from ice_tf import experiment, models, precision

        images = (images_per_step(method, config["batch_in"], config["batch_out"],
                                  config["ce_uses_outliers"]) if config["mode"] == "step"
                  else None)
        with precision.policy(policy) as resolved:
            super().__init__(method, HEAD_FOR[method], resolved, xla, images)
            self.epoch = config["mode"] == "epoch"
            optimizer = keras.optimizers.SGD(learning_rate=0.1, momentum=0.9, nesterov=True)
            if self.epoch:
                import tensorflow as tf

                run_config = epoch_config(method, config)
                self.dataset, self.steps_per_epoch = experiment.make_train_data(
                    run_config, config["batch_in"], config["batch_out"])
                self.model = experiment.build_model(run_config, tf.distribute.get_strategy())
                self.images = self.steps_per_epoch * images_per_step(
                    method, config["batch_in"], config["batch_out"], False)
            else:
                shape = (config["image_size"], config["image_size"], config["channels"])
                self.model = models.build_model(config["backbone"], shape, config["num_classes"],
                                                head=self.head)
            self.model.compile(optimizer, loss=method, weight_decay=5e-4, jit_compile=xla == "on")
            if not self.epoch:
                # As in fit: the dataset goes through the model's strategy, one step per call.
                dataset = _make_dataset(method, config, rng)
                distributed = self.model.distribute_strategy.experimental_distribute_dataset(dataset)
                self.iterator = iter(distributed)
                self.model.make_train_function()

    def warm_up(self, steps):
        if self.epoch:
            if steps:
                self.model.fit(self.dataset, epochs=1, steps_per_epoch=steps, verbose=0)
            return
        for _ in range(steps):
            self.step()

    def step(self):
        start = time.perf_counter()
        if self.epoch:
            history = self.model.fit(self.dataset, epochs=1, steps_per_epoch=self.steps_per_epoch,
                                     verbose=0)
            logs = {name: float(values[-1]) for name, values in history.history.items()}
        else:
            logs = self.model.train_function(self.iterator)
            logs = {name: float(value.numpy()) for name, value in logs.items()}
        elapsed = time.perf_counter() - start
        self.last_logs = logs
        return elapsed


def ensure_torch_env(env, pip_args, log=print):
    """The Python of a virtual environment with PyTorch, created and filled when missing.

    Example:
      python = ensure_torch_env(".venv-torch", "torch numpy")
    """
    python = os.path.join(env, "bin", "python")
    check = [python, "-c", "import torch, numpy"]
    if os.path.exists(python) and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    log(f"installing PyTorch into {env} (pip install {pip_args}); once, a few minutes...")
    subprocess.run([sys.executable, "-m", "venv", env], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", *shlex.split(pip_args)], check=True)
    if subprocess.run(check, capture_output=True).returncode != 0:
        raise SystemExit(f"error: PyTorch does not import in {env}; remove the folder and retry, "
                         "or set --torch_pip_args.")
    return python


class TorchWorker:
    """The reference step in a PyTorch process (`scripts/torch_reference.py`), driven
    over JSON lines."""

    def __init__(self, python, config, data_path=None, log=print):
        command = [python, TORCH_WORKER, f"--backbone={config['backbone']}",
                   f"--batch_in={config['batch_in']}", f"--batch_out={config['batch_out']}",
                   f"--image_size={config['image_size']}", f"--channels={config['channels']}",
                   f"--num_classes={config['num_classes']}", f"--layouts={','.join(TORCH_LAYOUTS)}",
                   f"--precisions={','.join(config.get('torch_precisions', ['float32']))}",
                   f"--threads={config['torch_threads']}", f"--workers={config['torch_workers']}",
                   f"--seed={config['seed']}"]
        if data_path:
            command.append(f"--data={data_path}")
        if config.get("torch_compile"):
            command.append("--compile")
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        self.info = self._read()
        log(f"PyTorch {self.info['torch']} worker ready ({self.info['threads']} threads)")

    def _read(self):
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit("error: the PyTorch worker stopped; its messages are above.")
        return json.loads(line)

    def request(self, **message):
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.write(json.dumps({"quit": True}) + "\n")
            self.process.stdin.flush()
            self.process.wait(timeout=60)


class _TorchRow(_Row):
    """One PyTorch configuration of the worker: key "layout/precision[/compiled]"."""

    framework = "torch"

    def __init__(self, worker, key, config, images):
        layout, precision, *compiled = key.split("/")
        super().__init__("oe", "linear", precision, "off", images)
        self.worker, self.key, self.layout = worker, key, layout
        self.compiled = bool(compiled)
        self.epoch = config["mode"] == "epoch"
        self.reported_peak_mb = None

    @property
    def label(self):
        layout = "NCHW" if self.layout == "nchw" else "channels-last"
        if self.layout == "nchw" and self.precision == "float32" and not self.compiled:
            layout += ", reference"
        autocast = ", bf16 autocast" if self.precision == "bfloat16" else ""
        return f"torch oe ({layout}{autocast}{', compiled' if self.compiled else ''})"

    def warm_up(self, steps):
        # A compiled configuration compiles in its first step, outside the timing.
        for _ in range(max(steps, 1 if self.compiled else 0) if not self.epoch else 0):
            self.step()

    def step(self):
        reply = self.worker.request(**{"epoch" if self.epoch else "step": self.key})
        self.last_logs = {"loss": reply["loss"]}
        self.reported_peak_mb = reply.get("peak_rss_mb")
        return reply["seconds"]

    def timed_step(self):
        self.times.append(self.step())  # the worker measures its own process's memory
        if self.reported_peak_mb is not None:
            self.peak_mb.append(self.reported_peak_mb)


def write_epoch_data(path):
    """The embedded benchmark's training images, outliers and normalisation as one npz
    for the PyTorch worker's DataLoader."""
    import numpy as np

    from ice_tf import data
    from ice_tf.data import embedded

    images = embedded.read_arrays("fashion_mnist.npz")
    outliers = embedded.read_arrays("outliers.npz")
    mean, std = data.normalization("embedded_fashion_mnist")
    np.savez(path, images=images["train_images"][..., None], labels=images["train_labels"],
             outliers=outliers["train"][..., None], mean=np.asarray(mean), std=np.asarray(std))


class _NoRetracingWarning(logging.Filter):
    """Drops TensorFlow's retracing warning: each model traces its own step function once."""

    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


def run_benchmark(config, log=print, torch_python=None):
    """Builds, warms up and times every row; returns a list of per-row result dicts."""
    import keras
    import numpy as np
    import tensorflow as tf

    tf.get_logger().addFilter(_NoRetracingWarning())
    keras.utils.set_random_seed(config["seed"])
    rng = np.random.default_rng(config["seed"])
    rows = []
    for policy in config["precisions"]:
        for xla in config["xla"]:
            for method in config["methods"]:
                log(f"building {method} ({HEAD_FOR[method]} head, {policy}, XLA {xla})...")
                rows.append(_TensorFlowRow(method, policy, xla, config, rng))
    worker, scratch = None, None
    if torch_python:
        data_path = None
        if config["mode"] == "epoch":
            scratch = tempfile.mkdtemp(prefix="ice-tf-bench-")
            data_path = os.path.join(scratch, "embedded.npz")
            write_epoch_data(data_path)
        worker = TorchWorker(torch_python, config, data_path, log=log)
        images = rows[0].images if config["mode"] == "epoch" else config["batch_in"] + config["batch_out"]
        rows += [_TorchRow(worker, key, config, images) for key in worker.info["configurations"]]
    try:
        for row in rows:
            start = time.perf_counter()
            row.warm_up(config["warmup"])
            log(f"warm-up {row.label} ({row.precision}, XLA {row.xla}): {config['warmup']} steps "
                f"in {time.perf_counter() - start:.1f}s")
        gc.collect()
        order = list(rows)
        for round_index in range(config["steps"]):
            for row in order:
                row.timed_step()
            log(f"round {round_index + 1}/{config['steps']}: "
                + ", ".join(f"{r.label} {r.precision} {r.times[-1]:.3f}s" for r in rows))
            order.reverse()
    finally:
        if worker:
            worker.close()
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return summarize(rows, torch_info=worker.info if worker else None)


def fastest_torch_rows(rows):
    """{arithmetic precision: the PyTorch row with the lowest median time}."""
    fastest = {}
    for row in rows:
        if row.framework != "torch":
            continue
        best = fastest.get(row.arithmetic)
        if best is None or statistics.median(row.times) < statistics.median(best.times):
            fastest[row.arithmetic] = row
    return fastest


def summarize(rows, torch_info=None):
    """Per-row result dicts: medians, ratios to ce/oe of the same setting, speed-up over
    the fastest PyTorch row of the same precision, peak memory."""
    def same_setting(row, method):
        return next((r for r in rows if r.framework == row.framework and r.method == method
                     and r.precision == row.precision and r.xla == row.xla), None)

    fastest = fastest_torch_rows(rows)
    results = []
    for row in rows:
        median = statistics.median(row.times)
        reference = fastest.get(row.arithmetic)
        result = {
            "method": row.label, "framework": row.framework, "head": row.head,
            "precision": row.precision, "xla": row.xla, "images_per_step": row.images,
            "times_s": row.times, "median_s": median, "min_s": min(row.times),
            "max_s": max(row.times), "images_per_s": row.images / median,
            "jit_compile": row.xla == "on", "last_logs": row.last_logs,
            "speedup_vs_torch": (statistics.median(reference.times) / median
                                 if reference else None),
            "fastest_torch": reference.label if reference else None,
            "peak_rss_mb": statistics.median(row.peak_mb) if row.peak_mb else None,
        }
        for name in ("ce", "oe"):
            other = same_setting(row, name) if row.framework == "ice-tf" else None
            result[f"ratio_to_{name}"] = (None if other is None
                                          else median / statistics.median(other.times))
            result[f"paired_ratio_to_{name}"] = (None if other is None else statistics.median(
                a / b for a, b in zip(row.times, other.times)))
        results.append(result)
    if torch_info:
        results[-1]["torch"] = torch_info
    return results


def _ratio(value):
    return "–" if value is None else f"{value:.3f}×"


def format_report(results, machine, config):
    """The machine description and the markdown table, as one string."""
    torch_row = next((r for r in results if r.get("torch")), None)
    unit = "epoch" if config["mode"] == "epoch" else "step"
    setup = (f"one epoch of fit on the embedded benchmark ({results[0]['images_per_step']} images "
             "with outliers, augmentation on)" if config["mode"] == "epoch" else
             f"images {config['image_size']}x{config['image_size']}x{config['channels']}, "
             f"K = {config['num_classes']}, ce uses outliers: {config['ce_uses_outliers']}")
    lines = [
        f"Machine: {machine['cpu']}, {machine['usable_cores']} usable cores "
        f"(os.cpu_count() = {machine['cpu_count']}), GPUs: {', '.join(machine['gpus']) or 'none'}",
        f"Software: Python {machine['python']}, TensorFlow {machine['tensorflow']}, "
        f"Keras {machine['keras']}"
        + (f", PyTorch {torch_row['torch']['torch']} ({torch_row['torch']['threads']} threads)"
           if torch_row else "")
        + f"; TensorFlow threads intra {machine['intra_op_threads'] or 'default'}, inter "
        f"{machine['inter_op_threads'] or 'default'}",
        f"Setup: backbone {config['backbone']}, batch_in {config['batch_in']} + batch_out "
        f"{config['batch_out']}, {setup}; {config['warmup']} warm-up + {config['steps']} timed "
        f"{unit}s per row, interleaved; op determinism: {'on' if config.get('deterministic') else 'off'}",
        "",
        f"| method | head | precision | XLA | images/{unit} | median s/{unit} | min–max s | images/s "
        "| × ce | × oe | × oe (paired) | × fastest torch, same precision | peak RSS MB |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        peak = "–" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb']:.0f}"
        lines.append(
            f"| {r['method']} | {r['head']} | {r['precision']} | {r['xla']} | {r['images_per_step']} | "
            f"{r['median_s']:.4f} | {r['min_s']:.4f}–{r['max_s']:.4f} | {r['images_per_s']:.1f} | "
            f"{_ratio(r['ratio_to_ce'])} | {_ratio(r['ratio_to_oe'])} | "
            f"{_ratio(r['paired_ratio_to_oe'])} | {_ratio(r['speedup_vs_torch'])} | {peak} |"
        )
    if (config["mode"] == "step" and "ce" in config["methods"] and not config["ce_uses_outliers"]):
        lines += ["", f"Note: ce processes only {config['batch_in']} images per step (no outliers); "
                      f"the other methods process {config['batch_in'] + config['batch_out']}. "
                      "Compare ce by images/s."]
    lines += ["", "× ce / × oe: ratio of median times to the row of that method with the same "
                  "precision and XLA; × oe (paired): median of per-round ratios; × fastest torch: "
                  "the median time of the fastest PyTorch row of the same precision (float32 with "
                  "float32, mixed_bfloat16 with the bfloat16 autocast) over the row's, above 1 when "
                  "the row is faster; peak RSS: the median over the timed steps of the process's "
                  "peak resident memory during the step. Ratios are comparable only within one run."]
    if config.get("load"):
        before, after = config["load"]
        lines.append(f"Load average (1 min) before the run {before:.2f}, after {after:.2f}.")
    return "\n".join(lines)


def load_average():
    """The 1-minute load average (None off Linux)."""
    try:
        with open("/proc/loadavg") as stream:
            return float(stream.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _config_from_flags():
    return {
        "mode": FLAGS.mode,
        "backbone": FLAGS.backbone,
        "batch_in": FLAGS.batch_in,
        "batch_out": FLAGS.batch_out,
        "image_size": FLAGS.image_size if FLAGS.mode == "step" else 28,
        "channels": FLAGS.channels if FLAGS.mode == "step" else 1,
        "num_classes": FLAGS.num_classes if FLAGS.mode == "step" else 10,
        "methods": list(FLAGS.methods),
        "precisions": list(FLAGS.precisions),
        "xla": ["on"] if FLAGS.jit_compile else list(FLAGS.xla),
        "steps": FLAGS.steps,
        "warmup": FLAGS.warmup,
        "ce_uses_outliers": FLAGS.ce_uses_outliers,
        "deterministic": FLAGS.deterministic,
        "torch_threads": FLAGS.torch_threads,
        "torch_precisions": list(FLAGS.torch_precisions),
        "torch_compile": FLAGS.torch_compile,
        "torch_workers": FLAGS.torch_workers,
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
    if FLAGS.against == "torch" and config["backbone"] not in ("wrn40_2", "small_cnn"):
        raise app.UsageError("--against=torch has PyTorch versions of wrn40_2 and small_cnn only")

    def log(message):
        print(message, file=sys.stderr, flush=True)

    import tensorflow as tf

    if FLAGS.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.intra_op_threads)
    if FLAGS.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)
    if config["deterministic"]:
        from ice_tf import experiment

        experiment.enable_determinism()
    torch_python = (ensure_torch_env(FLAGS.torch_env, FLAGS.torch_pip_args, log)
                    if FLAGS.against == "torch" else None)
    machine = machine_info()
    before = load_average()
    if before is not None and before > machine["usable_cores"] + 1:
        log(f"warning: the load average is {before:.1f} on {machine['usable_cores']} cores: "
            "other processes will slow TensorFlow's step more than PyTorch's.")
    results = run_benchmark(config, log=log, torch_python=torch_python)
    after = load_average()
    if before is not None and after is not None:
        config["load"] = (before, after)
    print(format_report(results, machine, config), flush=True)
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump({"machine": machine, "config": config, "results": results}, f, indent=2)
        log(f"wrote {FLAGS.json_out}")


if __name__ == "__main__":
    app.run(main)
