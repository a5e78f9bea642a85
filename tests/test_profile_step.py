"""scripts/profile_step.py: which kind each traced op is summed under, and the step it builds
with Keras' layers swapped in, leaving ice-tf's in place afterwards."""

import math

import pytest

from helpers import load_script

from ice_tf import layers
from ice_tf.backbones import _common

profile_step = load_script("profile_step.py")


@pytest.mark.parametrize("op_type, name, kind", [
    ("_MklNativeConv2D", "StatefulPartitionedCall/wrn/group1_block1_conv1/convolution", "convolutions"),
    ("_MklNativeConv2DBackpropFilter", "gradient_tape/wrn/conv/Conv2DBackpropFilter",
     "convolution gradients"),
    ("Cast", "wrn/group1_block1_mid_bn/Cast", "casts"),
    ("FusedBatchNormV3", "wrn/group1_block1_mid_bn/FusedBatchNormV3", "BatchNorm"),
    ("StatelessRandomUniformFullIntV2", "wrn/group1_block2_dropout/StatelessRandomUniformFullIntV2",
     "dropout"),
    ("GreaterEqual", "wrn/group2_block5_dropout_1/stateless_dropout/GreaterEqual", "dropout"),
    ("ResourceApplyKerasMomentum", "sgd/ResourceApplyKerasMomentum", "optimizer and decay"),
    ("MatrixTriangularSolve", "ood_model/head/MatrixTriangularSolve", "head"),
    ("ReluGrad", "gradient_tape/wrn/group1_block1_mid_relu/ReluGrad", "ReLU and elementwise"),
    ("Pad", "wrn/group2_block1_conv1_pad/Pad", "other"),
])
def test_op_kinds(op_type, name, kind):
    assert profile_step.op_kind(op_type, name) == kind


@pytest.mark.parametrize("dropout, batchnorm", [("keras", "keras"), ("ice_tf", "fused")])
def test_the_step_runs_and_the_backbones_keep_their_layers(dropout, batchnorm):
    config = {"backbone": "wrn16_2", "batch_in": 2, "batch_out": 4, "image_size": 8}
    step = profile_step.build_step("oe", "float32", batchnorm, dropout, config)
    logs = step()
    assert math.isfinite(float(logs["loss"]))
    assert layers.Dropout.__module__ == "ice_tf.layers"
    assert _common.FusedBatchNormalization is layers.FusedBatchNormalization


def test_markdown_has_a_row_per_kind_and_the_wall_time():
    by_kind = dict.fromkeys(profile_step.KINDS, 1.0)
    table = profile_step.markdown({"oe, float32": (by_kind, 0.5)})
    assert table.count("\n") == len(profile_step.KINDS) + 3
    assert "| dropout | 1 (11%) |" in table and "| 500 |" in table
