"""Multi-worker training (`--strategy=multi_worker`) with two local worker processes.

Two workers on localhost ports end two steps with the weights one device reaches on
the same global batches; a run whose worker is killed mid-epoch resumes, once the job
is started again, and ends where an uninterrupted run ends.

The step comparison runs with Eigen's kernels (`TF_ENABLE_ONEDNN_OPTS=0`), as
tests/test_distribute.py explains: oneDNN picks other kernels for the half-size
per-replica batches, which moves the update by up to 2.5e-4 on some CPUs.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

RUNNER = pathlib.Path(__file__).resolve().parent / "multi_worker_runner.py"
REPO = RUNNER.parents[1]


def _free_port():
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _launch(args, tmp_path, tag, kill_worker_at=None, **env_vars):
    cluster = {"worker": [f"localhost:{_free_port()}" for _ in range(2)]}
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO), **env_vars,
                   TF_CONFIG=json.dumps({"cluster": cluster,
                                         "task": {"type": "worker", "index": index}}))
        extra = [f"--kill-at={kill_worker_at}"] if kill_worker_at and index == 1 else []
        log = open(tmp_path / f"{tag}-worker{index}.log", "w")
        processes.append(subprocess.Popen([sys.executable, str(RUNNER), *args, *extra], env=env,
                                          stdout=log, stderr=subprocess.STDOUT))
    return processes


def _wait(processes, tmp_path, tag, timeout=400):
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise
    logs = "\n".join((tmp_path / f"{tag}-worker{i}.log").read_text()[-3000:] for i in range(2))
    return codes, logs


def _weights(path):
    return keras.models.load_model(path, compile=False).get_weights()


def test_two_worker_steps_equal_one_device(tmp_path):
    init, one_device = tmp_path / "init.npz", tmp_path / "one_device.npz"
    eigen = dict(TF_ENABLE_ONEDNN_OPTS="0")
    completed = subprocess.run([sys.executable, str(RUNNER), "reference", str(init), str(one_device)],
                               env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO),
                                        **eigen), capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    start, expected = (list(np.load(path).values()) for path in (init, one_device))

    processes = _launch(["steps", str(init), str(tmp_path / "w{}.npz")], tmp_path, "steps", **eigen)
    codes, logs = _wait(processes, tmp_path, "steps")
    assert codes == [0, 0], logs
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(start, expected))
    assert moved > 1e-2  # the steps changed the weights
    for index in range(2):
        got = list(np.load(tmp_path / f"w{index}.npz").values())
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_a_killed_worker_resumes_and_ends_as_an_uninterrupted_run(tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    codes, logs = _wait(_launch(["run", str(whole)], tmp_path, "whole"), tmp_path, "whole")
    assert codes == [0, 0], logs

    # Worker 1 dies at step 2 of epoch 2; the chief's collectives then fail.
    codes, logs = _wait(_launch(["run", str(resumed)], tmp_path, "killed", kill_worker_at="2:2"),
                        tmp_path, "killed")
    assert codes[1] == -9 and codes[0] != 0, logs
    assert not (resumed / "results.json").exists()
    assert json.loads((resumed / "checkpoints" / "last.json").read_text())["epoch"] == 1

    codes, logs = _wait(_launch(["run", str(resumed)], tmp_path, "restarted"), tmp_path,
                        "restarted")
    assert codes == [0, 0], logs
    assert "Resuming" in (tmp_path / "restarted-worker0.log").read_text()
    # Only the chief wrote a run folder.
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["resumed", "whole"]
    for a, b in zip(_weights(resumed / "model.keras"), _weights(whole / "model.keras")):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
    results = [json.loads((folder / "results.json").read_text()) for folder in (whole, resumed)]
    assert results[0]["accuracy"] == pytest.approx(results[1]["accuracy"], abs=1e-6)


def test_the_overhead_script_times_the_all_reduce_on_two_workers():
    script = REPO / "scripts" / "multi_worker_overhead.py"
    completed = subprocess.run([sys.executable, str(script), "--backbone=small_cnn", "--rounds=2"],
                               capture_output=True, text=True, timeout=300,
                               env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "| small_cnn gradients |" in completed.stdout
    assert completed.stdout.count("median all-reduce") == 2
