"""Every flag file parses into a valid config and dry-runs on mock data."""

import glob
import os
import sys

import pytest
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))

import experiment_flags  # noqa: E402
from ice_tf import experiment  # noqa: E402

RUNNABLE = sorted(
    glob.glob(os.path.join(REPO, "flags", "experiments", "*.flags"))
    + glob.glob(os.path.join(REPO, "flags", "demo*.flags"))
)


@pytest.fixture(scope="module")
def flag_values():
    values = flags.FlagValues()
    experiment_flags.define_flags(flag_values=values)
    return values


def parse(flag_values, path, *extra):
    """Parses a flag file as a script would (nested paths relative to the repository)."""
    flag_values.unparse_flags()
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        flag_values(["test", f"--flagfile={os.path.relpath(path, REPO)}", *extra])
    finally:
        os.chdir(cwd)
    return experiment_flags.config_from_flags(flag_values)


def test_there_is_a_flag_file_for_every_row_of_tables_1_to_3():
    names = {os.path.basename(p)[: -len(".flags")] for p in RUNNABLE}
    for method in ("oe", "energy", "ice"):
        assert f"cifar10_wrn34_10_finetune_{method}" in names
        assert f"cifar10_wrn34_10_scratch_{method}" in names
        assert f"cifar10_densenet40_12_scratch_{method}" in names
        assert f"cifar100_wrn34_10_scratch_{method}" in names
    for ablation in ("energy_gaussian", "bce", "ice_minus"):
        assert f"cifar10_wrn34_10_scratch_{ablation}" in names
    assert {"demo", "demo_near"} <= names


@pytest.mark.parametrize("path", RUNNABLE, ids=os.path.basename)
def test_flag_file_parses_and_dry_runs(flag_values, path, tmp_path):
    config = parse(flag_values, path, "--dry_run")
    assert config.output_dir.startswith("runs/")
    logs = experiment.dry_run(config)
    assert logs["loss"] > 0


def test_flag_file_round_trip(flag_values, tmp_path):
    config = parse(flag_values, os.path.join(REPO, "flags", "experiments", "cifar10_wrn34_10_scratch_ice.flags"))
    written = tmp_path / "flags.txt"
    written.write_text(experiment_flags.to_flagfile(config))
    assert parse(flag_values, str(written)) == config


@pytest.mark.parametrize(
    "bad, message",
    [
        ("--loss=focal", "loss='focal' is not valid; choose one of: bce, ce"),
        ("--backbone=resnet", "choose one of: densenet40_12"),
        ("--loss_weight=-1", "lambda"),
        ("--epochs=0", "epochs must be >= 1"),
        ("--in_dataset=imagenet", "in_dataset='imagenet' is not valid"),
        ("--ood_datasets=svhn,nope", "OOD set 'nope'"),
        ("--schedule=finetune", "init_checkpoint"),
    ],
)
def test_bad_flags_are_rejected_with_a_clear_message(flag_values, bad, message):
    flag_values.unparse_flags()
    with pytest.raises(flags.IllegalFlagValueError, match=message.replace("(", r"\(")):
        flag_values(["test", bad])
