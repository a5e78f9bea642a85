"""--precision: resolution of auto, the policy context, the legacy --mixed_precision."""

import json

import keras
import numpy as np
import pytest

from helpers import zipped_dataset

from ice_tf import layers, models, precision
from ice_tf.experiment.config import ExperimentConfig, upgrade_dict
from ice_tf.experiment.run_folder import config_differences


def test_auto_prefers_float16_on_gpus_then_bfloat16_cpus():
    assert precision.resolve("auto", gpu_float16=True, cpu_bfloat16=True) == "mixed_float16"
    assert precision.resolve("auto", gpu_float16=False, cpu_bfloat16=True) == "mixed_bfloat16"
    assert precision.resolve("auto", gpu_float16=False, cpu_bfloat16=False) == "float32"
    assert precision.resolve("mixed_bfloat16") == "mixed_bfloat16"
    with pytest.raises(ValueError, match="precision must be one of auto, float32"):
        precision.resolve("half")


def test_bfloat16_cpus_are_recognised_by_their_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    assert precision.cpu_supports_bfloat16({"avx512f", "avx512_bf16"})
    assert precision.cpu_supports_bfloat16({"amx_bf16"})
    assert not precision.cpu_supports_bfloat16({"avx2", "avx512f"})
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert precision.cpu_flags(str(cpuinfo)) == {"fpu", "avx2", "avx512_bf16"}
    assert precision.cpu_flags(str(tmp_path / "missing")) == set()


def test_policy_sets_and_restores_the_global_policy():
    with precision.policy("mixed_bfloat16") as name:
        assert name == "mixed_bfloat16"
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        model = models.build_model("small_cnn", (8, 8, 1), 3, head="gaussian", width=4,
                                   feature_dim=8)
    assert keras.config.dtype_policy().name == "float32"
    # The backbone computes in bfloat16, the Gaussian head (Eq. 0.11) in float32.
    assert model.backbone.layers[1].compute_dtype == "bfloat16"
    assert isinstance(model.head, layers.GaussianLayer) and model.head.compute_dtype == "float32"
    outputs = model(np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32"))
    assert outputs.dtype == "float32" and np.all(np.isfinite(np.asarray(outputs)))


def test_a_bfloat16_step_is_finite_and_near_the_float32_step():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 16)
    outliers = rng.normal(0, 2, size=(32, 8, 8, 1)).astype("float32")
    losses = {}
    keras.utils.set_random_seed(0)
    initial = models.build_model("small_cnn", (8, 8, 1), 3, head="gaussian", width=4,
                                 feature_dim=8).get_weights()
    for name in ("float32", "mixed_bfloat16"):
        with precision.policy(name):
            model = models.build_model("small_cnn", (8, 8, 1), 3, head="gaussian", width=4,
                                       feature_dim=8)
            model.set_weights(initial)
            model.compile(keras.optimizers.SGD(0.01), loss="ice")
            history = model.fit(zipped_dataset(x, y, outliers), epochs=1, verbose=0)
            losses[name] = history.history["loss"][-1]
    assert np.isfinite(losses["mixed_bfloat16"])
    assert losses["mixed_bfloat16"] == pytest.approx(losses["float32"], rel=0.05)


def test_config_precision_and_the_legacy_boolean():
    assert ExperimentConfig().precision == "auto"
    with pytest.raises(ValueError, match="precision='half' is not valid"):
        ExperimentConfig(backbone="small_cnn", precision="half").validate()
    assert upgrade_dict({"mixed_precision": True}) == {"precision": "mixed_float16"}
    assert upgrade_dict({"mixed_precision": False}) == {"precision": "float32"}
    assert upgrade_dict({"loss": "ice"}) == {"loss": "ice"}  # a partial dict keeps the default
    old = ExperimentConfig.from_dict({"mixed_precision": True})
    assert old.precision == "mixed_float16"
    # A run folder written before `precision` existed trained in float32.
    stored = {k: v for k, v in ExperimentConfig().to_dict().items() if k != "precision"}
    stored["mixed_precision"] = False
    assert config_differences(stored, ExperimentConfig(precision="float32").to_dict()) == []
    assert config_differences(stored, ExperimentConfig().to_dict()) == [
        "precision: 'float32' there, 'auto' here"]
    json.dumps(ExperimentConfig().to_dict())  # still JSON
