"""Faults a long run meets: kills, a second process, reruns, bad inputs, NaNs, serving.

Each case is one row of the run-folder contract (ice_tf.experiment.run_folder) or of the checks
before training (ice_tf.experiment.run_data.check_sources); scripts/soak_resume.py kills a run at
random points instead of the fixed ones here.
"""

import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from ice_tf import atomic_io, experiment, export, layers, losses, models
from ice_tf.experiment import checkpoint as checkpoint_lib
from ice_tf.experiment import run_folder
from ice_tf.experiment.config import ExperimentConfig
from ice_tf.experiment.run_data import DataCheckError, check_sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(REPO, "tests", "fault_runner.py")

TINY = dict(backbone="small_cnn", limit_train=64, batch_in=32, batch_out=64, epochs=1,
            eval_limit=50, eval_draws=1, ood_datasets=("gaussian",), export=False)


def _records(path):
    return [run_folder.without_timing(json.loads(line)) for line in open(path)]


def _run_runner(*args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, RUNNER, *args], capture_output=True, text=True,
                          env=env, timeout=300)


# ------------------------------------------------------------ kill and resume
def test_a_run_killed_in_epoch_2_resumes_to_the_uninterrupted_result(tmp_path):
    """kill -9 at epoch 2, step 3 of 3 epochs; the same command again resumes. Under
    --deterministic the killed and resumed run (the same command, run twice, in two
    processes) ends with the weights, metrics.jsonl and results of an uninterrupted run."""
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    first = _run_runner(whole, killed, "--kill-at=2:3")
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert not run_folder.is_finished(killed)
    assert [r["epoch"] for r in _records(os.path.join(killed, "metrics.jsonl"))] == [1]
    assert os.path.exists(os.path.join(killed, run_folder.LOCK_FILE))  # left by the kill

    second = _run_runner(killed)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "taking over the lock" in second.stderr

    expected = _records(os.path.join(whole, "metrics.jsonl"))
    assert [r["epoch"] for r in expected] == [1, 2, 3]
    assert _records(os.path.join(killed, "metrics.jsonl")) == expected
    assert (run_folder.without_timing(json.load(open(os.path.join(killed, "results.json"))))
            == run_folder.without_timing(json.load(open(os.path.join(whole, "results.json")))))
    confidence = [os.path.join(folder, "analysis", "confidence.jsonl") for folder in (whole, killed)]
    assert [r["epoch"] for r in _records(confidence[1])] == [0, 1, 2, 3]
    assert _records(confidence[0]) == _records(confidence[1])
    weights = [keras.models.load_model(os.path.join(folder, "model.keras"),
                                       compile=False).get_weights() for folder in (whole, killed)]
    assert all(np.array_equal(a, b) for a, b in zip(*weights))
    assert not os.path.exists(os.path.join(killed, run_folder.LOCK_FILE))
    assert sorted(os.listdir(os.path.join(killed, "checkpoints"))) == [
        "epoch-0002.weights.h5", "epoch-0003.weights.h5", "last.json", "previous.json"]


class _CrashAt(keras.callbacks.Callback):
    def __init__(self, epoch, step):
        super().__init__()
        self.at, self._epoch = (epoch, step), 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if (self._epoch, batch + 1) == self.at:
            raise RuntimeError("crash")


def test_a_run_stopped_within_an_epoch_resumes_from_its_mid_epoch_checkpoint(tmp_path):
    config = ExperimentConfig(output_dir=str(tmp_path / "run"), loss="oe", checkpoint_steps=2,
                              **{**TINY, "limit_train": 160, "epochs": 2})  # 5 steps an epoch
    with pytest.raises(RuntimeError, match="crash"):
        experiment.run(config, verbose=0, callbacks=[_CrashAt(2, 3)])
    state = json.load(open(os.path.join(config.output_dir, run_folder.LAST_STATE)))
    assert (state["epoch"], state["step"], state["iterations"]) == (1, 2, 7)
    assert sorted(os.listdir(os.path.join(config.output_dir, "checkpoints"))) == [
        "epoch-0001-step-000002.weights.h5", "epoch-0001.weights.h5", "last.json", "previous.json"]
    seen = []

    class Steps(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(int(self.model.optimizer.iterations.numpy()))

    experiment.run(config.replace(checkpoint_steps=None), verbose=0, callbacks=[Steps()])
    assert seen == list(range(7, 10))  # the 3 steps left of epoch 2, not a whole epoch
    lines = [json.loads(line) for line in open(os.path.join(config.output_dir, "metrics.jsonl"))]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert lines[1]["resumed_at_step"] == 2 and "resumed_at_step" not in lines[0]
    assert run_folder.is_finished(config.output_dir)


def test_a_started_stream_continues_the_uninterrupted_one():
    from ice_tf import data

    options = dict(image_shape=(28, 28, 1), batch_in=16, batch_out=32, seed=3, limit=64)
    whole, _ = data.make_train_dataset("embedded_fashion_mnist", "embedded_outliers", **options)
    started, _ = data.make_train_dataset("embedded_fashion_mnist", "embedded_outliers",
                                         start_step=6, **options)
    expected = list(whole.take(9))[6:]
    for (a_in, a_out), (b_in, b_out) in zip(expected, started.take(3)):
        assert np.array_equal(a_in[0], b_in[0]) and np.array_equal(a_in[1], b_in[1])
        assert np.array_equal(a_out, b_out)


def test_the_checkpoint_keeps_the_last_finite_state(tmp_path):
    model = models.build_model("small_cnn", (28, 28, 1), 10, head="gaussian")
    model.compile(keras.optimizers.SGD(0.1), loss=losses.get("ice"))
    model.optimizer.build(model.trainable_variables)
    checkpoint = checkpoint_lib.TrainingCheckpoint(str(tmp_path))
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0)
    kept = model.get_weights()
    model.head.means.assign(np.full(model.head.means.shape, np.nan, np.float32))
    checkpoint.on_epoch_end(1)  # NaN weights: not saved
    state = json.load(open(tmp_path / run_folder.LAST_STATE))
    assert state["epoch"] == 1 and state["weights"] == "epoch-0001.weights.h5"
    fresh = models.build_model("small_cnn", (28, 28, 1), 10, head="gaussian")
    fresh.compile(keras.optimizers.SGD(0.1), loss=losses.get("ice"))
    assert checkpoint_lib.restore_training_state(fresh, str(tmp_path)) == (1, 0)
    assert all(np.array_equal(a, b) for a, b in zip(kept, fresh.get_weights()))


# ------------------------------------------------------------ folder contract
def _fake_finished(folder, config):
    os.makedirs(folder, exist_ok=True)
    atomic_io.write_atomic(os.path.join(folder, "config.json"), config.to_json())
    atomic_io.write_atomic(os.path.join(folder, "results.json"), "{}")


def test_a_finished_folder_is_refused_naming_overwrite(tmp_path):
    config = ExperimentConfig(output_dir=str(tmp_path / "run"), **TINY)
    _fake_finished(config.output_dir, config)
    with pytest.raises(run_folder.RunFolderError, match="finished run.*--overwrite"):
        experiment.run(config, verbose=0)
    assert sorted(os.listdir(config.output_dir)) == ["config.json", "results.json"]


def test_another_config_is_refused_naming_the_fields(tmp_path):
    folder = str(tmp_path / "run")
    earlier = ExperimentConfig(loss="oe", output_dir=folder, **TINY)
    os.makedirs(folder)
    atomic_io.write_atomic(os.path.join(folder, "config.json"), earlier.to_json())
    with pytest.raises(run_folder.RunFolderError,
                       match=r"another config \(loss: 'oe' there, 'ice' here\).*--overwrite"):
        experiment.run(earlier.replace(loss="ice"), verbose=0)


def _fill(folder):
    """Every name a run writes, as ice-tf writes it."""
    from ice_tf import ownership

    atomic_io.write_atomic(os.path.join(folder, run_folder.RUN_MARKER),
                           json.dumps(ownership.marker_record(kind="run")))
    for name in run_folder.OUTPUT_FILES:
        atomic_io.write_atomic(os.path.join(folder, name), "old")
    for name in ("analysis/shift.jsonl", "tensorboard/train/events.out.tfevents.1.host",
                 "checkpoints/epoch-0001.weights.h5", "checkpoints/last.json",
                 "checkpoints/previous.json", "saved_model/saved_model.pb",
                 "saved_model/variables/variables.index"):
        atomic_io.write_atomic(os.path.join(folder, name), "old")
    ownership.write_export_marker(os.path.join(folder, "saved_model"))
    os.makedirs(os.path.join(folder, ".export-abc"))
    atomic_io.write_atomic(os.path.join(folder, ".tmp-xyz.keras"), "half")


def test_overwrite_removes_every_earlier_output_and_nothing_of_the_user_s(tmp_path):
    folder = str(tmp_path / "run")
    os.makedirs(folder)
    _fill(folder)
    atomic_io.write_atomic(os.path.join(folder, "notes.txt"), "the user's")
    atomic_io.write_atomic(os.path.join(folder, "checkpoints", "mine.txt"), "the user's")
    config = ExperimentConfig(output_dir=folder, **TINY)
    with pytest.warns(UserWarning, match="kept 1 entry that ice-tf did not write: checkpoints/mine.txt"):
        assert run_folder.prepare_for_training(folder, config.to_dict(), overwrite=True) == "new"
    assert sorted(os.listdir(folder)) == ["checkpoints", "ice-tf-run.json", "notes.txt"]
    assert os.listdir(os.path.join(folder, "checkpoints")) == ["mine.txt"]


def test_an_unfinished_run_keeps_its_training_state_and_drops_later_products(tmp_path):
    folder = str(tmp_path / "run")
    config = ExperimentConfig(output_dir=folder, **TINY)
    os.makedirs(folder)
    _fill(folder)
    os.remove(os.path.join(folder, "results.json"))
    atomic_io.write_atomic(os.path.join(folder, "config.json"), config.to_json())
    atomic_io.write_atomic(os.path.join(folder, run_folder.LAST_STATE), "{}")
    assert run_folder.prepare_for_training(folder, config.to_dict()) == "resume"
    left = set(os.listdir(folder))
    assert {"config.json", "metrics.jsonl", "checkpoints", "analysis", "tensorboard"} <= left
    assert not left & {"model.keras", "saved_model", "scores.npz", "results.md",
                       "mahalanobis_stats.npz", ".export-abc", ".tmp-xyz.keras"}


def test_a_second_process_is_refused_at_once_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = str(tmp_path / "run")
        os.makedirs(folder)
        record = {"pid": holder.pid, "host": os.uname().nodename, "started": "2026-12-02T00:00"}
        atomic_io.write_atomic(os.path.join(folder, run_folder.LOCK_FILE), json.dumps(record))
        config = ExperimentConfig(output_dir=folder, **TINY)
        with pytest.raises(run_folder.RunFolderError, match=f"in use by pid {holder.pid} on "):
            experiment.run(config, verbose=0)
        with run_folder.RunLock(str(tmp_path / "other")):
            with pytest.raises(run_folder.RunFolderError, match=f"pid {os.getpid()}"):
                run_folder.RunLock(str(tmp_path / "other")).acquire()
        assert not os.path.exists(tmp_path / "other" / run_folder.LOCK_FILE)
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = str(tmp_path / "run")
    os.makedirs(folder)
    atomic_io.write_atomic(os.path.join(folder, run_folder.LOCK_FILE), json.dumps(
        {"pid": dead.pid, "host": os.uname().nodename, "started": "2026-12-01T00:00"}))
    with pytest.warns(UserWarning, match=f"taking over.*pid {dead.pid}"):
        with run_folder.RunLock(folder):
            assert json.load(open(os.path.join(folder, run_folder.LOCK_FILE)))["pid"] == os.getpid()


def test_compare_plans_reuse_resume_and_refusal_before_training(tmp_path):
    done = ExperimentConfig(output_dir=str(tmp_path / "ice" / "seed1"), **TINY)
    unfinished = done.replace(output_dir=str(tmp_path / "oe" / "seed1"), loss="oe")
    _fake_finished(done.output_dir, done)
    os.makedirs(unfinished.output_dir)
    atomic_io.write_atomic(os.path.join(unfinished.output_dir, "config.json"), unfinished.to_json())
    plan = experiment.plan_runs({("ice", 1): done, ("oe", 1): unfinished}, overwrite=False)
    assert plan == {("ice", 1): "reuse", ("oe", 1): "train"}
    with pytest.raises(run_folder.RunFolderError, match="epochs: 1 there, 2 here"):
        experiment.plan_runs({("ice", 1): done.replace(epochs=2)}, overwrite=False)
    assert experiment.plan_runs({("ice", 1): done.replace(epochs=2)}, overwrite=True) == {
        ("ice", 1): "train"}
    # A config.json from before a field existed: the field counts as its default.
    older = {key: value for key, value in done.to_dict().items() if key != "checkpoint_steps"}
    atomic_io.write_atomic(os.path.join(done.output_dir, "config.json"), json.dumps(older))
    assert experiment.plan_runs({("ice", 1): done}) == {("ice", 1): "reuse"}


# --------------------------------------------------------------- atomic writes
def test_a_killed_model_save_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
    model = models.build_model("small_cnn", (28, 28, 1), 10, head="gaussian")
    target = tmp_path / "model.keras"
    target.write_bytes(b"the earlier model")

    def interrupted_save(path, *args, **kwargs):
        with open(path, "wb") as stream:
            stream.write(b"half a zip")
        raise KeyboardInterrupt  # what a signal raises part-way

    monkeypatch.setattr(model, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_io.save_model(model, str(target))
    assert target.read_bytes() == b"the earlier model"
    assert os.listdir(tmp_path) == ["model.keras"]


def test_metrics_lines_of_a_resumed_run_are_cut_back_to_its_start(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "loss": 1.0}\n{"epoch": 2, "loss": null}\n{"epoch": 3, "lo')
    logger = checkpoint_lib.JsonLinesLogger(str(path), start_epoch=2)
    logger.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    logger.model.compile(keras.optimizers.SGD(0.1), "mse")
    logger.on_train_begin()
    logger.on_epoch_end(2, {"loss": float("inf")})
    assert [json.loads(line)["epoch"] for line in open(path)] == [1, 2, 3]
    assert json.loads(path.read_text().splitlines()[-1])["loss"] is None


# -------------------------------------------------------- checks before training
def _write_png(path, size=8):
    tf.io.write_file(str(path), tf.io.encode_png(tf.zeros((size, size, 3), tf.uint8)))


def _write_jpeg(path, size=8):
    tf.io.write_file(str(path), tf.io.encode_jpeg(tf.zeros((size, size, 3), tf.uint8)))


def _folder_config(tmp_path, spec, **changes):
    return ExperimentConfig(output_dir=str(tmp_path / "run"), **{
        **TINY, "ood_datasets": (spec,), **changes}).validate()


@pytest.mark.parametrize("case", ["missing", "empty", "truncated_jpeg", "truncated_png",
                                  "not_an_image", "npy_shape", "tfds_unprepared"])
def test_a_bad_ood_set_fails_in_one_line_before_training(tmp_path, case):
    good = tmp_path / "images"
    good.mkdir()
    for index in range(3):
        _write_png(good / f"ok{index}.png")
    if case == "missing":
        spec, expected = f"isun=image_folder:{tmp_path / 'nowhere'}", "does not exist"
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        spec, expected = f"isun=image_folder:{tmp_path / 'empty'}", "no images"
    elif case in ("truncated_jpeg", "truncated_png"):
        kind = case.split("_")[1]
        bad = good / f"bad.{'jpg' if kind == 'jpeg' else 'png'}"
        (_write_jpeg if kind == "jpeg" else _write_png)(bad, size=32)
        bad.write_bytes(bad.read_bytes()[:-40])
        spec, expected = f"isun=image_folder:{good}", f"{bad} is a truncated {kind.upper()}"
    elif case == "not_an_image":
        (good / "notes.png").write_text("not a picture")
        spec, expected = f"isun=image_folder:{good}", "notes.png is not a PNG, JPEG"
    elif case == "npy_shape":
        np.save(tmp_path / "wrong.npy", np.zeros((4, 28), np.float32))
        spec, expected = f"rand=npy:{tmp_path / 'wrong.npy'}", "expected uint8 images"
    else:
        spec, expected = "svhn", "svhn"
    changes = {"data_dir": str(tmp_path / "tfds")} if case == "tfds_unprepared" else {}
    config = _folder_config(tmp_path, spec, **changes)
    with pytest.raises(DataCheckError) as caught:
        experiment.run(config, verbose=0)
    message = str(caught.value)
    assert "\n" not in message and expected in message and "OOD set" in message, message
    assert not os.path.exists(os.path.join(config.output_dir, "metrics.jsonl"))


def test_corrupt_outlier_images_fail_before_training_naming_the_file(tmp_path):
    folder = tmp_path / "outliers"
    folder.mkdir()
    for index in range(4):
        _write_jpeg(folder / f"o{index}.jpg", size=16)
    bad = folder / "o2.jpg"
    bad.write_bytes(bad.read_bytes()[:60])
    config = ExperimentConfig(output_dir=str(tmp_path / "run"), outlier_dataset="image_folder",
                              outlier_path=str(folder), **TINY)
    with pytest.raises(DataCheckError, match=r"outlier source .*o2\.jpg is a truncated JPEG"):
        check_sources(config)


def test_a_missing_finetune_checkpoint_fails_before_training(tmp_path):
    config = ExperimentConfig(output_dir=str(tmp_path / "run"), schedule="finetune",
                              init_checkpoint=str(tmp_path / "none.keras"), **TINY)
    with pytest.raises(DataCheckError, match="init_checkpoint .*none.keras.* does not exist"):
        experiment.run(config, verbose=0)


def test_a_seed_template_in_the_checkpoint_names_the_seed_s_own_file(tmp_path):
    (tmp_path / "ce" / "seed1").mkdir(parents=True)
    (tmp_path / "ce" / "seed1" / "model.keras").write_bytes(b"")
    template = str(tmp_path / "ce" / "seed{seed}" / "model.keras")
    config = ExperimentConfig(output_dir=str(tmp_path / "run"), schedule="finetune",
                              init_checkpoint=template, seed=2, **TINY)
    assert config.replace(seed=1).init_checkpoint_path == str(
        tmp_path / "ce" / "seed1" / "model.keras")
    with pytest.raises(DataCheckError, match=r"init_checkpoint .*seed2.model\.keras.* does not"):
        check_sources(config)


# ------------------------------------------------------------- non-finite guard
def _tiny_model_and_batches(nan_at=None):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(64, 28, 28, 1)).astype("float32")
    outliers = rng.normal(size=(128, 28, 28, 1)).astype("float32")
    if nan_at is not None:
        images[nan_at, 3, 4, 0] = np.nan  # one pixel
    labels = rng.integers(0, 10, 64)
    dataset = tf.data.Dataset.zip((tf.data.Dataset.from_tensor_slices((images, labels)).batch(16),
                                   tf.data.Dataset.from_tensor_slices(outliers).batch(32)))
    model = models.build_model("small_cnn", (28, 28, 1), 10, head="gaussian")
    model.compile(keras.optimizers.SGD(0.01), loss=losses.get("ice"))
    return model, dataset


def test_one_nan_pixel_stops_compiled_training_naming_the_batch():
    model, dataset = _tiny_model_and_batches(nan_at=37)
    with pytest.raises(FloatingPointError, match=r"batch holds NaN or inf.*epoch 1, step 3"):
        model.fit(dataset, epochs=1, verbose=0)


def test_non_finite_weights_stop_training_naming_the_weights():
    model, dataset = _tiny_model_and_batches()
    kernel = model.backbone.layers[1].kernel
    values = kernel.numpy()
    values.flat[0] = np.nan
    kernel.assign(values)
    with pytest.raises(FloatingPointError, match=r"non-finite weights\) at epoch 1, step 1"):
        model.fit(dataset, epochs=1, verbose=0)


def test_the_guard_log_does_not_reach_the_history():
    model, dataset = _tiny_model_and_batches()
    history = model.fit(dataset, epochs=1, verbose=0)
    assert models.NONFINITE_LOG not in history.history


def test_fuzzed_extreme_features_give_finite_losses_and_gradients():
    """10,000 extreme finite feature vectors for each loss and head (kept from the fault probe)."""
    rng = np.random.default_rng(12)
    dim, num_classes, count = 16, 10, 10_000

    def fuzz():
        magnitude = 10.0 ** rng.uniform(-6, 4, size=(count, 1))
        values = rng.normal(size=(count, dim)) * magnitude
        values[rng.random(count) < 0.05] = 0.0
        return values.astype("float32")

    z_in, z_out = fuzz(), fuzz()
    y = rng.integers(0, num_classes, count)
    for kind in ("gaussian", "linear"):
        head = layers.make_head(kind, num_classes)
        head.build((None, dim))
        if kind == "gaussian":
            means = rng.normal(size=(num_classes, dim)).astype("float32")
            head.means.assign(means)
            z_out[:50] = means[rng.integers(0, num_classes, 50)]  # outliers on a mean
        for name in losses.names():
            inputs = [tf.constant(z_in), tf.constant(z_out)]
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                value = losses.get(name)(y, head(inputs[0]), head(inputs[1]))
            gradients = tape.gradient(value, [*inputs, *head.trainable_variables])
            assert np.isfinite(value.numpy()), (kind, name)
            for gradient in gradients:
                if gradient is not None:
                    assert np.all(np.isfinite(tf.convert_to_tensor(gradient).numpy())), (kind, name)


# ------------------------------------------------------------- serving contract
SERVING_PROBE = """
import sys
import numpy as np
import tensorflow as tf

serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
cases = {"rank3": np.zeros((28, 28, 1), np.float32), "size": np.zeros((4, 32, 32, 1), np.float32),
         "rank5": np.zeros((1, 2, 28, 28, 1), np.float32), "dtype": np.zeros((2, 28, 28, 1), np.int32),
         "empty": np.zeros((0, 28, 28, 1), np.float32), "good": np.zeros((3, 28, 28, 1), np.float32)}
for case, images in cases.items():
    try:
        outputs = serve(images=tf.constant(images))
        print(case, "ok", tuple(outputs["probabilities"].shape), tuple(outputs["score"].shape))
    except (tf.errors.InvalidArgumentError, TypeError, ValueError) as error:
        text = getattr(error, "message", str(error))
        print(case, "error", "must have shape (batch, 28, 28, 1)" in text, "float" in text)
print("ice_tf imported:", any(name.startswith("ice_tf") for name in sys.modules))
"""


def test_the_serving_signature_refuses_bad_input_without_aborting(tmp_path):
    model = models.build_model("small_cnn", (28, 28, 1), 10, head="gaussian",
                               normalization=((0.3,), (0.35,)))
    model.compile(keras.optimizers.SGD(0.1), loss=losses.get("ice"))
    export.export_saved_model(model, str(tmp_path / "saved_model"))
    probe = subprocess.run([sys.executable, "-c", SERVING_PROBE, str(tmp_path / "saved_model")],
                           capture_output=True, text=True, timeout=180,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert probe.returncode == 0, probe.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in probe.stdout.strip().splitlines())
    for case in ("rank3", "size", "rank5"):
        assert lines[case] == "error True False", (case, lines[case])
    assert lines["dtype"].startswith("error") and lines["dtype"].endswith("True")
    assert lines["empty"] == "ok (0, 10) (0,)"
    assert lines["good"] == "ok (3, 10) (3,)"
    assert lines["ice_tf"] == "imported: False"
