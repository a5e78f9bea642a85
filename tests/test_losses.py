"""Losses against float64 numpy references, the paper's gradient claims, numeric edges."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ice_tf import layers, losses


# ------------------------------------------------------------ numpy references
def _log_softmax(x):
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _softmax(x):
    return np.exp(_log_softmax(x))


def _logsumexp(x):
    top = x.max(-1)
    return top + np.log(np.exp(x - top[:, None]).sum(-1))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _onehot(labels, num_classes):
    return np.eye(num_classes)[labels]


def reference(name, weight, y, f_in, f_out, margin_in=-23.0, margin_out=-5.0,
              in_term_weight=1.0, out_term_weight=1.0):
    """(loss, d loss / d f_in, d loss / d f_out) in float64."""
    n_in, num_classes = f_in.shape
    n_out = f_out.shape[0]
    rows = np.arange(n_in)
    loss = -np.mean(_log_softmax(f_in)[rows, y])
    grad_in = (_softmax(f_in) - _onehot(y, num_classes)) / n_in
    grad_out = np.zeros_like(f_out)
    if name in ("oe", "mixoe", "dal"):  # Eq. (0.3), gradient Eq. (0.6) / K; outliers unmixed, unperturbed
        loss += weight * np.mean(-_log_softmax(f_out).mean(-1))
        grad_out = weight * (_softmax(f_out) - 1.0 / num_classes) / n_out
    elif name == "energy":  # Eq. (0.5), hinge form
        e_in, e_out = -_logsumexp(f_in), -_logsumexp(f_out)
        gap_in, gap_out = np.maximum(e_in - margin_in, 0), np.maximum(margin_out - e_out, 0)
        loss += weight * (np.mean(gap_in**2) + np.mean(gap_out**2))
        grad_in += weight * (-2.0 * gap_in[:, None] * _softmax(f_in)) / n_in
        grad_out = weight * (2.0 * gap_out[:, None] * _softmax(f_out)) / n_out
    elif name == "bce":
        target = f_in[rows, y]
        top = f_out.max(-1)
        loss += weight * (np.mean(np.log1p(np.exp(-target))) + np.mean(np.log1p(np.exp(top))))
        grad_in += weight * _onehot(y, num_classes) * (_sigmoid(target) - 1.0)[:, None] / n_in
        grad_out = weight * _onehot(f_out.argmax(-1), num_classes) * _sigmoid(top)[:, None] / n_out
    elif name in ("ice", "ice_minus"):  # Eqs. (0.13)-(0.15)
        top = f_out.max(-1)
        b = weight * out_term_weight
        loss += b * np.mean(-np.log(-np.expm1(top)))
        grad_out = b * _onehot(f_out.argmax(-1), num_classes) * (
            np.exp(top) / -np.expm1(top)
        )[:, None] / n_out
        if name == "ice":
            a = weight * in_term_weight
            loss += a * np.mean(-f_in[rows, y])
            grad_in += -a * _onehot(y, num_classes) / n_in
    elif name == "logitnorm":  # Wei et al. 2022, Eq. 5: CE on f / (τ ‖f‖), τ = 0.04
        norms = np.linalg.norm(f_in, axis=1, keepdims=True)
        normalised = f_in / (0.04 * norms)
        loss = -np.mean(_log_softmax(normalised)[rows, y])
        g = (_softmax(normalised) - _onehot(y, num_classes)) / n_in
        # d(f / ‖f‖)/df = (I - f fᵀ / ‖f‖²) / ‖f‖
        grad_in = (g - (g * f_in).sum(1, keepdims=True) * f_in / norms**2) / (0.04 * norms)
    elif name not in ("ce", "vos"):  # VOS without its synthesis hook: CE alone
        raise AssertionError(name)
    return loss, grad_in, grad_out


def _tf_loss_and_grads(loss_fn, y, f_in, f_out):
    f_in = tf.constant(f_in, tf.float32)
    f_out = tf.constant(f_out, tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([f_in, f_out])
        value = loss_fn(tf.constant(y), f_in, f_out)
    return value.numpy(), tape.gradient(value, f_in).numpy(), tape.gradient(value, f_out)


def _outputs(rng, name, shape):
    if name in ("ice", "ice_minus"):  # Gaussian scores h <= 0
        return -rng.gamma(2.0, 2.0, shape)
    return rng.normal(0.0, 4.0, shape)


def _relative(actual, expected):
    return np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30)


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", losses.names())
def test_loss_and_gradients_match_float64_reference(name, num_classes):
    rng = np.random.default_rng(num_classes)
    y = rng.integers(0, num_classes, 32)
    f_in = _outputs(rng, name, (32, num_classes))
    f_out = _outputs(rng, name, (64, num_classes))
    loss_fn = losses.get(name)
    value, grad_in, grad_out = _tf_loss_and_grads(loss_fn, y, f_in, f_out)
    ref_value, ref_in, ref_out = reference(name, loss_fn.weight, y, f_in, f_out)
    assert abs(value - ref_value) / abs(ref_value) <= 1e-4
    assert _relative(grad_in, ref_in) <= 1e-4
    if loss_fn.uses_outliers:
        assert _relative(grad_out.numpy(), ref_out) <= 1e-4
    else:
        assert grad_out is None  # plain CE never looks at outliers


@pytest.mark.parametrize("in_term_weight, out_term_weight", [(0.0, 1.0), (1.0, 0.0), (0.3, 2.0)])
def test_ice_term_weights_match_float64_reference(in_term_weight, out_term_weight):
    """CE + λ·(a·in_term + b·out_term): a = 0 is ICE⁻, b = 0 the in-distribution term alone."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, 10, 32)
    f_in, f_out = _outputs(rng, "ice", (32, 10)), _outputs(rng, "ice", (64, 10))
    loss_fn = losses.get("ice", weight=0.2, in_term_weight=in_term_weight,
                         out_term_weight=out_term_weight)
    value, grad_in, grad_out = _tf_loss_and_grads(loss_fn, y, f_in, f_out)
    ref_value, ref_in, ref_out = reference("ice", 0.2, y, f_in, f_out,
                                           in_term_weight=in_term_weight,
                                           out_term_weight=out_term_weight)
    assert abs(value - ref_value) / abs(ref_value) <= 1e-5
    assert _relative(grad_in, ref_in) <= 1e-5
    assert _relative(grad_out.numpy(), ref_out) <= 1e-5
    if in_term_weight == 0.0:  # the same objective as ICE⁻
        minus = losses.get("ice_minus", weight=0.2, out_term_weight=out_term_weight)
        assert abs(minus(tf.constant(y), f_in, f_out).numpy() - value) <= 1e-6 * abs(value)
    with pytest.raises(ValueError, match="in_term_weight"):
        losses.get("ice", in_term_weight=-1.0)
    assert losses.spec("ice").hyperparameters == {  # the paper's Eq. (0.15): a = b = 1
        "weight": 0.03, "in_term_weight": 1.0, "out_term_weight": 1.0}
    assert losses.spec("ice_minus").hyperparameters == {"weight": 0.03, "out_term_weight": 1.0}


def test_energy_margins_are_used():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 10, 32)
    f_in, f_out = rng.normal(0, 4, (32, 10)), rng.normal(0, 4, (64, 10))
    loss_fn = losses.get("energy", weight=0.3, margin_in=-27.0, margin_out=-7.0)
    value, _, _ = _tf_loss_and_grads(loss_fn, y, f_in, f_out)
    expected, _, _ = reference("energy", 0.3, y, f_in, f_out, margin_in=-27.0, margin_out=-7.0)
    assert abs(value - expected) / expected <= 1e-5


def test_log1mexp_matches_float64_across_its_range():
    t = -np.logspace(-6, 2.5, 400).astype(np.float32)
    expected = np.log(-np.expm1(t.astype(np.float64)))
    np.testing.assert_allclose(
        losses.log1mexp(tf.constant(t)).numpy(), expected, rtol=1e-5, atol=1e-9
    )


# ------------------------------------------------- the paper's gradient claims
def _term_gradient(term, outputs, y=None):
    outputs = tf.constant(outputs, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(outputs)
        value = term(outputs)
    return tape.gradient(value, outputs).numpy()


def test_oe_outlier_term_raises_logits_with_softmax_below_one_over_k():
    """Eq. (0.6): d/df_i ∝ softmax_i - 1/K, so descent raises f_i where softmax_i < 1/K."""
    rng = np.random.default_rng(6)
    f_out = rng.normal(0, 3, (64, 10))
    oe = losses.get("oe")
    grad = _term_gradient(lambda f: oe.extra_terms(None, None, f)["out_term"], f_out)
    below = _softmax(f_out) < 0.1
    assert below.any() and (~below).any()
    assert np.all(grad[below] < 0)  # raised by gradient descent: the contradictory gradient
    assert np.all(grad[~below] > 0)


def test_energy_in_distribution_term_raises_every_logit():
    """Eq. (0.8): the in-distribution energy term has a negative gradient on every f_i."""
    rng = np.random.default_rng(7)
    f_in = rng.normal(0, 3, (32, 10))
    energy = losses.get("energy")
    grad = _term_gradient(lambda f: energy.extra_terms(None, f, f)["in_term"], f_in)
    assert np.all(grad < 0)


def test_ice_outlier_term_only_lowers_the_maximal_h():
    rng = np.random.default_rng(8)
    h_out = -rng.gamma(2.0, 2.0, (64, 10))
    grad = _term_gradient(losses.ice_outlier_term, h_out)
    is_max = _onehot(h_out.argmax(-1), 10).astype(bool)
    assert np.all(grad[is_max] > 0)  # descent lowers max h
    assert np.all(grad[~is_max] == 0)


@pytest.mark.parametrize("name", ["ice", "ice_minus"])
def test_ice_in_distribution_terms_never_raise_a_non_target_class(name):
    rng = np.random.default_rng(9)
    y = rng.integers(0, 10, 32)
    h_in = -rng.gamma(2.0, 2.0, (32, 10))
    h_out = -rng.gamma(2.0, 2.0, (64, 10))
    _, grad_in, _ = _tf_loss_and_grads(losses.get(name, weight=5.0), y, h_in, h_out)
    target = _onehot(y, 10).astype(bool)
    assert np.all(grad_in[~target] >= 0)
    assert np.all(grad_in[target] < 0)


# -------------------------------------------------------------- numeric edges
def _gaussian_and_linear_heads(rng, dim=32, num_classes=10):
    gaussian = layers.make_head("gaussian", num_classes)
    gaussian.build((None, dim))
    gaussian.means.assign(rng.normal(size=(num_classes, dim)).astype("float32"))
    linear = layers.make_head("linear", num_classes)
    linear.build((None, dim))
    return {"gaussian": gaussian, "linear": linear}


@pytest.mark.parametrize("edge", ["outlier_on_mean", "huge_positive", "huge_negative", "zeros"])
@pytest.mark.parametrize("name", losses.names())
def test_numeric_edges_give_finite_losses_and_gradients(name, edge):
    rng = np.random.default_rng(10)
    heads = _gaussian_and_linear_heads(rng)
    z_in = rng.normal(size=(8, 32)).astype("float32")
    z_out = rng.normal(size=(16, 32)).astype("float32")
    if edge == "outlier_on_mean":
        z_out[:4] = heads["gaussian"].means.numpy()[:4]
        z_in[:4] = heads["gaussian"].means.numpy()[:4]
    else:
        fill = {"huge_positive": 1e4, "huge_negative": -1e4, "zeros": 0.0}[edge]
        z_in[:] = fill
        z_out[:] = fill
    y = np.arange(8) % 10
    loss_fn = losses.get(name)
    for head in heads.values():
        z_in_t, z_out_t = tf.constant(z_in), tf.constant(z_out)
        with tf.GradientTape() as tape:
            tape.watch([z_in_t, z_out_t])
            value = loss_fn(y, head(z_in_t), head(z_out_t))
        gradients = tape.gradient(value, [z_in_t, z_out_t, *head.trainable_variables])
        assert np.isfinite(value.numpy()), (head.name, value)
        for gradient in gradients:
            if gradient is not None:
                assert np.all(np.isfinite(tf.convert_to_tensor(gradient).numpy()))


def test_outlier_exactly_on_a_class_mean_costs_a_large_finite_ice_loss():
    value = losses.ice_outlier_term(tf.zeros((1, 10))).numpy()
    assert np.isfinite(value) and value == pytest.approx(-np.log(-np.expm1(-1e-6)), rel=1e-3)


# ------------------------------------------------------------------ the API
def test_registry_names_and_errors():
    assert losses.names() == ["bce", "ce", "dal", "energy", "ice", "ice_minus", "logitnorm", "mixoe", "oe", "vos"]
    with pytest.raises(ValueError, match="bce, ce, dal, energy, ice, ice_minus, logitnorm, mixoe, oe, vos"):
        losses.get("focal")
    with pytest.raises(ValueError, match="lambda"):
        losses.get("ice", weight=-0.1)
    with pytest.raises(ValueError, match="lambda"):
        losses.get("oe", weight=float("nan"))
    loss = losses.get("ice")
    assert losses.get(loss) is loss
    assert [losses.get(n).uses_outliers for n in ("ce", "oe", "ice")] == [False, True, True]


def test_bad_labels_and_missing_outliers_raise_value_errors():
    outputs = tf.zeros((4, 10))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        losses.get("ce")(np.array([0, 1, 2, 10]), outputs)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        losses.get("ice")(np.array([0, -1, 2, 3]), outputs, outputs)
    with pytest.raises(ValueError, match="outliers"):
        losses.get("oe")(np.array([0, 1, 2, 3]), outputs)
    with pytest.raises(ValueError, match="classes"):
        losses.get("oe")(np.array([0, 1, 2, 3]), outputs, tf.zeros((4, 7)))


@pytest.mark.parametrize("name", losses.names())
def test_losses_serialize(name):
    loss = losses.get(name)
    config = keras.saving.serialize_keras_object(loss)
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    assert restored.name == name


def test_logitnorm_is_cross_entropy_on_normalised_logits_and_finite_at_zero():
    rng = np.random.default_rng(11)
    logits, labels = rng.normal(0, 3, (8, 5)), np.arange(8) % 5
    loss = losses.get("logitnorm", temperature=0.04)
    normalised = logits / ((np.linalg.norm(logits, axis=1, keepdims=True) + 1e-7) * 0.04)
    top = normalised.max(1)
    reference = np.mean(np.log(np.exp(normalised - top[:, None]).sum(1)) + top
                        - normalised[np.arange(8), labels])
    np.testing.assert_allclose(float(loss(labels, logits)), reference, rtol=1e-5)
    zeros = tf.zeros((4, 5))
    with tf.GradientTape() as tape:
        tape.watch(zeros)
        value = loss(np.arange(4), zeros)
    assert np.isfinite(float(value)) and np.all(np.isfinite(tape.gradient(value, zeros)))
    spec = losses.spec("logitnorm")
    assert (spec.default_score, spec.uses_outliers, spec.hyperparameters) == ("msp", False, {"temperature": 0.04})


# ------------------------------------------------------------------ MixOE
def _mixoe_reference(y, f_in, f_mixed, mix_labels, w, weight):
    """(loss, d/df_in, d/df_mixed) in float64: CE + λ · mean soft CE to w·onehot + (1 - w)/K."""
    n_in, num_classes = f_in.shape
    loss = -np.mean(_log_softmax(f_in)[np.arange(n_in), y])
    grad_in = (_softmax(f_in) - _onehot(y, num_classes)) / n_in
    target = w * _onehot(mix_labels, num_classes) + (1 - w) / num_classes
    loss += weight * np.mean(-(target * _log_softmax(f_mixed)).sum(-1))
    grad_mixed = weight * (_softmax(f_mixed) - target) / f_mixed.shape[0]
    return loss, grad_in, grad_mixed


@pytest.mark.parametrize("w", [0.0, 0.37, 1.0])
def test_mixoe_soft_target_loss_matches_float64_reference(w):
    rng = np.random.default_rng(12)
    y = rng.integers(0, 10, 16)
    f_in, f_mixed = rng.normal(0, 4, (16, 10)), rng.normal(0, 4, (16, 10))
    loss = losses.get("mixoe", weight=0.7)
    context = {"mix_weight": tf.constant(w, tf.float32), "mix_labels": tf.constant(y)}
    value, grad_in, grad_mixed = _tf_loss_and_grads(
        lambda labels, a, b: loss.combine(loss.terms(labels, a, b, context)), y, f_in, f_mixed)
    ref_value, ref_in, ref_mixed = _mixoe_reference(y, f_in, f_mixed, y, w, 0.7)
    assert abs(value - ref_value) / abs(ref_value) <= 1e-5
    assert _relative(grad_in, ref_in) <= 1e-5
    assert _relative(grad_mixed.numpy(), ref_mixed) <= 1e-5
    if w == 0.0:  # the uniform target: OE's term
        oe = losses.get("oe", weight=0.7)(tf.constant(y), f_in, f_mixed).numpy()
        assert value == pytest.approx(oe, rel=1e-6)


def test_mixoe_mixup_mixes_the_first_outliers_into_the_images():
    rng = np.random.default_rng(13)
    x = rng.normal(size=(4, 6, 6, 3)).astype("float32")
    x_out = rng.normal(size=(8, 6, 6, 3)).astype("float32")
    y = np.array([0, 1, 2, 3])
    loss = losses.get("mixoe", operator="mixup", alpha=1.0, beta=1.0)
    images, labels, mixed, context = loss.transform_batch(x, tf.constant(y), x_out, tf.constant([3, 5]))
    w = float(context["mix_weight"])
    assert 0.0 <= w <= 1.0
    np.testing.assert_allclose(mixed.numpy(), w * x + (1 - w) * x_out[:4], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(images), x)  # the images and their labels unchanged
    np.testing.assert_array_equal(labels.numpy(), y)
    np.testing.assert_array_equal(context["mix_labels"].numpy(), y)


def test_mixoe_cutmix_pastes_one_box_and_its_weight_is_the_share_kept():
    x = np.zeros((3, 16, 12, 1), "float32")
    x_out = np.ones((5, 16, 12, 1), "float32")
    loss = losses.get("mixoe", alpha=1.0, beta=1.0)
    draws = set()
    for step in range(6):
        _, _, mixed, context = loss.transform_batch(x, tf.constant([0, 1, 2]), x_out,
                                                    tf.constant([0, step]))
        mixed = mixed.numpy()
        assert mixed.shape == (3, 16, 12, 1)
        pasted = mixed[0, :, :, 0]
        np.testing.assert_array_equal(mixed, np.broadcast_to(mixed[:1], mixed.shape))  # one box
        rows, cols = np.nonzero(pasted)
        if rows.size:  # a rectangle
            assert pasted[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        assert float(context["mix_weight"]) == pytest.approx(1 - pasted.mean(), abs=1e-6)
        draws.add(float(context["mix_weight"]))
    assert len(draws) > 1  # the step changes the draw
    again = loss.transform_batch(x, tf.constant([0, 1, 2]), x_out, tf.constant([0, 5]))[2]
    np.testing.assert_array_equal(again.numpy(), mixed)  # the same seed, the same batch


def test_mixoe_checks_its_hyperparameters_and_serializes():
    with pytest.raises(ValueError, match="mixoe_operator must be one of cutmix, mixup"):
        losses.get("mixoe", operator="cutout")
    with pytest.raises(ValueError, match="mixoe_alpha"):
        losses.get("mixoe", alpha=0.0)
    spec = losses.spec("mixoe")
    assert spec.hyperparameters == {"weight": 1.0, "alpha": 0.1, "beta": 1.0, "operator": "cutmix"}
    assert spec.default_score == "msp" and spec.uses_outliers


# ------------------------------------------------------------------ DAL
def _dal_reference(w, b, z, delta0, gamma, strength, iterations):
    """(δ, mean|δ| of the last step) in float64 for a linear head f = z W + b."""
    delta = delta0.copy()
    num_classes = w.shape[1]
    radius = np.mean(np.abs(delta))
    for _ in range(iterations):
        f = (z + delta) @ w + b
        # d/dδ mean_n [logsumexp f - mean_c f] - γ mean|δ|
        grad_f = (_softmax(f) - 1.0 / num_classes) / z.shape[0]
        radius = np.mean(np.abs(delta))
        gradient = grad_f @ w.T - gamma * np.sign(delta) / delta.size
        gradient /= np.linalg.norm(gradient, axis=1, keepdims=True)
        delta = delta + strength * gradient
    return delta, radius


def test_dal_perturbation_and_gamma_update_match_float64_reference():
    rng = np.random.default_rng(14)
    head = layers.make_head("linear", 5)
    head.build((None, 8))
    w, b = rng.normal(size=(8, 5)), rng.normal(size=5)
    head.set_weights([w.astype("float32"), b.astype("float32")])
    z = rng.normal(size=(6, 8)).astype("float32")
    loss = losses.get("dal", iterations=4, strength=0.5)
    seed = tf.constant([2, 9])
    delta0 = tf.random.stateless_uniform((6, 8), seed).numpy().astype(np.float64) * 1e-4
    delta, radius = loss.perturbation(head, tf.constant(z), seed, tf.constant(0.3))
    ref_delta, ref_radius = _dal_reference(w, b, z.astype(np.float64), delta0, 0.3, 0.5, 4)
    np.testing.assert_allclose(delta.numpy(), ref_delta, rtol=1e-4, atol=1e-5)
    assert float(radius) == pytest.approx(ref_radius, rel=1e-4)
    # The outlier term is OE's on head(z + δ); γ follows clip(γ - β (ρ - mean|δ|), 0, γ_max).
    loss.build_state()
    outputs = loss.outlier_outputs(head, tf.constant(z), head(tf.constant(z)), seed)
    expected = (z + loss.perturbation(head, tf.constant(z), seed, tf.constant(0.01))[0].numpy()) @ w + b
    np.testing.assert_allclose(outputs.numpy(), expected, rtol=1e-4, atol=1e-4)
    assert float(loss.gamma.numpy()) == pytest.approx(
        np.clip(0.01 - 0.01 * (10.0 - float(loss.perturbation(
            head, tf.constant(z), seed, tf.constant(0.01))[1])), 0, 10), abs=1e-6)


def test_dal_state_is_checkpointed_and_restored(tmp_path):
    from helpers import blob_data, tiny_backbone, zipped_dataset

    from ice_tf import models
    from ice_tf.experiment import checkpoint

    images, labels, outliers = blob_data()
    model = models.OODModel(tiny_backbone(), layers.make_head("linear", 3))
    # A small ball (ρ): the perturbation leaves it, so γ grows by β (mean|δ| - ρ) per batch.
    model.compile(keras.optimizers.SGD(0.01), loss=losses.get("dal", rho=1e-4, beta=0.1))
    model.fit(zipped_dataset(images, labels, outliers), epochs=2, verbose=0,
              callbacks=[checkpoint.TrainingCheckpoint(str(tmp_path))])
    gamma = float(model.ood_loss.gamma.numpy())
    assert gamma > 0.01
    fresh = models.OODModel(tiny_backbone(), layers.make_head("linear", 3))
    fresh.compile(keras.optimizers.SGD(0.01), loss=losses.get("dal", rho=1e-4, beta=0.1))
    assert float(fresh.ood_loss.gamma.numpy()) == pytest.approx(0.01)
    assert checkpoint.restore_training_state(fresh, str(tmp_path)) == (2, 0)
    assert float(fresh.ood_loss.gamma.numpy()) == pytest.approx(gamma)



# ------------------------------------------------------------------ VOS
def _vos_model(queue_size=4, candidates=50, select=1, start_step=0, classes=3):
    from helpers import tiny_backbone

    from ice_tf import models

    model = models.OODModel(tiny_backbone(), layers.make_head("vos", classes))
    model.compile(keras.optimizers.SGD(0.01), loss=losses.get(
        "vos", queue_size=queue_size, candidates=candidates, select=select, start_step=start_step))
    return model


def test_vos_weighted_energy_and_uncertainty_match_float64_reference():
    rng = np.random.default_rng(15)
    model = _vos_model()
    head, loss = model.head, model.ood_loss
    energy_w = rng.uniform(-0.5, 1.0, 3)
    head.energy_weights.assign(energy_w.astype("float32"))
    a, c = rng.normal(size=(1, 2)), rng.normal(size=2)
    head.uncertainty_kernel.assign(a.astype("float32"))
    head.uncertainty_bias.assign(c.astype("float32"))
    outputs = rng.normal(0, 3, (5, 3))
    virtual = rng.normal(size=(3, 8)).astype("float32")
    w, b = [v.numpy().astype(np.float64) for v in (head.kernel, head.bias)]

    def weighted_energy(f):  # log Σ relu(w_k) exp(f_k)
        return np.log((np.maximum(energy_w, 0) * np.exp(f)).sum(-1))

    np.testing.assert_allclose(head.weighted_energy(tf.constant(outputs, tf.float32)).numpy(),
                               weighted_energy(outputs), rtol=1e-5)
    energy = np.concatenate([weighted_energy(outputs), weighted_energy(virtual @ w + b)])
    logits = energy[:, None] * a + c
    targets = np.array([1] * 5 + [0] * 3)
    reference = np.mean(-_log_softmax(logits)[np.arange(8), targets])
    value = loss.uncertainty(head, tf.constant(outputs, tf.float32), tf.constant(virtual))
    assert float(value) == pytest.approx(reference, rel=1e-5)


def test_vos_queues_are_fifo_per_class_and_virtual_outliers_are_the_least_likely():
    model = _vos_model(queue_size=3, candidates=200, select=2)
    loss = model.ood_loss
    features = np.arange(6 * 8, dtype="float32").reshape(6, 8)
    labels = tf.constant([0, 1, 0, 0, 0, 2])
    loss.enqueue(tf.constant(features), labels)
    np.testing.assert_array_equal(loss.queue[0].numpy(), features[[2, 3, 4]])  # the last 3
    np.testing.assert_array_equal(loss.queue[1].numpy()[-1], features[1])
    assert list(loss.filled.numpy()) == [3, 1, 1]
    rng = np.random.default_rng(16)
    queue = rng.normal(size=(3, 3, 8)).astype("float32")
    loss.queue.assign(queue)
    seed = tf.constant([4, 2])
    virtual = loss.virtual_outliers(seed).numpy()
    means = queue.astype(np.float64).mean(1)
    centred = (queue - means[:, None]).reshape(-1, 8)
    cholesky = np.linalg.cholesky(centred.T @ centred / len(centred) + 1e-4 * np.eye(8))
    expected = []
    for k in range(3):
        u = tf.random.stateless_normal((200, 8), tf.random.experimental.stateless_fold_in(seed, k)).numpy()
        farthest = np.argsort(-(u ** 2).sum(1))[:2]
        expected.append(means[k] + u[farthest] @ cholesky.T)
        # the least likely of the candidates under N(μ_k, Σ)
        samples = means[k] + u @ cholesky.T
        precision = np.linalg.inv(cholesky @ cholesky.T)
        distance = np.einsum("nd,de,ne->n", samples - means[k], precision, samples - means[k])
        assert set(np.argsort(-distance)[:2]) == set(farthest)
    np.testing.assert_allclose(virtual, np.concatenate(expected), rtol=1e-4, atol=1e-4)


def test_vos_trains_its_uncertainty_term_once_the_queues_are_full(tmp_path):
    from helpers import blob_data, zipped_dataset

    from ice_tf.experiment import checkpoint

    images, labels, outliers = blob_data()
    model = _vos_model(queue_size=8)
    history = model.fit(zipped_dataset(images, labels, outliers), epochs=2, verbose=0,
                        callbacks=[checkpoint.TrainingCheckpoint(str(tmp_path))])
    terms = history.history["uncertainty_term"]
    assert np.all(np.isfinite(terms)) and terms[-1] > 0  # full after a few batches of 16
    assert list(model.ood_loss.filled.numpy()) == [8, 8, 8]
    fresh = _vos_model(queue_size=8)
    assert checkpoint.restore_training_state(fresh, str(tmp_path)) == (2, 0)
    np.testing.assert_array_equal(fresh.ood_loss.queue.numpy(), model.ood_loss.queue.numpy())
    assert int(fresh.ood_loss.step.numpy()) == int(model.ood_loss.step.numpy())
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir())[:2] == [
        "epoch-0001.state.npz", "epoch-0001.weights.h5"]


def test_vos_needs_its_head():
    from helpers import tiny_backbone

    from ice_tf import models

    model = models.OODModel(tiny_backbone(), layers.make_head("linear", 3))
    with pytest.raises(ValueError, match="make_head\\('vos', K\\)"):
        model.compile(keras.optimizers.SGD(0.01), loss="vos")
