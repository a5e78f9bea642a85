"""scripts/initial_terms.py: ICE's terms at initialisation, on the embedded training images."""

import numpy as np
import tensorflow as tf
from helpers import load_script

from ice_tf.experiment import run_data
from ice_tf.experiment.config import ExperimentConfig


def test_the_in_distribution_term_grows_with_d_and_a_fitted_head_starts_near_the_data():
    script = load_script("initial_terms.py")
    config = ExperimentConfig(backbone="small_cnn")
    images, labels = run_data.load_images(config, config.in_dataset, "train", 32 * 5)
    images, labels = tf.constant(images), np.asarray(labels)
    rows = {(dim, init): stats for dim, init, stats in script.table(
        images[:32], labels[:32], images[32:], labels[32:], [8, 256], [1], 0.03)}
    small, large = rows[8, "random"]["in_term"][0], rows[256, "random"]["in_term"][0]
    assert large > 8 * small, (small, large)
    for dim in (8, 256):
        assert rows[dim, "features"]["in_term"][0] < rows[dim, "random"]["in_term"][0]
        stats = rows[dim, "random"]
        assert np.isclose(stats["share"][0], 0.03 * stats["in_term"][0] / stats["ce"][0])
        assert stats["gradient_ratio"][0] > 0
