"""Tests for ice_tf.backbones: registry, shapes, parameter counts, PyTorch parity."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from ice_tf import backbones

CIFAR_SHAPE = (32, 32, 3)
BUILTIN_NAMES = ["densenet40_12", "small_cnn", "wrn16_2", "wrn16_4", "wrn34_10", "wrn40_2"]

_model_cache = {}


def _build(name, input_shape=CIFAR_SHAPE, **kwargs):
    """Builds a backbone once per test session; the models are only read."""
    key = (name, tuple(input_shape), tuple(sorted(kwargs.items())))
    if key not in _model_cache:
        _model_cache[key] = backbones.get(name, input_shape, **kwargs)
    return _model_cache[key]


def _trainable_params(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def _with_linear_head(backbone, num_classes=10):
    logits = keras.layers.Dense(num_classes)(backbone.output)
    return keras.Model(backbone.input, logits)


def _layers_of_type(model, layer_type):
    return [layer for layer in model.layers if isinstance(layer, layer_type)]


# ----------------------------------------------------------------- registry


def test_names_lists_builtins_sorted():
    assert backbones.names() == BUILTIN_NAMES


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as excinfo:
        backbones.get("resnet18", CIFAR_SHAPE)
    message = str(excinfo.value)
    assert "resnet18" in message
    assert ", ".join(BUILTIN_NAMES) in message


def test_register_adds_custom_builder(monkeypatch):
    monkeypatch.setattr(backbones, "_BUILDERS", dict(backbones._BUILDERS))
    received = {}

    @backbones.register("tiny_test_net")
    def tiny_test_net(input_shape, *, sync_batchnorm=False, width=4):
        received.update(sync_batchnorm=sync_batchnorm, width=width)
        inputs = keras.Input(shape=input_shape)
        x = keras.layers.Conv2D(width, 3)(inputs)
        return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="tiny_test_net")

    assert "tiny_test_net" in backbones.names()
    assert backbones.names() == sorted(backbones.names())
    model = backbones.get("tiny_test_net", (8, 8, 1), sync_batchnorm=True, width=5)
    assert model.name == "tiny_test_net"
    assert model.output_shape == (None, 5)
    assert received == {"sync_batchnorm": True, "width": 5}


def test_register_rejects_duplicate_unless_overwrite(monkeypatch):
    monkeypatch.setattr(backbones, "_BUILDERS", dict(backbones._BUILDERS))
    with pytest.raises(ValueError, match="already registered"):
        backbones.register("small_cnn")(lambda input_shape, **kwargs: None)
    replacement = backbones.register("small_cnn", overwrite=True)(lambda input_shape, **kwargs: "new")
    assert backbones.get("small_cnn", CIFAR_SHAPE) == "new"
    assert backbones._BUILDERS["small_cnn"] is replacement


def test_unknown_architecture_option_is_rejected():
    with pytest.raises(TypeError):
        backbones.get("small_cnn", CIFAR_SHAPE, no_such_option=1)


@pytest.mark.parametrize("bad_shape", [(32, 32), (3, 32, 32, 3), (32, 32, None)])
def test_bad_input_shape_is_rejected(bad_shape):
    with pytest.raises(ValueError, match="input_shape"):
        backbones.get("small_cnn", bad_shape)


@pytest.mark.parametrize("depth", [8, 41])
def test_wrn_rejects_invalid_depth(depth):
    with pytest.raises(ValueError, match="6n \\+ 4"):
        backbones.wide_resnet(CIFAR_SHAPE, depth, 2)


# ------------------------------------------------------- parameter counts


def test_wrn40_2_parameter_count():
    assert _trainable_params(_with_linear_head(_build("wrn40_2"))) == 2_243_546


def _wrn_parameter_count(depth, widen_factor, in_channels=3, num_classes=10):
    """Counts a pre-activation WRN's trainable parameters by hand: bias-free convolutions,
    two per BatchNorm, a 1x1 shortcut where the width changes, a linear head."""
    count, channels = 9 * in_channels * 16, 16
    for width in (16 * widen_factor, 32 * widen_factor, 64 * widen_factor):
        for block in range((depth - 4) // 6):
            count += 2 * channels + 9 * channels * width + 2 * width + 9 * width * width
            count += channels * width if channels != width else 0
            channels = width
    return count + 2 * channels + channels * num_classes + num_classes


@pytest.mark.parametrize("name, depth, widen_factor", [("wrn40_2", 40, 2), ("wrn16_4", 16, 4),
                                                        ("wrn16_2", 16, 2)])
def test_wrn_parameter_counts_match_the_hand_count(name, depth, widen_factor):
    assert _wrn_parameter_count(40, 2) == 2_243_546  # the reference's WRN-40-2
    assert _trainable_params(_with_linear_head(_build(name))) == _wrn_parameter_count(depth,
                                                                                      widen_factor)


def test_wrn34_10_parameter_count():
    assert _trainable_params(_with_linear_head(_build("wrn34_10"))) == 46_160_474


def test_densenet40_12_parameter_count():
    count = _trainable_params(_with_linear_head(_build("densenet40_12")))
    assert 950_000 <= count <= 1_100_000
    assert count == 1_019_722


def test_batchnorm_moving_stats_are_not_trainable():
    model = _build("wrn40_2")
    trainable_names = {w.path for w in model.trainable_weights}
    assert not any("moving" in name for name in trainable_names)
    assert all("moving" in w.path for w in model.non_trainable_weights)


# ----------------------------------------------------------- output shapes


@pytest.mark.parametrize(
    "name, feature_dim", [("wrn40_2", 128), ("wrn34_10", 640), ("densenet40_12", 448), ("small_cnn", 128)]
)
def test_model_name_and_feature_dim(name, feature_dim):
    model = _build(name)
    assert model.name == name
    assert model.output_shape == (None, feature_dim)
    assert model.input_shape == (None, *CIFAR_SHAPE)


@pytest.mark.parametrize("name, feature_dim", [("wrn40_2", 128), ("densenet40_12", 448)])
def test_forward_pass_shape(name, feature_dim):
    images = np.random.default_rng(0).normal(size=(2, *CIFAR_SHAPE)).astype("float32")
    features = _build(name)(images, training=False)
    assert tuple(features.shape) == (2, feature_dim)
    assert features.dtype == tf.float32
    assert np.all(np.isfinite(features.numpy()))
    assert np.all(features.numpy() >= 0)  # after ReLU and average pooling


@pytest.mark.parametrize("input_shape", [(28, 28, 1), (32, 32, 3)])
@pytest.mark.parametrize("feature_dim", [128, 64])
def test_small_cnn_shapes(input_shape, feature_dim):
    model = _build("small_cnn", input_shape, feature_dim=feature_dim)
    assert model.output_shape == (None, feature_dim)
    images = np.random.default_rng(1).uniform(size=(3, *input_shape)).astype("float32")
    for training in (False, True):
        assert tuple(model(images, training=training).shape) == (3, feature_dim)


# ------------------------------------------------------------ architecture


def test_dropout_defaults_and_override():
    rates = {layer.rate for layer in _layers_of_type(_build("wrn40_2"), keras.layers.Dropout)}
    assert rates == {0.3}
    assert len(_layers_of_type(_build("wrn40_2"), keras.layers.Dropout)) == 18  # one per block
    assert not _layers_of_type(_build("wrn34_10"), keras.layers.Dropout)
    assert not _layers_of_type(_build("densenet40_12"), keras.layers.Dropout)
    no_dropout = _build("wrn40_2", dropout_rate=0.0)
    assert not _layers_of_type(no_dropout, keras.layers.Dropout)
    assert _trainable_params(no_dropout) == _trainable_params(_build("wrn40_2"))


def test_wrn_shortcut_convs_only_where_channels_change():
    model = _build("wrn40_2")
    shortcuts = [layer.name for layer in model.layers if layer.name.endswith("_shortcut")]
    # 16 -> 32, 32 -> 64 (stride 2), 64 -> 128 (stride 2).
    assert shortcuts == ["group1_block1_shortcut", "group2_block1_shortcut", "group3_block1_shortcut"]
    strides = [model.get_layer(name).strides for name in shortcuts]
    assert strides == [(1, 1), (2, 2), (2, 2)]


def test_wrn_shortcut_takes_preactivated_input_when_channels_change():
    model = _build("wrn40_2")
    shortcut_in = model.get_layer("group2_block1_shortcut").input
    conv1_in = model.get_layer("group2_block1_conv1_pad").input
    assert shortcut_in is conv1_in
    assert shortcut_in is model.get_layer("group2_block1_preact_relu").output
    # Equal channels: the identity shortcut is the raw block input.
    add_inputs = model.get_layer("group2_block2_add").input
    assert add_inputs[0] is model.get_layer("group2_block1_add").output


def test_densenet_channel_growth():
    model = _build("densenet40_12")
    assert model.get_layer("transition1_conv").filters == 16 + 12 * 12
    assert model.get_layer("transition2_conv").filters == 16 + 24 * 12
    assert model.get_layer("final_relu").output.shape == (None, 8, 8, 448)
    assert len(_layers_of_type(model, keras.layers.Conv2D)) == 1 + 36 + 2  # stem + dense layers + transitions


@pytest.mark.parametrize("name", ["wrn40_2", "densenet40_12"])
def test_conv_init_is_untruncated_he_normal_fan_out_without_bias(name):
    model = _build(name)
    convs = _layers_of_type(model, keras.layers.Conv2D)
    assert convs
    for conv in convs:
        assert not conv.use_bias
        initializer = conv.kernel_initializer
        assert isinstance(initializer, keras.initializers.RandomNormal)
        k = conv.kernel_size[0]
        assert initializer.stddev == pytest.approx(math.sqrt(2.0 / (k * k * conv.filters)))


def test_conv_kernel_values_follow_untruncated_normal():
    kernel = _build("wrn34_10").get_layer("group3_block2_conv2").kernel.numpy()
    expected_std = math.sqrt(2.0 / (3 * 3 * 640))
    assert kernel.std() == pytest.approx(expected_std, rel=0.02)
    # A truncated normal would never exceed 2 standard deviations.
    assert np.abs(kernel).max() > 3.5 * expected_std


@pytest.mark.parametrize("name", ["wrn40_2", "small_cnn"])
def test_batchnorm_uses_pytorch_defaults(name):
    bns = _layers_of_type(_build(name), keras.layers.BatchNormalization)
    assert bns
    for bn in bns:
        assert bn.momentum == pytest.approx(0.9)
        assert bn.epsilon == pytest.approx(1e-5)
        assert not bn.synchronized
        np.testing.assert_array_equal(bn.gamma.numpy(), 1.0)
        np.testing.assert_array_equal(bn.beta.numpy(), 0.0)


@pytest.mark.parametrize("name", ["small_cnn", "wrn40_2"])
def test_sync_batchnorm_creates_synchronized_layers(name):
    model = backbones.get(name, CIFAR_SHAPE, sync_batchnorm=True)
    bns = _layers_of_type(model, keras.layers.BatchNormalization)
    assert bns
    assert all(bn.synchronized for bn in bns)
    assert _trainable_params(model) == _trainable_params(_build(name))


def test_sync_batchnorm_trains_outside_a_strategy():
    model = backbones.get("small_cnn", (28, 28, 1), sync_batchnorm=True)
    images = np.random.default_rng(2).normal(size=(4, 28, 28, 1)).astype("float32")
    features = model(images, training=True)
    assert tuple(features.shape) == (4, 128)
    moving_means = [bn.moving_mean.numpy() for bn in _layers_of_type(model, keras.layers.BatchNormalization)]
    assert any(np.any(mean != 0) for mean in moving_means)


# --------------------------------------------------------- PyTorch parity


def test_wrn_feature_map_is_8x8_before_pooling():
    model = _build("wrn40_2")
    assert model.get_layer("group1_block6_add").output.shape == (None, 32, 32, 32)
    assert model.get_layer("group2_block6_add").output.shape == (None, 16, 16, 64)
    assert model.get_layer("final_relu").output.shape == (None, 8, 8, 128)


def _torch_style_conv(x, kernel, stride, pad):
    """Cross-correlation with symmetric zero padding, as torch.nn.Conv2d computes it."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    k = kernel.shape[0]
    out_h = (x.shape[1] - k) // stride + 1
    out_w = (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]), dtype=np.float64)
    for i in range(k):
        for j in range(k):
            patch = x[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride, :]
            out += patch @ kernel[i, j]
    return out


def test_stride2_conv_matches_pytorch_symmetric_padding():
    model = _build("wrn40_2")
    pad_layer = model.get_layer("group2_block1_conv1_pad")
    conv_layer = model.get_layer("group2_block1_conv1")
    assert conv_layer.strides == (2, 2) and conv_layer.padding == "valid"
    x = np.random.default_rng(3).normal(size=(2, 32, 32, 32)).astype("float32")
    kernel = conv_layer.kernel.numpy()

    ours = conv_layer(pad_layer(x)).numpy()
    expected = _torch_style_conv(x.astype(np.float64), kernel.astype(np.float64), stride=2, pad=1)
    assert ours.shape == (2, 16, 16, 64)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)

    # Keras 'same' padding pads only bottom/right here, which gives different values.
    same = tf.nn.conv2d(x, kernel, strides=2, padding="SAME").numpy()
    assert not np.allclose(same, expected, atol=1e-3)


def test_stride2_shortcut_matches_pytorch():
    model = _build("wrn40_2")
    shortcut = model.get_layer("group3_block1_shortcut")
    x = np.random.default_rng(4).normal(size=(1, 16, 16, 64)).astype("float32")
    ours = shortcut(x).numpy()
    kernel = shortcut.kernel.numpy().astype(np.float64)
    expected = _torch_style_conv(x.astype(np.float64), kernel, stride=2, pad=0)
    assert ours.shape == (1, 8, 8, 128)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
