"""The benchmark script runs end to end with minimal settings and prints its table."""

import json
import os
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


def test_benchmark_script_prints_table(tmp_path):
    json_path = tmp_path / "bench.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    completed = subprocess.run(
        [
            sys.executable, str(SCRIPT),
            "--backbone", "small_cnn", "--steps", "1", "--warmup", "1",
            "--batch_in", "8", "--batch_out", "16", "--image_size", "16",
            "--methods", "ce,oe,ice", "--json_out", str(json_path),
        ],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    assert "| method | head | images/step |" in out
    assert "Machine:" in out and "TensorFlow" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "method" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["ce", "oe", "ice"]
    results = {r["method"]: r for r in json.loads(json_path.read_text())["results"]}
    assert results["ce"]["images_per_step"] == 8
    assert results["oe"]["images_per_step"] == results["ice"]["images_per_step"] == 24
    assert results["oe"]["ratio_to_oe"] == 1.0
    assert results["ice"]["head"] == "gaussian" and len(results["ice"]["times_s"]) == 1


def test_benchmark_script_rejects_unknown_method():
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--methods", "ce,nope"],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode != 0
    assert "methods must be distinct names" in completed.stderr
