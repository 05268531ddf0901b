#!/usr/bin/env bash
# The project's GPU check, in one go (issues 19 and 28): what a session lent the one-H200 machine runs there.
#
# Here, beforehand (needs PyPI):  bash benchmarks/gpu_wheels.sh        # fills benchmarks/gpu_wheels/ (~5 MiB)
# There, through the device tool's `run`:
#     command:   bash benchmarks/gpu_check.sh
#     carry:     ["benchmarks/gpu_wheels"]
#     timeout_s: 600      (the parts stop at GPU_CHECK_BUDGET = 535 s, plus 5 s for a killed part's grace; the
#                          caps add up to more: see below; the machine's start comes on top)
# The result comes back as $OUT/gpu_check.md (a markdown table, the environment, and the tail of every part's
# output; also printed at the end, so the run's output_tail shows it) and one log per part in $OUT.
#
# Every benchmark prints each row the moment it has it (PYTHONUNBUFFERED, line-buffered stdout): a part cut short
# by its cap still reports the rows it finished, in its key line ("last:") and its details. The parts run in the
# order issue 28 needs them, so a run cut short from outside keeps the most important; each under its own
# `timeout` (cap in seconds, measured time on the H200 2026-12-04 in brackets; cut further when the overall budget
# runs short). The caps add up to more than the budget (645 s): the parts before gpu_spec are capped at 440 s, which
# leaves it at least 95 s of its 150 (it sizes its training by the time it is given); what they leave unused (install,
# versions, cifar and quickstart were measured below their caps) goes to gpu_spec first and then to draft_fit and
# draft_bench, which come last because gpu_spec measures the same decoding on a target where a speedup can exist:
#   environment  nvidia-smi (queries only: the GPU is never reset or reconfigured), python -V, CPU and memory
#   install      15 [11]  the wheels that are missing (from benchmarks/gpu_wheels, --no-index), then
#                `pip install --no-deps -e .`
#   versions     10 [8]   python/torch/lightning/transformers/... and torch.cuda.is_available()
#   headline     80       benchmarks/headline_fit.py: `distill fit --recipe plk_cifar100` for 2 epochs on 10,000
#                         generated CIFAR-100 images (official file format) with a random resnet32x4 teacher file
#                         (accuracies meaningless): wall and per-epoch seconds; the process stopped after 45 s
#                         (where it waited is printed) and then run again with data.num_workers=0
#   step         90       benchmarks/step_overhead.py --device cuda, where that file exists: ms per step of a plain
#                         loop, a bare LightningModule, distill eager / compiled / graphed
#   workers      90       benchmarks/fit_overhead.py: `distill fit --recipe kd_cifar100` and the plain script as
#                         whole processes, 1 epoch of 10,000 generated images, at 0, 8 and 4 loader workers, each
#                         process stopped after 40 s (a TIMED OUT row with its processes' states and stacks)
#   cifar        40 [35]  benchmarks/cifar_epoch_time.py, 10,000 images, bf16-mixed, channels_last, 2 epochs x 1
#                         round (50,000 x 3 epochs did not finish in 150 s)
#   strategies   30 [125 for 5 names] benchmarks/strategies_smoke.py --accelerator gpu: the rows it finishes
#   quickstart   35 [33]  `distill fit --recipe quickstart_digits` on the GPU (its teacher's training too), about
#                         a quarter of the recipe's epochs (teacher 8, student 10): a sanity run and its wall time
#   lm_memory    50 [92 for two vocabularies] benchmarks/lm_step_memory.py --device cuda --tokens 4x2048
#                         --vocab 32000, where that file exists (V = 151,936 was measured: README)
#   gpu_spec     150      benchmarks/gpu_speculative.py --device cuda: a config-built Llama of 0.68B parameters (24 x
#                         1536, byte vocabulary) trained for up to 400 steps of 16 x 512 tokens on the stdlib corpus
#                         (bf16 autocast) and its EAGLE draft online for up to 400, each stopped by time as well (30 %
#                         and 12 % of the part's time), then greedy against chains 3, 5 and trees 5x8x32, 6x10x60,
#                         4x4x16, 6x8x48 on 4 held-out prompts x 128 tokens: accepted length, tokens/s, speedup,
#                         lossless share, ms per round and its halves; shapes that would end late are listed as skipped
#   draft_fit    30 [45 for 400 + 200 batches] `distill fit --recipe specvlm_draft_tiny` on the GPU, shortened
#                         (target 1 epoch x 200 batches, draft 1 epoch x 100 batches): the framework's own draft
#                         training on a GPU
#   draft_bench  25 [52 for depths 1-4, 8 prompts] benchmarks/speculative_decoding.py on that run, --device cuda,
#                         4 prompts, a chain of 3 and a tree 4x4x16 (depth x top-k x kept nodes): a quarter of that
#
# Here, end to end on the CPU at tiny sizes (a quarter of an hour on 2 busy cores; pip is skipped where everything
# imports already):
#     GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh          # $OUT defaults to a new /tmp/gpu_check_out.* folder
# Other knobs: GPU_CHECK_PYTHON (default python3; in a dry run this checkout's .venv/bin/python),
# GPU_CHECK_BUDGET (seconds for all parts), GPU_CHECK_LM_ARGS (arguments for lm_step_memory.py after --device).
# shellcheck disable=SC2016  # the awk programs and `bash -c` scripts are single-quoted on purpose
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
DRY=${GPU_CHECK_DRY:-0}
WHEELS=$ROOT/benchmarks/gpu_wheels
OUT=${OUT:-$(mktemp -d /tmp/gpu_check_out.XXXXXX)}
mkdir -p "$OUT"
SCRATCH=$(mktemp -d /tmp/gpu_check.XXXXXX)
SUMMARY=$OUT/gpu_check.md

if [[ $DRY == 1 ]]; then
    PY=${GPU_CHECK_PYTHON:-$([[ -x .venv/bin/python ]] && echo "$ROOT/.venv/bin/python" || echo python3)}
    # two CPU cores run even the tiny sizes slower than the GPU runs the real ones: three times the limits
    ACC=cpu DEVICE=cpu SCALE=3 BUDGET=${GPU_CHECK_BUDGET:-1500}
else
    PY=${GPU_CHECK_PYTHON:-python3}
    ACC=gpu DEVICE=cuda SCALE=1 BUDGET=${GPU_CHECK_BUDGET:-535}
fi
START=$SECONDS
DEADLINE=$((START + BUDGET))

# nothing there can reach a hub; the benchmarks' temporary folders go where the end of the script removes them
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false COLUMNS=120
export TMPDIR=$SCRATCH PIP_DISABLE_PIP_VERSION_CHECK=1
# the checkout importable even if the editable install fails (the scripts run from benchmarks/ or $SCRATCH)
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export PY ROOT WHEELS SCRATCH

ROWS=()      # the summary table's rows
FAILED=0
: >"$SCRATCH/details.md"
: >"$SCRATCH/environment.txt"

write_summary() {
    {
        echo "# GPU check"
        echo
        echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $([[ $DRY == 1 ]] && echo "DRY run (CPU, tiny sizes)" || echo "GPU run")," \
            "$((SECONDS - START)) s of a ${BUDGET} s budget; logs: one per part beside this file."
        echo
        echo "| part | result | seconds | limit (s) | key line | log |"
        echo "|---|---|---|---|---|---|"
        printf '%s\n' "${ROWS[@]}"
        echo
        echo "## Environment"
        echo
        echo '```'
        cat "$SCRATCH/environment.txt"
        echo '```'
        echo
        cat "$SCRATCH/details.md"
    } >"$SUMMARY"
}

row() {  # NAME RESULT SECONDS LIMIT KEY LOG
    local key=${5//|/\/}
    ROWS+=("| $1 | $2 | $3 | $4 | ${key:0:300} | $6 |")
    write_summary  # after every part, so a run cut short from outside still leaves its table
}

# part NAME LOG CAP AWK DIR CMD...: CMD in DIR under `timeout`, for CAP (x SCALE) seconds or what is left of the
# budget.
# stdout and stderr are logged apart (stdout holds the benchmark tables); AWK, run over stdout, gives the key line.
part() {
    local name=$1 log=$2 cap=$3 program=$4 dir=$5
    shift 5
    local left=$((DEADLINE - SECONDS))
    cap=$((cap * SCALE))
    local limit=$((cap < left ? cap : left))
    if ((limit < 15)); then
        row "$name" "skipped: out of time" 0 "$limit" "" ""
        FAILED=$((FAILED + 1))
        return 1
    fi
    local out=$SCRATCH/$name.out err=$SCRATCH/$name.err began=$SECONDS rc result key
    # timeout signals its whole process group: subprocesses (a benchmark's `distill fit` runs) stop with it
    timeout -k 5 "$limit" bash -c 'cd "$0" && exec "$@"' "$dir" "$@" >"$out" 2>"$err"
    rc=$?
    local took=$((SECONDS - began))
    case $rc in
        0) result=ok ;;
        124 | 137) result="TIMED OUT" ;;
        *) result="FAILED (exit $rc)" ;;
    esac
    ((rc == 0)) || FAILED=$((FAILED + 1))
    {
        echo "### $name: $* (in $dir; limit ${limit} s; exit $rc after ${took} s)"
        echo "--- stdout"
        cat "$out"
        echo "--- stderr"
        cat "$err"
        echo
    } >>"$OUT/$log"
    key=$(awk "$program" "$out" 2>/dev/null | tail -n 1)
    if ((rc != 0)); then  # cut short or failed: its last row too, whatever it was
        local last
        last=$(grep -v '^[[:space:]]*$' "$out" | tail -n 1)
        [[ -n $last && $key != *"$last"* ]] && key="${key:+$key; }last: $last"
    fi
    key=$(sed 's/[│┃║]/ /g; s/  */ /g; s/^ //; s/ $//' <<<"$key")
    {
        echo "## $name: $result, ${took} s"
        echo
        echo "\`$*\`"
        echo
        echo '```'
        tail -n 60 "$out"
        echo '```'
        if ((rc != 0)); then
            echo "stderr, last lines:"
            echo '```'
            tail -n 15 "$err"
            echo '```'
        fi
        echo
    } >>"$SCRATCH/details.md"
    row "$name" "$result" "$took" "$limit" "$key" "$log"
    return "$rc"
}

# install: the distributions whose modules are missing, from the carried wheels; then this checkout, editable
install_missing() {
    local missing
    missing=$("$PY" - <<'EOF'
import importlib.util

# module -> distribution: setup.cfg's needs, the llm and clip extras
needs = {
    "torch": "torch", "torchvision": "torchvision", "lightning": "lightning", "torchmetrics": "torchmetrics",
    "timm": "timm", "omegaconf": "omegaconf", "yaml": "PyYAML", "numpy": "numpy", "PIL": "pillow",
    "sklearn": "scikit-learn", "rich": "rich", "transformers": "transformers", "open_clip": "open_clip_torch",
}
print(" ".join(dist for module, dist in needs.items() if importlib.util.find_spec(module) is None))
EOF
    ) || return 1
    echo "missing: ${missing:-nothing}"
    local pip=("$PY" -m pip install --no-index --find-links "$WHEELS" --no-cache-dir)
    if [[ -n $missing ]]; then
        ls "$WHEELS" 2>/dev/null || echo "no $WHEELS: carry it (bash benchmarks/gpu_wheels.sh makes it)"
        # all at once; failing that one by one, then without dependency checks (an installed package's version
        # outside a wheel's range must not stop the rest)
        # shellcheck disable=SC2086
        "${pip[@]}" $missing || for dist in $missing; do
            "${pip[@]}" "$dist" || "${pip[@]}" --no-deps "$dist" || echo "could not install $dist"
        done
    fi
    local installed script
    installed=$(cd "$SCRATCH" && "$PY" -c 'import importlib.util as u; print(u.find_spec("distill").origin)' 2>/dev/null)
    script=$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")/distill
    if [[ $installed == "$ROOT/distill/__init__.py" && -x $script ]]; then
        echo "distill already installed from $ROOT ($script)"
    else
        # build isolation takes setuptools from the wheels; without them, the interpreter's own setuptools
        "${pip[@]}" --no-deps -e "$ROOT" || "$PY" -m pip install --no-deps --no-build-isolation -e "$ROOT"
    fi
}
export -f install_missing

print_versions() {
    "$PY" - <<'EOF'
import multiprocessing
import platform
from importlib.metadata import PackageNotFoundError, version

import torch

print(f"python {platform.python_version()} ({platform.machine()})")
for dist in ("torch", "torchvision", "lightning", "torchmetrics", "transformers", "timm", "omegaconf", "numpy",
             "scikit-learn", "rich", "open_clip_torch", "deepspeed", "distill"):
    try:
        print(f"{dist} {version(dist)}")
    except PackageNotFoundError:
        print(f"{dist} not installed")
print(f"torch CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
# how loader workers start (Python 3.14 starts them by forkserver, not fork) and share their batches
print(f"multiprocessing start method {multiprocessing.get_start_method()}, sharing strategy "
      f"{torch.multiprocessing.get_sharing_strategy()}, torch threads {torch.get_num_threads()}")
print(f"torch.cuda.is_available(): {torch.cuda.is_available()}")
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    print(f"device 0: {props.name}, {props.total_memory / 2**30:.1f} GiB, capability {props.major}.{props.minor}, "
          f"{props.multi_processor_count} SMs, bf16 {torch.cuda.is_bf16_supported()}")
EOF
}
export -f print_versions

on_signal() {
    row "(script)" "STOPPED by a signal" "$((SECONDS - START))" "$BUDGET" "" ""
    rm -rf "$SCRATCH"
    exit 2
}
trap on_signal TERM INT

# -- environment (into the summary itself) ---------------------------------------------------------------------
{
    echo "\$ uname -m; nproc; memory"
    echo "$(uname -m), $(nproc) CPU cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 2^20}' /proc/meminfo) memory"
    # what loader workers lean on: shared memory for their batches, a file descriptor per shared batch
    echo "\$ df -h /dev/shm; ulimit -n"
    df -h /dev/shm 2>&1 | tail -n 1
    ulimit -n
    echo "\$ $PY -V"
    timeout 20 "$PY" -V 2>&1
    echo "\$ nvidia-smi --query-gpu=... --format=csv"
    if command -v nvidia-smi >/dev/null; then
        timeout 20 nvidia-smi --format=csv \
            --query-gpu=name,driver_version,memory.total,memory.used,utilization.gpu,temperature.gpu,clocks.sm,clocks.max.sm 2>&1
        echo "\$ nvidia-smi"
        timeout 20 nvidia-smi 2>&1
    else
        echo "nvidia-smi: not found"
    fi
} >>"$SCRATCH/environment.txt"
write_summary

# -- install and versions ----------------------------------------------------------------------------------------
part install install.log 15 '/^missing:/{k=$0} END{print k}' "$ROOT" bash -c install_missing
part versions install.log 10 '/is_available|^device 0|^multiprocessing/{k=k" "$0} END{print k}' "$SCRATCH" bash -c print_versions
DISTILL=$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")/distill
[[ -x $DISTILL ]] || DISTILL="$PY -m distill.cli.main"  # (unquoted below on purpose: two words then)

# -- headline: the PLD recipe itself, 2 epochs on generated CIFAR-100 files --------------------------------------
if [[ $DRY == 1 ]]; then
    headline=(--images 256 --test-images 64 --process-timeout 150 trainer.accelerator=cpu)
else
    headline=(--images 10000 --test-images 2000 --process-timeout 45)
fi
part headline headline.log 80 '/: wall |TIMED OUT|FAILED/{k=k" "$0} END{print k}' "$SCRATCH" \
    "$PY" "$ROOT/benchmarks/headline_fit.py" --recipe plk_cifar100 --epochs 2 --fallback-workers 0 "${headline[@]}"

# -- step breakdown: plain loop / bare LightningModule / distill eager, compiled, graphed (another script) ----------
if [[ -f $ROOT/benchmarks/step_overhead.py ]]; then
    part step step.log 90 '/^distill/{k=k"; "$0} END{print substr(k, 3)}' "$ROOT" \
        "$PY" "$ROOT/benchmarks/step_overhead.py" --device "$DEVICE" --epochs 2
else
    row step "not present (benchmarks/step_overhead.py)" 0 0 "" ""
fi

# -- workers: whole-process distill fit against the plain script, one epoch, at 0, 8 and 4 loader workers -----------
if [[ $DRY == 1 ]]; then
    workers=(--images 256 --test-images 64 --workers 0 2 --process-timeout 150)
else  # 8 before 4: the stall was seen at 8
    workers=(--images 10000 --test-images 1000 --workers 0 8 4 --process-timeout 40)
fi
part workers workers.log 90 '/epoch\(s\)/{k=k"; "$1"w "$5" "($8 == "TIMED" ? "TIMED OUT" : $8 " s")} END{print substr(k, 3)}' \
    "$SCRATCH" "$PY" "$ROOT/benchmarks/fit_overhead.py" --epochs 1 --rounds 1 "${workers[@]}"

# -- CIFAR-100 epoch time: online teacher vs cache vs student alone ----------------------------------------------
if [[ $DRY == 1 ]]; then
    cifar=(--accelerator cpu --images 256 --epochs 2 --rounds 1)
else
    cifar=(--accelerator gpu --images 10000 --precision bf16-mixed --channels-last --epochs 2 --rounds 1)
fi
part cifar cifar.log 40 '/^cached \/ student alone/{k=$0} END{print k}' "$SCRATCH" \
    "$PY" "$ROOT/benchmarks/cifar_epoch_time.py" "${cifar[@]}"

# -- strategies on one device ---------------------------------------------------------------------------------
# its first run trains the quickstart's teacher on the CPU (30 epochs) before the strategies' few steps each
steps=5
[[ $DRY == 1 ]] && steps=2
part strategies strategies.log 30 '$2 == "ran" {k=k" "$1} END{print "ran:" k}' "$SCRATCH" \
    "$PY" "$ROOT/benchmarks/strategies_smoke.py" --accelerator "$ACC" --steps "$steps"

# -- quickstart sanity run ---------------------------------------------------------------------------------------
quick=("trainer.accelerator=$ACC" "teacher.train.trainer.accelerator=$ACC" "run.root=$SCRATCH/runs"
    "teacher.store=$SCRATCH/teachers" trainer.enable_progress_bar=false trainer.enable_model_summary=false
    teacher.train.trainer.enable_progress_bar=false teacher.train.trainer.enable_model_summary=false)
# about a quarter of the recipe's epochs (teacher 30, student 40): a sanity run, not its accuracy
if [[ $DRY == 1 ]]; then
    quick+=(trainer.max_epochs=2 teacher.train.trainer.max_epochs=2)
else
    quick+=(trainer.max_epochs=10 teacher.train.trainer.max_epochs=8)
fi
# shellcheck disable=SC2086
part quickstart quickstart.log 35 '/accuracy|agreement/{k=k" "$0} END{print k}' "$SCRATCH" \
    $DISTILL fit --recipe quickstart_digits "${quick[@]}"

# -- language-model step memory (another script, where it exists) ------------------------------------------------
lm_args="--tokens 4x2048 --vocab 32000"  # 8k tokens at Llama 2's vocabulary (Qwen 2.5's 151,936: README)
[[ $DRY == 1 ]] && lm_args="--vocab 32000 --tokens 1x256"  # its CPU defaults take minutes here
if [[ -f $ROOT/benchmarks/lm_step_memory.py ]]; then
    # from the checkout's root: its subprocesses import it through the relative path benchmarks/
    # shellcheck disable=SC2086
    part lm_memory lm_memory.log 50 '/^V .*chunked \/ full/{k=k" "$0} END{print k}' "$ROOT" \
        "$PY" "$ROOT/benchmarks/lm_step_memory.py" --device "$DEVICE" ${GPU_CHECK_LM_ARGS:-$lm_args}
else
    row lm_memory "not present (benchmarks/lm_step_memory.py)" 0 0 "" ""
fi

# -- speculative decoding where a speedup can exist: a 0.7B target and its draft trained here, chains and trees ----
spec_cap=150
spec_left=$((DEADLINE - SECONDS))
spec_limit=$((spec_cap * SCALE < spec_left ? spec_cap * SCALE : spec_left))  # what part() will give it
spec_seconds=$((spec_limit - 20 * SCALE))  # its own end, shapes after it skipped: before the imports and a margin
spec=(--seconds "$spec_seconds" --target-seconds $((spec_seconds * 30 / 100))
    --draft-seconds $((spec_seconds * 12 / 100)))
if [[ $DRY == 1 ]]; then  # tiny sizes: under a minute here
    spec+=(--device cpu --hidden 64 --layers 2 --heads 4 --intermediate 176 --seq-len 64 --batch 8 --target-steps 60
        --target-lr 3e-3 --draft-steps 60 --draft-lr 3e-3 --log-every 20 --max-documents 300 --prompts 2
        --prompt-tokens 16 --new-tokens 24 --shapes 2 3x2x4 4x3x8 4)
else
    spec+=(--device cuda)
fi
part gpu_spec gpu_speculative.log "$spec_cap" '$1 == "chain" || $1 == "tree" {k=k"; "$1" "$2" "$6" at "$3} END{print substr(k, 3)}' \
    "$SCRATCH" "$PY" "$ROOT/benchmarks/gpu_speculative.py" "${spec[@]}"

# -- speculative decoding: train the tiny draft briefly, then measure it ----------------------------------------
draft=("run.root=$SCRATCH/runs" "teacher.store=$SCRATCH/teachers" "trainer.accelerator=$ACC"
    "teacher.train.trainer.accelerator=$ACC" trainer.enable_progress_bar=false trainer.enable_model_summary=false
    teacher.train.trainer.enable_progress_bar=false teacher.train.trainer.enable_model_summary=false
    trainer.max_epochs=1 teacher.train.trainer.max_epochs=1)
if [[ $DRY == 1 ]]; then  # the sizes tests/cli/test_evaluate_tasks.py trains it at
    draft+=(data.max_documents=80 teacher.train.data.max_documents=80 trainer.limit_train_batches=4
        trainer.limit_val_batches=2 teacher.train.trainer.limit_train_batches=4
        teacher.train.trainer.limit_val_batches=2 speculative.prompts=2 speculative.prompt_tokens=16
        speculative.max_new_tokens=8)
    bench=(--prompts 2 --shapes 1 2 3x2)
else
    draft+=(trainer.limit_train_batches=100 trainer.limit_val_batches=10 teacher.train.trainer.limit_train_batches=200
        teacher.train.trainer.limit_val_batches=10 speculative.prompts=4)
    bench=(--prompts 4 --shapes 3 4x4x16)
fi
# shellcheck disable=SC2086
part draft_fit speculative.log 30 '/accepted length|agreement/{k=k" "$0} END{print k}' "$SCRATCH" \
    $DISTILL fit --recipe specvlm_draft_tiny "${draft[@]}"
runs=("$SCRATCH"/runs/specvlm_draft_tiny/version_*)
run=${runs[0]}
if [[ -d $run/checkpoints ]]; then
    part draft_bench speculative.log 25 '$1 == "trained" {k=k"; "$2": "$3", "$4} END{print "trained:" substr(k, 2)}' \
        "$SCRATCH" "$PY" "$ROOT/benchmarks/speculative_decoding.py" "$run" --device "$DEVICE" "${bench[@]}"
else
    row draft_bench "skipped: no finished draft run" 0 0 "" ""
    FAILED=$((FAILED + 1))
fi

write_summary
rm -rf "$SCRATCH"
cat "$SUMMARY"
# the table once more at the very end: the device tool returns only the output's last 12,000 characters
echo
printf '%s\n' "${ROWS[@]}"
echo "summary: $SUMMARY ($FAILED part(s) not ok, $((SECONDS - START)) s)"
((FAILED == 0))
