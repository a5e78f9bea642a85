"""ICE's trained Gaussian head against a Gaussian fitted post hoc to the same features.

  python scripts/head_study.py --runs_dir=runs/all3 --method=ice --seeds=1,2,3
  python scripts/head_study.py --runs_dir=runs/all3 --seeds=1,2,3 --split=test --ridges=1e-3

For each run folder <runs_dir>/<method>/seed<k> (a Gaussian-head run of `ice-tf compare`):
the training images' penultimate features in inference mode (BatchNorm's moving averages,
as the Mahalanobis detector fits them) give the class means μ_k and the tied covariance Σ
(GDA, `ice_tf.gda`). Printed, mean ± std over seeds:

  * the head against that fit: the distance of each trained mean m_k from μ_k in units of
    Σ (√((m_k - μ_k)ᵀ Σ⁻¹ (m_k - μ_k)), averaged over classes), tr(LLᵀ)/tr(Σ), the
    condition numbers of LLᵀ and Σ, the spread of the eigenvalues of Σ^-½ LLᵀ Σ^-½ (1
    everywhere if the head's covariance were a multiple of Σ), and the per-class spreads
    tr(Σ_k)/tr(Σ) (min, max);
  * on the evaluation split (`--split=val`: the validation images against the outlier
    source's validation split, the split every choice is made on; `--split=test`: the
    test images against the run's OOD sets): accuracy and mean AUROC of max h (ICE's own
    score), logsumexp h, the Mahalanobis detector (pseudo-inverse of Σ), the head refitted
    to (μ, Σ + ridge·tr(Σ)/d·I) for each of `--ridges` (`ice_tf.models.refit_gaussian_head`),
    and the same fit of training-mode features (BatchNorm normalising each training batch,
    as the head saw them while it trained) served under the moving averages;
  * calibration of P(in-distribution) from each score's maps, fitted on the validation
    images and outliers (`ice_tf.calibration`): ECE (%, 15 bins) of exp(max h / T) and of
    Platt's σ(a·max h + b), on the validation mixture (2-fold: fitted on one half, measured
    on the other) and, with --split=test, on the test mixture per OOD set.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from ice_tf import calibration, gda, metrics  # noqa: E402
from ice_tf.detectors import tied_precision, training_features  # noqa: E402

VAL_OOD = ("outliers_val=embedded_outliers@val",)


def gaussian_scores(features, means, precision):
    """h (n, K) = -(z - μ_k)ᵀ P (z - μ_k), float64."""
    features = np.asarray(features, np.float64)
    projected = features @ precision
    return -(np.sum(projected * features, 1)[:, None] - 2 * projected @ means.T
             + np.sum((means @ precision) * means, 1)[None, :])


def logsumexp(values):
    peak = values.max(1)
    return peak + np.log(np.exp(values - peak[:, None]).sum(1))


def training_mode_features(model, config):
    """Features of the training batches as `train_step` computes them (BatchNorm in
    training mode on each batch of in-distribution images and outliers)."""
    from ice_tf.experiment import run_data
    from ice_tf.models import moving_statistics_kept, unpack_batch

    import tensorflow as tf

    dataset, steps = run_data.make_train_data(config, config.batch_in, config.batch_out)
    joint = getattr(model, "outlier_batchnorm", "joint") == "joint"
    features, labels = [], []
    with moving_statistics_kept(model):
        for batch in dataset.take(steps):
            images, batch_labels, outliers = unpack_batch(batch)
            inputs = images if (outliers is None or not joint) else tf.concat(
                [images, tf.cast(outliers, images.dtype)], 0)
            out = model.features(inputs, training=True)[: tf.shape(images)[0]]
            features.append(np.asarray(out, np.float64))
            labels.append(np.asarray(batch_labels).reshape(-1))
    return np.concatenate(features), np.concatenate(labels)


def mean_auroc(scores_in, scores_out_by_set):
    return float(np.mean([metrics.ood_metrics(scores_in, s)["auroc"]
                          for s in scores_out_by_set.values()]))


def head_parameters(model):
    head = model.head
    scale = np.asarray(head.scale_tril, np.float64)
    return np.asarray(head.means, np.float64), scale @ scale.T


def comparison(means_head, cov_head, stats, features, labels):
    """The head's Gaussian against the GDA fit (one seed)."""
    precision = np.linalg.pinv(stats.covariance, hermitian=True)
    offsets = means_head - stats.means
    distance = np.sqrt(np.maximum(np.sum((offsets @ precision) * offsets, 1), 0)).mean()
    values, vectors = np.linalg.eigh(stats.covariance)
    kept = values > values.max() * 1e-9
    root = vectors[:, kept] / np.sqrt(values[kept])
    relative = np.linalg.eigvalsh(root.T @ cov_head @ root)
    per_class = []
    for k in range(len(stats.means)):
        centred = features[labels == k] - stats.means[k]
        per_class.append(np.sum(centred ** 2) / len(centred) / np.trace(stats.covariance))
    return {
        "mean offset (Σ units)": distance,
        "tr(LLᵀ) / tr(Σ)": np.trace(cov_head) / np.trace(stats.covariance),
        "cond(LLᵀ)": np.linalg.cond(cov_head),
        "cond(Σ)": np.linalg.cond(stats.covariance[np.ix_(kept, kept)]) if kept.all()
        else float(values[kept].max() / values[kept].min()),
        "relative eigenvalues min": relative.min(),
        "relative eigenvalues median": np.median(relative),
        "relative eigenvalues max": relative.max(),
        "class spread min": min(per_class),
        "class spread max": max(per_class),
        "dead features": int((~kept).sum()),
    }


def two_fold_ece(fit, confidence_of, s_in, s_out, seed=0):
    """ECE of a map fitted on one half of the validation scores, measured on the other
    half (the balanced mixture of `calibration.mixture`), averaged over the two folds."""
    rng = np.random.default_rng(seed)
    in_order, out_order = rng.permutation(len(s_in)), rng.permutation(len(s_out))
    halves_in = np.array_split(in_order, 2)
    halves_out = np.array_split(out_order, 2)
    eces = []
    for fit_half in (0, 1):
        other = 1 - fit_half
        parameters = fit(s_in[halves_in[fit_half]], s_out[halves_out[fit_half]])
        confidence, is_in = calibration.mixture(
            confidence_of(s_in[halves_in[other]], parameters),
            {"out": confidence_of(s_out[halves_out[other]], parameters)})
        eces.append(calibration.expected_calibration_error(confidence, is_in))
    return float(np.mean(eces))


MAPS = {
    "temperature": (calibration.fit_temperature,
                    lambda s, t: calibration.temperature_confidence(s, t)),
    "platt": (calibration.fit_platt, lambda s, ab: calibration.platt_confidence(s, *ab)),
}


def study_seed(run_dir, split, ridges, log):
    import keras

    from ice_tf.experiment import run_data
    from ice_tf.experiment.runner import load_run

    keras.utils.set_random_seed(0)
    overrides = {"eval_split": "val", "ood_datasets": VAL_OOD} if split == "val" else {}
    model, config, _ = load_run(run_dir, protocol="full", **overrides)
    if not model.gaussian_head:
        raise SystemExit(f"error: {run_dir} has no Gaussian head; pass --method=ice.")
    log(f"{run_dir}: training features")
    train_z, train_y = training_features(model, run_data.statistics_data(config))
    stats = gda.fit(train_z, train_y, model.num_classes)
    means_head, cov_head = head_parameters(model)
    row = comparison(means_head, cov_head, stats, train_z, train_y)
    log(f"{run_dir}: training-mode features")
    trainmode_z, trainmode_y = training_mode_features(model, config)
    trainmode_stats = gda.fit(trainmode_z, trainmode_y, model.num_classes)

    in_ds, ood = run_data.make_eval_data(config)
    z_in, y_in = training_features(model, in_ds)
    z_out = {label: training_features(model, dataset)[0] for label, dataset in ood.items()}
    head = model.head

    def head_outputs(z):
        return np.asarray(head(z.astype(np.float32)), np.float64)

    candidates = {
        "max h (own)": lambda z: head_outputs(z),
        "logsumexp h": lambda z: head_outputs(z),
        "mahalanobis (pinv Σ)": lambda z: gaussian_scores(z, stats.means, tied_precision(stats.covariance)),
    }
    d = stats.covariance.shape[0]
    for ridge in ridges:
        regularised = stats.covariance + ridge * np.trace(stats.covariance) / d * np.eye(d)
        precision = np.linalg.inv(regularised)
        candidates[f"refit, ridge {ridge:g}"] = (
            lambda z, precision=precision: gaussian_scores(z, stats.means, precision))
        regularised = (trainmode_stats.covariance + ridge * np.trace(trainmode_stats.covariance)
                       / d * np.eye(d))
        precision_t = np.linalg.inv(regularised)
        candidates[f"fit of training-mode features, ridge {ridge:g}"] = (
            lambda z, precision=precision_t: gaussian_scores(z, trainmode_stats.means, precision))

    validation = None
    if split == "test":
        val_model_config = load_run(run_dir, eval_split="val", ood_datasets=VAL_OOD, protocol="full")[1]
        val_in, val_ood = run_data.make_eval_data(val_model_config)
        validation = (training_features(model, val_in)[0],
                      np.concatenate([training_features(model, ds)[0] for ds in val_ood.values()]))
    for name, outputs_of in candidates.items():
        reduce = logsumexp if name.startswith("logsumexp") else (lambda h: h.max(1))
        h_in = outputs_of(z_in)
        s_in = reduce(h_in)
        s_out = {label: reduce(outputs_of(z)) for label, z in z_out.items()}
        row[f"{name}: accuracy"] = metrics.accuracy(y_in, h_in)
        row[f"{name}: AUROC"] = mean_auroc(s_in, s_out)
        if name.startswith("logsumexp"):
            continue
        for map_name, (fit, confidence_of) in MAPS.items():
            if split == "val":
                s_all_out = np.concatenate(list(s_out.values()))
                row[f"{name}: ECE {map_name}"] = two_fold_ece(fit, confidence_of, s_in, s_all_out)
            else:
                fit_in = reduce(outputs_of(validation[0]))
                fit_out = reduce(outputs_of(validation[1]))
                parameters = fit(fit_in, fit_out)
                confidence, is_in = calibration.mixture(
                    confidence_of(s_in, parameters),
                    {label: confidence_of(s, parameters) for label, s in s_out.items()})
                row[f"{name}: ECE {map_name}"] = calibration.expected_calibration_error(
                    confidence, is_in)
                per_set = []
                for label, s in s_out.items():
                    confidence, is_in = calibration.mixture(
                        confidence_of(s_in, parameters), {label: confidence_of(s, parameters)})
                    per_set.append(f"{label} {100 * calibration.expected_calibration_error(confidence, is_in):.1f}")
                row[f"{name}: ECE {map_name} per set"] = ", ".join(per_set)
    return row


PERCENT = ("accuracy", "AUROC", "ECE")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs_dir", required=True)
    parser.add_argument("--method", default="ice")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--ridges", default="1e-6,1e-3,1e-2",
                        help="ridges of the refit, relative to the mean variance")
    args = parser.parse_args(argv)
    ridges = [float(r) for r in args.ridges.split(",")]
    rows = []
    for seed in args.seeds.split(","):
        run_dir = os.path.join(args.runs_dir, args.method, f"seed{seed}")
        rows.append(study_seed(run_dir, args.split, ridges,
                               log=lambda m: print(m, file=sys.stderr, flush=True)))
    print(f"{args.method}, {args.split} split, seeds {args.seeds} (mean ± population std)\n")
    print("| quantity | value |\n|---|---|")
    for key in rows[0]:
        values = [row[key] for row in rows]
        if isinstance(values[0], str):
            print(f"| {key} | {' / '.join(values)} |")
            continue
        scale = 100 if any(word in key for word in PERCENT) and "per set" not in key else 1
        spread = metrics.spread([scale * v for v in values])
        print(f"| {key} | {spread['mean']:.4g} ± {spread['std']:.2g} |")


if __name__ == "__main__":
    main()
