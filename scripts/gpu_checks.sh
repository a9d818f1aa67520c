#!/usr/bin/env bash
# One pass of GPU checks on a lent machine, from the repository root, with .wheels/ carried
# (hydra-core, omegaconf, antlr4 and hydra-joblib-launcher as pure-Python wheels; PyYAML
# and pytest-timeout in .wheels/extra/, installed only when the machine lacks them).
#
#     OUT=/some/folder bash scripts/gpu_checks.sh
#
# Ends within 8 minutes (every part runs under `timeout`, against one 460 s deadline, plus
# at most 15 s for pytest to be killed if SIGINT does not stop it):
#   setup ~15 s; scripts/gpu_step_costs.py ~60 s (<= 100 s); scripts/bench.py <= 240 s in
#   five invocations, each merging its rows into docs/benchmarks.json; the tests on CUDA
#   with what is left (~130-150 s).
# Leaves at most 8 files in $OUT: run.txt (machine, versions, install, what each part
# took), gpu_step_costs.json, gpu_step_costs.log, bench.log, benchmarks.json,
# BENCHMARKS.md, pytest.log, junit.xml.
#
# GPU_CHECKS_DRY=cpu runs every part on the CPU with tiny settings (a check of this script).
set -uo pipefail

START=$SECONDS
END=$((START + ${GPU_CHECKS_SECONDS:-460}))  # one deadline for the whole script
OUT=${OUT:-$PWD/gpu_checks_out}
PY=${PY:-python3}
SITE=${SITE:-/tmp/site}
DRY=${GPU_CHECKS_DRY:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
RUN_LOG="$OUT/run.txt"
: >"$RUN_LOG"

note() { echo "[$((SECONDS - START)) s] $*" | tee -a "$RUN_LOG"; }
left() { echo $((END - SECONDS)); }
# seconds a part may take: its cap, but never past the deadline less what later parts need
budget() {  # budget CAP RESERVED_FOR_LATER
    local b=$(($(left) - $2))
    [ "$b" -gt "$1" ] && b=$1
    echo "$b"
}

# --- setup --------------------------------------------------------------------------------
note "repo $(pwd), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), OUT=$OUT"
{
    echo "== nvidia-smi"; nvidia-smi 2>&1 || echo "(no nvidia-smi)"
    echo "== nproc $(nproc); $(free -g 2>/dev/null | sed -n 2p)"
    echo "== $PY: $($PY --version 2>&1)"
} >>"$RUN_LOG" 2>&1

extra=()
$PY -c "import yaml" 2>/dev/null || extra+=(.wheels/extra/pyyaml-*.whl)
$PY -c "import pytest_timeout" 2>/dev/null || extra+=(.wheels/extra/pytest_timeout-*.whl)
note "installing $(ls .wheels/*.whl | wc -l) wheels + ${#extra[@]} extra (${extra[*]:-none}) into $SITE"
if ! timeout 120 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$SITE" .wheels/*.whl "${extra[@]}" >>"$RUN_LOG" 2>&1; then
    # no pip: pure-Python wheels are zip files that import as they are once unpacked
    note "pip install failed; unpacking the wheels instead"
    $PY - "$SITE" .wheels/*.whl "${extra[@]}" <<'EOF' >>"$RUN_LOG" 2>&1
import sys, zipfile
for wheel in sys.argv[2:]:
    zipfile.ZipFile(wheel).extractall(sys.argv[1])
EOF
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
$PY - >>"$RUN_LOG" 2>&1 <<'EOF'
import importlib
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available",
      torch.cuda.is_available(), "cudnn", torch.backends.cudnn.version())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
for name in ("hydra", "omegaconf", "antlr4", "yaml", "hydra_plugins.hydra_joblib_launcher",
             "torchvision", "tensorboard", "tqdm", "matplotlib", "sklearn", "numpy", "joblib",
             "pytest", "xdist", "pytest_timeout", "flowtrain"):
    try:
        module = importlib.import_module(name)
        print(f"{name:40s} {getattr(module, '__version__', '')} {module.__file__}")
    except Exception as error:
        print(f"{name:40s} MISSING: {type(error).__name__}: {error}")
EOF
TIMEOUT_FLAG=()
$PY -c "import pytest_timeout" 2>/dev/null && TIMEOUT_FLAG=(--timeout=90)
note "setup done"

if [ "$DRY" = cpu ]; then
    DEVICE=cpu
    COSTS_ARGS=(--device cpu --warmup 1 --steps 1 --budget-s 60)
    BENCH_PARTS=("--sizes small --models plain_realnvp,realnvp --modes eager --steps 1 --batch 4")
    TEST_ARGS=(-n 2 tests/test_bench.py)
else
    DEVICE=cuda
    COSTS_ARGS=(--device cuda --budget-s 75)
    # bench.py's full matrix (2 sizes x 6 models x 4 modes, a fresh process per row of
    # ~5-10 s, and 8 torch.compile rows of 30-90 s each) does not fit in 4 minutes. The
    # full size first, without compile (12 rows, TarFlow's two for its MFU); then the small
    # size (12 rows); then
    # compile for realnvp and plain_realnvp at the full size alone, one row per
    # invocation. Each invocation writes its rows, so one cut short by the deadline loses
    # only its own (its finished rows are in bench.log as JSON lines all the same).
    BENCH_PARTS=(
        "--sizes full --models plain_realnvp,realnvp --modes eager,bf16,channels_last"
        "--sizes full --models tarflow --modes eager,bf16"
        "--sizes full --models realnvp_networks_only,pixelcnn_arflow --modes eager,bf16,channels_last"
        "--sizes small --modes eager,bf16,channels_last"
        "--sizes full --models realnvp --modes compile"
        "--sizes full --models plain_realnvp --modes compile"
    )
    TEST_ARGS=(-n 12 tests)
fi

# --- 1. the three GPU risks of the training loop (~60 s) ---------------------------------
t=$(budget 100 330)
note "gpu_step_costs.py, timeout ${t}s"
timeout -k 10 "$t" $PY scripts/gpu_step_costs.py "${COSTS_ARGS[@]}" \
    --out "$OUT/gpu_step_costs.json" >"$OUT/gpu_step_costs.log" 2>&1
note "gpu_step_costs.py exit $?"

# --- 2. bench.py --write (~4 min) ----------------------------------------------------------
: >"$OUT/bench.log"
BENCH_END=$((SECONDS + $(budget 240 130)))
for part in "${BENCH_PARTS[@]}"; do
    t=$((BENCH_END - SECONDS))
    if [ "$t" -lt 25 ]; then note "bench.py $part: skipped, out of time"; continue; fi
    note "bench.py $part, timeout ${t}s"
    # shellcheck disable=SC2086  # $part is a list of flags
    timeout -k 10 "$t" $PY scripts/bench.py --device "$DEVICE" --write $part >>"$OUT/bench.log" 2>&1
    note "bench.py exit $?"
done
cp docs/benchmarks.json "$OUT/benchmarks.json" 2>/dev/null || note "no docs/benchmarks.json"
cp docs/BENCHMARKS.md "$OUT/BENCHMARKS.md" 2>/dev/null || note "no docs/BENCHMARKS.md"

# --- 3. the tests on CUDA (device=auto), with what is left (<= 150 s) ------------------------
t=$(budget 150 15)
note "pytest ${TEST_ARGS[*]}, timeout ${t}s (SIGINT first: pytest then reports what ran)"
# addopts replaced: the project's -n 2 is for its 2-core CI. No -x: one lent run should
# show every failure; --timeout bounds a hanging test. -v prints each outcome as it comes,
# so the log keeps them even if pytest has to be killed before its summary.
timeout -s INT -k 15 "$t" $PY -m pytest -o addopts="" -v -ra --tb=short --durations=30 \
    -p no:cacheprovider --dist loadfile "${TIMEOUT_FLAG[@]}" --junitxml="$OUT/junit.xml" \
    "${TEST_ARGS[@]}" >"$OUT/pytest.log" 2>&1
note "pytest exit $? ($(tail -n 1 "$OUT/pytest.log"))"

note "done in $((SECONDS - START)) s; files: $(cd "$OUT" && ls | tr '\n' ' ')"
