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
    assert "| method | head | precision | XLA | images/step |" in out
    assert "Machine:" in out and "TensorFlow" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "method" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["ce", "oe", "ice"]
    results = {r["method"]: r for r in json.loads(json_path.read_text())["results"]}
    assert results["ce"]["images_per_step"] == 8
    assert results["oe"]["images_per_step"] == results["ice"]["images_per_step"] == 24
    assert results["oe"]["ratio_to_oe"] == 1.0
    assert results["ice"]["head"] == "gaussian" and len(results["ice"]["times_s"]) == 1
    # The peak resident memory of the process during the step (Linux), in MB.
    assert results["ice"]["peak_rss_mb"] is None or results["ice"]["peak_rss_mb"] > 10


def test_benchmark_script_rejects_unknown_method():
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--methods", "ce,nope"],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode != 0
    assert "methods must be distinct names" in completed.stderr


def test_rows_against_the_pytorch_reference_get_speed_ups():
    # In its own process: the script defines absl flags that other scripts' tests define too.
    code = CHECK_SPEEDUPS.replace("TESTS", repr(str(SCRIPT.parents[1] / "tests")))
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert completed.returncode == 0, completed.stderr[-3000:]


CHECK_SPEEDUPS = """
import sys
sys.path.insert(0, TESTS)
from helpers import load_script

benchmark = load_script("benchmark.py")

class FakeWorker:  # the PyTorch process: replies with fixed step times
    seconds = {"nchw/float32": 8.0, "channels_last/float32": 4.0,
               "nchw/bfloat16": 3.0, "channels_last/bfloat16": 2.0}
    info = {"torch": "2.x", "threads": 2, "configurations": list(seconds)}

    def request(self, **message):
        return {"seconds": self.seconds[message["step"]], "loss": 1.0, "peak_rss_mb": 900.0}

config = {"mode": "step"}
worker = FakeWorker()
torch_rows = [benchmark._TorchRow(worker, key, config, 384) for key in worker.info["configurations"]]
tf_rows = []
for method, precision, seconds in (("oe", "mixed_bfloat16", 2.0), ("ice", "mixed_bfloat16", 2.5),
                                   ("oe", "float32", 5.0)):
    row = benchmark._Row(method, "linear", precision, "off", 384)
    row.times = [seconds, seconds]
    tf_rows.append(row)
for row in torch_rows:
    row.timed_step()
    row.timed_step()
results = benchmark.summarize(tf_rows + torch_rows, torch_info=worker.info)
by_label = {(r["method"], r["precision"]): r for r in results}
# Each row against the fastest PyTorch row of its own precision.
assert by_label[("oe", "mixed_bfloat16")]["speedup_vs_torch"] == 1.0
assert by_label[("ice", "mixed_bfloat16")]["speedup_vs_torch"] == 0.8
assert by_label[("oe", "mixed_bfloat16")]["fastest_torch"] == "torch oe (channels-last, bf16 autocast)"
assert by_label[("oe", "float32")]["speedup_vs_torch"] == 0.8
assert by_label[("oe", "float32")]["fastest_torch"] == "torch oe (channels-last)"
assert by_label[("ice", "mixed_bfloat16")]["ratio_to_oe"] == 1.25
assert by_label[("torch oe (NCHW, reference)", "float32")]["speedup_vs_torch"] == 0.5
assert by_label[("torch oe (NCHW, bf16 autocast)", "bfloat16")]["speedup_vs_torch"] == 2.0 / 3.0
assert by_label[("torch oe (channels-last)", "float32")]["ratio_to_oe"] is None
assert by_label[("torch oe (channels-last)", "float32")]["peak_rss_mb"] == 900.0
machine = {"cpu": "x", "usable_cores": 2, "cpu_count": 2, "gpus": [], "python": "3",
           "tensorflow": "2", "keras": "3", "intra_op_threads": 0, "inter_op_threads": 0}
report = benchmark.format_report(results, machine, dict(
    mode="step", backbone="wrn40_2", batch_in=128, batch_out=256, image_size=32, channels=3,
    num_classes=10, ce_uses_outliers=False, warmup=1, steps=2, methods=["oe", "ice"],
    load=(0.5, 2.1)))
assert "PyTorch 2.x (2 threads)" in report
assert "| torch oe (channels-last) | linear | float32 | off | 384 |" in report
assert "| torch oe (channels-last, bf16 autocast) | linear | bfloat16 | off | 384 |" in report
assert "before the run 0.50, after 2.10" in report
"""
