"""Shared fixtures. TensorFlow's C++ logging is silenced before TensorFlow starts."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402

from helpers import write_fake_embedded  # noqa: E402
from ice_tf.data import embedded  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_reset_policy():
    keras.utils.set_random_seed(0)
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def fake_embedded(tmp_path, monkeypatch):
    fashion = write_fake_embedded(tmp_path)
    monkeypatch.setenv(embedded.EMBEDDED_DIR_ENV, str(tmp_path))
    return fashion
