"""Calibration of each method's in-distribution confidence as P(in-distribution).

  python scripts/calibration.py --runs_dir=runs/demo
  python scripts/calibration.py --runs_dir=runs/demo --ood_fraction=0.2 --num_bins=10
  python scripts/calibration.py --run=ice:runs/demo/ice/seed1 --run=oe:runs/demo/oe/seed1 \\
      --output=runs/demo/calibration-ice-oe.png
  python scripts/calibration.py --runs_dir=runs/demo3 --seeds=1,2,3   # mean ± std over seeds

`--runs_dir` reads `<runs_dir>/<method>/seed<seed>` for each of `--methods` (the layout
ice-tf compare writes); with several `--seeds` each number is the mean ± std (population)
over the seeds and the reliability diagram shows the first seed; `--run=label:folder` (repeatable) names run folders
directly. The confidence is `ice_tf.scores.confidence`: exp(max h) for a Gaussian
head (ICE, Eq. 0.11), max softmax for a linear head.

The mixed test set: every in-distribution test image (is_in = 1) plus
round(N_in · f / (1 - f)) OOD test images (is_in = 0), f = --ood_fraction
(default 0.5, a base rate of 50%), drawn without replacement as evenly across the
run's OOD sets as their sizes allow, fixed by --mixture_seed; if the OOD sets are
too small, in-distribution images are subsampled instead. Per OOD set the same
rule mixes the in-distribution images with that set alone. All runs with the same
evaluation data get the same images.

Writes (atomically) a markdown table and JSON (ECE, MCE, Brier, mean confidences,
per-OOD-set ECE, reliability bins) beside the reliability diagram at --output
(default <runs_dir>/calibration.png): calibration.md and calibration.json.
"""

import json
import os
import textwrap
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only; no display needed

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402

from ice_tf.cli import experiment_flags, runner, seed_flags  # noqa: E402
import ice_tf.models  # noqa: E402,F401  (registers the custom classes for loading)
from ice_tf import calibration, experiment, metrics, scores  # noqa: E402
from ice_tf.experiment import evaluation, run_data, run_folder  # noqa: E402
from ice_tf.figures import plotting  # noqa: E402

CREATE_RUNS = run_folder.DEMO_COMMAND

flags.DEFINE_string("runs_dir", None, "A comparison folder holding <method>/seed<seed> run folders.")
flags.DEFINE_list("methods", ["ce", "oe", "energy", "ice"], "Method folders read under --runs_dir.")
seed_flags.define_seeds_flag("The seed<k> folders read under --runs_dir; several give "
                             "mean ± std over seeds.")
flags.DEFINE_multi_string("run", [], "label:run_folder (repeatable); used instead of --runs_dir.")
flags.DEFINE_float("ood_fraction", 0.5, "Share of OOD images in the mixed test set, in (0, 1).")
flags.DEFINE_integer("num_bins", 15, "Equal-width confidence bins on [0, 1].", lower_bound=1)
flags.DEFINE_integer("mixture_seed", 0, "Seed of the OOD (and, if needed, ID) image draws.")
flags.DEFINE_string("set", "", "Config overrides for every run, key=value (e.g. eval_limit=500).")
flags.DEFINE_string("output", None, "Reliability diagram PNG; default <runs_dir>/calibration.png. "
                    "The .md and .json go beside it with the same stem.")
flags.register_validator("ood_fraction", lambda f: 0.0 < f < 1.0,
                         "--ood_fraction must lie strictly between 0 and 1.")
FLAGS = flags.FLAGS

CONFIDENCE_NAMES = {True: "exp(max h)", False: "max softmax"}


# ------------------------------------------------------------------ runs
def run_folders(runs_dir, methods, seed, run_specs):
    """{label: folder} from --run specs, or from --runs_dir/<method>/seed<seed>; each
    must hold a finished run (model.keras + config.json)."""
    if not run_specs and not runs_dir:
        raise app.UsageError("give --runs_dir (e.g. runs/demo) or at least one --run=label:folder.")
    command = CREATE_RUNS
    if runs_dir and not run_specs and os.path.normpath(runs_dir) != os.path.normpath("runs/demo"):
        command += f" --output_dir={runs_dir}"
    try:
        folders = run_folder.run_folders(runs_dir, methods, seed, run_specs)
        run_folder.check_run_folders(folders, (run_folder.MODEL_FILE, run_folder.CONFIG_FILE),
                                     command=command)
    except (ValueError, FileNotFoundError) as error:
        raise app.UsageError(str(error)) from None
    return folders


def _eval_data_key(config):
    return (config.in_dataset, config.eval_split, tuple(config.ood_datasets), config.eval_limit,
            config.eval_batch_size, config.seed, config.data_dir)


def model_confidences(model, in_ds, ood_ds, label, temperature=1.0, platt=None):
    """Confidence in [0, 1] (float64) on the in-distribution set and each OOD set
    (`temperature`: T of a Gaussian head's exp(max h / T); `platt`: (a, b) of its
    σ(a max h + b), used instead when given)."""
    datasets = {"in": in_ds, **ood_ds}
    counts = [int(tf.data.experimental.cardinality(ds)) for ds in datasets.values()]
    progbar = keras.utils.Progbar(None if min(counts) < 0 else sum(counts), unit_name="batch")
    print(f"{label}: {CONFIDENCE_NAMES[model.gaussian_head]} on {len(datasets)} sets")
    confidences = {}
    for name, dataset in datasets.items():
        outputs, _ = evaluation.predict_outputs(model, dataset, progbar)
        values = np.asarray(scores.confidence(outputs, model.gaussian_head, temperature, platt),
                            np.float64)
        # float32 softmax/exp may overshoot 1 by an ulp; anything more is a bug.
        if not np.all(np.isfinite(values)) or values.min() < -1e-6 or values.max() > 1 + 1e-6:
            raise ValueError(f"{label}: confidence outside [0, 1] on {name}.")
        confidences[name] = np.clip(values, 0.0, 1.0)
    return confidences.pop("in"), confidences


def calibrate(confidence_in, confidence_out, ood_fraction, num_bins, seed):
    """Metrics and bins on the mixture of all OOD sets, and ECE etc. per OOD set."""
    confidence, is_in = calibration.mixture(confidence_in, confidence_out, ood_fraction, seed)
    result = calibration.calibration_metrics(confidence, is_in, num_bins)
    result["bins"] = calibration.reliability_bins(confidence, is_in, num_bins).to_dict()
    in_indices, out_indices = calibration.mixture_indices(
        len(confidence_in), {k: len(v) for k, v in confidence_out.items()}, ood_fraction, seed
    )
    result["num_out_by_set"] = {k: int(len(v)) for k, v in out_indices.items()}
    result["sets"] = {}
    for label, values in confidence_out.items():
        c, y = calibration.mixture(confidence_in, {label: values}, ood_fraction, seed)
        result["sets"][label] = calibration.calibration_metrics(c, y, num_bins)
    return result


# Numbers of a result that several seeds average (the bins stay the first seed's).
SEED_METRICS = ("ece", "mce", "brier", "mean_confidence_in", "mean_confidence_out", "temperature")


def over_seeds(results_by_seed):
    """One result per row from each seed's results: the first seed's, with every
    `SEED_METRICS` entry and each OOD set's ECE replaced by the mean over seeds, its
    population std under result["std"] (the set's under "ece_std"), and the seeds'
    results under "per_seed". One seed gives its results unchanged."""
    if len(results_by_seed) == 1:
        return results_by_seed[0]
    combined = {}
    for row, first in results_by_seed[0].items():
        rows = [results[row] for results in results_by_seed]
        result = {**first, "sets": {k: dict(v) for k, v in first["sets"].items()}, "std": {},
                  "per_seed": rows}
        for key in SEED_METRICS:
            result[key], result["std"][key] = metrics.spread([r[key] for r in rows]).values()
        for label, set_metrics in result["sets"].items():
            values = [r["sets"][label]["ece"] for r in rows if r["sets"].get(label)]
            set_metrics["ece"], set_metrics["ece_std"] = metrics.spread(values).values()
        if first["temperature"] != 1.0:
            result["confidence"] = (f"exp(max h / T), T = {result['temperature']:.2f} ± "
                                    f"{result['std']['temperature']:.2f} fitted on validation data")
        combined[row] = result
    return combined


# --------------------------------------------------------------- reports
def _pct(value, std=None):
    if value is None:
        return "–"
    return f"{100 * value:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")


def markdown(results, settings):
    labels = []
    for result in results.values():
        labels += [label for label in result["sets"] if label not in labels]
    first = next(iter(results.values()))
    mix = ", ".join(f"{label} {n}" for label, n in first["num_out_by_set"].items())
    lines = [
        f"In-distribution confidence as P(in-distribution): {first['num_in']} in-distribution "
        f"test images + {first['num_out']} OOD test images ({mix}; OOD fraction "
        f"{settings['ood_fraction']:g}, mixture seed {settings['mixture_seed']}); "
        f"{settings['num_bins']} equal-width bins, last bin closed. ECE, MCE and mean confidences "
        "in percent, Brier score as a fraction; lower ECE/MCE/Brier is better. Per OOD set: ECE "
        "on the in-distribution images mixed with that set alone at the same OOD fraction."
        + (f" Mean ± std (population) over seeds {', '.join(map(str, settings['seeds']))}."
           if len(settings.get("seeds", [])) > 1 else ""),
        "",
    ]
    header = ["Method", "Confidence", "ECE", "MCE", "Brier", "Mean conf. ID", "Mean conf. OOD",
              *(f"ECE {label}" for label in labels)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, result in results.items():
        std = result.get("std", {})
        brier = f"{result['brier']:.4f}" + (f" ± {std['brier']:.4f}" if "brier" in std else "")
        cells = [method, result["confidence"], _pct(result["ece"], std.get("ece")),
                 _pct(result["mce"], std.get("mce")), brier,
                 _pct(result["mean_confidence_in"], std.get("mean_confidence_in")),
                 _pct(result["mean_confidence_out"], std.get("mean_confidence_out"))]
        cells += [_pct(result["sets"][label]["ece"], result["sets"][label].get("ece_std"))
                  if label in result["sets"] else "–" for label in labels]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def reliability_figure(results):
    """One column per method: reliability bars vs the diagonal over a histogram of confidences."""
    methods = list(results)
    figure, axes = plt.subplots(
        2, len(methods), figsize=(3.2 * len(methods), 5.4), squeeze=False,
        gridspec_kw={"height_ratios": [3, 1.3]}, sharex=True,
    )
    for column, method in enumerate(methods):
        result = results[method]
        bins = result["bins"]
        edges = np.asarray(bins["edges"])
        width = np.diff(edges)
        frequency = np.array([np.nan if f is None else f for f in bins["frequency"]])
        confidence = np.array([np.nan if c is None else c for c in bins["mean_confidence"]])
        filled = ~np.isnan(frequency)
        top, bottom = axes[0, column], axes[1, column]
        top.bar(edges[:-1][filled], frequency[filled], width=width[filled], align="edge",
                color="tab:blue", edgecolor="white", label="observed ID frequency")
        top.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfect calibration")
        # Perfect calibration puts each bar's top on its red mark; the gap is the bin's error.
        centres = (edges[:-1] + width / 2)[filled]
        top.plot(centres, confidence[filled], "_", color="tab:red", markersize=9, mew=2,
                 label="bin mean confidence")
        top.set(xlim=(0, 1), ylim=(0, 1),
                title="\n".join(textwrap.wrap(f"{method}: {result['confidence']}", 34)
                                + [f"ECE {_pct(result['ece'])}%"]))
        if column == 0:
            top.set_ylabel("fraction in-distribution")
            top.legend(loc="upper left", fontsize=7)
        count = np.asarray(bins["count"], float)
        count_in = np.asarray(bins["count_in"], float)
        bottom.bar(edges[:-1], count_in, width=width, align="edge", color="tab:green", label="ID")
        bottom.bar(edges[:-1], count - count_in, width=width, align="edge", bottom=count_in,
                   color="tab:orange", label="OOD")
        bottom.set_yscale("symlog", linthresh=1)
        bottom.set_xlabel("confidence")
        if column == 0:
            bottom.set_ylabel("images")
            bottom.legend(loc="upper center", fontsize=7, ncol=2)
    figure.tight_layout()
    return figure


def save_figure(figure, path):
    try:
        plotting.save_png(figure, path, dpi=120)
    finally:
        plt.close(figure)


def main(argv):
    experiment_flags.quiet_tensorflow_logging(FLAGS)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    started = time.time()
    seeds = seed_flags.parsed_seeds()
    if len(seeds) > 1 and (FLAGS.run or not FLAGS.runs_dir):
        raise app.UsageError("several --seeds need --runs_dir (and no --run): the compare layout "
                             "<runs_dir>/<method>/seed<k>.")
    folders_by_seed = [run_folders(FLAGS.runs_dir, FLAGS.methods, seed, FLAGS.run) for seed in seeds]
    output = FLAGS.output or (FLAGS.runs_dir and os.path.join(FLAGS.runs_dir, "calibration.png"))
    if not output:
        raise app.UsageError("--output is required with --run (no --runs_dir to write into).")
    if not output.endswith(".png"):
        raise app.UsageError(f"--output={output} must be a .png path.")
    overrides = experiment_flags.parse_overrides(FLAGS.set)
    settings = {"ood_fraction": FLAGS.ood_fraction, "num_bins": FLAGS.num_bins,
                "mixture_seed": FLAGS.mixture_seed, "seeds": seeds}
    eval_data, results_by_seed = {}, []
    for folders in folders_by_seed:
        results = {}
        for label, folder in folders.items():
            model, config, _ = experiment.load_run(folder, **overrides)
            key = _eval_data_key(config)
            if key not in eval_data:  # runs of one comparison share their evaluation pipelines
                eval_data[key] = run_data.make_eval_data(config)
            maps = [(1.0, None)]  # (T, Platt's (a, b)): the paper's exp(max h) first
            if model.gaussian_head:
                # The map the run saved, or (an older run) a temperature fitted now on
                # validation data.
                saved_t, saved_platt = model.head.confidence_temperature, model.head.confidence_platt
                if saved_platt is None and saved_t == 1.0:
                    saved_t = experiment.fit_confidence_temperature(model, config)["temperature"]
                maps.append((saved_t, saved_platt))
            for temperature, platt in maps:
                confidence_in, confidence_out = model_confidences(model, *eval_data[key], label,
                                                                  temperature, platt)
                result = calibrate(confidence_in, confidence_out, FLAGS.ood_fraction,
                                   FLAGS.num_bins, FLAGS.mixture_seed)
                name = CONFIDENCE_NAMES[model.gaussian_head]
                row = label
                if platt is not None:  # one row name for every seed's fitted map
                    row = f"{label}, Platt fitted"
                    name = "σ(a max h + b), a and b fitted on validation data"
                elif temperature != 1.0:
                    row = f"{label}, T={temperature:.3g}" if len(seeds) == 1 else f"{label}, T fitted"
                    name = "exp(max h / T), T fitted on validation data"
                results[row] = {"run": folder, "loss": config.loss, "head": config.head_kind,
                                "in_dataset": config.in_dataset, "temperature": temperature,
                                "platt": None if platt is None else list(platt),
                                "confidence": name, **result}
        results_by_seed.append(results)
    results = over_seeds(results_by_seed)
    table = markdown(results, settings)
    stem = os.path.splitext(output)[0]
    # The diagram is one model's: with several seeds, the first seed's bins and ECE.
    save_figure(reliability_figure({row: results_by_seed[0][row] for row in results}), output)
    experiment.write_atomic(stem + ".json", json.dumps({**settings, "methods": results}, indent=2) + "\n")
    experiment.write_atomic(stem + ".md", table)
    print("\n" + table)
    print(f"Written: {output}, {stem}.md, {stem}.json ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    runner.run(main, __doc__)
