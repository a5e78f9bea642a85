"""Mean ± std over seeds of the runs of a comparison, for the accuracy study.

  python scripts/study_table.py --runs_dir=runs/study_bn
  python scripts/study_table.py --runs_dir=runs/study_bn --evaluation=evaluation-val.json

For each variant folder <runs_dir>/<variant>/seed<k> (as `ice-tf compare` writes them):
accuracy and mean AUROC of the run's own score from results.json, or, with --evaluation,
from that file of `ice-tf evaluate` (the run's own score, then each other score it holds,
e.g. odin and mahalanobis); for Gaussian-head runs the last epoch's tr(LLᵀ)/d and
condition number of L (metrics.jsonl). Prints a markdown table; n = seeds found.

  python scripts/study_table.py --runs_dir=runs/all3 --evaluation=evaluation-posthoc.json \
      --detectors --variants=ce,ice

With --detectors: one row per (variant, score) of the evaluation file, with accuracy, mean
AUROC and mean FPR95 over the OOD sets (mean ± population std over seeds, metrics.spread).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import numpy as np

from ice_tf import metrics  # no TensorFlow
from ice_tf.experiment import run_folder  # no TensorFlow: the run folder's readers

OWN = "own score"  # the run's own score: msp for a linear head, ice (max h) for a Gaussian one


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    spread = metrics.spread(values)  # the population std, ice-tf's one convention
    mean, std = 100 * spread["mean"], 100 * spread["std"]
    return f"{mean:.2f} ± {std:.2f}"


def _plain_mean(values):
    values = [v for v in values if v is not None]
    return f"{np.mean(values):.3g}" if values else "–"


def collect(runs_dir, evaluation=None):
    """{variant: [per-seed dicts]} of the finished runs under `runs_dir`."""
    table = {}
    for variant in sorted(p for p in pathlib.Path(runs_dir).iterdir() if p.is_dir()):
        for run in sorted(variant.glob("seed*")):
            if not run_folder.is_finished(str(run)):
                continue
            results = run_folder.read_results(str(run))
            row = {"accuracy": results["accuracy"],
                   "scores": {OWN: results["mean"]["auroc"]["mean"]}}
            if evaluation and (run / evaluation).exists():
                evaluated = run_folder.read_evaluation(str(run), evaluation)
                row["accuracy"] = next(iter(evaluated.values()))["accuracy"]
                own = results.get("score")
                row["scores"] = {OWN if score == own else score: r["mean"]["auroc"]["mean"]
                                 for score, r in evaluated.items()}
            metrics = (run_folder.read_metrics(str(run)) or [{}])[-1]
            row["trace"] = metrics.get("head_scale_trace")
            row["condition"] = metrics.get("head_scale_condition")
            row["train_accuracy"] = metrics.get("accuracy")
            table.setdefault(variant.name, []).append(row)
    return table


def markdown(table):
    """The table as markdown: one row per variant."""
    scores = sorted({s for rows in table.values() for row in rows for s in row["scores"]},
                    key=lambda s: (s != OWN, s == "mahalanobis", s))
    header = ["variant", "n", "accuracy", "train accuracy", *(f"AUROC {s}" for s in scores),
              "tr(LLᵀ)/d", "cond(L)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, rows in table.items():
        cells = [variant, str(len(rows)), _mean_std([r["accuracy"] for r in rows]),
                 _mean_std([r["train_accuracy"] for r in rows])]
        for score in scores:
            cells.append(_mean_std([r["scores"].get(score) for r in rows]))
        cells += [_plain_mean([r["trace"] for r in rows]), _plain_mean([r["condition"] for r in rows])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def detector_rows(runs_dir, evaluation, variants=None):
    """[(variant, score, n, accuracy, AUROC, FPR95 cells)] from each run's evaluation file."""
    rows = []
    for variant in sorted(p for p in pathlib.Path(runs_dir).iterdir() if p.is_dir()):
        if variants and variant.name not in variants:
            continue
        records = [run_folder.read_evaluation(str(run), evaluation)
                   for run in sorted(variant.glob("seed*"))
                   if run_folder.is_finished(str(run)) and (run / evaluation).exists()]
        if not records:
            continue
        for score in records[0]:
            found = [r[score] for r in records if score in r]
            rows.append((variant.name, score, len(found),
                         _mean_std([r["accuracy"] for r in found]),
                         _mean_std([r["mean"]["auroc"]["mean"] for r in found]),
                         _mean_std([r["mean"]["fpr95"]["mean"] for r in found])))
    return rows


def detector_markdown(rows):
    """The --detectors table as markdown."""
    lines = ["| model | score | n | accuracy | mean AUROC | mean FPR95 |", "|---|---|---|---|---|---|"]
    lines += [f"| {' | '.join(str(cell) for cell in row)} |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs_dir", required=True)
    parser.add_argument("--evaluation", default=None,
                        help="an ice-tf evaluate JSON in each run folder (e.g. evaluation-val.json)")
    parser.add_argument("--detectors", action="store_true",
                        help="one row per (variant, score) of --evaluation: accuracy, AUROC, FPR95")
    parser.add_argument("--variants", default="", help="comma-separated variants to include")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.runs_dir):
        sys.stderr.write(f"error: {args.runs_dir} is not a folder of runs\n")
        return 1
    if args.detectors:
        if not args.evaluation:
            sys.stderr.write("error: --detectors reads --evaluation files; name one\n")
            return 1
        variants = [v for v in args.variants.split(",") if v]
        print(detector_markdown(detector_rows(args.runs_dir, args.evaluation, variants)))
        return 0
    print(markdown(collect(args.runs_dir, args.evaluation)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
