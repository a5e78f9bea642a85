"""The analysis callbacks on tiny fits, their config field and flag, and a tiny run."""

import json
import math
import os

import keras
import numpy as np
import pytest
from absl import flags
from helpers import blob_data, tiny_backbone, zipped_dataset

from ice_tf import analysis, experiment, layers, models
from ice_tf.analysis import probes as callbacks
from ice_tf.experiment import analyses, checkpoint, run_folder
from ice_tf.experiment.config import ExperimentConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from ice_tf.cli import experiment_flags  # noqa: E402


def _fit(head, loss, tmp_path, epochs=2, directory="analysis"):
    images, labels, outliers = blob_data()
    model = models.OODModel(tiny_backbone(), layers.make_head(head, 3))
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss=loss)
    probe_in, probe_labels, probe_out = images[:40], labels[:40], outliers[:48]
    made = {
        "gradient_meter": callbacks.ContradictoryGradientMeter(
            probe_in, probe_labels, probe_out, str(tmp_path / directory / "gradient_meter.jsonl")),
        "shift": callbacks.DistributionShiftTracker(
            probe_in, probe_labels, probe_out, str(tmp_path / directory / "shift.jsonl")),
        "confidence": callbacks.ConfidenceHistory(
            images[40:80], {"noise": outliers[48:80], "bright": outliers[80:100] + 3.0},
            str(tmp_path / directory / "confidence.jsonl")),
    }
    logger = experiment.JsonLinesLogger(str(tmp_path / "metrics.jsonl"))
    history = model.fit(zipped_dataset(images, labels, outliers), epochs=epochs, verbose=0,
                        callbacks=[*made.values(), logger])
    return model, made, history, (probe_in, probe_labels, probe_out, images[40:80], outliers)


def _finite(value):
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return math.isfinite(value)


def test_callbacks_record_every_epoch_and_match_a_recomputation(tmp_path):
    model, made, history, probes = _fit("linear", "oe", tmp_path)
    probe_in, probe_labels, probe_out, eval_in, outliers = probes
    read = run_folder.read_analyses(str(tmp_path))
    for name, callback in made.items():
        assert [r["epoch"] for r in read[name]] == [0, 1, 2]  # before training + 2 epochs
        assert read[name] == callback.history and all(_finite(r) for r in read[name])

    # The last records are the statistics of the trained model on the probes.
    _, outputs_in = callbacks.probe_outputs(model, probe_in)
    features_in = model.features(probe_in).numpy()
    features_out = model.features(probe_out).numpy()
    expected = analysis.contradictory_fractions(
        "oe", probe_labels, outputs_in, model(probe_out).numpy()
    )
    last = read["gradient_meter"][-1]
    assert {key: last[key] for key in expected} == pytest.approx(expected)
    assert read["gradient_meter"][-1]["contradictory_out"] > 0  # OE raises some outlier logits
    shift = analysis.distribution_shift(features_in, probe_labels, features_out, 3)
    for key, value in shift.items():
        assert read["shift"][-1][key] == pytest.approx(value, rel=1e-4)

    last = read["confidence"][-1]
    msp_in = keras.ops.convert_to_numpy(keras.ops.softmax(model(eval_in), -1)).max(1)
    assert last["in"]["mean"] == pytest.approx(msp_in.mean(), rel=1e-5)
    assert sum(last["in"]["histogram"]) == 40 and last["bins"] == 20
    assert set(last["ood"]) == {"noise", "bright", "all"}
    assert sum(last["ood"]["all"]["histogram"]) == 32 + 20
    assert all(0 <= entry["auroc"] <= 1 for entry in last["ood"].values())

    # Scalars reach History and the metrics logger placed after the callbacks.
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    for key in ("contradictory_all", "shift_ratio", "shift_overlap", "confidence_auroc"):
        assert len(history.history[key]) == 2 and key in lines[-1]
    assert lines[-1]["contradictory_out"] == pytest.approx(
        read["gradient_meter"][-1]["contradictory_out"]
    )


def test_ice_has_no_contradictory_gradient_and_its_confidence_is_exp_max_h(tmp_path):
    model, made, _, probes = _fit("gaussian", "ice", tmp_path, epochs=1)
    assert all(r["contradictory_all"] == 0.0 for r in made["gradient_meter"].history)
    h = model(probes[3]).numpy().astype(np.float64)
    last = made["confidence"].history[-1]
    assert last["in"]["mean"] == pytest.approx(np.exp(h.max(1)).mean(), rel=1e-5, abs=1e-12)
    assert last["in"]["q50"] == pytest.approx(np.median(np.exp(h.max(1))), rel=1e-5, abs=1e-12)


def test_a_second_fit_appends_and_memory_only_callbacks_write_nothing(tmp_path):
    images, labels, outliers = blob_data(num_in=32, num_out=64)
    model = models.OODModel(tiny_backbone(), layers.make_head("linear", 3))
    model.compile("sgd", loss="energy")
    on_disk = callbacks.DistributionShiftTracker(
        images, labels, outliers, str(tmp_path / "s.jsonl")
    )
    in_memory = callbacks.ContradictoryGradientMeter(images, labels, outliers, batch_size=5)
    data = zipped_dataset(images, labels, outliers)
    model.fit(data, epochs=1, verbose=0, callbacks=[on_disk, in_memory])
    model.fit(data, epochs=1, verbose=0, callbacks=[on_disk, in_memory])
    assert [r["epoch"] for r in run_folder.read_jsonl(tmp_path / "s.jsonl")] == [0, 1, 1]
    assert [r["epoch"] for r in in_memory.history] == [0, 1, 1]
    assert os.listdir(tmp_path) == ["s.jsonl"]


def test_bad_probes_are_value_errors():
    images, labels, outliers = blob_data(num_in=8, num_out=8)
    with pytest.raises(ValueError, match="8 in-distribution images but 7 labels"):
        callbacks.ContradictoryGradientMeter(images, labels[:7], outliers)
    with pytest.raises(ValueError, match="non-empty"):
        callbacks.DistributionShiftTracker(images, labels, outliers[:0])
    with pytest.raises(ValueError, match="reserved"):
        callbacks.ConfidenceHistory(images, {"all": outliers, "x": outliers})
    with pytest.raises(ValueError, match="at least one OOD set"):
        callbacks.ConfidenceHistory(images, {})


# ---------------------------------------------------------------- config and flags
def test_the_analyses_field_round_trips_through_json_and_flag_files():
    config = ExperimentConfig(loss="oe", analyses=("gradient_meter", "confidence"),
                              analysis_probe_size=64).validate()
    assert ExperimentConfig.from_dict(json.loads(config.to_json())) == config
    values = flags.FlagValues()
    experiment_flags.define_flags(flag_values=values)
    for original in (config, ExperimentConfig(loss="oe")):
        values.unparse_flags()
        arguments = experiment_flags.to_flagfile(original).splitlines()
        values(["test", *arguments])
        assert experiment_flags.config_from_flags(values) == original
    values.unparse_flags()
    values(["test", "--analyses=shift,confidence"])
    assert experiment_flags.config_from_flags(values).analyses == ("shift", "confidence")
    assert experiment_flags.parse_overrides("analyses=shift+confidence") == {
        "analyses": ("shift", "confidence")
    }


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"analyses": ("tsne",)}, "choose one of: gradient_meter, shift, confidence"),
        ({"analyses": ("shift", "shift")}, "must not repeat"),
        ({"analyses": ("shift",), "loss": "ce", "outlier_dataset": None}, "set outlier_dataset"),
        ({"analyses": ("confidence",), "ood_datasets": ()}, "set ood_datasets"),
        ({"analysis_probe_size": 0}, "analysis_probe_size must be >= 1"),
    ],
)
def test_analysis_settings_are_validated(changes, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig(**changes).validate()


# --------------------------------------------------------- from a config, end to end
TINY = dict(
    backbone="small_cnn", limit_train=128, batch_in=32, batch_out=64, epochs=1,
    eval_limit=50, eval_draws=2, learning_rate=0.01, export=False,
    ood_datasets=("mnist=embedded_mnist", "gaussian"),
)


def test_build_probes_follows_the_config():
    config = ExperimentConfig(loss="oe", analyses=("shift", "confidence"), **TINY)
    probes = analyses.build_probes(config, size=12)
    images, labels = probes["train"]
    assert images.shape == (12, 28, 28, 1) and labels.shape == (12,) and labels.min() >= 0
    assert probes["outliers"].shape == (12, 28, 28, 1)
    assert probes["eval"].shape == (12, 28, 28, 1)
    assert {k: v.shape for k, v in probes["ood"].items()} == {
        "mnist": (12, 28, 28, 1), "gaussian": (12, 28, 28, 1)
    }
    only_confidence = analyses.build_probes(config.replace(analyses=("confidence",)), 4)
    assert only_confidence.keys() == {"eval", "ood"}
    assert analyses.analysis_callbacks(config.replace(analyses=())) == []


def test_dry_run_and_run_record_the_analyses(tmp_path):
    config = ExperimentConfig(
        loss="energy", analyses=("gradient_meter", "shift", "confidence"),
        analysis_probe_size=16, output_dir=str(tmp_path / "run"), **TINY,
    )
    logs = experiment.dry_run(config)
    assert {"contradictory_in", "shift_overlap", "confidence_auroc"} <= set(logs)
    assert not os.path.exists(tmp_path / "run")

    experiment.run(config, verbose=0)
    read = run_folder.read_analyses(str(tmp_path / "run"))
    assert set(read) == {"gradient_meter", "shift", "confidence"}
    for records in read.values():
        assert [r["epoch"] for r in records] == [0, 1] and all(_finite(r) for r in records)
    assert set(read["confidence"][-1]["ood"]) == {"mnist", "gaussian", "all"}
    metrics = json.loads(open(tmp_path / "run" / "metrics.jsonl").read())
    assert metrics["contradictory_in"] == read["gradient_meter"][-1]["contradictory_in"]


def test_a_diverged_model_is_recorded_as_skipped_not_raised(tmp_path):
    images, labels, outliers = blob_data()
    model = models.OODModel(tiny_backbone(), layers.make_head("gaussian", 3))
    model.compile(keras.optimizers.SGD(0.05), loss="ice")
    model.build((None, 6, 6, 1))
    model.head.means.assign(np.full((3, 8), np.nan, np.float32))
    made = [
        callbacks.ContradictoryGradientMeter(images[:8], labels[:8], outliers[:8]),
        callbacks.DistributionShiftTracker(images[:8], labels[:8], outliers[:8]),
        callbacks.ConfidenceHistory(images[:8], {"noise": outliers[:8]}),
    ]
    for callback in made:
        callback.set_model(model)
        logs = {"loss": float("nan")}
        callback.on_epoch_end(0, logs)
        assert "training diverged" in callback.history[-1]["skipped"]
        assert set(logs) == {"loss"}


def test_the_metrics_log_writes_non_finite_values_as_null(tmp_path):
    class _Model:
        optimizer = keras.optimizers.SGD(0.1)

    logger = checkpoint.JsonLinesLogger(str(tmp_path / "metrics.jsonl"))
    logger.set_model(_Model())
    logger.on_train_begin()
    logger.on_epoch_end(0, {"loss": float("nan"), "accuracy": 0.5, "ce": float("inf")})
    record = json.loads(open(tmp_path / "metrics.jsonl").read())  # strict JSON
    assert record["loss"] is None and record["ce"] is None and record["accuracy"] == 0.5


def test_gaussian_head_monitor_logs_the_scale_of_l():
    from helpers import blob_data, tiny_backbone, zipped_dataset
    from ice_tf import layers, models
    from ice_tf.analysis import probes as callbacks

    images, labels, outliers = blob_data()
    model = models.OODModel(tiny_backbone(), layers.make_head("gaussian", 3))
    model.compile(keras.optimizers.SGD(0.01), loss="ice")
    history = model.fit(zipped_dataset(images, labels, outliers), epochs=2, verbose=0,
                        callbacks=[callbacks.GaussianHeadMonitor()])
    scale = model.head.scale_tril.numpy().astype(np.float64)
    assert history.history["head_scale_trace"][-1] == pytest.approx(np.sum(scale ** 2) / 8, rel=1e-5)
    assert history.history["head_scale_condition"][-1] == pytest.approx(np.linalg.cond(scale), rel=1e-4)
    assert history.history["head_scale_condition"][0] >= 1.0
