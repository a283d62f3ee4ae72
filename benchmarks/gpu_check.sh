#!/usr/bin/env bash
# GPU check for a ~10-minute window on a machine with a CUDA torch, pytest, hypothesis and
# ml_dtypes already installed and no network. Never installs anything. Uses $PYTHON, else python3.
#
#   bash benchmarks/gpu_check.sh LOGDIR          # real GPU: stages 0-5
#   bash benchmarks/gpu_check.sh --fake LOGDIR   # no GPU (CI): the CPU-checkable stages, fake backend
#   GPU_CHECK_FAKE=1 bash benchmarks/gpu_check.sh LOGDIR   # the same as --fake
#
# Stages, most valuable first, each under its own timeout (seconds); a failed or timed-out
# stage does not stop the next ones, and the summary lists each stage's status:
#   0 info    (20)  GPU name, driver, CUDA/torch versions, PCIe link (nvidia-smi may be absent)
#   1 smoke   (90)  benchmarks/gpu_smoke.py: every route x non_blocking x stream, bit-exact
#   2 tests  (240)  pytest -x -q tests/test_cuda.py tests/test_prefetch.py (fake: the CUDA ones skip)
#   3 big    (120)  bench_transfer.py --only 1,2,3,5: the 1 GiB cases against the raw pinned copy
#   4 quick   (60)  bench_transfer.py --quick: every case at 64 MiB
#   5 loader  (60)  bench_collate.py --quick --only 7: tb.prefetch against pin_memory=True + per-leaf .to()
# The caps add up to 590 s; GPU_CHECK_BUDGET (default 590) bounds the whole run: a stage gets
# at most what is left of it, and is skipped when less than 10 s is left.
# Logs: LOGDIR/gpu_check.log (everything) and LOGDIR/stage-N-NAME.log (one per stage).
# Exit status: 0 when every stage that ran passed, 1 otherwise, 2 on a usage error.
set -euo pipefail

usage() {
    echo "usage: bash benchmarks/gpu_check.sh [--fake] LOGDIR" >&2
    exit 2
}

info() {
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), host $(uname -n), $(uname -sr), repo $REPO"
    echo "git: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo ' (with local changes)')"
    echo "python: $PY = $(command -v "$PY" || echo 'not found')"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=index,name,driver_version,memory.total,pci.bus_id --format=csv,noheader ||
            echo "nvidia-smi: GPU query failed"
        nvidia-smi --query-gpu=pcie.link.gen.current,pcie.link.gen.max,pcie.link.width.current,pcie.link.width.max \
            --format=csv || echo "nvidia-smi: PCIe link query failed"
        nvidia-smi 2>/dev/null | grep -m1 'CUDA Version' || true
    else
        echo "nvidia-smi: not available"
    fi
    "$PY" - <<'EOF'
import platform
import numpy, torch
print(f"python {platform.python_version()}, numpy {numpy.__version__}, torch {torch.__version__}, "
      f"torch.version.cuda {torch.version.cuda}")
print(f"torch.cuda.is_available() {torch.cuda.is_available()}, devices {torch.cuda.device_count()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}")
try:
    import tensorbridge as tb
    print(f"tensorbridge {tb.__version__} from {tb.__file__}")
except Exception as err:
    print(f"tensorbridge: import failed: {type(err).__name__}: {err}")
    raise SystemExit(1)
EOF
}

if [[ ${1:-} == __info ]]; then # stage 0, run by this script under its timeout
    PY=${PYTHON:-python3}
    REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    info
    exit
fi

FAKE=${GPU_CHECK_FAKE:-0}
LOGDIR=
while (($#)); do
    case $1 in
        --fake) FAKE=1 ;;
        -h | --help) usage ;;
        -*) usage ;;
        *)
            [[ -z $LOGDIR ]] || usage
            LOGDIR=$1
            ;;
    esac
    shift
done
[[ -n $LOGDIR ]] || usage
[[ $FAKE == 1 ]] || FAKE=0

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-590}
mkdir -p "$LOGDIR"
LOGDIR=$(cd "$LOGDIR" && pwd)
LOG=$LOGDIR/gpu_check.log
: >"$LOG"
cd "$REPO"
# The working tree's tensorbridge, installed or not; unbuffered, so a timed-out stage's log is complete.
export PYTHONPATH=$REPO/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1

say() { printf '%s\n' "$*" | tee -a "$LOG"; }


NAMES=()
STATUS=()
TIMES=()
START=$SECONDS

# run_stage N NAME CAP COMMAND...: the command under `timeout`, output to the stage log and the main log.
run_stage() {
    local n=$1 name=$2 cap=$3
    shift 3
    local stage_log=$LOGDIR/stage-$n-$name.log
    local left=$((BUDGET - (SECONDS - START)))
    local rc=0 began=$SECONDS status
    NAMES+=("$n $name")
    if ((left < 10)); then
        say "==== stage $n $name: SKIPPED (the ${BUDGET}s budget is spent) ===="
        STATUS+=("SKIP (no time left)")
        TIMES+=(0)
        return 0
    fi
    ((cap <= left)) || cap=$left
    say ""
    say "==== stage $n $name (timeout ${cap}s): $* ===="
    set +e
    timeout -k 10 "$cap" "$@" </dev/null 2>&1 | tee "$stage_log" | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    set -e
    case $rc in
        0) status=PASS ;;
        124 | 137) status="TIMEOUT after ${cap}s" ;;
        *) status="FAIL (exit $rc)" ;;
    esac
    STATUS+=("$status")
    TIMES+=($((SECONDS - began)))
    say "==== stage $n $name: $status, $((SECONDS - began)) s ===="
}

if ((FAKE)); then
    say "gpu_check: FAKE mode: no GPU; the fake backend (tests/fakegpu.py) where a stage has one"
    run_stage 0 info 20 bash "$REPO/benchmarks/gpu_check.sh" __info
    run_stage 1 smoke 90 "$PY" benchmarks/gpu_smoke.py --fake
    run_stage 2 tests 240 "$PY" -m pytest -x -q -p no:cacheprovider tests/test_cuda.py tests/test_prefetch.py
    run_stage 3 big 120 "$PY" benchmarks/bench_transfer.py --fake --only 1,2,3,5
    run_stage 4 quick 60 "$PY" benchmarks/bench_transfer.py --fake --quick
    run_stage 5 loader 60 "$PY" benchmarks/bench_collate.py --quick --only 7
else
    run_stage 0 info 20 bash "$REPO/benchmarks/gpu_check.sh" __info
    run_stage 1 smoke 90 "$PY" benchmarks/gpu_smoke.py
    run_stage 2 tests 240 "$PY" -m pytest -x -q -p no:cacheprovider tests/test_cuda.py tests/test_prefetch.py
    run_stage 3 big 120 "$PY" benchmarks/bench_transfer.py --only 1,2,3,5
    run_stage 4 quick 60 "$PY" benchmarks/bench_transfer.py --quick
    run_stage 5 loader 60 "$PY" benchmarks/bench_collate.py --quick --only 7
fi

failed=0
say ""
say "==== gpu_check summary$( ((FAKE)) && echo ' (FAKE: no GPU figures)'), $((SECONDS - START)) s, logs in $LOGDIR ===="
for i in "${!NAMES[@]}"; do
    say "$(printf '  stage %-8s %4ss  %s' "${NAMES[$i]}" "${TIMES[$i]}" "${STATUS[$i]}")"
    [[ ${STATUS[$i]} == PASS ]] || failed=1
done
exit "$failed"
