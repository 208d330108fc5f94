#!/usr/bin/env bash
# Every GPU check of issue 10 as one command for a lent device machine. It ends within
# SESSION_SECONDS (560, under the device's 10-minute limit per command); each part has its own time
# limit, cut to what is left, and a part that fails does not stop the others:
#   0. tests/test_rnn.py, whose CUDA cases run the GRU op on cuDNN and through Inductor;
#   1. the trainer's own CUDA path: train.py on the demo config (bf16 autocast) eager, then with
#      MODEL.COMPILE reduce-overhead, and evaluate_all_cases.py on the compiled run's checkpoint;
#   2. bench/gpu_step.py --quick: ViT-B/16 and ViT-L/14 eager, then each compiled in the default mode
#      and with CUDA graphs (reduce-overhead), the step by region and compile seconds by region.
# Results go to OUT_DIR (default $OUT, else /tmp/gpu_session): *.json, *.txt logs, summary.txt.
#   bash bench/gpu_session.sh [OUT_DIR]
# The machine's Python may lack open_clip_torch, smplx, yacs, ftfy, wcwidth and pytest and reach no
# registry: put their wheels in .whl/ and carry .whl (installed into /tmp/site here):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl open_clip_torch smplx yacs \
#       ftfy wcwidth pytest pluggy iniconfig packaging pygments
# At most 7 files land in OUT_DIR (the device returns 8).
# A CPU rehearsal: TRAIN_DEVICE=cpu TRAIN_OPTS="<small-run overrides>" SESSION_SCALE=<n> (limits x n).
set -u
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/gpu_session}}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
scale=${SESSION_SCALE:-1}
summary="$out/summary.txt"
: > "$summary"

limit() { "$python" -c "import sys; print(max(1, int(float(sys.argv[1]) * float(sys.argv[2]))))" "$1" "$scale"; }

deadline=$(( SECONDS + $(limit "${SESSION_SECONDS:-560}") ))  # under the device's 10-minute limit per command

part() {  # part NAME SECONDS COMMAND...: run with a time limit (cut to what is left), log to NAME.txt
    local name=$1 seconds; seconds=$(limit "$2"); shift 2
    local left=$(( deadline - SECONDS ))
    if (( left < 5 )); then echo "$name: skipped, no time left" | tee -a "$summary"; return; fi
    (( seconds > left )) && seconds=$left
    local start=$SECONDS
    timeout --kill-after=5 "$seconds" "$@" > "$out/$name.txt" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - start)) s (limit $seconds s)" | tee -a "$summary"
}

if ls .whl/*.whl > /dev/null 2>&1; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl >> "$summary" 2>&1 && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" | tee -a "$summary"

# 0. the GPU variants of the GRU op's tests (cuDNN, Inductor on CUDA): a broken op fails here, in seconds
part preflight 90 "$python" -m pytest -q -p no:cacheprovider tests/test_rnn.py

runs=$(mktemp -d)
common=(--config_file configs/demo.yml MODEL.DEVICE "${TRAIN_DEVICE:-auto}" DATASETS.ROOT_DIR "$runs/data"
        DATASETS.SYNTHETIC_IF_MISSING True DATALOADER.NUM_WORKERS 4 SOLVER.MAX_EPOCHS 2 SOLVER.EVAL_PERIOD 1
        SOLVER.CHECKPOINT_PERIOD 1 ${TRAIN_OPTS:-})
part train_eager 60 "$python" train.py "${common[@]}" OUTPUT_DIR "$runs/eager"
part train_cudagraphs 110 "$python" train.py "${common[@]}" OUTPUT_DIR "$runs/compiled" MODEL.COMPILE True \
    MODEL.COMPILE_MODE reduce-overhead
# The checkpoint's config (MODEL.COMPILE reduce-overhead) builds the evaluated model.
part evaluate_cudagraphs 35 "$python" evaluate_all_cases.py --model_path "$runs/compiled/checkpoint_last.pth" \
    DATASETS.ROOT_DIR "$runs/data" MODEL.DEVICE "${TRAIN_DEVICE:-auto}"
for run in eager cudagraphs; do  # each run's epoch lines (loss, clips/s) and validation for the summary
    grep -ho "epoch [0-9]* done in.*\|Validation mAP-3.*" "$out/train_$run.txt" 2>/dev/null | sed "s/^/train_$run: /" \
        >> "$summary"
done
grep -h "mAP-3 (pooled\|mean over cases" "$out/evaluate_cudagraphs.txt" 2>/dev/null | sed "s/^/evaluate: /" >> "$summary"
rm -rf "$runs"

# One process, all that is left of the time: eager B/16 and L/14, then per model the compiled step in
# the default mode and with CUDA graphs (its JSON keeps every figure taken before a cut).
part gpu_step 400 "$python" bench/gpu_step.py --quick --models "${BENCH_MODELS:-b16,l14}" \
    --compile-mode default,reduce-overhead --json "$out/gpu_step.json"

echo "summary: $summary"
cat "$summary"
