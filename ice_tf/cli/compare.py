"""Trains several methods with the same backbone and budget and compares them.

  ice-tf compare --flagfile=demo
  ice-tf compare --flagfile=demo --methods=ce,oe,energy,ice --seeds=1,2,3
  ice-tf compare --flagfile=demo --methods= \\
      --variant=ice_0.1:loss=ice,loss_weight=0.1 --variant=ice_1:loss=ice,loss_weight=1

Method hyperparameter flags (--loss_weight, --margin_in, ..., and those of an --import
module's loss) apply to the
methods that take them and are unset for the others (a note says which); a
--variant that sets one for a method without it is refused.

Every run goes to <output_dir>/<variant>/seed<k>/ (a normal run folder); the
comparison (Table 1 style: mean over OOD sets and per set, with accuracy; mean ±
std over seeds when several are given) is printed and written to
<output_dir>/comparison.md and comparison.json. Finished runs of the same config are
reused and unfinished ones resume from their last finished epoch, so a killed
comparison continues where it stopped; a run folder of another config is refused
before anything trains (--overwrite retrains every run from scratch).
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from ice_tf.cli import experiment_flags, runner, seed_flags  # noqa: E402
from ice_tf import experiment, ownership  # noqa: E402
from ice_tf.experiment import evaluation, run_folder  # noqa: E402

FLAGS = flags.FLAGS
# What compare writes into --output_dir beside the run folders (replaced only when ice-tf's).
COMPARISON_FILES = ("comparison.md", "comparison.json")


def define_flags():
    """Defines the flags of `ice-tf compare` (once per process: `run` calls it).

    Example:
      define_flags()  # then flags.FLAGS(argv)
    """
    experiment_flags.define_flags()
    flags.DEFINE_list("methods", ["ce", "oe", "energy", "ice"], "Loss names, each a variant with defaults.")
    flags.DEFINE_multi_string("variant", [], "label:key=value,key=value config overrides (repeatable).")
    seed_flags.define_seeds_flag("Seeds; each variant runs once per seed.")
    flags.DEFINE_multi_string(
        "group", [], "name:label+label OOD-set groups for the summary (default: all sets together)."
    )
    experiment_flags.define_run_flags()
    flags.DEFINE_bool("rerun", False, "The same as --overwrite (its earlier name).")


def parse_variants(methods, variant_specs):
    """{label: config overrides} from --methods and --variant specs.

    Example:
      parse_variants(["ce"], ["ice_0.1:loss=ice,loss_weight=0.1"])
    """
    variants = {method: {"loss": method} for method in methods}
    for spec in variant_specs:
        label, sep, overrides = spec.partition(":")
        if not sep or not label:
            raise app.UsageError(f"--variant={spec!r}: use label:key=value,key=value.")
        variants[label] = experiment_flags.parse_overrides(overrides)
    if not variants:
        raise app.UsageError("nothing to compare: give --methods or --variant.")
    return variants


def parse_groups(specs):
    """{group name: [OOD set labels]} from --group specs name:label+label.

    Example:
      parse_groups(["far:mnist+textures"])  # {"far": ["mnist", "textures"]}
    """
    groups = {}
    for spec in specs:
        name, sep, labels = spec.partition(":")
        if not sep:
            raise app.UsageError(f"--group={spec!r}: use name:label+label.")
        groups[name] = labels.split("+")
    return groups or None


@experiment_flags.one_line_errors
def main(argv):
    """Trains (or reuses) every variant and seed, then writes and prints the comparison.

    Example:
      run(["ice-tf compare", "--flagfile=demo", "--seeds=1,2"])
    """
    experiment_flags.quiet_tensorflow_logging(FLAGS)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    shared = experiment_flags.config_from_flags(FLAGS, shared_among_methods=True)
    base = shared.for_loss(shared.loss)
    variants = parse_variants(FLAGS.methods, FLAGS.variant)
    seeds = seed_flags.parsed_seeds()
    configs = {}
    for label, overrides in variants.items():
        method_base = shared.for_loss(overrides.get("loss", shared.loss))
        unset = [flag for flag in shared.options if flag not in method_base.options]
        if unset:
            print(f"note: {', '.join(unset)} unset for {label} (not a hyperparameter of "
                  f"{method_base.loss})")
        for seed in seeds:
            try:
                configs[label, seed] = method_base.replace(
                    **overrides, seed=seed,
                    output_dir=run_folder.method_run(base.output_dir, label, seed),
                ).validate()
            except ValueError as error:
                raise app.UsageError(f"--variant {label}: {error}") from None
    if base.dry_run:
        for (label, seed), config in configs.items():
            print(f"{label} seed {seed}: dry run OK {experiment.dry_run(config)}")
        return
    overwrite = FLAGS.overwrite or FLAGS.rerun
    table_path, record_path = (os.path.join(base.output_dir, name) for name in COMPARISON_FILES)
    ownership.check_replaceable(table_path, lambda text: text.startswith("In-distribution: "),
                                "a table ice-tf compare wrote")
    ownership.check_replaceable(record_path, ownership.json_with_keys(("runs", "aggregated")),
                                "a record ice-tf compare wrote")
    plan = experiment.plan_runs(configs, overwrite)
    results, diverged = {}, {}
    for index, ((label, seed), config) in enumerate(configs.items(), 1):
        print(f"\n=== [{index}/{len(configs)}] {label}, seed {seed} -> {config.output_dir}")
        if plan[label, seed] == "reuse":
            print("    finished earlier; reusing its results.json")
            results.setdefault(label, []).append(run_folder.read_results(config.output_dir))
            continue
        results.setdefault(label, [])
        try:
            results[label].append(experiment.run(
                config, overwrite=overwrite,
                files={run_folder.FLAGS_FILE: experiment_flags.to_flagfile(config.resolved())}))
        except FloatingPointError as error:  # a diverged run is a result too
            print(f"    {label}, seed {seed}: {error}")
            diverged.setdefault(label, []).append(seed)
    aggregated = {label: evaluation.aggregate_runs(runs) for label, runs in results.items() if runs}
    table = evaluation.comparison_markdown(aggregated, groups=parse_groups(FLAGS.group))
    if diverged:
        table += "\nDiverged (non-finite loss; no results): " + "; ".join(
            f"{label} (seed {', '.join(map(str, seeds_))})" for label, seeds_ in diverged.items()
        ) + ".\n"
    seeds_text = f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))})"
    header = (
        f"In-distribution: {base.in_dataset}; backbone {base.backbone}; {base.epochs} epochs; "
        f"protocol {base.protocol}; {seeds_text}. Percentages; higher is better except FPR95.\n\n"
    )
    experiment.write_atomic(table_path, header + table)
    experiment.write_atomic(
        record_path,
        json.dumps({"runs": results, "aggregated": aggregated, "diverged": diverged}, indent=2)
        + "\n",
    )
    print("\n" + header + table)


run = runner.command(define_flags, main, __doc__)


if __name__ == "__main__":
    run()
