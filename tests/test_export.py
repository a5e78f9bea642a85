"""SavedModel export, loaded in a fresh process that never imports ice_tf."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from helpers import tiny_backbone

from ice_tf import export, layers, models

_LOADER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    results = {}
    images = np.load(sys.argv[1])
    for path in sys.argv[2:]:
        loaded = tf.saved_model.load(path)
        outputs = loaded.signatures["serving_default"](images=tf.constant(images))
        results[path] = {key: value.numpy().tolist() for key, value in outputs.items()}
    results["ice_tf_imported"] = any(name.startswith("ice_tf") for name in sys.modules)
    print(json.dumps(results))
    """
)


def _trained_model(head):
    model = models.OODModel(tiny_backbone(), layers.make_head(head, 3))
    model.compile("sgd", loss="ice" if head == "gaussian" else "oe")
    rng = np.random.default_rng(0)
    images = rng.normal(size=(16, 6, 6, 1)).astype("float32")
    model.fit(((images, np.arange(16) % 3), images[::-1] * 2), batch_size=8, epochs=1, verbose=0)
    return model


def test_saved_model_in_a_fresh_process_equals_predict(tmp_path):
    images = np.random.default_rng(1).normal(size=(7, 6, 6, 1)).astype("float32")
    np.save(tmp_path / "images.npy", images)
    trained = {head: _trained_model(head) for head in ("gaussian", "linear")}
    paths = {
        head: export.export_saved_model(model, tmp_path / head) for head, model in trained.items()
    }
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    completed = subprocess.run(
        [sys.executable, "-c", _LOADER, str(tmp_path / "images.npy"), *paths.values()],
        capture_output=True, text=True, check=True, env=env, cwd=tmp_path,
    )
    served = json.loads(completed.stdout.strip().splitlines()[-1])
    assert served.pop("ice_tf_imported") is False
    for head, model in trained.items():
        result = {key: np.array(value) for key, value in served[paths[head]].items()}
        outputs = model.predict(images, verbose=0)
        np.testing.assert_allclose(result["outputs"], outputs, rtol=1e-5, atol=1e-5)
        probabilities = np.exp(outputs - outputs.max(-1, keepdims=True))
        probabilities /= probabilities.sum(-1, keepdims=True)
        np.testing.assert_allclose(result["probabilities"], probabilities, rtol=1e-5, atol=1e-6)
        assert result["probabilities"].shape == (7, 3)
        if head == "gaussian":
            np.testing.assert_allclose(result["confidence"], np.exp(outputs.max(-1)), rtol=1e-5)
            np.testing.assert_allclose(result["score"], outputs.max(-1), rtol=1e-5)
        else:
            np.testing.assert_allclose(result["confidence"], probabilities.max(-1), rtol=1e-5)
        assert np.all((result["confidence"] > 0) & (result["confidence"] <= 1))


def test_export_refuses_to_overwrite_and_leaves_nothing_behind_on_failure(tmp_path, monkeypatch):
    model = _trained_model("gaussian")
    target = tmp_path / "model"
    target.mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        export.export_saved_model(model, target)
    with pytest.raises(ValueError, match="valid scores"):
        export.export_saved_model(model, tmp_path / "other", score="nope")

    def broken_write_out(self, path, **kwargs):
        open(os.path.join(path, "partial"), "w").close()
        raise OSError("disk full")

    # ExportArchive() returns a backend-specific subclass.
    monkeypatch.setattr(type(keras.export.ExportArchive()), "write_out", broken_write_out)
    with pytest.raises(OSError, match="disk full"):
        export.export_saved_model(model, tmp_path / "new")
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_export_with_energy_score(tmp_path):
    model = _trained_model("linear")
    path = export.export_saved_model(model, tmp_path / "energy", score="energy")
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    images = np.zeros((2, 6, 6, 1), np.float32)
    outputs = model.predict(images, verbose=0)
    served = loaded.signatures["serving_default"](images=tf.constant(images))
    top = outputs.max(-1)
    expected = top + np.log(np.exp(outputs - top[:, None]).sum(-1))
    np.testing.assert_allclose(served["score"].numpy(), expected, rtol=1e-5)


def test_the_default_signature_takes_raw_pixels_with_the_recorded_normalization(tmp_path):
    import tensorflow as tf

    model = models.OODModel(tiny_backbone(), layers.make_head("gaussian", 3),
                            normalization=((0.5,), (0.25,)))
    model.compile("sgd", loss="ice")
    model.save(tmp_path / "model.keras")
    reloaded = keras.models.load_model(tmp_path / "model.keras")
    assert reloaded.normalization == ((0.5,), (0.25,))
    loaded = tf.saved_model.load(export.export_saved_model(reloaded, tmp_path / "served"))
    assert {"serving_default", "serve_uint8", "serve_normalized"} <= set(loaded.signatures)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 6, 6, 1))
    expected = model.predict((pixels / 255.0 - 0.5) / 0.25, verbose=0)
    for name, dtype in (("serving_default", tf.float32), ("serve_uint8", tf.uint8)):
        served = loaded.signatures[name](images=tf.constant(pixels, dtype))["outputs"].numpy()
        np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5)
    normalized = loaded.signatures["serve_normalized"](
        images=tf.constant((pixels / 255.0 - 0.5) / 0.25, tf.float32))["outputs"].numpy()
    np.testing.assert_allclose(normalized, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one mean and one std > 0 per channel"):
        models.OODModel(tiny_backbone(), layers.make_head("linear", 3), normalization=((0.5,), (0.0,)))
