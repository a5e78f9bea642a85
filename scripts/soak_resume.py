"""Kills tiny training runs at random moments, resumes each until it finishes, and
checks what is left against an uninterrupted run.

  python scripts/soak_resume.py                      # 20 kills, into a temporary folder
  python scripts/soak_resume.py --kills=50 --seed=3 --workdir=/tmp/soak

A reference run trains first, uninterrupted, and its wall time T sets the range of
the kill moments: each attempt of a run is killed (SIGKILL) after a delay drawn
uniformly from [0, T], so kills land in start-up, training, checkpointing,
evaluation and export alike; an attempt that ends first has finished the run. A run
is restarted with the same command until it finishes, and new runs start until
--kills kills were injected. Every finished run folder must then be complete and
consistent:
  - results.json equal to the reference's, metrics.jsonl with each epoch once and
    equal to the reference's (timing fields aside), the same final weights (the runs
    are --deterministic);
  - a SavedModel that loads, one checkpoint state, no staging files and no run.lock of a
    live process (a kill after the last write leaves a dead one's, which the next run
    into the folder takes over).

Prints a table: kills injected, runs, runs finished, results lost (must be 0), and
each check. Exit status 1 when a check fails.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from ice_tf.experiment import run_folder  # noqa: E402
from ice_tf.experiment.run_folder import without_timing  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_RUN = [
    "--flagfile=demo", "--loss=ice", "--limit_train=192", "--batch_in=32",
    "--batch_out=64", "--epochs=3", "--learning_rate=0.01", "--eval_limit=100",
    "--eval_draws=1", "--ood_datasets=gaussian", "--deterministic",
]

flags.DEFINE_integer("kills", 20, "Kills to inject in all.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the kill moments.")
flags.DEFINE_string("workdir", None, "Where the runs go (default: a temporary folder, removed).")
flags.DEFINE_integer("max_attempts", 200, "Give up after this many attempts in all.")
FLAGS = flags.FLAGS


def _train(folder):
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO, "scripts", "train.py"), *TINY_RUN,
         f"--output_dir={folder}"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _records(folder):
    return [without_timing(record) for record in run_folder.read_metrics(folder, strict=True)]


def _results(folder):
    return without_timing(run_folder.read_results(folder))


def _weights(folder):
    import keras

    import ice_tf.models  # noqa: F401  (registers OODModel for loading)

    return keras.models.load_model(run_folder.path(folder, run_folder.MODEL_FILE),
                                   compile=False).get_weights()


def check_folder(folder, reference):
    """{check: passed} for one finished run folder against the reference's."""
    import numpy as np
    import tensorflow as tf

    checkpoints = run_folder.path(folder, run_folder.CHECKPOINTS_DIR)
    leftovers = [name for directory in (folder, checkpoints)
                 for name in os.listdir(directory) if name.startswith(run_folder.STAGING_PREFIXES)]
    checks = {
        "results equal": _results(folder) == reference["results"],
        "metrics: each epoch once, equal": _records(folder) == reference["records"],
        "final weights equal": all(np.array_equal(a, b) for a, b in
                                   zip(_weights(folder), reference["weights"])),
        "SavedModel loads": "serving_default" in tf.saved_model.load(
            run_folder.path(folder, run_folder.SAVED_MODEL_DIR)).signatures,
        "the last two checkpoint states": sorted(os.listdir(checkpoints))
        == ["epoch-0002.weights.h5", "epoch-0003.weights.h5", "last.json", "previous.json"],
        # A kill after the last write leaves a dead process's lock: not held.
        "no live lock, no staging files": not leftovers
        and not run_folder.RunLock(folder).is_held(),
    }
    return checks


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="soak-")
    rng = random.Random(FLAGS.seed)
    started = time.time()
    reference_folder = os.path.join(workdir, "reference")
    shutil.rmtree(reference_folder, ignore_errors=True)
    process = _train(reference_folder)
    _, error = process.communicate()
    if process.returncode:
        sys.exit(f"the reference run failed:\n{error[-2000:]}")
    duration = time.time() - started
    reference = {"results": _results(reference_folder), "records": _records(reference_folder),
                 "weights": _weights(reference_folder)}
    print(f"reference run: {duration:.1f} s; kills drawn from [0, {duration:.1f}] s", flush=True)

    kills = attempts = 0
    finished, failures, kill_moments = [], [], []
    while kills < FLAGS.kills and attempts < FLAGS.max_attempts:
        folder = os.path.join(workdir, f"run{len(finished) + 1:03d}")
        shutil.rmtree(folder, ignore_errors=True)
        while attempts < FLAGS.max_attempts:
            attempts += 1
            process = _train(folder)
            delay = rng.uniform(0, duration) if kills < FLAGS.kills else None
            try:
                _, error = process.communicate(timeout=delay)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.communicate()
                kills += 1
                kill_moments.append(delay)
                print(f"  {os.path.basename(folder)}: killed at {delay:5.1f} s "
                      f"({kills}/{FLAGS.kills})", flush=True)
                if run_folder.is_finished(folder):
                    finished.append(folder)  # killed after its last write
                    print(f"  {os.path.basename(folder)}: finished before the kill", flush=True)
                    break
                continue
            if process.returncode:
                failures.append(f"{folder}: exit {process.returncode}: "
                                f"{error.strip().splitlines()[-1] if error.strip() else ''}")
                break
            finished.append(folder)
            print(f"  {os.path.basename(folder)}: finished", flush=True)
            break
    # A run whose last attempt was killed is finished now, with no kill.
    for folder in sorted({os.path.join(workdir, name) for name in os.listdir(workdir)
                          if name.startswith("run")} - set(finished)):
        process = _train(folder)
        _, error = process.communicate()
        (finished.append(folder) if process.returncode == 0 else failures.append(
            f"{folder}: exit {process.returncode}: {error.strip().splitlines()[-1:]}"))

    totals = {}
    for folder in finished:
        for check, passed in check_folder(folder, reference).items():
            totals.setdefault(check, []).append(passed)
    lost = len(failures) + sum(1 for folder in finished if not run_folder.is_finished(folder))
    print()
    print("| soak | value |")
    print("|---|---|")
    print(f"| kills injected (SIGKILL) | {kills} |")
    print(f"| kill moments (s) | min {min(kill_moments, default=0):.1f}, "
          f"max {max(kill_moments, default=0):.1f} |")
    print(f"| runs / finished | {len(finished) + len(failures)} / {len(finished)} |")
    print(f"| attempts (processes started) | {attempts} |")
    print(f"| results lost | {lost} |")
    for check, passed in totals.items():
        print(f"| {check} | {sum(passed)} of {len(passed)} |")
    print(f"\nCommand: python scripts/soak_resume.py --kills={FLAGS.kills} --seed={FLAGS.seed}; "
          f"{time.time() - started:.0f} s in all; runs under {workdir}")
    for failure in failures:
        print(f"failed: {failure}")
    if not FLAGS.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    ok = not failures and lost == 0 and all(all(passed) for passed in totals.values())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    app.run(main)
