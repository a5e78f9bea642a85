"""ice_tf.gda: class means and tied covariance, in memory and streamed, against numpy."""

import numpy as np
import pytest

from ice_tf import gda


def _data(n=200, d=5, k=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    features = rng.normal(size=(k, d))[labels] * 3 + rng.normal(size=(n, d)) + 50.0
    return features, labels


def _reference(features, labels, k):
    means = np.stack([features[labels == c].mean(axis=0) for c in range(k)])
    covariance = sum(np.outer(z - means[y], z - means[y]) for z, y in zip(features, labels))
    return means, covariance / len(features)


def test_fit_equals_the_definition():
    features, labels = _data()
    means, covariance, counts = gda.fit(features, labels, 4)
    ref_means, ref_covariance = _reference(features, labels, 4)
    np.testing.assert_allclose(means, ref_means, rtol=1e-12)
    np.testing.assert_allclose(covariance, ref_covariance, rtol=1e-10)
    assert counts.tolist() == np.bincount(labels, minlength=4).tolist()


def test_the_accumulator_over_batches_equals_the_in_memory_fit():
    features, labels = _data()
    accumulator = gda.Accumulator(4)
    for start in range(0, len(features), 37):  # uneven batches
        accumulator.update(features[start:start + 37], labels[start:start + 37])
    streamed, in_memory = accumulator.result(), gda.fit(features, labels, 4)
    np.testing.assert_allclose(streamed.means, in_memory.means, rtol=1e-12)
    # One pass on features with a mean of 50 loses a few digits, not more.
    np.testing.assert_allclose(streamed.covariance, in_memory.covariance, rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(streamed.counts, in_memory.counts)


def test_absent_classes_and_bad_labels():
    features, labels = _data(k=3)
    means = gda.class_means(features, labels, 5)
    assert np.isnan(means[3:]).all() and np.isfinite(means[:3]).all()
    assert gda.missing_classes(gda.fit(features, labels, 5).counts) == [3, 4]
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        gda.class_means(features, labels, 2)
    with pytest.raises(ValueError, match="one label each"):
        gda.class_means(features, labels[:-1], 3)
    with pytest.raises(ValueError, match="no features"):
        gda.Accumulator(3).result()
