#!/usr/bin/env bash
# The first run of sngan-train's CUDA defaults on a GPU, most important question first, in a
# time budget (9 minutes by default), so that a run cut short still answers the first questions.
#
# On the GPU machine (one H200, Python 3.12, torch 2.11, no package registry), from the
# repository root, with the wheels of ../shared/device/wheels copied to .device/ (ignored through
# .git/info/exclude and named in the device tool's carry), this one line (under 2,000 characters)
# is the whole invocation:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 || exit; bash scripts/gpu_check.sh --pack
#
# Steps, in this order (each one's output goes to <out>/<step>_*.{log,json}):
#   1  versions: nvidia-smi, driver, Python, torch, CUDA, cuDNN, Triton, the carried packages
#   2  gpu tests: pytest -m gpu tests/ (junit XML for the counts)
#   3  train + resume: sngan.cli.train_main (sngan-train) with the CUDA defaults (bf16 autocast,
#      torch.compile, fused Adam, joint D forward, channels_last, GPU-resident data), the official
#      ResNet at full width on 50,000 synthetic images: iterations 1-150 (checkpoints at 100 and
#      150, FID/IS at 150 with random Inception weights), then resume=<run> to 300 (checkpoints at
#      200 and 300, FID/IS at 300); recorded by scripts/gpu_check.py train: steady it/s, first
#      iterations (compilation), peak CUDA memory, dynamo graphs, graph breaks, compile times
#   4  benchmarks/benchmark.py, both models against the plain PyTorch reference, few rounds
#   5  benchmarks/bench_eval.py at 50,000 samples if the time left allows, else 10,000 (and an
#      extrapolation to 50,000 in the table)
#   6  if time is left, the ResNet benchmark with compile_mode=reduce-overhead, then with each
#      fast path off on its own (--no-amp, --no-compile, --no-channels-last, --no-fused-adam,
#      --no-joint-d-forward)
#   7  ImageNet 128x128: benchmarks/benchmark.py on the official projection model
#      (experiment=sngan_imagenet128_projection, 42 M + 30 M parameters, compiled, bf16) at one
#      GPU's share of the official batches (16 real / 32 generated) and at the global ones
#      (64 / 128): ms per generator iteration, TFLOP/s, peak memory, and what 450,000 iterations
#      take on 1 and on 4 GPUs
# A step whose estimate does not fit in the time left is skipped, and each step runs under a
# timeout of the time left. A failing step does not stop the later ones; the exit status is
# non-zero when step 2 or 3 did not pass. The summary table (scripts/gpu_check.py report) is
# printed last and written to <out>/summary.txt and summary.json.
#
# Usage: bash scripts/gpu_check.sh [--cpu-smoke] [--budget SECONDS] [--steps LIST] [--pack] [OUTDIR]
#   OUTDIR       the output folder: $OUT when set, else OUTDIR, else ./gpu_check_out
#   --cpu-smoke  the same steps at toy size on the CPU (the tiny DCGAN, a handful of iterations,
#                --quick benchmarks at one thread): a few minutes, for the test that keeps this
#                script working (tests/test_gpu_check.py)
#   --budget S   the time budget in seconds (default 540; 900 with --cpu-smoke, where it is a
#                safety net, not a plan); also GPU_CHECK_BUDGET_S
#   --steps L    run only these steps (comma-separated ids: 1,7 runs the versions and ImageNet)
#   --pack       the device tool brings back at most 8 files from $OUT: keep the step files in
#                the scratch folder and put them into OUTDIR as gpu_check.tar.gz (refreshed after
#                every step) next to summary.txt, summary.json and steps.tsv
# Environment: PYTHON (default python3); GPU_CHECK_WORK, a scratch folder for what is too big to
# bring back (checkpoints, Inception weights, torch-fidelity's cache; default: a temporary folder,
# removed at the end; one given is kept).

set -u

usage() { sed -n '/^# Usage:/,/^# removed at the end/p' "$0" | sed 's/^# \{0,1\}//'; }

MODE=gpu
BUDGET_S=${GPU_CHECK_BUDGET_S:-}
PACK=0
ONLY=
OUTARG=
while (($#)); do
    case $1 in
        --cpu-smoke) MODE=smoke ;;
        --budget) BUDGET_S=${2:?--budget needs seconds}; shift ;;
        --budget=*) BUDGET_S=${1#*=} ;;
        --pack) PACK=1 ;;
        --steps) ONLY=,${2:?--steps needs a list},; shift ;;
        --steps=*) ONLY=,${1#*=}, ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "gpu_check: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) OUTARG=$1 ;;
    esac
    shift
done

PY=${PYTHON:-python3}
[[ $PY == */* && $PY != /* ]] && PY=$PWD/$PY # the steps run in the scratch folder
REPO=$(cd "$(dirname "$0")/.." && pwd)
DEST=${OUT:-${OUTARG:-./gpu_check_out}}
mkdir -p "$DEST" && DEST=$(cd "$DEST" && pwd) || exit 2
if [[ -n ${GPU_CHECK_WORK:-} ]]; then
    WORK=$GPU_CHECK_WORK
    mkdir -p "$WORK" || exit 2
    KEEP_WORK=1
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2
    KEEP_WORK=0
fi
WORK=$(cd "$WORK" && pwd)
if ((PACK)); then STEPS_DIR=$WORK/out; else STEPS_DIR=$DEST; fi
mkdir -p "$STEPS_DIR"
# The steps write into the scratch folder; sngan is imported from this checkout (a bare one on
# the GPU machine: sngan.config then reads the checkout's configs/).
cd "$WORK" || exit 2
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
# Each recompilation's reason in the training log (the summary counts them).
export TORCH_LOGS=${TORCH_LOGS:-recompiles}

RESERVE_S=10 # kept for the summary and the archive
if [[ $MODE == gpu ]]; then
    BUDGET_S=${BUDGET_S:-540}
    P1=150 P2=300
    TRAIN=(data=synthetic data.num_images=50000 device=cuda progress=false log_every=25
        checkpoint_every=100 metrics.eval_every=150 metrics.num_samples=5000)
    BENCH=(--device cuda --warmup 5 --iterations 10 --repeats 3)
    BENCH6=(--device cuda --models resnet --warmup 3 --iterations 10 --repeats 2)
    EVAL=(--device cuda --repeats 1)
    VARIANTS=(reduce-overhead no-amp no-compile no-channels-last no-fused-adam no-joint-d-forward)
    # Seconds each step is expected to need on one H200 (compilation included); a step is
    # started only where its estimate fits in the time left.
    # Step 5 runs at 50,000 samples where EST_5_50K fits, else at 10,000 where EST_5 does.
    EST_1=15 EST_2=100 EST_3=240 EST_4=120 EST_5=50 EST_5_50K=130 EST_6=70 EST_7=240
    IMAGENET=(--device cuda --models imagenet_projection --warmup 3 --iterations 5 --repeats 2)
    IMAGENET_OVERRIDES=()
    IMAGENET_BATCHES=("gpu 16 32" "global 64 128") # one GPU's share of the official, and all
else
    BUDGET_S=${BUDGET_S:-900}
    P1=4 P2=8
    # tests/conftest.py's TINY, with the two evaluations and the checkpoints this check needs.
    TRAIN=(data=synthetic data.num_images=16 model=dcgan model.g_channels=32 model.d_channels=8
        model.z_dim=16 optim.n_dis=2 optim.d_batch_size=8 optim.g_batch_size=8 optim.ema_start=2
        log_every=1 log_exact_every=2 sample_every=2 device=cpu threads=1 progress=false
        checkpoint_every=2 metrics.eval_every=4 metrics.num_samples=10 metrics.batch_size=5)
    # Exactly tests/test_benchmarks.py's and tests/test_bench_eval.py's flags (--json last), so
    # that those tests can read the JSON written here.
    BENCH=(--quick --threads 1 --device cpu)
    BENCH6=(--quick --threads 1 --device cpu --models resnet)
    EVAL=(--quick --device cpu --threads 1)
    VARIANTS=(reduce-overhead no-amp no-compile no-channels-last no-fused-adam no-joint-d-forward)
    SMOKE_VARIANT=no-channels-last # the one fast path that is on by default on the CPU
    EST_1=5 EST_2=30 EST_3=60 EST_4=30 EST_5=60 EST_6=20 EST_7=60
    IMAGENET=(--quick --threads 1 --device cpu --models imagenet_projection)
    # --quick's D width 8 does not divide at 128 px; small batches, one D step: a smoke run.
    IMAGENET_OVERRIDES=(model.d_channels=16 optim.n_dis=1)
    IMAGENET_BATCHES=("gpu 2 4" "global 4 8")
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
fi
if ! [[ $BUDGET_S =~ ^[0-9]+$ ]]; then
    echo "gpu_check: --budget takes whole seconds, got '$BUDGET_S'" >&2
    exit 2
fi

cleanup() { ((KEEP_WORK)) || rm -rf "$WORK"; }
trap cleanup EXIT

: >"$STEPS_DIR/steps.tsv"
declare -A STATUS

left() { echo $((BUDGET_S - RESERVE_S - SECONDS)); }
fits() { (($(left) >= $1)); }

# Run a command under a timeout of the time left (killed 15 s after the TERM if need be).
limited() {
    local t
    t=$(left)
    ((t < 1)) && t=1
    timeout -k 15 "$t" "$@"
}

# record ID NAME STATUS RC SECONDS NOTE: one row of steps.tsv
record() {
    STATUS[$1]=$3
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${6:-}" >>"$STEPS_DIR/steps.tsv"
    echo "gpu_check: step $1 ($2): $3 (exit $4, $5 s)${6:+; $6}"
}

status_of() { # an exit code as a status
    case $1 in
        0) echo ok ;;
        124 | 137) echo "FAIL(timeout)" ;;
        *) echo FAIL ;;
    esac
}

refresh() { # the summary so far, and the archive the device brings back
    "$PY" "$REPO/scripts/gpu_check.py" report "$STEPS_DIR" --budget "$BUDGET_S" --quiet ||
        echo "gpu_check: the summary failed" >&2
    if ((PACK)); then
        tar -czf "$DEST/gpu_check.tar.gz.tmp" -C "$STEPS_DIR" . &&
            mv "$DEST/gpu_check.tar.gz.tmp" "$DEST/gpu_check.tar.gz"
        (cd "$STEPS_DIR" && cp summary.txt summary.json steps.tsv "$DEST"/ 2>/dev/null)
    fi
}

banner() { echo "=== gpu_check step $1: $2 (${SECONDS} s of ${BUDGET_S} s used) ==="; }

# step ID NAME ESTIMATE FUNCTION: run FUNCTION if its estimate fits, record its outcome
step() {
    local id=$1 name=$2 est=$3 fn=$4 t0 rc
    if [[ -n $ONLY && $ONLY != *",${id:0:1},"* ]]; then
        record "$id" "$name" "skipped(--steps)" - 0 "not in --steps${ONLY//,/ }"
        return
    fi
    if ! fits "$est"; then
        record "$id" "$name" "skipped(time)" - 0 "needs ~${est} s, $(left) s left"
        refresh
        return
    fi
    banner "$id" "$name"
    t0=$SECONDS
    NOTE=
    "$fn"
    rc=$?
    record "$id" "$name" "$(status_of "$rc")" "$rc" $((SECONDS - t0)) "$NOTE"
    refresh
}

# tee LOG CMD...: CMD (under the time limit) with its output to the console and LOG
teed() {
    local log=$1
    shift
    limited "$@" 2>&1 | tee -a "$log"
    return "${PIPESTATUS[0]}"
}

# -- the steps ------------------------------------------------------------------------------------

versions() {
    local log=$STEPS_DIR/1_versions.log require=()
    [[ $MODE == gpu ]] && require=(--require-cuda)
    {
        echo "## nvidia-smi"
        if command -v nvidia-smi >/dev/null; then
            timeout 30 nvidia-smi
        else
            echo "nvidia-smi: not found"
        fi
    } 2>&1 | tee "$log"
    teed "$log" "$PY" "$REPO/scripts/gpu_check.py" versions \
        --json "$STEPS_DIR/1_versions.json" "${require[@]}"
}

gpu_tests() {
    local rc xml=$STEPS_DIR/2_gpu_tests.xml tests skipped
    # -o addopts=: pyproject's -n 2 needs pytest-xdist, which the GPU machine does not have.
    teed "$STEPS_DIR/2_gpu_tests.log" "$PY" -m pytest -o addopts= -m gpu -q -p no:cacheprovider \
        --basetemp "$WORK/pytest" --junitxml "$xml" "$REPO/tests"
    rc=$?
    # On the GPU, tests that all skipped saw no CUDA device: that answers nothing.
    tests=$(grep -o ' tests="[0-9]*"' "$xml" 2>/dev/null | head -1 | tr -dc 0-9)
    skipped=$(grep -o ' skipped="[0-9]*"' "$xml" 2>/dev/null | head -1 | tr -dc 0-9)
    if ((rc == 0)) && [[ $MODE == gpu && ${tests:-0} == "${skipped:-0}" ]]; then
        NOTE="no gpu test ran (${skipped:-0} skipped)"
        return 1
    fi
    return "$rc"
}

train_and_resume() {
    local log=$STEPS_DIR/3_train.log run=$WORK/train_run rc
    local weights=$WORK/inception-random.pth
    local common=("${TRAIN[@]}" "metrics.inception_weights=$weights"
        "metrics.cache_dir=$WORK/fidelity_cache")
    echo "## part 1: iterations 1-$P1" | tee "$log"
    teed "$log" "$PY" "$REPO/scripts/gpu_check.py" train --json "$STEPS_DIR/3_train_part1.json" \
        --run-dir "$run" --random-inception-weights "$weights" -- \
        "${common[@]}" "iterations=$P1" "hydra.run.dir=$run"
    rc=$?
    if ((rc != 0)); then
        NOTE="part 1 exited $rc"
    else
        echo "## part 2: resume=$run iterations=$P2" | tee -a "$log"
        teed "$log" "$PY" "$REPO/scripts/gpu_check.py" train \
            --json "$STEPS_DIR/3_train_part2.json" \
            --run-dir "$run" --expect-iteration "$P2" --expect-evaluations 2 \
            --expect-resume-from "$P1" -- "resume=$run" "iterations=$P2"
        rc=$?
        ((rc != 0)) && NOTE="the resume (part 2) exited $rc"
    fi
    # The run's logs without its checkpoints (tens of MB each at full width).
    if [[ -d $run ]]; then
        mkdir -p "$STEPS_DIR/3_train_run"
        tar -C "$run" --exclude='*.pt' -cf - . | tar -C "$STEPS_DIR/3_train_run" -xf -
        ls -l "$run/checkpoints" >>"$log" 2>&1
    fi
    return "$rc"
}

benchmark() {
    teed "$STEPS_DIR/4_benchmark.log" "$PY" "$REPO/benchmarks/benchmark.py" "${BENCH[@]}" \
        --json "$STEPS_DIR/4_benchmark.json"
}

evaluation() {
    local n args
    if [[ $MODE == smoke ]]; then
        args=("${EVAL[@]}")
    else
        if fits "$EST_5_50K"; then n=50000; else n=10000; fi
        args=("${EVAL[@]}" --num-samples "$n" --num-real "$n")
        ((n != 50000)) && NOTE="10,000 samples: not enough time left for 50,000"
    fi
    teed "$STEPS_DIR/5_bench_eval.log" "$PY" "$REPO/benchmarks/bench_eval.py" "${args[@]}" \
        --json "$STEPS_DIR/5_bench_eval.json"
}

VARIANT=
variant() {
    local -a extra
    case $VARIANT in
        reduce-overhead) extra=(compile_mode=reduce-overhead) ;;
        *) extra=("--$VARIANT") ;;
    esac
    teed "$STEPS_DIR/6_$VARIANT.log" "$PY" "$REPO/benchmarks/benchmark.py" "${BENCH6[@]}" \
        --json "$STEPS_DIR/6_$VARIANT.json" "${extra[@]}"
}

# ImageNet 128x128 at one GPU's share of the official batches and at the global ones.
imagenet() {
    local rc=0 part name d g
    for part in "${IMAGENET_BATCHES[@]}"; do
        read -r name d g <<<"$part"
        teed "$STEPS_DIR/7_imagenet.log" "$PY" "$REPO/benchmarks/benchmark.py" "${IMAGENET[@]}" \
            --json "$STEPS_DIR/7_imagenet_$name.json" "${IMAGENET_OVERRIDES[@]}" \
            "optim.d_batch_size=$d" "optim.g_batch_size=$g" || rc=$?
    done
    return "$rc"
}

echo "gpu_check: $MODE mode, budget ${BUDGET_S} s, output $DEST, steps' files $STEPS_DIR," \
    "scratch $WORK"
step 1 versions "$EST_1" versions
step 2 "gpu tests" "$EST_2" gpu_tests
step 3 "train + resume" "$EST_3" train_and_resume
step 4 benchmark "$EST_4" benchmark
step 5 evaluation "$EST_5" evaluation
letters=(a b c d e f)
for i in "${!VARIANTS[@]}"; do
    VARIANT=${VARIANTS[$i]}
    if [[ $MODE == smoke && $VARIANT != "$SMOKE_VARIANT" ]]; then
        record "6${letters[$i]}" "$VARIANT" "skipped(smoke)" - 0 \
            "CUDA-only or already off on the CPU"
        continue
    fi
    step "6${letters[$i]}" "$VARIANT" "$EST_6" variant
done

step 7 "imagenet-128" "$EST_7" imagenet

"$PY" "$REPO/scripts/gpu_check.py" report "$STEPS_DIR" --budget "$BUDGET_S" ||
    { echo "gpu_check: the summary failed; steps.tsv:"; cat "$STEPS_DIR/steps.tsv"; }
((PACK)) && refresh >/dev/null
echo "gpu_check: done in ${SECONDS} s; output in $DEST"
[[ ${STATUS[2]:-} == ok && ${STATUS[3]:-} == ok ]]
