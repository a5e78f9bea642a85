#!/usr/bin/env bash
# A prepared check of an accelerator, in one go: the tests that need a GPU
# (tests/test_device.py: mixed-precision numerics, MirroredStrategy over the visible
# GPUs, XLA on and off), the training-step throughput (WRN-40-2, 128 + 256 images,
# float32 and mixed_float16, XLA off and on) and a 2-epoch WRN-40-2 ICE run on the
# embedded benchmark at 32x32x3. Prints one table; exits non-zero if any part failed.
#
#   scripts/device_check.sh          # on a machine with one GPU: under 8 minutes
#   scripts/device_check.sh --cpu    # the same parts, CPU-sized (the test suite runs it)
#
# PYTHON names the interpreter (default: python); DEVICE_CHECK_OUT keeps the logs there.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
[[ "${1:-}" == "--cpu" ]] && MODE=cpu
PYTHON="${PYTHON:-python}"
WORK="${DEVICE_CHECK_OUT:-$(mktemp -d)}"
mkdir -p "$WORK"
RESULTS="$WORK/parts.tsv"
: > "$RESULTS"
export TF_CPP_MIN_LOG_LEVEL=2

part() {  # part NAME COMMAND...: runs it, logs to $WORK/NAME.log, records status and seconds
  local name="$1" start status
  shift
  start=$(date +%s)
  echo "== $name" >&2
  if "$@" > "$WORK/$name.log" 2>&1; then status=ok; else status=FAILED; tail -n 40 "$WORK/$name.log" >&2; fi
  printf '%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - start ))" >> "$RESULTS"
}

if [[ $MODE == gpu ]]; then
  BENCH=(--methods=oe,ice --precisions=float32,mixed_float16 --xla=off,on --steps=10 --warmup=2)
  BACKBONE=wrn40_2
  RUN=(--epochs=2)
else
  BENCH=(--backbone=small_cnn --image_size=16 --batch_in=8 --batch_out=16 --methods=ice
         --precisions=float32 --xla=off,on --steps=1 --warmup=1)
  BACKBONE=small_cnn
  RUN=(--epochs=1 --limit_train=128 --eval_limit=100 --eval_draws=1 --ood_datasets=gaussian)
fi

# On a CPU, float16 is emulated (slow) and bfloat16 is tested by tests/test_precision.py.
SELECT=()
[[ $MODE == cpu ]] && SELECT=(-k "not mixed_float16 and not mixed_bfloat16")
part device_tests env ICE_TF_DEVICE_CHECK=$MODE "$PYTHON" -m pytest -q -p no:cacheprovider \
  tests/test_device.py "${SELECT[@]}"
part benchmark "$PYTHON" scripts/benchmark.py "${BENCH[@]}" --json_out="$WORK/benchmark.json"
part ice_run bash -c '"$0" -c "import ice_tf.backbones as b; b.get(\"$1\", (32, 32, 3)).save(\"$2/backbone.keras\")" \
  && "$0" -m ice_tf train --flagfile=demo --backbone="$2/backbone.keras" --schedule=scratch \
     --output_dir="$2/ice_run" --noexport "${@:3}"' "$PYTHON" "$BACKBONE" "$WORK" "${RUN[@]}"

"$PYTHON" - "$WORK" "$MODE" "$BACKBONE" <<'PY'
import json, os, re, sys

work, mode, backbone = sys.argv[1:4]
parts = [line.rstrip("\n").split("\t") for line in open(os.path.join(work, "parts.tsv"))]
rows = []
for name, status, seconds in parts:
    log = open(os.path.join(work, f"{name}.log")).read()
    detail = ""
    if name == "device_tests":
        found = re.findall(r"\d+ (?:passed|failed|skipped|error)\w*", log)
        detail = ", ".join(found)
    elif name == "ice_run" and os.path.exists(os.path.join(work, "ice_run", "results.json")):
        results = json.load(open(os.path.join(work, "ice_run", "results.json")))
        detail = (f"{backbone} at 32x32x3, precision {results.get('precision')}: accuracy "
                  f"{100 * results['accuracy']:.2f}%, mean AUROC "
                  f"{100 * results['mean']['auroc']['mean']:.2f}%, "
                  f"{results.get('train_seconds')} s training")
    rows.append((name, status, seconds, detail))
    if name == "benchmark" and os.path.exists(os.path.join(work, "benchmark.json")):
        for r in json.load(open(os.path.join(work, "benchmark.json")))["results"]:
            rows.append((f"  {r['method']}, {r['precision']}, XLA {r['xla']}", "", "",
                         f"{r['images_per_s']:.1f} images/s ({r['median_s']:.4f} s/step)"))
print(f"\nDevice check ({mode}), logs in {work}\n")
print("| part | status | seconds | result |\n|---|---|---:|---|")
for row in rows:
    print("| " + " | ".join(str(cell) for cell in row) + " |")
sys.exit(0 if all(status == "ok" for _, status, _ in parts) else 1)
PY
