"""scripts/batchnorm_probe.py on a tiny model and the embedded validation data."""

import numpy as np
from helpers import load_script, tiny_backbone

from ice_tf import layers, models
from ice_tf.experiment.config import ExperimentConfig


def test_probe_measures_without_changing_the_model():
    probe_script = load_script("batchnorm_probe.py")
    model = models.OODModel(tiny_backbone((28, 28, 1)), layers.make_head("gaussian", 10))
    before = [v.numpy().copy() for v in model.variables]
    result = probe_script.probe(model, ExperimentConfig(backbone="small_cnn"), num_batches=2)
    for mode in ("inference", "mixed", "in_only"):
        assert 0 <= result[f"accuracy_{mode}"] <= 1 and result[f"jitter_{mode}"] >= 0
    # Inference-mode features do not depend on the batch; training-mode ones do.
    assert result["jitter_mixed"] != result["jitter_in_only"]
    for old, variable in zip(before, model.variables):
        np.testing.assert_array_equal(old, variable.numpy())
