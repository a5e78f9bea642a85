"""2-D toy models for the false-likelihood and distribution-shift figures (Figs. 2 and 3).

Section 3 of the paper illustrates two causes of in-distribution incompatibility with
2-D features drawn from class-conditional Gaussians with a shared covariance:

* False likelihood (Fig. 2): the logit f_y(z) = w_y·z + b_y (Eq. 0.1) of a linear
  classifier fitted by Gaussian discriminant analysis (Eq. 0.9) grows without bound
  along w_y, so an outlier B far out along w_y gets a larger logit than an
  in-distribution point A near the class mean, while the class-conditional likelihood
  exp(h_y(z)), h_y(z) = -(z - m_y)^T Σ^{-1} (z - m_y) (Eq. 0.11), ranks them correctly.
* Distribution shift (Fig. 3): with the features themselves trainable and the head
  fixed at its initial fit, SGD on OE (Eq. 0.3) drags outliers towards the point where
  all logits are equal (Eq. 0.10), between the classes, while ICE (Eq. 0.15, Gaussian
  head) pushes them away from the nearest class.

Everything is numpy except `simulate_feature_shift` and its helpers, which import
TensorFlow to use the project's own losses (`ice_tf.losses`) and heads.

Example:
  example = false_likelihood_example()
  example.logit_b > example.logit_a and example.likelihood_b < example.likelihood_a  # True
  data = distribution_shift_toy()
  snapshots = simulate_feature_shift("oe", data.features, data.labels, data.outliers)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ice_tf import gda as gda_lib

SHIFT_METHODS = ("oe", "ice")
"""Methods of the distribution-shift toy, each with its head: oe linear, ice Gaussian."""


# --------------------------------------------------------------------------- data
def means_on_circle(num_classes, radius, start_degrees=90.0):
    """(K, 2) class means evenly spaced on a circle around the origin.

    Example:
      means_on_circle(3, radius=3.0)  # (3, 2), the first at 90 degrees
    """
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes!r}.")
    angles = np.deg2rad(start_degrees) + 2 * np.pi * np.arange(int(num_classes)) / int(num_classes)
    return float(radius) * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def sample_gaussian_classes(means, covariance, num_per_class, seed=0):
    """Samples num_per_class points from N(m_i, Σ) per class i.

    Returns:
      (z, labels): float64 (K * num_per_class, d) features and int64 labels, class by class.

    Example:
      z, labels = sample_gaussian_classes(means, np.eye(2) * 0.5, num_per_class=40)
    """
    means = np.asarray(means, dtype=np.float64)
    covariance = np.asarray(covariance, dtype=np.float64)
    if means.ndim != 2 or covariance.shape != (means.shape[1], means.shape[1]):
        raise ValueError(
            f"means must be (K, d) and covariance (d, d); got {means.shape} and {covariance.shape}."
        )
    if int(num_per_class) < 2:
        raise ValueError(f"num_per_class must be >= 2, got {num_per_class!r}.")
    rng = np.random.default_rng(seed)
    points = [rng.multivariate_normal(mean, covariance, int(num_per_class)) for mean in means]
    labels = np.repeat(np.arange(len(means)), int(num_per_class))
    return np.concatenate(points), labels.astype(np.int64)


class GDA(NamedTuple):
    """Gaussian discriminant analysis: means m_i, tied covariance Σ, and the linear
    classifier of Eq. (0.9), w_i = Σ^{-1} m_i, b_i = -½ m_i^T Σ^{-1} m_i.

    Example:
      gda = fit_gda(z, labels, num_classes=3)
      logits = linear_logits(z, gda.weights, gda.biases)
    """

    means: np.ndarray  # (K, d)
    covariance: np.ndarray  # (d, d)
    weights: np.ndarray  # (K, d), rows w_i
    biases: np.ndarray  # (K,)


def fit_gda(z, labels, num_classes):
    """Class means, pooled within-class covariance and the Eq. (0.9) classifier (equal priors).

    Example:
      gda = fit_gda(z, labels, num_classes=3)
    """
    z = np.asarray(z, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    counts = np.bincount(labels, minlength=num_classes)
    if z.ndim != 2 or len(z) != len(labels) or np.any(counts[:num_classes] == 0) or len(counts) > num_classes:
        raise ValueError(
            f"fit_gda needs (n, d) features and n labels covering all of [0, {num_classes}); "
            f"got shapes {z.shape}, {labels.shape} and class counts {counts.tolist()}."
        )
    means, covariance, _ = gda_lib.fit(z, labels, num_classes)
    weights = np.linalg.solve(covariance, means.T).T
    biases = -0.5 * np.sum(weights * means, axis=1)
    return GDA(means, covariance, weights, biases)


def linear_logits(z, weights, biases):
    """f(z) = W z + b, Eq. (0.1): (n, K) for (n, d) features.

    Example:
      logits = linear_logits(z, gda.weights, gda.biases)
    """
    return np.asarray(z, dtype=np.float64) @ np.asarray(weights, dtype=np.float64).T + biases


def gaussian_scores(z, means, covariance):
    """h_i(z) = -(z - m_i)^T Σ^{-1} (z - m_i), Eq. (0.11) with L L^T = Σ: (n, K), h <= 0.

    Example:
      h = gaussian_scores(z, gda.means, gda.covariance)  # (n, K), Eq. 0.11
    """
    diff = np.asarray(z, dtype=np.float64)[:, None, :] - np.asarray(means, dtype=np.float64)[None]
    precision = np.linalg.inv(np.asarray(covariance, dtype=np.float64))
    return -np.einsum("nkd,de,nke->nk", diff, precision, diff)


# ----------------------------------------------------------- Fig. 2: false likelihood
class FalseLikelihoodExample(NamedTuple):
    """The false-likelihood picture (Fig. 2): a point A of class y near m_y and an outlier B
    far along w_y, with f_y larger at B but exp(h_y) smaller.

    Example:
      example = false_likelihood_example(seed=0)
      example.logit_b > example.logit_a  # True: the linear head prefers the outlier
    """

    z: np.ndarray  # (n, 2) in-distribution features
    labels: np.ndarray  # (n,)
    gda: GDA
    target_class: int  # y
    point_a: np.ndarray  # (2,) the training point of class y nearest to m_y
    point_b: np.ndarray  # (2,) an outlier far out along w_y
    logit_a: float  # f_y(A)
    logit_b: float  # f_y(B)
    likelihood_a: float  # exp(h_y(A))
    likelihood_b: float  # exp(h_y(B))


FIG2_MEANS = ((-1.5, -0.5), (1.5, 0.5))
FIG2_COVARIANCE = ((0.6, 0.25), (0.25, 0.5))


def false_likelihood_example(num_per_class=200, outlier_distance=5.0, target_class=1, seed=0,
                             means=FIG2_MEANS, covariance=FIG2_COVARIANCE):
    """The Fig. 2 setting: two Gaussians with a shared covariance, a GDA fit, points A and B.

    A is the training point of class y with the smallest Mahalanobis distance to the
    fitted mean m_y; B = m_y + t·w_y/|w_y|, with t chosen so that B lies
    `outlier_distance` Mahalanobis units from m_y. Along w_y the logit f_y grows
    linearly, the likelihood exp(h_y) falls as exp(-distance²).

    Returns:
      A `FalseLikelihoodExample` with f_y and exp(h_y) at A and B.
    """
    means = np.asarray(means, dtype=np.float64)
    num_classes = len(means)
    if not 0 <= int(target_class) < num_classes:
        raise ValueError(f"target_class must lie in [0, {num_classes}), got {target_class!r}.")
    if not outlier_distance > 0:
        raise ValueError(f"outlier_distance must be > 0, got {outlier_distance!r}.")
    y = int(target_class)
    z, labels = sample_gaussian_classes(means, covariance, num_per_class, seed)
    gda = fit_gda(z, labels, num_classes)
    own = z[labels == y]
    point_a = own[np.argmax(gaussian_scores(own, gda.means[y:y + 1], gda.covariance)[:, 0])]
    direction = gda.weights[y] / np.linalg.norm(gda.weights[y])
    unit_distance = np.sqrt(direction @ np.linalg.solve(gda.covariance, direction))
    point_b = gda.means[y] + float(outlier_distance) / unit_distance * direction
    logits = linear_logits(np.stack([point_a, point_b]), gda.weights, gda.biases)[:, y]
    likelihoods = np.exp(gaussian_scores(np.stack([point_a, point_b]), gda.means, gda.covariance)[:, y])
    return FalseLikelihoodExample(
        z, labels, gda, y, point_a, point_b,
        float(logits[0]), float(logits[1]), float(likelihoods[0]), float(likelihoods[1]),
    )


# ---------------------------------------------------------- Fig. 3: distribution shift
class ShiftToy(NamedTuple):
    """The distribution-shift toy: 2-D in-distribution features with labels, and outliers.

    Example:
      toy = distribution_shift_toy(num_classes=3)
      toy.features.shape, toy.outliers.shape
    """
    features: np.ndarray  # (n, 2) in-distribution features
    labels: np.ndarray  # (n,)
    outliers: np.ndarray  # (m, 2)
    num_classes: int


FIG3_COVARIANCE = ((0.5, 0.1), (0.1, 0.35))


def distribution_shift_toy(num_classes=3, num_per_class=40, num_outliers=80, near_fraction=0.25,
                           radius=3.0, outlier_radii=(4.0, 7.5), covariance=FIG3_COVARIANCE, seed=0):
    """The Fig. 3 setting: K Gaussian classes on a circle, near and far outliers.

    Class means lie on a circle of `radius` around the origin. A fraction
    `near_fraction` of the outliers are near outliers, drawn from the class-conditional
    Gaussians themselves (outlier features a backbone has mapped among a class's
    features), classes in turn; the others are far outliers on the annulus
    outlier_radii[0] <= |z| <= outlier_radii[1] (uniform in angle and radius). A method
    that moves outliers to the classes' common centre (the origin, where all GDA logits
    are equal for K >= 3) brings the far ones closer to the classes.

    Example:
      toy = distribution_shift_toy(num_classes=3, seed=0)
    """
    low, high = (float(r) for r in outlier_radii)
    if not 0 <= low < high:
        raise ValueError(f"outlier_radii must satisfy 0 <= low < high, got {outlier_radii!r}.")
    if int(num_outliers) < 1:
        raise ValueError(f"num_outliers must be >= 1, got {num_outliers!r}.")
    if not 0 <= near_fraction <= 1:
        raise ValueError(f"near_fraction must lie in [0, 1], got {near_fraction!r}.")
    means = means_on_circle(num_classes, radius)
    z, labels = sample_gaussian_classes(means, covariance, num_per_class, seed)
    rng = np.random.default_rng([seed, 1])
    num_near = int(round(near_fraction * int(num_outliers)))
    num_far = int(num_outliers) - num_near
    near = rng.multivariate_normal(np.zeros(2), np.asarray(covariance, dtype=np.float64), num_near)
    near += means[np.arange(num_near) % len(means)]
    radii = rng.uniform(low, high, num_far)
    angles = rng.uniform(0.0, 2 * np.pi, num_far)
    far = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    return ShiftToy(z, labels, np.concatenate([near, far]), int(num_classes))


def class_means(z, labels, num_classes):
    """(K, d) mean feature of each class (`ice_tf.gda.class_means`).

    Example:
      class_means(z, labels, num_classes=3)  # (3, 2)
    """
    return gda_lib.class_means(z, labels, num_classes)


def nearest_mean_distance(points, means):
    """Mean over points of the Euclidean distance to the nearest of `means`.

    Example:
      nearest_mean_distance(outliers, means)  # (n,) distances
    """
    diff = np.asarray(points, dtype=np.float64)[:, None, :] - np.asarray(means, dtype=np.float64)[None]
    return float(np.mean(np.min(np.linalg.norm(diff, axis=-1), axis=1)))


def _check_method(method):
    if method not in SHIFT_METHODS:
        raise ValueError(f"Unknown method {method!r}; valid methods: {', '.join(SHIFT_METHODS)}.")


def make_toy_head(method, z, labels, num_classes):
    """The head fixed at its initial fit on the in-distribution features.

    "oe": a linear head (`ice_tf.layers.make_head("linear")`) set to the GDA classifier of
    Eq. (0.9), as the paper initialises w_i, b_i. "ice": a `GaussianLayer` fitted by
    `initialize_from_features` (class means, Cholesky factor of the tied covariance).

    Example:
      head = make_toy_head("ice", z, labels, num_classes=3)
    """
    from ice_tf import layers, losses

    _check_method(method)
    z = np.asarray(z, dtype=np.float64)
    if losses.spec(method).default_head == "linear":
        gda = fit_gda(z, labels, num_classes)
        head = layers.make_head("linear", num_classes)
        head.build((None, z.shape[1]))
        head.set_weights([gda.weights.T.astype(np.float32), gda.biases.astype(np.float32)])
        return head
    return layers.make_head("gaussian", num_classes).initialize_from_features(z, labels)


def toy_loss(method, weight=1.0):
    """The project's loss for `method` ("oe" or "ice") with λ = weight.

    Example:
      loss = toy_loss("oe", weight=0.5)
    """
    from ice_tf import losses

    _check_method(method)
    return losses.get(method, weight=weight)


def _gradient_function(loss, head):
    """A compiled (z, labels, outliers) -> per-point gradients, see `feature_gradients`."""
    import tensorflow as tf

    def gradients(z, labels, outliers):
        with tf.GradientTape() as tape:
            tape.watch([z, outliers])
            value = loss(labels, head(z), head(outliers))
        grad_z, grad_out = tape.gradient(value, [z, outliers])
        # The loss averages over points: scale back to per-point gradients.
        return (grad_z * tf.cast(tf.shape(z)[0], tf.float32),
                grad_out * tf.cast(tf.shape(outliers)[0], tf.float32))

    compiled = tf.function(gradients, reduce_retracing=True)

    def call(z, labels, outliers):
        grad_z, grad_out = compiled(
            tf.constant(np.asarray(z, dtype=np.float32)),
            tf.constant(np.asarray(labels).reshape(-1), dtype=tf.int32),
            tf.constant(np.asarray(outliers, dtype=np.float32)),
        )
        return grad_z.numpy().astype(np.float64), grad_out.numpy().astype(np.float64)

    return call


def feature_gradients(loss, head, z, labels, outliers):
    """Per-point gradients of the loss with respect to the features and the outliers.

    The loss averages over in-distribution points and over outliers (Eqs. 0.3, 0.15); the
    gradients are multiplied back by the counts, so that the step a feature takes does
    not depend on how many points the toy has.

    Returns:
      (grad_z, grad_outliers), float64 arrays shaped like z and outliers.

    Example:
      grad_in, grad_out = feature_gradients(toy_loss("oe"), head, z, labels, outliers)
    """
    return _gradient_function(loss, head)(z, labels, outliers)


class Snapshot(NamedTuple):
    """Features and outliers at one step of `simulate_feature_shift`.

    Example:
      snapshots = simulate_feature_shift("oe", z, labels, outliers, snapshot_steps=(0, 30, 60))
      snapshots[-1].outliers
    """
    step: int
    features: np.ndarray
    outliers: np.ndarray


def simulate_feature_shift(method, z, labels, outliers, num_steps=60, learning_rate=0.05,
                           weight=1.0, snapshot_steps=None):
    """SGD on the features themselves, the head fixed at its initial fit (Fig. 3).

    Each step moves every in-distribution feature and every outlier by
    -learning_rate times its per-point gradient (`feature_gradients`) of the loss
    `method` ("oe": Eq. 0.3 with a GDA linear head; "ice": Eq. 0.15 with a Gaussian
    head), both with λ = `weight`.

    Args:
      snapshot_steps: steps after which to record the features (0 = the start);
        default: 0 and three evenly spaced steps up to num_steps.

    Returns:
      A list of `Snapshot(step, features, outliers)`, in step order.

    Example:
      snapshots = simulate_feature_shift("ice", z, labels, outliers, num_steps=60)
    """
    _check_method(method)
    num_steps = int(num_steps)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps!r}.")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}.")
    if snapshot_steps is None:
        snapshot_steps = np.linspace(0, num_steps, 4).round().astype(int)
    snapshot_steps = sorted({int(s) for s in snapshot_steps})
    if snapshot_steps[0] < 0 or snapshot_steps[-1] > num_steps:
        raise ValueError(f"snapshot_steps must lie in [0, {num_steps}], got {snapshot_steps}.")
    labels = np.asarray(labels).reshape(-1)
    num_classes = int(labels.max()) + 1
    z = np.array(z, dtype=np.float64)
    outliers = np.array(outliers, dtype=np.float64)
    head = make_toy_head(method, z, labels, num_classes)
    gradients = _gradient_function(toy_loss(method, weight), head)
    snapshots = [Snapshot(0, z.copy(), outliers.copy())] if snapshot_steps[0] == 0 else []
    for step in range(1, snapshot_steps[-1] + 1):
        grad_z, grad_out = gradients(z, labels, outliers)
        z -= learning_rate * grad_z
        outliers -= learning_rate * grad_out
        if step in snapshot_steps:
            snapshots.append(Snapshot(step, z.copy(), outliers.copy()))
    return snapshots


def outlier_distances(snapshots, labels, num_classes):
    """Mean distance of the outliers to the nearest current class mean, per snapshot.

    Example:
      outlier_distances(snapshots, labels, num_classes=3)  # per step
    """
    return [
        nearest_mean_distance(s.outliers, class_means(s.features, labels, num_classes))
        for s in snapshots
    ]


__all__ = [
    "SHIFT_METHODS",
    "GDA",
    "FalseLikelihoodExample",
    "ShiftToy",
    "Snapshot",
    "means_on_circle",
    "sample_gaussian_classes",
    "fit_gda",
    "linear_logits",
    "gaussian_scores",
    "false_likelihood_example",
    "distribution_shift_toy",
    "class_means",
    "nearest_mean_distance",
    "make_toy_head",
    "toy_loss",
    "feature_gradients",
    "simulate_feature_shift",
    "outlier_distances",
]
