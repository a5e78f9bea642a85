"""ExperimentConfig: derived values, validation and storage."""

import pytest

from ice_tf import losses
from ice_tf.experiment.config import ExperimentConfig, OODSetSpec


def test_ood_set_specs():
    assert OODSetSpec.parse("svhn") == OODSetSpec("svhn", "svhn", "test", None)
    assert OODSetSpec.parse("embedded_outliers@val") == OODSetSpec(
        "embedded_outliers@val", "embedded_outliers", "val", None
    )
    assert OODSetSpec.parse("isun=image_folder:/data/iSUN") == OODSetSpec(
        "isun", "image_folder", "test", "/data/iSUN"
    )
    with pytest.raises(ValueError, match="names no dataset"):
        OODSetSpec.parse("x=")


def test_derived_values():
    config = ExperimentConfig(loss="ice")
    assert config.head_kind == "gaussian" and config.score_name == "ice"
    config = ExperimentConfig(loss="energy", margin_in=-27.0, loss_weight=0.2)
    assert config.head_kind == "linear" and config.score_name == "energy"
    assert config.loss_kwargs() == {"weight": 0.2, "margin_in": -27.0}
    assert ExperimentConfig(loss="oe", head="gaussian", score="ice").head_kind == "gaussian"


def test_round_trip_through_json():
    config = ExperimentConfig(loss="oe", ood_datasets=("svhn", "textures"), epochs=3)
    assert ExperimentConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown config fields"):
        ExperimentConfig.from_dict({"epochz": 3})


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"loss": "focal"}, "choose one of: bce, ce, dal, energy, ice, ice_minus, logitnorm, mixoe, oe, vos, or register "
                            "your own in a module and name it with --import=MODULE"),
        ({"backbone": "vit"}, "densenet40_12, small_cnn, wrn16_2, wrn16_4, wrn34_10, wrn40_2"),
        ({"in_dataset": "gaussian"}, "no labels"),
        ({"outlier_dataset": None}, "needs outliers"),
        ({"batch_in": 0}, "batch_in must be >= 1"),
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"loss_weight": -1.0}, "loss_weight must be a finite number >= 0, got -1.0"),
        ({"dropout_rate": 1.0}, "dropout_rate"),
        ({"ood_datasets": ("svhn", "svhn")}, "unique"),
        ({"protocol": "openood"}, "choose one of: oe, full"),
        ({"loss": "oe", "margin_in": -23.0}, r"margin_in does not apply to loss='oe' \(its "
                                             r"hyperparameters: loss_weight\); unset margin_in"),
        ({"loss": "ce", "loss_weight": 0.5}, "loss_weight does not apply to loss='ce'"),
        ({"loss": "oe", "in_term_weight": 0.5}, "in_term_weight does not apply to loss='oe'"),
        ({"loss": "ice_minus", "in_term_weight": 0.5}, "in_term_weight does not apply"),
        ({"out_term_weight": -1.0}, "out_term_weight must be a finite number >= 0"),
        ({"head_init": "kmeans"}, "head_init='kmeans' is not valid; choose one of: random, class_means, features"),
        ({"loss": "oe", "head_init": "features"}, "set head=gaussian or head_init=random"),
        ({"head_init": "features", "schedule": "finetune", "init_checkpoint": "m.keras"},
         "head_init applies to the scratch schedule"),
        ({"head_learning_rate_scale": -0.1}, "head_learning_rate_scale must be"),
        ({"head_weight_decay": float("nan")}, "head_weight_decay must be"),
    ],
)
def test_validation_messages_name_the_fix(changes, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig(**changes).validate()


def test_for_loss_unsets_the_method_fields_another_method_does_not_take():
    shared = ExperimentConfig(loss="energy", margin_in=-27.0, margin_out=-5.0, loss_weight=0.2)
    assert shared.for_loss("ice").loss_kwargs() == {"weight": 0.2}
    assert shared.for_loss("ice").margin_in is None
    assert shared.for_loss("ce").loss_kwargs() == {} and shared.for_loss("ce").loss_weight is None
    assert shared.for_loss("energy") == shared


def test_hyperparameters_are_the_method_s_own_and_recorded_at_their_effective_values():
    config = ExperimentConfig(loss="energy", margin_in=-27.0)
    assert config.options == {"margin_in": -27.0} and config.margin_out is None
    resolved = config.resolved()
    assert resolved.options == {"loss_weight": 0.1, "margin_in": -27.0, "margin_out": -5.0}
    assert resolved.to_dict()["method_options"] == resolved.options
    assert ExperimentConfig.from_dict(resolved.to_dict()) == resolved
    # A config.json of the flat fields reads as today's options.
    legacy = {**ExperimentConfig(loss="oe").to_dict(), "loss_weight": 0.3, "margin_in": None}
    del legacy["method_options"]
    assert ExperimentConfig.from_dict(legacy).options == {"loss_weight": 0.3}
    with pytest.raises(ValueError, match="temperature: no registered method has such a hyperparameter"):
        ExperimentConfig(method_options={"temperature": 1.0}).validate()


def test_each_declared_hyperparameter_is_its_constructor_s_default():
    for name in losses.names():
        constructed = {key: value for key, value in losses.LOSSES[name]().get_config().items()
                       if key != "name"}
        assert losses.spec(name).hyperparameters == constructed, name


def test_the_method_spec_decides_head_and_score():
    for name in losses.names():
        spec = losses.spec(name)
        config = ExperimentConfig(loss=name)
        assert (config.head_kind, config.score_name) == (spec.default_head, spec.default_score)
        assert set(config.loss_kwargs()) <= set(spec.hyperparameters)
