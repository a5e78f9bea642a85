"""scripts/batchnorm_probe.py on a tiny model and the embedded validation data."""

import importlib.util
import pathlib

import numpy as np
from helpers import tiny_backbone

from ice_tf import layers, models
from ice_tf.config import ExperimentConfig

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "batchnorm_probe.py"


def test_probe_measures_without_changing_the_model():
    spec = importlib.util.spec_from_file_location("batchnorm_probe", SCRIPT)
    probe_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe_script)
    model = models.OODModel(tiny_backbone((28, 28, 1)), layers.make_head("gaussian", 10))
    before = [v.numpy().copy() for v in model.variables]
    result = probe_script.probe(model, ExperimentConfig(backbone="small_cnn"), num_batches=2)
    for mode in ("inference", "mixed", "in_only"):
        assert 0 <= result[f"accuracy_{mode}"] <= 1 and result[f"jitter_{mode}"] >= 0
    # Inference-mode features do not depend on the batch; training-mode ones do.
    assert result["jitter_mixed"] != result["jitter_in_only"]
    for old, variable in zip(before, model.variables):
        np.testing.assert_array_equal(old, variable.numpy())
