"""A user's files are never lost, and bad input fails in one line naming the fix.

Each test is one case of the fault table in docs/guide.md ("Faults and bad input"): the run
folder's ownership, exports, damaged checkpoints and metrics, a full disk, a classifier
with a nested class layer, and the checks of labels, images and settings.
"""

import errno
import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from ice_tf import atomic_io, experiment, export, losses, models, ownership
from ice_tf.experiment import checkpoint as checkpoint_lib
from ice_tf.experiment import run_folder
from ice_tf.cli import experiment_flags, quiet, seed_flags
from ice_tf.experiment.config import ExperimentConfig
from ice_tf.data import files, labelled

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(backbone="small_cnn", limit_train=64, batch_in=32, batch_out=64, epochs=1,
            eval_limit=50, eval_draws=1, ood_datasets=("gaussian",), export=False)
ENV = {**os.environ, "PYTHONPATH": REPO}
ENV.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the command must hide TensorFlow's lines itself


def _tree(folder):
    """{relative path: bytes} of every file below `folder`."""
    return {name: open(os.path.join(folder, name), "rb").read()
            for name in ownership.files_below(folder)}


def _user_folder(tmp_path):
    folder = tmp_path / "d"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "README.md").write_text("my notes")
    (folder / "checkpoints" / "mine.txt").write_text("x")
    return str(folder)


def _ice_tf(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ice_tf", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------ the run folder
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_of_the_user_s_files_is_refused_and_left_as_it_was(tmp_path, overwrite):
    folder = _user_folder(tmp_path)
    before = _tree(folder)
    config = ExperimentConfig(output_dir=folder, **TINY)
    with pytest.raises(run_folder.RunFolderError, match="is not an ice-tf run folder and is not "
                       "empty .*choose another output_dir"):
        experiment.run(config, verbose=0, overwrite=overwrite)
    with pytest.raises(run_folder.RunFolderError, match="is not an ice-tf run folder"):
        experiment.plan_runs({("ice", 1): config}, overwrite=overwrite)
    assert _tree(folder) == before


def test_the_current_directory_of_a_project_is_refused_in_one_line(tmp_path):
    (tmp_path / "train.py").write_text("# the user's code")
    done = _ice_tf("train", "--flagfile=demo", "--output_dir=.", "--overwrite", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: . is not an ice-tf run folder and is not empty (train.py); ice-tf writes only "
        "into a new or empty folder or its own run folder, also with --overwrite: choose "
        "another output_dir."]
    assert sorted(os.listdir(tmp_path)) == ["train.py"]


def test_the_user_s_classifier_inside_the_output_folder_is_never_removed(tmp_path):
    classifier = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                                   keras.layers.Dense(10)])
    folder = tmp_path / "d"
    folder.mkdir()
    classifier.save(folder / "model.keras")
    config = ExperimentConfig(output_dir=str(folder), schedule="finetune",
                              **{**TINY, "backbone": str(folder / "model.keras")})
    with pytest.raises(run_folder.RunFolderError, match="is not an ice-tf run folder"):
        experiment.run(config, verbose=0, overwrite=True)
    # Inside a folder ice-tf owns, the input is refused before anything is removed.
    run_folder.claim(str(folder))
    with pytest.raises(run_folder.RunFolderError, match=r"backbone=.*model.keras lies inside "
                       "output_dir .*copy it elsewhere or choose another output_dir"):
        experiment.run(config, verbose=0, overwrite=True)
    assert keras.models.load_model(folder / "model.keras").count_params() == 7850


def test_new_empty_and_earlier_run_folders_are_ice_tf_s(tmp_path):
    assert run_folder.ownership(str(tmp_path / "new")) == "new"
    (tmp_path / "empty").mkdir()
    assert run_folder.ownership(str(tmp_path / "empty")) == "new"
    earlier = tmp_path / "earlier"  # a run folder of a version before the marker
    earlier.mkdir()
    (earlier / "config.json").write_text(ExperimentConfig(**TINY).to_json())
    (earlier / "results.json").write_text("{}")
    assert run_folder.ownership(str(earlier)) == "own"
    (earlier / "thesis.tex").write_text("the user's")
    assert run_folder.ownership(str(earlier)) == "foreign"


def test_an_output_dir_that_is_a_file_or_below_one_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(run_folder.RunFolderError, match="is a file, not a folder"):
        run_folder.check_owned(str(tmp_path / "file"))
    with pytest.raises(run_folder.RunFolderError, match="lies below .*file, which is a file"):
        run_folder.check_owned(str(tmp_path / "file" / "run"))


def test_an_unwritable_output_dir_is_one_line(tmp_path, monkeypatch):
    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", path)

    monkeypatch.setattr(os, "makedirs", read_only)
    with pytest.raises(run_folder.RunFolderError, match="cannot write output_dir .*Read-only "
                       "file system.*choose a writable output_dir"):
        run_folder.RunLock(str(tmp_path / "run")).acquire()


def test_a_lock_naming_a_reused_pid_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    alive = os.getppid()  # a live process, but not the one that wrote the lock
    (folder / run_folder.LOCK_FILE).write_text(json.dumps(
        {"pid": alive, "host": os.uname().nodename, "started": "2026-12-01T00:00",
         "start_ticks": -1}))
    with pytest.warns(UserWarning, match="taking over the lock"):
        with run_folder.RunLock(str(folder)):
            pass


# ------------------------------------------------------------------- exports
def _model():
    model = models.build_model("small_cnn", (28, 28, 1), 10, head="gaussian",
                               normalization=((0.3,), (0.35,)))
    model.compile(keras.optimizers.SGD(0.1), loss=losses.get("ice"))
    return model


def test_export_overwrite_replaces_an_earlier_export_only(tmp_path):
    model = _model()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "data.csv").write_text("1,2")
    with pytest.raises(ownership.NotOwnedError, match="is not an ice-tf export .*give --output a new path"):
        export.export_saved_model(model, str(notes), overwrite=True)
    assert _tree(str(notes)) == {"data.csv": b"1,2"}

    target = str(tmp_path / "exported")
    export.export_saved_model(model, target)
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        export.export_saved_model(model, target)
    export.export_saved_model(model, target, overwrite=True)  # an earlier export: replaced
    assert ownership.foreign_files_of_export(target) == []
    (tmp_path / "exported" / "assets.extra").mkdir()
    (tmp_path / "exported" / "assets.extra" / "warmup").write_text("the user's")
    with pytest.raises(ownership.NotOwnedError, match="holds files the export did not write "
                       r"\(assets.extra/warmup\)"):
        export.export_saved_model(model, target, overwrite=True)
    assert (tmp_path / "exported" / "assets.extra" / "warmup").exists()


def test_a_non_finite_image_is_served_as_least_in_distribution():
    model = _model()
    images = np.random.default_rng(0).uniform(0, 255, (3, 28, 28, 1)).astype("float32")
    images[1] = np.nan
    images[2, 0, 0, 0] = np.inf
    outputs = export.serving_outputs(model, tf.constant(images))
    confidence = outputs["confidence"].numpy()
    assert np.isfinite(confidence[0]) and confidence[1] == 0 and confidence[2] == 0
    assert np.isfinite(outputs["score"].numpy()[0])
    assert np.all(outputs["score"].numpy()[1:] == -np.inf)
    assert np.all(np.isnan(outputs["probabilities"].numpy()[1:]))


# --------------------------------------------------- checkpoints and metrics
def _checkpointed(tmp_path, epochs=2):
    """A model whose TrainingCheckpoint saved `epochs` epochs, with a metrics line each."""
    model = models.build_model("small_cnn", (28, 28, 1), 10, head="gaussian")
    model.compile(keras.optimizers.SGD(0.1), loss=losses.get("ice"))
    model.optimizer.build(model.trainable_variables)
    logger = checkpoint_lib.JsonLinesLogger(str(tmp_path / run_folder.METRICS_FILE))
    checkpoint = checkpoint_lib.TrainingCheckpoint(str(tmp_path), metrics_logger=logger)
    for callback in (logger, checkpoint):
        callback.set_model(model)
    logger.on_train_begin()
    for epoch in range(epochs):
        logger.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1)})
        checkpoint.on_epoch_end(epoch)
    return model


def test_the_previous_checkpoint_is_kept_beside_the_newest(tmp_path):
    _checkpointed(tmp_path, epochs=3)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "epoch-0002.weights.h5", "epoch-0003.weights.h5", "last.json", "previous.json"]
    state = json.load(open(tmp_path / run_folder.LAST_STATE))
    assert state["metrics"]["epoch"] == 3 and state["metrics"]["loss"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("damage", ["unreadable_state", "truncated_weights", "missing_weights"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, damage):
    _checkpointed(tmp_path)
    last = tmp_path / run_folder.LAST_STATE
    weights = tmp_path / "checkpoints" / "epoch-0002.weights.h5"
    if damage == "unreadable_state":
        last.write_text('{"epoch": 2, "we')
    elif damage == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[:2000])
    else:
        weights.unlink()
    with pytest.warns(UserWarning, match=r"last.json is damaged .*resuming from .*previous.json "
                      r"\(epoch 1\)"):
        assert checkpoint_lib.training_position(str(tmp_path))[:2] == (1, 0)
    fresh = models.build_model("small_cnn", (28, 28, 1), 10, head="gaussian")
    fresh.compile(keras.optimizers.SGD(0.1), loss=losses.get("ice"))
    assert checkpoint_lib.restore_training_state(fresh, str(tmp_path)) == (1, 0)


def test_no_usable_checkpoint_is_an_error_not_a_silent_restart(tmp_path):
    _checkpointed(tmp_path)
    metrics_before = (tmp_path / run_folder.METRICS_FILE).read_text()
    (tmp_path / run_folder.LAST_STATE).write_text("garbage")
    (tmp_path / run_folder.PREVIOUS_STATE).write_text("garbage")
    with pytest.raises(ValueError, match="no usable checkpoint .*pass --overwrite"):
        checkpoint_lib.training_position(str(tmp_path))
    assert (tmp_path / run_folder.METRICS_FILE).read_text() == metrics_before


def test_a_cut_metrics_line_is_restored_from_the_checkpoint(tmp_path):
    config = ExperimentConfig(output_dir=str(tmp_path / "run"), loss="oe",
                              **{**TINY, "epochs": 3})

    class StopInEpoch3(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("power loss")

    with pytest.raises(RuntimeError, match="power loss"):
        experiment.run(config, verbose=0, callbacks=[StopInEpoch3()])
    metrics = tmp_path / "run" / run_folder.METRICS_FILE
    lines = metrics.read_text().splitlines()
    metrics.write_text(lines[0] + "\n" + lines[1][:12])  # epoch 2's line cut part-way
    experiment.run(config, verbose=0)
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2, 3]
    assert json.loads(metrics.read_text().splitlines()[1]) == json.loads(lines[1])


def test_a_full_disk_is_refused_before_the_checkpoint_write(tmp_path, monkeypatch):
    model = _checkpointed(tmp_path, epochs=1)
    checkpoint = checkpoint_lib.TrainingCheckpoint(str(tmp_path))
    checkpoint.set_model(model)
    monkeypatch.setattr(atomic_io.shutil, "disk_usage",
                        lambda path: type("Usage", (), {"free": 300_000})())
    with pytest.raises(OSError) as raised:
        checkpoint.on_epoch_end(1)
    assert raised.value.errno == errno.ENOSPC
    assert not (tmp_path / "checkpoints" / "epoch-0002.weights.h5").exists()
    assert experiment_flags.error_line(raised.value).startswith(
        "no space left on device writing ")
    assert experiment_flags.error_line(raised.value).endswith(
        "free some space (or choose another output_dir), then run the same command again to resume.")


def _small_file_system(path, size):
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("mounting a small file system needs root")


def test_a_run_on_a_full_file_system_stops_in_one_line_without_a_crash(tmp_path):
    disk = tmp_path / "disk"
    _small_file_system(disk, "300k")
    try:
        done = _ice_tf("train", "--flagfile=demo", "--epochs=1", "--limit_train=64",
                       "--batch_in=32", "--batch_out=64", "--eval_limit=50", "--eval_draws=1",
                       "--ood_datasets=gaussian", "--analyses=", f"--output_dir={disk}/run",
                       cwd=tmp_path)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert done.stderr.strip().splitlines()[-1].startswith("error: no space left on device")


# ----------------------------------------------------- a nested class layer
@pytest.mark.parametrize("outer", ["sequential", "functional"])
def test_a_class_layer_inside_a_nested_model_is_found(outer):
    head = keras.Sequential([keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10),
                             keras.layers.Softmax()])
    if outer == "sequential":
        classifier = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), head])
    else:
        inputs = keras.Input((8, 8, 1))
        classifier = keras.Model(inputs, head(keras.layers.Flatten()(inputs)))
    x = np.random.default_rng(0).uniform(size=(60, 8, 8, 1)).astype("float32")
    y = np.arange(60) % 10
    model = models.OODModel.from_classifier(classifier, (x, y), verbose=0)
    assert model.num_classes == 10
    hidden = keras.Model(head.inputs, head.layers[0].output)(x.reshape(60, -1))
    np.testing.assert_allclose(model.backbone(x), hidden, rtol=1e-6)


# ------------------------------------------------------- labels and images
def _arrays(labels, test_labels=None):
    images = np.zeros((len(labels), 4, 4, 1), np.uint8)
    splits = {"train": (images, np.asarray(labels))}
    if test_labels is not None:
        splits["test"] = (np.zeros((len(test_labels), 4, 4, 1), np.uint8), np.asarray(test_labels))
        splits["val"] = splits["test"]
    return splits


def test_stray_labels_do_not_make_a_class():
    labels = np.concatenate([np.arange(10000) % 10, np.full(5, 10)])
    with pytest.raises(ValueError, match=r"label \[10\] has 5 training image\(s\) against a median "
                       "of 1000 per class: stray labels.*class_names"):
        labelled.LabelledArrays.from_arrays(_arrays(labels), what="npz file 'x.npz'")
    declared = labelled.LabelledArrays.from_arrays(_arrays(labels), class_names=list("abcdefghijk"))
    assert declared.num_classes == 11


def test_one_class_and_a_class_only_in_test_are_refused():
    with pytest.raises(ValueError, match="one class only; a classifier needs at least 2"):
        labelled.LabelledArrays.from_arrays(_arrays(np.zeros(50, int)))
    with pytest.raises(ValueError, match=r"class \[2\] appears in the test split but not in train"):
        labelled.LabelledArrays.from_arrays(_arrays(np.arange(60) % 2, test_labels=[0, 1, 2]))


def test_a_file_that_is_no_archive_is_named_in_one_line(tmp_path):
    text = tmp_path / "text.npz"
    text.write_text("not numbers")
    with pytest.raises(ValueError, match=r"'.*text.npz' is not a readable .npz archive"):
        labelled.read_npz(str(text))
    archive = tmp_path / "cut.npz"
    np.savez(archive, x_train=np.zeros((100, 4, 4), np.uint8), y_train=np.arange(100) % 2)
    archive.write_bytes(archive.read_bytes()[:700])
    with pytest.raises(ValueError, match="cut.npz' is not a readable .npz archive"):
        labelled.read_npz(str(archive))
    array = tmp_path / "text.npy"
    array.write_text("not numbers")
    with pytest.raises(ValueError, match="text.npy' is not a readable .npy array"):
        files.load_npy(str(array), "outlier_path")
    corrupt = tmp_path / "model.keras"
    corrupt.write_text("not a model")
    with pytest.raises(ValueError, match="model.keras' is not a readable .keras archive"):
        models.read_model(str(corrupt))


def test_fractional_labels_are_refused_not_truncated():
    model = _model()
    model.compile(keras.optimizers.SGD(0.1), loss=losses.get("ce"))
    x = np.zeros((8, 28, 28, 1), np.float32)
    with pytest.raises(ValueError, match="got 2.7, which would be cut to an integer"):
        model.fit(x, np.full(8, 2.7), epochs=1, verbose=0)


def test_ood_arrays_of_another_shape_are_one_line(tmp_path):
    import ice_tf

    model = _model()
    x = np.zeros((8, 28, 28, 1), np.float32)
    for shape in ((8, 32, 32, 1), (8, 28, 28, 3)):
        with pytest.raises(ValueError, match=r"OOD set 'svhn' has images of shape .* but the model "
                           r"takes \(28, 28, 1\): resize or convert them first"):
            ice_tf.evaluate(model, (x, np.zeros(8, int)), {"svhn": np.zeros(shape, np.float32)},
                            verbose=0)


# --------------------------------------------------------------- settings
def test_settings_that_would_waste_a_run_are_refused_before_it(tmp_path):
    with pytest.raises(ValueError, match="ood_datasets is empty"):
        experiment.run(ExperimentConfig(output_dir=str(tmp_path / "r"), **{**TINY, "ood_datasets": ()}),
                       verbose=0)
    assert not (tmp_path / "r").exists()
    assert not seed_flags._integers(["1", "1"]) and seed_flags._integers(["1", "2"])
    with pytest.raises(ValueError, match="reads no outlier_path, but outlier_path='data/t.bin' is "
                       "set .*--outlier_path="):
        ExperimentConfig(outlier_path="data/t.bin").validate()


def test_the_withdrawn_tiny_images_name_their_replacements(tmp_path):
    from ice_tf import data

    with pytest.raises(FileNotFoundError, match="withdrawn by its authors.*data/cifar10_300k"):
        data.load("tiny_images", "train", path=str(tmp_path / "tiny_images.bin"))


def test_the_300k_flag_files_train_in_place_of_tiny_images(tmp_path):
    from ice_tf.cli import flagfiles

    argv = flagfiles.expand(["p", "--flagfile=experiments/cifar10_wrn40_2_finetune_ice",
                             "--flagfile=data/cifar10_300k"], cwd=tmp_path)
    assert argv[-3:] == ["--outlier_dataset=npy", "--outlier_path=data/300K_random_images.npy",
                         "--outlier_exclude_path="]


# ----------------------------------------------------------- the one line
def test_user_errors_print_one_line_with_the_fix(capsys):
    cases = [
        (KeyboardInterrupt(), 130, "interrupted (Ctrl-C); a training run keeps its last "
                                   "checkpoint: run the same command again to resume."),
        (OSError(errno.EROFS, "Read-only file system", "runs/x"), 1,
         "read-only file system: runs/x; choose a writable folder."),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "f/run"), 1,
         "not a directory: f/run; a part of the path is a file: choose another path."),
        (tf.errors.ResourceExhaustedError(None, None, "runs/x/saved_model; No space left on device"),
         1, "no space left on device; free some space (or choose another output_dir), then run "
            "the same command again to resume."),
    ]
    for error, status, line in cases:
        def main(argv, error=error):
            raise error

        with pytest.raises(SystemExit) as raised:
            experiment_flags.one_line_errors(main)([])
        assert raised.value.code == status
        assert capsys.readouterr().err == f"error: {line}\n"


def test_tensorflow_s_start_up_lines_are_hidden_unless_asked_for(monkeypatch):
    text = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
            "I0000 port.cc:153] oneDNN custom operations are on. You may see ...\n"
            "a real warning\n")
    assert quiet.without_noise(text) == "a real warning\n"
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    assert quiet.wants_verbose(["ice-tf", "train", "--verbose"])
    assert not quiet.wants_verbose(["ice-tf", "train"])
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    assert quiet.wants_verbose(["ice-tf", "train"])


def test_a_command_s_output_holds_no_start_up_lines(tmp_path):
    done = _ice_tf("train", "--flagfile=demo", "--dry_run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "absl::InitializeLog" not in done.stderr and "oneDNN" not in done.stderr
    assert done.stdout.startswith("dry run OK")


def test_ctrl_c_stops_a_command_in_one_line(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "ice_tf", "train", "--flagfile=demo", "--epochs=50",
         "--limit_train=640", "--batch_in=32", "--batch_out=64", "--ood_datasets=gaussian",
         "--analyses=", f"--output_dir={tmp_path}/run"],
        cwd=tmp_path, env={**ENV, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if "Epoch 2/" in line:  # epoch 1 is checkpointed
            break
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == (
        "error: interrupted (Ctrl-C); a training run keeps its last checkpoint: run the same "
        "command again to resume.")
    assert not run_folder.is_finished(str(tmp_path / "run"))
    assert checkpoint_lib.training_position(str(tmp_path / "run"))[0] >= 1


def test_the_divergence_error_suggests_the_rate_that_trains():
    assert "0.001" in models.DIVERGENCE_REMEDY


def test_reports_replace_their_own_files_only(tmp_path):
    from ice_tf.cli import evaluate as evaluate_command

    mine = tmp_path / "evaluation-oe.json"
    mine.write_text('{"my": "results"}')
    with pytest.raises(ownership.NotOwnedError, match="evaluation-oe.json exists and is not a record "
                       "ice-tf evaluate wrote; move it away or write elsewhere"):
        evaluate_command.check_outputs_replaceable(str(mine))
    mine.write_text(json.dumps({"ice": {"score": "ice", "sets": {}}}))
    (tmp_path / "evaluation-oe.md").write_text("### model.keras: ice\n")
    evaluate_command.check_outputs_replaceable(str(mine))  # ice-tf's own: replaced

    (tmp_path / "comparison.md").write_text("# my comparison of methods")
    done = _ice_tf("compare", "--flagfile=demo", "--methods=ce", "--epochs=1",
                   f"--output_dir={tmp_path}", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path}/comparison.md exists and is not a table ice-tf compare wrote; move it "
        "away or write elsewhere (the output folder or --output)."]
    assert (tmp_path / "comparison.md").read_text() == "# my comparison of methods"


def test_an_interrupt_taken_by_the_input_pipeline_still_stops_training(tmp_path):
    # tf.data can take a KeyboardInterrupt raised in its Python code for the end of the data;
    # the guard has recorded the signal, so fit stops and no epoch is checkpointed as done.
    from helpers import blob_data, tiny_backbone, zipped_dataset

    from ice_tf import layers

    images, labels, outliers = blob_data()
    model = models.OODModel(tiny_backbone(), layers.make_head("linear", 3))
    model.compile(keras.optimizers.SGD(0.01), loss="oe")

    class Swallowed(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 2:
                guard.interrupted = True  # what the handler records before raising

    before = signal.getsignal(signal.SIGINT)  # a pytest-xdist worker ignores SIGINT
    with checkpoint_lib.InterruptGuard() as guard:
        with pytest.raises(KeyboardInterrupt):
            model.fit(zipped_dataset(images, labels, outliers), epochs=3, verbose=0,
                      callbacks=[guard, Swallowed(), checkpoint_lib.TrainingCheckpoint(str(tmp_path))])
    assert checkpoint_lib.training_position(str(tmp_path))[0] == 0
    assert signal.getsignal(signal.SIGINT) is before  # restored
