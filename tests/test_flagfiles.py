"""Every flag file parses into a valid config and dry-runs on mock data."""

import glob
import os

import pytest
from absl import flags

from ice_tf import experiment  # noqa: E402
from ice_tf.cli import experiment_flags, flagfiles  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
    """Parses a flag file as a command does, from another directory than the repository
    (nested flag files resolve relative to the including file)."""
    flag_values.unparse_flags()
    flag_values(flagfiles.expand(["test", f"--flagfile={path}", *extra], cwd="/"))
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


# One flag file per backbone dry-runs with its real backbone; the others swap in the
# small CNN (same data, head, loss and schedule), which keeps the suite within minutes:
# a WRN-34-10 step takes about 20 s here.
FULL_BACKBONE = {
    "cifar10_wrn34_10_finetune_ice.flags",
    "cifar10_densenet40_12_scratch_ice.flags",
    "cifar10_wrn40_2_finetune_energy.flags",
    "demo.flags",
}


# With the small CNN swapped in, a dry run depends on these fields only; a flag file
# whose signature an earlier one dry-ran is parsed and validated, not run again.
_DRY_RUN_SIGNATURES = set()


def _signature(config):
    return (config.loss, config.head_kind, config.score_name, config.schedule, config.in_dataset,
            config.outlier_dataset, config.ood_datasets, config.analyses,
            tuple(sorted(config.loss_kwargs().items())))


@pytest.mark.parametrize("path", RUNNABLE, ids=os.path.basename)
def test_flag_file_parses_and_dry_runs(flag_values, path):
    config = parse(flag_values, path, "--dry_run")
    assert config.output_dir.startswith("runs/")
    if os.path.basename(path) not in FULL_BACKBONE:
        if _signature(config) in _DRY_RUN_SIGNATURES:
            return
        _DRY_RUN_SIGNATURES.add(_signature(config))
        config = config.replace(backbone="small_cnn", dropout_rate=None)
    logs = experiment.dry_run(config)
    assert logs["loss"] > 0


def test_every_backbone_is_dry_run_in_full(flag_values):
    used = {parse(flag_values, path).backbone for path in RUNNABLE}
    in_full = {
        parse(flag_values, path).backbone
        for path in RUNNABLE
        if os.path.basename(path) in FULL_BACKBONE
    }
    assert used == in_full == {"wrn34_10", "densenet40_12", "wrn40_2", "small_cnn"}
