"""README.md's Python code blocks run, on tiny data, so that they never drift."""

import os
import re

import keras
import numpy as np
import pytest

from ice_tf import backbones

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_blocks():
    text = open(os.path.join(REPO, "README.md")).read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _tiny_namespace():
    rng = np.random.default_rng(0)
    shape = (32, 32, 3)
    y_train = rng.integers(0, 10, 64)
    x_train = rng.normal(0, 0.3, (64, *shape)).astype("float32") + y_train[:, None, None, None] / 5
    classifier = keras.Sequential([
        keras.Input(shape), keras.layers.Conv2D(8, 3, strides=2), keras.layers.BatchNormalization(),
        keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    classifier.compile("adam", "sparse_categorical_crossentropy")
    classifier.fit(x_train, y_train, epochs=2, verbose=0)
    return {
        "classifier": classifier, "x_train": x_train, "y_train": y_train,
        "x_test": x_train[:32], "y_test": y_train[:32],
        "x_outliers": rng.normal(0, 1, (48, *shape)).astype("float32"),
        "x_svhn": rng.uniform(-1, 1, (20, *shape)).astype("float32"),
        "x_noise": rng.normal(0, 2, (20, *shape)).astype("float32"),
    }


def test_readme_has_the_blocks_this_test_runs():
    blocks = python_blocks()
    assert len(blocks) >= 2
    assert any("from_classifier" in block for block in blocks)
    assert all(len(block.strip().splitlines()) <= 15 for block in blocks)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fit = keras.Model.fit
    # The blocks' epochs are real training budgets; one epoch shows that the code runs.
    monkeypatch.setattr(keras.Model, "fit", lambda self, *args, **kwargs: fit(
        self, *args, **{**kwargs, "epochs": 1, "verbose": 0}))
    # WRN-40-2 itself is tested in test_backbones; here the small CNN keeps the suite short.
    get_backbone = backbones.get
    monkeypatch.setattr(backbones, "get", lambda name, *args, **kwargs: get_backbone(
        "small_cnn", *args, **kwargs))
    namespace = _tiny_namespace()
    exec(compile(python_blocks()[index], f"README.md block {index}", "exec"), namespace)
    assert "model" in namespace
