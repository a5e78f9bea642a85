"""Methods that change what the outlier term sees, through the training loop's hooks:
MixOE (outliers mixed into the images), DAL (outliers moved to the worst case in feature
space) and VOS (outliers synthesized in feature space).

Example:
    model.compile(optimizer, loss=MixOELoss(operator="mixup"))  # or loss="mixoe"
"""

from __future__ import annotations

import keras
import tensorflow as tf

from ice_tf.losses.base import Hyperparameter, OODLoss, weight_hyperparameter


def beta_sample(alpha, beta, seed):
    """One draw of Beta(alpha, beta) from a stateless seed: G_a / (G_a + G_b), G ~ Gamma.

    Example:
      beta_sample(0.1, 1.0, tf.constant([1, 7]))  # a float32 scalar in [0, 1]
    """
    seeds = tf.random.experimental.stateless_split(seed, 2)
    first = tf.random.stateless_gamma([], seeds[0], alpha=alpha)
    second = tf.random.stateless_gamma([], seeds[1], alpha=beta)
    return first / tf.maximum(first + second, 1e-30)


def cutmix_box(height, width, mix_weight, seed):
    """The box (y1, y2, x1, x2) that CutMix pastes: sides sqrt(1 - mix_weight) of the image's,
    centred at a uniform pixel, clipped to the image (Yun et al., 2019; MixOE's code).

    Example:
      cutmix_box(32, 32, 0.75, tf.constant([1, 2]))  # a 16 x 16 box, or less at a border
    """
    cut = tf.sqrt(1.0 - mix_weight)
    cut_h = tf.cast(tf.cast(height, tf.float32) * cut, tf.int32)
    cut_w = tf.cast(tf.cast(width, tf.float32) * cut, tf.int32)
    centre = tf.random.stateless_uniform([2], seed, minval=0, maxval=2 ** 30, dtype=tf.int32)
    cy, cx = centre[0] % height, centre[1] % width
    y1 = tf.clip_by_value(cy - cut_h // 2, 0, height)
    y2 = tf.clip_by_value(cy + cut_h // 2, 0, height)
    x1 = tf.clip_by_value(cx - cut_w // 2, 0, width)
    x2 = tf.clip_by_value(cx + cut_w // 2, 0, width)
    return y1, y2, x1, x2


@keras.saving.register_keras_serializable(package="ice_tf")
class MixOELoss(OODLoss):
    """MixOE (Zhang et al., WACV 2023): outliers mixed into in-distribution images, trained
    towards a target that mixes the label with the uniform distribution.

    For a training batch, x_mix = CutMix (a box of x̃ pasted into x, the paper's code's
    choice) or Mixup (w·x + (1 - w)·x̃) of the first n outliers into the n in-distribution
    images, w ~ Beta(α, β) once per batch (for CutMix, w is then the exact share of x's
    pixels kept). The loss is CE(f(x), y) + λ · mean CE(f(x_mix), w·onehot(y) + (1 - w)/K),
    a soft cross-entropy; with w = 0 it is OE's term (Eq. 0.3). Outlier batches not
    mixed (validation) get w = 0. Evaluated with MSP, as in the paper. Defaults are those
    of OpenOOD v1.5's CIFAR benchmark (α = 0.1, β = 1, CutMix, λ = 1).

    Example:
      model.compile(optimizer, loss=MixOELoss(operator="mixup"))  # or loss="mixoe"
    """

    term_names = ("ce", "out_term")
    display_name = "MixOE"
    hyperparameter_specs = (
        weight_hyperparameter(1.0),
        Hyperparameter("alpha", 0.1, "MixOE α of the mixing weight's Beta(α, β).",
                       flag="mixoe_alpha", minimum=1e-6),
        Hyperparameter("beta", 1.0, "MixOE β of the mixing weight's Beta(α, β).",
                       flag="mixoe_beta", minimum=1e-6),
        Hyperparameter("operator", "cutmix", "MixOE's mixing: cutmix or mixup.",
                       flag="mixoe_operator", kind=str, choices=("cutmix", "mixup")),
    )

    def __init__(self, weight=None, alpha=0.1, beta=1.0, operator="cutmix", name=None):
        super().__init__(weight=weight, name=name)
        self._set_hyperparameters(alpha=alpha, beta=beta, operator=operator)

    def transform_batch(self, images, labels, outliers, seed):
        count = tf.minimum(tf.shape(images)[0], tf.shape(outliers)[0])
        kept, mixed_labels = images[:count], labels[:count]
        pasted = tf.cast(outliers[:count], images.dtype)
        seeds = tf.random.experimental.stateless_split(seed, 2)
        mix_weight = beta_sample(self.alpha, self.beta, seeds[0])
        if self.operator == "mixup":
            weight = tf.cast(mix_weight, images.dtype)
            return (images, labels, weight * kept + (1 - weight) * pasted,
                    {"mix_weight": mix_weight, "mix_labels": mixed_labels})
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        y1, y2, x1, x2 = cutmix_box(height, width, mix_weight, seeds[1])
        rows = tf.logical_and(tf.range(height) >= y1, tf.range(height) < y2)
        cols = tf.logical_and(tf.range(width) >= x1, tf.range(width) < x2)
        box = tf.cast(tf.logical_and(rows[:, None], cols[None, :]), images.dtype)[None, :, :, None]
        mixed = kept * (1 - box) + pasted * box
        # The share of x's pixels kept, as the paper's code adjusts it.
        area = tf.cast((y2 - y1) * (x2 - x1), tf.float32)
        mix_weight = 1.0 - area / tf.cast(height * width, tf.float32)
        return images, labels, mixed, {"mix_weight": mix_weight, "mix_labels": mixed_labels}

    def extra_terms(self, labels, outputs_in, outputs_out, mix_weight=None, mix_labels=None):
        if outputs_out is None:
            return {}
        log_probs = tf.nn.log_softmax(outputs_out, axis=-1)
        uniform_ce = -tf.reduce_mean(log_probs, axis=-1)
        if mix_weight is None:  # outliers not mixed: the target is uniform
            return {"out_term": tf.reduce_mean(uniform_ce)}
        label_ce = -tf.gather(log_probs, mix_labels, axis=-1, batch_dims=1)
        return {"out_term": tf.reduce_mean(mix_weight * label_ce + (1 - mix_weight) * uniform_ce)}

    def get_config(self):
        """The constructor arguments, for Keras serialization."""
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta,
                "operator": self.operator}


@keras.saving.register_keras_serializable(package="ice_tf")
class DistributionalAugmentationLoss(OODLoss):
    """DAL, Distributional-Augmented OOD Learning (Wang et al., NeurIPS 2023): OE's term
    (Eq. 0.3) on outliers moved, in feature space, to the worst case within a Wasserstein
    ball around the auxiliary outliers' distribution.

    Per training batch, the outliers' features z̃ get a perturbation δ (started at
    U(0, 1e-4)), raised by `iterations` steps of δ ← δ + strength · g / ‖g‖ (each row
    normalised), g the gradient of mean CE(head(z̃ + δ), uniform) - γ · mean|δ|; the loss is
    CE(f(x), y) + λ · mean CE(head(z̃ + δ), uniform). γ, the ball's multiplier, starts at
    `gamma_start` and follows γ ← clip(γ - β (ρ - mean|δ|), 0, γ_max) after each batch; it
    is part of the run's checkpoint. Evaluated with MSP, as in the paper. Defaults: the
    paper's CIFAR-10 values (λ = 0.5, γ_max = 10, β = 0.01, ρ = 10, 10 iterations,
    strength 1, γ from 0.01; CIFAR-100 uses β = 0.005).

    Example:
      model.compile(optimizer, loss=DistributionalAugmentationLoss())  # or loss="dal"
    """

    term_names = ("ce", "out_term")
    display_name = "DAL"
    hyperparameter_specs = (
        weight_hyperparameter(0.5),
        Hyperparameter("gamma_max", 10.0, "DAL γ_max, the bound of the ball's multiplier γ.",
                       flag="dal_gamma_max", minimum=0.0),
        Hyperparameter("beta", 0.01, "DAL β, the step of γ's update (CIFAR-100: 0.005).",
                       flag="dal_beta", minimum=0.0),
        Hyperparameter("rho", 10.0, "DAL ρ, the ball's radius in mean |δ|.", flag="dal_rho",
                       minimum=0.0),
        Hyperparameter("strength", 1.0, "DAL step length of each perturbation step.",
                       flag="dal_strength", minimum=0.0),
        Hyperparameter("iterations", 10, "DAL perturbation steps per batch.",
                       flag="dal_iterations", minimum=0, kind=int),
        Hyperparameter("gamma_start", 0.01, "DAL γ at the start of training.",
                       flag="dal_gamma_start", minimum=0.0),
    )

    def __init__(self, weight=None, gamma_max=10.0, beta=0.01, rho=10.0, strength=1.0,
                 iterations=10, gamma_start=0.01, name=None):
        super().__init__(weight=weight, name=name)
        self._set_hyperparameters(gamma_max=gamma_max, beta=beta, rho=rho, strength=strength,
                                  iterations=iterations, gamma_start=gamma_start)
        self.gamma = None

    def build_state(self, model=None):
        if self.gamma is None:
            # MEAN: replicas each update γ from their own batch; the mean is kept.
            self.gamma = tf.Variable(self.gamma_start, trainable=False, dtype=tf.float32,
                                     name="dal_gamma", aggregation=tf.VariableAggregation.MEAN)

    def state_variables(self):
        return [] if self.gamma is None else [self.gamma]

    def perturbation(self, head, features, seed, gamma):
        """(δ, mean|δ| of the last step) for outlier features (n, d), as the class docstring
        says; `gamma` the multiplier γ.

        Example:
          delta, radius = loss.perturbation(model.head, features_out, seed, 0.01)
        """
        base = tf.stop_gradient(tf.cast(features, tf.float32))
        delta = tf.random.stateless_uniform(tf.shape(base), seed) * 1e-4
        radius = tf.reduce_mean(tf.abs(delta))
        for _ in range(self.iterations):
            with tf.GradientTape() as tape:
                tape.watch(delta)
                outputs = tf.cast(head(base + delta), tf.float32)
                uniform_ce = tf.reduce_mean(tf.reduce_logsumexp(outputs, axis=-1)
                                            - tf.reduce_mean(outputs, axis=-1))
                radius = tf.reduce_mean(tf.abs(delta))
                objective = uniform_ce - gamma * radius
            gradient = tape.gradient(objective, delta)
            norms = tf.sqrt(tf.reduce_sum(tf.square(gradient), axis=-1, keepdims=True))
            delta = delta + self.strength * gradient / tf.maximum(norms, 1e-12)
        return tf.stop_gradient(delta), tf.stop_gradient(radius)

    def outlier_outputs(self, head, features_out, outputs_out, seed):
        self.build_state()
        delta, radius = self.perturbation(head, features_out, seed, self.gamma)
        self.gamma.assign(tf.clip_by_value(self.gamma - self.beta * (self.rho - radius),
                                           0.0, self.gamma_max))
        return head(features_out + tf.cast(delta, features_out.dtype))

    def extra_terms(self, labels, outputs_in, outputs_out):
        if outputs_out is None:
            return {}
        uniform_ce = tf.reduce_logsumexp(outputs_out, axis=-1) - tf.reduce_mean(outputs_out, axis=-1)
        return {"out_term": tf.reduce_mean(uniform_ce)}

    def get_config(self):
        """The constructor arguments, for Keras serialization."""
        return {**super().get_config(), "gamma_max": self.gamma_max, "beta": self.beta,
                "rho": self.rho, "strength": self.strength, "iterations": self.iterations,
                "gamma_start": self.gamma_start}


@keras.saving.register_keras_serializable(package="ice_tf")
class VirtualOutlierLoss(OODLoss):
    """VOS, Virtual Outlier Synthesis (Du et al., ICLR 2022): outliers synthesized in feature
    space from class-conditional Gaussians of the training features; no auxiliary outliers.

    A queue keeps the last `queue_size` features of each class (inference of the current
    batch's training-mode features, detached). Once every queue is full and the step is at
    least `start_step`, each batch estimates the class means μ_k and the tied covariance
    Σ = (1/N) Σ (z - μ_y)(z - μ_y)ᵀ + 1e-4 I of the queues, draws `candidates` samples
    μ_k + L u (L Lᵀ = Σ, u ~ N(0, I)) per class and keeps the `select` least likely ones
    (largest ‖u‖, the same order as the density). The uncertainty loss is the logistic
    regression of the head's weighted energy (`VirtualOutlierHead`: log Σ_k relu(w_k) e^{f_k})
    between the batch (label 1) and the virtual outliers through the head (label 0):
    CE(f(x), y) + λ · CE_2(uncertainty logits, in / virtual). Evaluated with the energy
    score, as in the paper. Defaults: the paper's (λ = 0.1, 1,000 features per class, 10,000
    candidates, 1 selected per class); the paper starts at epoch 40 of 100, which
    `start_step` sets in steps (0: as soon as the queues are full). Trains the "vos" head.

    Example:
      model = OODModel(backbone, ice_tf.layers.make_head("vos", 10))
      model.compile(optimizer, loss=VirtualOutlierLoss())  # or loss="vos"
    """

    uses_outliers = False
    term_names = ("ce", "uncertainty_term")
    default_head = "vos"
    default_score = "energy"
    display_name = "VOS"
    hyperparameter_specs = (
        weight_hyperparameter(0.1),
        Hyperparameter("queue_size", 1000, "VOS features kept per class.",
                       flag="vos_queue_size", minimum=2, kind=int),
        Hyperparameter("candidates", 10000, "VOS samples drawn per class and batch.",
                       flag="vos_candidates", minimum=1, kind=int),
        Hyperparameter("select", 1, "VOS least likely samples kept per class.",
                       flag="vos_select", minimum=1, kind=int),
        Hyperparameter("start_step", 0, "VOS: the first training step of the uncertainty loss "
                       "(the paper: epoch 40 of 100).", flag="vos_start_step", minimum=0, kind=int),
    )

    def __init__(self, weight=None, queue_size=1000, candidates=10000, select=1, start_step=0,
                 name=None):
        super().__init__(weight=weight, name=name)
        self._set_hyperparameters(queue_size=queue_size, candidates=candidates, select=select,
                                  start_step=start_step)
        if self.select > self.candidates:
            raise ValueError(f"vos_select ({select}) must be <= vos_candidates ({candidates}).")
        self.queue = self.filled = self.step = None

    def build_state(self, model=None):
        if self.queue is not None or model is None:
            return
        head = model.head
        if not hasattr(head, "weighted_energy"):
            raise ValueError("loss 'vos' trains the 'vos' head (ice_tf.layers.make_head('vos', K)), "
                             f"which carries its uncertainty weights; this model has {type(head).__name__}.")
        num_classes, dim = int(head.units), int(head.kernel.shape[0])
        aggregation = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.queue = tf.Variable(tf.zeros((num_classes, self.queue_size, dim)), trainable=False,
                                 name="vos_queue", aggregation=aggregation)
        self.filled = tf.Variable(tf.zeros((num_classes,), tf.int32), trainable=False,
                                  name="vos_filled", aggregation=aggregation)
        self.step = tf.Variable(0, trainable=False, dtype=tf.int64, name="vos_step",
                                aggregation=aggregation)

    def state_variables(self):
        return [] if self.queue is None else [self.queue, self.filled, self.step]

    def enqueue(self, features, labels):
        """Appends the batch's features to their classes' queues (the oldest leave).

        Example:
          loss.enqueue(features, labels)
        """
        features = tf.stop_gradient(tf.cast(features, tf.float32))
        num_classes = self.queue.shape[0]
        queues, filled = [], []
        for k in range(num_classes):
            mine = tf.boolean_mask(features, tf.equal(labels, k))
            queues.append(tf.concat([self.queue[k], mine], axis=0)[-self.queue_size:])
            filled.append(tf.minimum(self.filled[k] + tf.shape(mine)[0], self.queue_size))
        return tf.group(self.queue.assign(tf.stack(queues)), self.filled.assign(tf.stack(filled)))

    def virtual_outliers(self, seed):
        """(K · select, d) virtual outliers from the queues' class-conditional Gaussians.

        Example:
          loss.virtual_outliers(tf.constant([0, 1]))
        """
        queue = self.queue
        means = tf.reduce_mean(queue, axis=1)
        centred = tf.reshape(queue - means[:, None, :], (-1, queue.shape[-1]))
        covariance = (tf.matmul(centred, centred, transpose_a=True)
                      / tf.cast(tf.shape(centred)[0], tf.float32)
                      + 1e-4 * tf.eye(queue.shape[-1]))
        chol = tf.linalg.cholesky(covariance)
        outliers = []
        for k in range(queue.shape[0]):
            u = tf.random.stateless_normal((self.candidates, queue.shape[-1]),
                                           tf.random.experimental.stateless_fold_in(seed, k))
            # The least likely samples under N(μ_k, Σ) are those of largest ‖u‖.
            _, farthest = tf.math.top_k(tf.reduce_sum(tf.square(u), axis=-1), k=self.select)
            outliers.append(means[k] + tf.matmul(tf.gather(u, farthest), chol, transpose_b=True))
        return tf.concat(outliers, axis=0)

    def uncertainty(self, head, outputs_in, virtual):
        """The logistic regression's CE between the batch (1) and the virtual outliers (0).

        Example:
          loss.uncertainty(model.head, outputs_in, loss.virtual_outliers(seed))
        """
        energy = tf.concat([head.weighted_energy(outputs_in),
                            head.weighted_energy(head(tf.cast(virtual, head.compute_dtype)))], 0)
        targets = tf.concat([tf.ones(tf.shape(outputs_in)[0], tf.int32),
                             tf.zeros(tf.shape(virtual)[0], tf.int32)], 0)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=targets, logits=head.uncertainty_logits(energy)))

    def synthesize(self, head, features_in, labels, outputs_in, seed):
        if self.queue is None:
            raise RuntimeError("compile the model with loss 'vos' before training: it builds the queues.")
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        # As the reference: full queues (before this batch) start the loss; this batch's
        # features join the queues first, and the Gaussians are estimated from them.
        ready = tf.logical_and(tf.reduce_all(tf.equal(self.filled, self.queue_size)),
                               self.step >= self.start_step)
        with tf.control_dependencies([ready]):
            updates = tf.group(self.enqueue(features_in, labels), self.step.assign_add(1))
        with tf.control_dependencies([updates]):
            term = tf.cond(ready,
                           lambda: self.uncertainty(head, outputs_in, self.virtual_outliers(seed)),
                           lambda: tf.constant(0.0))
        return {"uncertainty": term}

    def extra_terms(self, labels, outputs_in, outputs_out, uncertainty=None):
        return {} if uncertainty is None else {"uncertainty_term": uncertainty}

    def get_config(self):
        """The constructor arguments, for Keras serialization."""
        return {**super().get_config(), "queue_size": self.queue_size,
                "candidates": self.candidates, "select": self.select,
                "start_step": self.start_step}
