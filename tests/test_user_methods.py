"""A method owns its hyperparameters, and a user's method reaches the command line.

A loss class declares its hyperparameters (`ice_tf.losses.Hyperparameter`); the flags,
`--helpshort`, the validation and the run folder's record come from that declaration.
A module named by `--import` (or $ICE_TF_IMPORTS) is imported before the flags are
defined, so the loss it registers is a `--loss` choice with its own flags.
"""

import json
import os
import subprocess
import sys
import textwrap

from ice_tf.cli import runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}
ENV.pop(runner.IMPORTS_ENV, None)

USER_MODULE = textwrap.dedent('''
    import keras
    import tensorflow as tf
    import ice_tf


    @keras.saving.register_keras_serializable(package="power_losses")
    class PowerOutlierLoss(ice_tf.losses.OODLoss):
        """OE's outlier term with |f - mean f| ** p in place of the uniform CE."""

        term_names = ("ce", "out_term")
        hyperparameter_specs = (
            ice_tf.losses.weight_hyperparameter(0.5),
            ice_tf.losses.Hyperparameter("power", 2.0, "Exponent p of the outlier term.",
                                         minimum=1.0),
        )

        def __init__(self, weight=None, power=2.0, name=None):
            super().__init__(weight=weight, name=name)
            self.power = float(power)

        def extra_terms(self, labels, outputs_in, outputs_out):
            if outputs_out is None:
                return {}
            centred = outputs_out - tf.reduce_mean(outputs_out, axis=-1, keepdims=True)
            return {"out_term": tf.reduce_mean(tf.abs(centred) ** self.power)}

        def get_config(self):
            return {**super().get_config(), "power": self.power}


    ice_tf.losses.register("power_oe", PowerOutlierLoss)
''')

TINY = ["--flagfile=demo", "--epochs=1", "--limit_train=64", "--batch_in=32", "--batch_out=64",
        "--eval_limit=50", "--eval_draws=1", "--ood_datasets=gaussian", "--analyses=",
        "--noexport", "--nocalibrate_confidence"]


def _ice_tf(*args, cwd, env=ENV):
    return subprocess.run([sys.executable, "-m", "ice_tf", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_user_loss_with_its_own_hyperparameter_trains_from_the_command_line(tmp_path):
    (tmp_path / "power_losses.py").write_text(USER_MODULE)
    helped = _ice_tf("train", "--import=power_losses", "--helpshort", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr[-2000:]
    method = helped.stdout.split("method flags:")[1].split("schedule flags:")[0]
    assert "--power (default: unset)" in method
    assert "Exponent p of the outlier term. Methods (default): power_oe (2)" in " ".join(method.split())

    done = _ice_tf("train", "--import=power_losses", "--loss=power_oe", "--power=3", *TINY,
                   "--output_dir=run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["method_options"] == {"loss_weight": 0.5, "power": 3.0}  # effective values
    assert config["imports"] == ["power_losses"]
    flags_text = (tmp_path / "run" / "flags.txt").read_text().splitlines()
    assert flags_text[0] == "--import=power_losses"
    assert "--power=3.0" in flags_text and "--loss_weight=0.5" in flags_text

    # The run's flags.txt re-runs it: finished, so refused naming --overwrite.
    again = _ice_tf("train", "--flagfile=run/flags.txt", cwd=tmp_path)
    assert again.returncode == 1 and "holds a finished run" in again.stderr

    bad = _ice_tf("train", "--import=power_losses", "--loss=power_oe", "--power=0.5", *TINY,
                  "--dry_run", cwd=tmp_path)
    assert bad.stderr.strip().splitlines() == [
        "error: --power must be a finite number >= 1, got 0.5. (--helpshort lists the flags)"]


def test_the_environment_names_modules_too_and_a_bad_module_is_one_line(tmp_path):
    (tmp_path / "power_losses.py").write_text(USER_MODULE)
    env = {**ENV, runner.IMPORTS_ENV: "power_losses"}
    done = _ice_tf("compare", *TINY, "--methods=power_oe", "--dry_run", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "power_oe seed 1: dry run OK" in done.stdout
    missing = _ice_tf("train", "--import=no_such_module", "--flagfile=demo", "--dry_run",
                      cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1].startswith(
        "error: --import=no_such_module: ModuleNotFoundError: No module named 'no_such_module'")


def test_modules_to_import_reads_flags_and_environment():
    argv = ["ice-tf train", "--import=a", "--import", "b", "--loss=x"]
    assert runner.modules_to_import(argv, environ={runner.IMPORTS_ENV: "c, a"}) == ["c", "a", "b"]
