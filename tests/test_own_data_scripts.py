"""A user's own data and model through the commands: labelled folders and .npz as the
in-distribution set, --backbone=PATH.keras, evaluate adapting every set to the model,
and run folders that explain themselves (dataset.json, README.md, flags.txt)."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from ice_tf import data, experiment, models
from ice_tf.experiment import run_folder
from ice_tf.cli import experiment_flags
from ice_tf.experiment.config import ExperimentConfig
from ice_tf.data import embedded, labelled

REPO = pathlib.Path(__file__).resolve().parents[1]
CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "boot")


@pytest.fixture(scope="module")
def real_images():
    """Real Fashion-MNIST images and labels from the embedded benchmark, and OOD digits."""
    fashion = embedded.read_arrays("fashion_mnist.npz")
    ood = embedded.read_arrays("ood_test.npz")
    return (fashion["train_images"][:400], fashion["train_labels"][:400].astype(np.int64),
            fashion["test_images"][:100], fashion["test_labels"][:100].astype(np.int64),
            ood["mnist"][:120])


def write_folder(root, images, labels, names=CLASSES):
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        tf.io.write_file(str(folder / f"{index}.png"), tf.io.encode_png(image[..., None]))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, real_images):
    root = tmp_path_factory.mktemp("folder")
    x, y, *_ = real_images
    write_folder(root, x, y)
    return root


# --------------------------------------------------------------------- folders
def test_a_class_per_subfolder_pool_gets_carved_splits(image_folder, real_images):
    x, y, *_ = real_images
    arrays = labelled.read_folder(str(image_folder))
    assert arrays.class_names == tuple(sorted(CLASSES))
    assert arrays.image_shape == (28, 28, 1)
    sizes = {split: len(images) for split, (images, _) in arrays.splits.items()}
    assert sizes == {"train": 324, "val": 36, "test": 40}
    assert "10% of the train images, seed 0" in arrays.origin["test"]
    # Labels follow the sorted class names; every image is one of the originals.
    pixels = {image.tobytes(): CLASSES[label] for image, label in zip(x, y)}
    for images, labels in arrays.splits.values():
        for image, label in zip(images, labels):
            assert pixels[image[..., 0].tobytes()] == arrays.class_names[label]
    # The split is fixed: a second read carves the same test images.
    again = labelled.read_folder(str(image_folder))
    np.testing.assert_array_equal(again.splits["test"][0], arrays.splits["test"][0])
    # Normalisation: float64 mean and std of the training pixels.
    train = arrays.splits["train"][0].astype(np.float64) / 255
    mean, std = arrays.normalization
    assert mean[0] == pytest.approx(train.mean(), abs=1e-6)
    assert std[0] == pytest.approx(train.std(), abs=1e-6)


def test_train_and_test_subfolders_mixed_sizes_and_colour(tmp_path, real_images):
    x, y, x_test, y_test, _ = real_images
    write_folder(tmp_path / "train", x[:60], y[:60])
    write_folder(tmp_path / "test", x_test[:20], y_test[:20])
    odd = np.zeros((40, 30, 3), np.uint8)
    odd[..., 0] = 255  # one larger colour image: resized, and every image becomes RGB
    tf.io.write_file(str(tmp_path / "train" / CLASSES[y[0]] / "odd.png"), tf.io.encode_png(odd))
    arrays = labelled.read_folder(str(tmp_path))
    assert arrays.image_shape == (28, 28, 3)
    assert len(arrays.splits["test"][0]) == 20 and arrays.origin["test"] == "given"
    assert arrays.origin["val"].startswith("10% of the train images")
    red = arrays.splits["train"][0].reshape(-1, 28 * 28, 3).mean(1)
    assert np.any((red[:, 0] > 250) & (red[:, 1] < 5))  # the colour image, resized


def test_bad_folders_are_named_with_the_fix(tmp_path, real_images):
    x, y, *_ = real_images
    with pytest.raises(FileNotFoundError, match="does not exist"):
        labelled.read_folder(str(tmp_path / "missing"))
    (tmp_path / "flat").mkdir()
    tf.io.write_file(str(tmp_path / "flat" / "a.png"), tf.io.encode_png(x[0][..., None]))
    with pytest.raises(ValueError, match="no class subfolders"):
        labelled.read_folder(str(tmp_path / "flat"))
    write_folder(tmp_path / "cut", x[:20], y[:20])
    victim = next((tmp_path / "cut").rglob("*.png"))
    victim.write_bytes(victim.read_bytes()[:-20])
    with pytest.raises(ValueError, match="truncated PNG .*remove or re-encode"):
        labelled.read_folder(str(tmp_path / "cut"))
    write_folder(tmp_path / "split" / "train", x[:20], y[:20], names=["a"] * 10)
    write_folder(tmp_path / "split" / "test", x[:5], y[:5], names=["b"] * 10)
    with pytest.raises(ValueError, match="test/ has classes that train/ lacks: b"):
        labelled.read_folder(str(tmp_path / "split"))


# ------------------------------------------------------------------------- npz
def test_npz_layouts_class_names_float_and_one_hot(tmp_path, real_images):
    x, y, x_test, y_test, _ = real_images
    np.savez(tmp_path / "keras.npz", x_train=x, y_train=y, x_test=x_test, y_test=y_test,
             class_names=np.array(CLASSES))
    arrays = labelled.read_npz(str(tmp_path / "keras.npz"))
    assert arrays.class_names == CLASSES and arrays.origin["test"] == "given"
    assert len(arrays.splits["train"][0]) + len(arrays.splits["val"][0]) == len(x)
    np.savez(tmp_path / "pool.npz", x=x.astype(np.float32) / 255, y=np.eye(10)[y])
    pool = labelled.read_npz(str(tmp_path / "pool.npz"))
    assert pool.class_names == tuple(str(i) for i in range(10))
    total = sum(len(images) for images, _ in pool.splits.values())
    assert total == len(x) and pool.splits["train"][0].dtype == np.uint8
    np.savez(tmp_path / "bad.npz", pictures=x)
    with pytest.raises(ValueError, match="give x_train, y_train"):
        labelled.read_npz(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "range.npz", x=x.astype(np.float32), y=y)
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\]"):
        labelled.read_npz(str(tmp_path / "range.npz"))


def test_register_labelled_makes_a_first_class_dataset(real_images):
    x, y, x_test, y_test, _ = real_images
    info = data.register_labelled("my_fashion", x, y, x_test, y_test, class_names=CLASSES)
    assert info.num_classes == 10 and info.kind == "user"
    assert data.describe("my_fashion")["splits"]["test"]["count"] == len(x_test)
    config = ExperimentConfig(in_dataset="my_fashion", backbone="small_cnn").validate()
    ds, steps = data.make_train_dataset(config.in_dataset, None, image_shape=(28, 28, 1),
                                        batch_in=32)
    images, labels = next(iter(ds))
    assert images.shape == (32, 28, 28, 1) and steps == (len(x) - len(x) // 10) // 32
    with pytest.raises(ValueError, match="built-in dataset"):
        data.register_labelled("cifar10", x, y)
    with pytest.raises(ValueError, match="in_dataset='nope' is not valid.*your own: image_folder:PATH"):
        ExperimentConfig(in_dataset="nope").validate()


# ---------------------------------------------------- the commands, end to end
def small_classifier(path, shape=(32, 32, 3), classes=10):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input(shape), keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.BatchNormalization(), keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(classes, activation="softmax")], name="users_net")
    model.save(path)
    return model


def test_own_folder_and_classifier_train_and_explain_the_run_folder(tmp_path, image_folder):
    classifier = small_classifier(tmp_path / "clf.keras")
    out = tmp_path / "run"
    config = ExperimentConfig(
        in_dataset=f"image_folder:{image_folder}", backbone=str(tmp_path / "clf.keras"),
        schedule="finetune", loss="ice", epochs=1, batch_in=32, batch_out=64, learning_rate=0.01,
        ood_datasets=("embedded_mnist", "gaussian"), eval_limit=64, eval_draws=2, export=False,
        output_dir=str(out))
    results = experiment.run(config, verbose=0, files={
        run_folder.FLAGS_FILE: experiment_flags.to_flagfile(config)})
    assert np.isfinite(results["mean"]["auroc"]["mean"])
    fitted = results["confidence_map"]
    assert fitted["map"] == "platt" and fitted["slope"] > 0 and fitted["in"].endswith("@val (36)")
    assert fitted["out"].startswith("embedded_outliers@val")
    described = json.loads((out / run_folder.DATASET_FILE).read_text())
    assert described["class_names"] == sorted(CLASSES)
    assert described["image_shape"] == [28, 28, 1]  # the data's own; the model takes 32x32x3
    model = keras.models.load_model(out / run_folder.MODEL_FILE, compile=False)
    assert model.image_shape == (32, 32, 3)
    assert model.head.confidence_platt == pytest.approx((fitted["slope"], fitted["offset"]), rel=1e-5)
    assert results["head_refit"]["ridge"] == models.REFIT_RIDGE
    assert model.normalization[0][0] == pytest.approx(described["normalization"]["mean"][0])
    # The fine-tune started from the classifier's weights: its first kernel moved, a little.
    start = classifier.layers[0].kernel.numpy()
    trained = model.backbone.layers[1].kernel.numpy()
    assert 0 < np.abs(trained - start).max() < 0.5 * np.abs(start).max()
    readme = (out / run_folder.README_FILE).read_text()
    assert f"ice-tf train --flagfile={out}/flags.txt" in readme
    assert f"ice-tf evaluate --model={out}" in readme and "`dataset.json`" in readme
    flags_text = (out / run_folder.FLAGS_FILE).read_text()
    assert "--in_dataset=image_folder:" in flags_text and "margin_in" not in flags_text


def test_a_backbone_file_trains_from_fresh_weights_under_the_scratch_schedule(tmp_path):
    classifier = small_classifier(tmp_path / "clf.keras", shape=(28, 28, 1))
    model = experiment.build_model(
        ExperimentConfig(backbone=str(tmp_path / "clf.keras"), loss="ce").validate(),
        tf.distribute.get_strategy())
    assert model.head_kind == "linear" and model.image_shape == (28, 28, 1)
    assert not np.allclose(model.backbone.layers[1].kernel.numpy(), classifier.layers[0].kernel.numpy())
    # Fine-tuned with a linear head, the Dense layer's weights carry over.
    tuned = experiment.build_model(ExperimentConfig(
        backbone=str(tmp_path / "clf.keras"), loss="oe", schedule="finetune").validate(),
        tf.distribute.get_strategy())
    np.testing.assert_array_equal(tuned.head.get_weights()[0], classifier.layers[-1].kernel.numpy())
    with pytest.raises(ValueError, match="does not exist"):
        ExperimentConfig(backbone=str(tmp_path / "none.keras")).validate()


def test_flag_files_hold_only_the_methods_flags():
    ice = experiment_flags.to_flagfile(ExperimentConfig(loss="ice", loss_weight=0.1))
    energy = experiment_flags.to_flagfile(ExperimentConfig(loss="energy", margin_in=-7.0))
    ce = experiment_flags.to_flagfile(ExperimentConfig(loss="ce"))
    assert "--loss_weight=0.1" in ice and "margin" not in ice
    assert "--margin_in=-7.0" in energy
    assert "loss_weight" not in ce


def test_evaluate_adapts_every_set_to_a_users_classifier(tmp_path, real_images):
    """A 32x32x3 classifier on 28x28 gray data: OOD sets from a folder, a .npy and a .npz."""
    x, y, x_test, y_test, ood = real_images
    small_classifier(tmp_path / "clf.keras")
    np.savez(tmp_path / "mine.npz", x_train=x, y_train=y, x_test=x_test, y_test=y_test)
    np.save(tmp_path / "digits.npy", ood[:60])
    np.savez(tmp_path / "more.npz", images=ood[60:])
    (tmp_path / "pngs").mkdir()
    for index, image in enumerate(ood[:30]):
        tf.io.write_file(str(tmp_path / "pngs" / f"{index}.png"), tf.io.encode_png(image[..., None]))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "ice_tf", "evaluate", f"--model={tmp_path / 'clf.keras'}",
         f"--set=in_dataset=npz:{tmp_path / 'mine.npz'},eval_draws=2",
         f"--ood=folder={tmp_path / 'pngs'}", f"--ood=npy={tmp_path / 'digits.npy'}",
         f"--ood=npz={tmp_path / 'more.npz'}", "--scores=msp,mahalanobis",
         f"--output={tmp_path / 'eval.json'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "eval.json").read_text())
    assert set(results) == {"msp", "mahalanobis"}
    assert set(results["msp"]["sets"]) == {"folder", "npy", "npz"}
    bad = subprocess.run(
        [sys.executable, "-m", "ice_tf", "evaluate", f"--model={tmp_path / 'clf.keras'}",
         f"--ood=x={tmp_path / 'nothing.txt'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("error: --ood=")
