"""scripts/device_check.sh --cpu: the accelerator check's smoke mode, so that the script
never rots between the runs on a GPU."""

import os
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "device_check.sh"


def test_device_check_cpu_mode_runs_every_part_and_prints_the_table(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, DEVICE_CHECK_OUT=str(tmp_path))
    completed = subprocess.run(["bash", str(SCRIPT), "--cpu"], capture_output=True, text=True,
                               env=env, timeout=600)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    table = completed.stdout
    for part in ("device_tests", "benchmark", "ice_run"):
        assert f"| {part} | ok |" in table, table
    assert "3 passed" in table
    assert "ice, float32, XLA on" in table and "images/s" in table
    assert "small_cnn at 32x32x3" in table and "accuracy" in table
    assert (tmp_path / "ice_run" / "results.json").exists()


def test_device_check_fails_when_a_part_fails(tmp_path):
    env = dict(os.environ, PYTHON="false", DEVICE_CHECK_OUT=str(tmp_path))
    completed = subprocess.run(["bash", str(SCRIPT), "--cpu"], capture_output=True, text=True,
                               env=env, timeout=120)
    assert completed.returncode != 0
