"""The cost of synchronising two workers: the all-reduce of one step's gradients.

Starts two worker processes on localhost ports (`--strategy=multi_worker`'s
`MultiWorkerMirroredStrategy`, as tests/test_multi_worker.py does), and times, on
each, `--rounds` all-reduces of a float32 tensor the size of a backbone's gradients
(WRN-40-2: 2,247,664 values, 9.0 MB), the collective every multi-worker training step
adds to a one-device step. Prints the median per all-reduce and the implied
bandwidth; docs/results.md's scaling estimate uses it.

Run:
  python scripts/multi_worker_overhead.py                     # WRN-40-2's gradient size
  python scripts/multi_worker_overhead.py --backbone=small_cnn --rounds=5
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _free_port():
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def worker(backbone, rounds):
    from ice_tf import distribute

    strategy = distribute.get_strategy("multi_worker")  # before any other op
    import tensorflow as tf

    from ice_tf import backbones

    size = backbones.get(backbone, (32, 32, 3)).count_params()
    values = tf.ones([size], tf.float32)

    @tf.function
    def all_reduce():
        per_replica = strategy.run(lambda: tf.identity(values))
        return strategy.reduce("SUM", per_replica, axis=None)

    all_reduce()  # traces and connects
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        total = all_reduce()
        float(total[0])
        times.append(time.perf_counter() - start)
    print(json.dumps({"values": size, "times_s": times}), flush=True)


def main():
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="wrn40_2")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.backbone, args.rounds)
    cluster = {"worker": [f"localhost:{_free_port()}" for _ in range(2)]}
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", f"--backbone={args.backbone}",
             f"--rounds={args.rounds}"], env=env, stdout=subprocess.PIPE, text=True))
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    if any(process.returncode for process in processes):
        raise SystemExit("error: a worker failed; its messages are above.")
    reports = [json.loads(output.strip().splitlines()[-1]) for output in outputs]
    megabytes = reports[0]["values"] * 4 / 1e6
    print(f"| {args.backbone} gradients | {megabytes:.1f} MB | 2 workers, localhost |")
    print("|---|---|---|")
    for index, report in enumerate(reports):
        median = statistics.median(report["times_s"])
        print(f"| worker {index} | median all-reduce {1000 * median:.1f} ms | "
              f"{megabytes / median:.0f} MB/s over {args.rounds} rounds |")


if __name__ == "__main__":
    main()
