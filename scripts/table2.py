"""The paper's Table 2: post-hoc detectors on a plain model next to outlier-trained methods.

  python scripts/table2.py --runs_dir=runs/demo
  python scripts/table2.py --runs_dir=runs/demo3 --seeds=1,2,3   # mean ± std over seeds
  python scripts/table2.py --plain=runs/ce --method=oe:runs/oe --method=energy:runs/energy \\
      --method=ice:runs/ice --output_dir=runs

Rows: MSP, ODIN and Mahalanobis on the plain (CE-trained) model, then each method's
model with its own score (its config's `score`: MSP for OE, the energy score for
Energy, max h for ICE). Columns: AUPR-In, AUROC and FPR95 (in-distribution
positive), each the mean over the OOD sets of the run's config, and in-distribution
accuracy; percentages. `--runs_dir` means <runs_dir>/{ce,oe,energy,ice}/seed<k>, the
layout ice-tf compare writes; with several --seeds each cell is the mean ± std
(population, as ice-tf compare reports) over the seeds' rows. Writes table2.md and table2.json into --output_dir
(default: --runs_dir, else the plain run's parent folder). Mahalanobis statistics
are fitted once and saved in the plain run (see ice-tf evaluate).
"""

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from ice_tf.cli import experiment_flags, runner, seed_flags  # noqa: E402
from ice_tf import metrics  # noqa: E402  (light: no TensorFlow)
from ice_tf.experiment import run_folder  # noqa: E402

# TensorFlow is imported in main once the arguments are checked, so mistakes fail at once.

flags.DEFINE_string("runs_dir", None, "A compare.py folder: <runs_dir>/{ce,oe,energy,ice}/seed<seed>.")
seed_flags.define_seeds_flag("With --runs_dir: the seed<k> folders to read; several give "
                             "mean ± std over seeds.")
flags.DEFINE_string("plain", None, "The plain (CE-trained) run folder; overrides <runs_dir>/ce.")
flags.DEFINE_multi_string("method", [], "label:RUN_DIR of an outlier-trained method (repeatable).")
flags.DEFINE_string("output_dir", None, "Where table2.md/json go; default: runs_dir or the plain run's parent.")
flags.DEFINE_string("set", "", "Config overrides for every run, key=value,... (e.g. protocol=full).")
experiment_flags.define_detector_flags()
FLAGS = flags.FLAGS

METHODS = ("oe", "energy", "ice")
POST_HOC = (("MSP", "msp"), ("ODIN", "odin"), ("Mahalanobis", "mahalanobis"))
COLUMNS = (("aupr_in", "AUPR-In ↑"), ("auroc", "AUROC ↑"), ("fpr95", "FPR95 ↓"))


def parse_runs(runs_dir, seed, plain, method_specs):
    """(plain run folder, {label: run folder}) from --runs_dir, --plain and --method."""
    methods = {}
    if runs_dir:
        plain = plain or run_folder.method_run(runs_dir, "ce", seed)
        methods = run_folder.run_folders(runs_dir, METHODS, seed)
    for spec in method_specs:
        try:
            label, path = run_folder.parse_label_folder(spec)
        except ValueError:
            raise app.UsageError(f"--method={spec!r}: use label:RUN_DIR.") from None
        methods[label] = path
    if not plain:
        raise app.UsageError("give --runs_dir or --plain (the CE-trained run).")
    for path in [plain, *methods.values()]:
        for name in (run_folder.CONFIG_FILE, run_folder.MODEL_FILE):
            if not os.path.exists(run_folder.path(path, name)):
                raise app.UsageError(f"{path} is not a finished run folder (no {name}).")
    return plain, methods


def describe(detector):
    """The score and its hyperparameters, e.g. 'odin (T=1000, ε=0.0014)'."""
    if detector.name == "odin":
        return f"odin (T={detector.temperature:g}, ε={detector.epsilon:g})"
    if detector.name == "mahalanobis":
        return f"mahalanobis (ε={detector.epsilon:g})"
    return detector.name


def over_seeds(rows_by_seed):
    """One row per detector from each seed's rows (in the same order): every metric's
    mean over seeds, its population std under "<key>_std", and the seeds' rows under
    "per_seed". One seed gives its rows unchanged."""
    if len(rows_by_seed) == 1:
        return rows_by_seed[0]
    combined = []
    for rows in zip(*rows_by_seed):
        row = {key: rows[0][key] for key in ("method", "model", "score", "score_text")}
        for key in [k for k, _ in COLUMNS] + ["accuracy"]:
            row[key], row[key + "_std"] = metrics.spread([r[key] for r in rows]).values()
        row["per_seed"] = list(rows)
        combined.append(row)
    return combined


def _cell(row, key):
    text = f"{100 * row[key]:.2f}"
    return text + f" ± {100 * row[key + '_std']:.2f}" if key + "_std" in row else text


def table_markdown(rows, header):
    lines = [header, "", "| Method | Model | Score | " + " | ".join(t for _, t in COLUMNS)
             + " | In-dist. accuracy ↑ |", "|---|---|---|" + "---|" * (len(COLUMNS) + 1)]
    for row in rows:
        cells = [row["method"], row["model"], row["score_text"],
                 *(_cell(row, key) for key, _ in COLUMNS), _cell(row, "accuracy")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv):
    experiment_flags.quiet_tensorflow_logging(FLAGS)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    started = time.time()
    seeds = seed_flags.parsed_seeds()
    if len(seeds) > 1 and not FLAGS.runs_dir:
        raise app.UsageError("several --seeds need --runs_dir (the compare layout <runs_dir>/<method>/seed<k>).")
    runs_by_seed = [parse_runs(FLAGS.runs_dir, seed, FLAGS.plain, FLAGS.method) for seed in seeds]
    plain = runs_by_seed[0][0]
    output_dir = FLAGS.output_dir or FLAGS.runs_dir or os.path.dirname(os.path.abspath(plain))
    try:
        overrides = experiment_flags.parse_overrides(FLAGS.set)
    except ValueError as error:
        raise app.UsageError(f"--set: {error}") from None
    from ice_tf import experiment, losses
    from ice_tf.experiment import evaluation, run_data
    options = experiment_flags.detector_options(FLAGS)
    jobs = []
    for seed, (plain, methods) in zip(seeds, runs_by_seed):
        jobs += [(seed, label, plain, score) for label, score in POST_HOC]
        jobs += [(seed, losses.display_name(label), path, None) for label, path in methods.items()]

    rows_by_seed, loaded, in_datasets, ood_labels = {}, {}, set(), set()
    for index, (seed, label, run_dir, score) in enumerate(jobs, 1):
        if run_dir not in loaded:
            model, config, model_path = experiment.load_run(run_dir, **overrides)
            adapt = run_data.model_input(model, config)  # as ice-tf evaluate prepares the sets
            loaded = {run_dir: (model, config, model_path, adapt,
                                run_data.make_eval_data(config, adapt))}
        model, config, model_path, adapt, (in_ds, ood_ds) = loaded[run_dir]
        in_datasets.add(config.in_dataset)
        ood_labels.add(tuple(ood_ds))
        name = score or config.score_name
        print(f"\n=== [{index}/{len(jobs)}] {label}: {name} on {run_dir}")
        detector, results = evaluation.evaluate_run_with_detector(
            name, model, config, model_path, (in_ds, ood_ds), adapt, **options)
        rows_by_seed.setdefault(seed, []).append({
            "method": label,
            "model": f"{config.method.display_name} ({config.head_kind} head)",
            "run": run_dir,
            "score": detector.name,
            "score_text": describe(detector),
            **{key: results["mean"][key]["mean"] for key, _ in COLUMNS},
            "accuracy": results["accuracy"],
            "results": results,
        })
    if len(in_datasets) > 1:
        raise app.UsageError(f"the runs have different in-distribution sets: {sorted(in_datasets)}.")
    sets_text = ", ".join(sorted(ood_labels)[0])
    if len(ood_labels) > 1:
        sets_text += " (the runs' OOD sets differ: each row averages over its run's own sets)"
    header = (
        f"In-distribution: {in_datasets.pop()}; OOD sets: {sets_text}; protocol {config.protocol}. "
        "AUPR-In, AUROC and FPR95 are means over the OOD sets, in-distribution positive; "
        "percentages. MSP, ODIN and Mahalanobis score the plain model; the other rows are "
        "models trained with outliers, each scored its own way."
    )
    if len(seeds) > 1:
        header += f" Mean ± std (population) over seeds {', '.join(map(str, seeds))}."
    rows = over_seeds([rows_by_seed[seed] for seed in seeds])
    table = table_markdown(rows, header)
    seconds = round(time.time() - started, 1)
    experiment.write_atomic(os.path.join(output_dir, "table2.md"), table)
    experiment.write_atomic(
        os.path.join(output_dir, "table2.json"),
        json.dumps({"header": header, "rows": rows, "seeds": seeds, "options": options,
                    "seconds": seconds}, indent=2)
        + "\n",
    )
    print("\n" + table)
    print(f"Written: {os.path.join(output_dir, 'table2.md')} ({seconds:.0f} s)")


if __name__ == "__main__":
    runner.run(main, __doc__)
