#!/usr/bin/env bash
# gpu_check.sh -- one-shot GPU verification of bnref's CuPy kernels (NVIDIA H100/H200, CUDA 12/13).
#
# Run from the repository root on a fresh GPU machine:
#     bash tools/gpu_check.sh                 # results under $OUT (default /tmp/gpu_check_out)
#     GPU_CHECK_BUDGET=300 bash tools/gpu_check.sh
#     GPU_CHECK_SKIP="ncu benchfull" bash tools/gpu_check.sh
#
# Stages, in priority order; each has its own timeout, the script always goes on, and a stage
# is skipped when the total budget (GPU_CHECK_BUDGET seconds, default 420) would not fit its
# minimum ("SKIP(budget)"), when no GPU is seen ("SKIP(no-GPU)": nvidia-smi -L fails and CuPy
# sees no device), or when named in GPU_CHECK_SKIP ("SKIP(asked)"):
#                                                               max s  min s
#   env        nvidia-smi, versions, device attributes, tools     40     5
#   deps       imports; pip-installs missing small packages      150    10  (fails fast offline)
#   pytest     tests/test_gpu_kernels.py -m gpu (the CuPy cases) 200    60
#   bench      benchmarks/bench_gpu.py --quick float32           150    50  -> bench_float32_quick.md
#   checks     extra correctness: alignment, strides, streams,   110    40  -> checks.json
#              determinism, odd and huge sizes, >2^31 elements, NaN, LN/GN, running stats
#   bench16    bench_gpu.py --quick float16 bfloat16             150    60  -> bench_16bit_quick.md
#   micro      per-kernel device times (CUPTI), bn_stats split   150    60  -> micro.json
#              sweep, PyTorch side by side
#   racecheck / memcheck / initcheck   compute-sanitizer on a    75/60/60  40/35/35
#              tiny run of every kernel
#   ncu        Nsight Compute on 16 kernels (--clock-control none) 90  50
#   benchfull  bench_gpu.py, all shapes, float32                  240   150  -> bench_float32_full.md
#   compile    tests/test_cuda_compile.py (nvcc/NVRTC, no GPU)     80    45
# bench_gpu.py measures GPU time (calls queued back to back, and CUDA-graph replay), API
# latency, copy bandwidth at each size with L2-defeating rotation, and PyTorch through autograd
# and through its direct operator; see its docstring. The checks, micro, sanitizer and ncu
# stages run tools/gpu_extra.py; checks and micro read a few private names of
# bnref.kernels.cupy_bn (planner, kernels): each use is guarded, and what is missing is printed
# at the start of those stages instead of failing them.
# Everything printed also goes to $OUT/gpu_check.log; $OUT/summary.txt has the stage table and
# the key tables, and is printed last. At most 7 files are written under $OUT; nothing is
# written into the repository (the shell helpers live in a temporary directory, removed at the end).
set -u
START=$SECONDS
BUDGET=${GPU_CHECK_BUDGET:-420}
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.txt"
: > "$LOG"
: > "$SUMMARY"
REPO=$(pwd)
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
EXTRA="$REPO/tools/gpu_extra.py"   # the checks, micro, sanitizer and ncu workloads
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-$WORK/cupy_cache}   # shared by every stage: compile once

say() { echo "$*" | tee -a "$LOG"; }
remaining() { echo $(( BUDGET - (SECONDS - START) )); }
# skip_line NAME STATUS WHY: a skipped stage, in the log and the summary table
skip_line() { say "== [$1] SKIPPED: $3"; printf '%-11s %-12s %5s\n' "$1" "$2" "-" >> "$SUMMARY"; }

# stage NAME MAX_SECONDS MIN_SECONDS command...   (runs the command under its own timeout)
stage() {
  local name=$1 max=$2 min=$3
  shift 3
  local rem t t0 rc dt status
  rem=$(remaining)
  if (( rem < min )); then
    skip_line "$name" "SKIP(budget)" "${rem}s of the budget left, needs ${min}s"
    return 0
  fi
  t=$max
  (( t > rem - 3 )) && t=$(( rem - 3 ))
  say "== [$name] start $(date -u +%H:%M:%S), timeout ${t}s, budget left ${rem}s"
  t0=$SECONDS
  timeout -k 10 "$t" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  dt=$(( SECONDS - t0 ))
  if (( rc == 0 )); then status=OK
  elif (( rc == 124 || rc == 137 )); then status=TIMEOUT
  else status="FAIL(rc=$rc)"; fi
  say "== [$name] $status after ${dt}s"
  printf '%-11s %-12s %5ss\n' "$name" "$status" "$dt" >> "$SUMMARY"
}

# ---- helper files (written to $WORK, never into the repository) ---------------------------------
cat > "$WORK/env.sh" <<'ENVEOF'
PY=$1
echo "date: $(date -u)  host: $(hostname)  cpus: $(nproc)  kernel: $(uname -r)"
nvidia-smi || echo "nvidia-smi failed"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu,utilization.gpu --format=csv 2>/dev/null
nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv 2>/dev/null
command -v nvcc >/dev/null && nvcc --version | tail -2
for t in compute-sanitizer ncu cuobjdump; do printf '%s: %s\n' "$t" "$(command -v $t || ls /usr/local/cuda*/bin/$t /opt/nvidia/nsight-compute/*/$t 2>/dev/null | head -1)"; done
echo "python: $PY ($($PY -c 'import sys; print(sys.version.split()[0])' 2>&1))"
$PY - <<'PYV'
import importlib
for m in ("numpy", "cupy", "torch", "ml_dtypes", "pytest", "pytest_timeout", "numba"):
    try:
        mod = importlib.import_module(m)
        print(f"  {m} {getattr(mod, '__version__', '?')}")
    except Exception as e:
        print(f"  {m}: MISSING ({type(e).__name__}: {str(e)[:100]})")
try:
    import cupy as cp
    d = cp.cuda.Device()
    a = d.attributes
    p = cp.cuda.runtime.getDeviceProperties(d.id)
    name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]   # bytes or str, by version
    print(f"  cupy sees {cp.cuda.runtime.getDeviceCount()} device(s); device {d.id}: {name}, "
          f"cc {d.compute_capability}, {a['MultiProcessorCount']} SMs, L2 {a['L2CacheSize'] / 2**20:.0f} MiB, "
          f"{p['totalGlobalMem'] / 2**30:.0f} GiB, runtime {cp.cuda.runtime.runtimeGetVersion()}, "
          f"driver {cp.cuda.runtime.driverGetVersion()}")
except Exception as e:
    print(f"  cupy device query failed: {type(e).__name__}: {e}")
try:
    import torch
    print(f"  torch cuda {torch.version.cuda}, available {torch.cuda.is_available()}, cudnn {torch.backends.cudnn.version()}")
except Exception as e:
    print(f"  torch: {type(e).__name__}: {e}")
PYV
[ -d .git ] && git log --oneline -1 2>/dev/null
exit 0
ENVEOF

cat > "$WORK/deps.sh" <<'DEPSEOF'
PY=$1
need=()
$PY -c 'import numpy' 2>/dev/null || need+=(numpy)
$PY -c 'import pytest' 2>/dev/null || need+=(pytest)
$PY -c 'import pytest_timeout' 2>/dev/null || need+=(pytest-timeout)
$PY -c 'import ml_dtypes' 2>/dev/null || need+=(ml_dtypes)
if ! $PY -c 'import cupy; cupy.cuda.runtime.getDeviceCount()' 2>/dev/null; then
  cuda_major=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9]*\).*/\1/p' | head -1)
  if [ "${cuda_major:-12}" -ge 13 ]; then need+=(cupy-cuda13x); else need+=(cupy-cuda12x); fi
fi
if ((${#need[@]} == 0)); then echo "deps: all present"
elif ! { nvidia-smi -L >/dev/null 2>&1 || [ "${GPU_CHECK_INSTALL:-0}" = 1 ]; }; then
  echo "deps: missing ${need[*]}; no GPU here (nvidia-smi -L fails), so nothing is installed (GPU_CHECK_INSTALL=1 forces it)"
elif [ "${GPU_CHECK_NO_INSTALL:-0}" = 1 ]; then
  echo "deps: missing ${need[*]}; GPU_CHECK_NO_INSTALL=1, so nothing is installed"
else
  echo "deps: missing ${need[*]}"
  if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --find-links .whl "${need[@]}" && echo "deps: installed from .whl" || echo "deps: .whl install failed"
  fi
  timeout 120 $PY -m pip install -q --disable-pip-version-check --timeout 5 --retries 0 "${need[@]}" \
    && echo "deps: pip installed ${need[*]}" || echo "deps: pip could not install ${need[*]} (no network?); dependent stages will report"
fi
$PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null \
  || echo "deps: PyTorch with CUDA is missing: PyTorch columns will be n/a (not installed here: multi-GB)"
exit 0
DEPSEOF

cat > "$WORK/pytest_gpu.sh" <<'PTEOF'
# pytest, but a run in which no test passed (everything skipped: no GPU seen) exits 5
PY=$1; shift
"$PY" -m pytest "$@" 2>&1 | tee "$WORK_PT"
rc=${PIPESTATUS[0]}
if ! grep -qE '[0-9]+ passed' "$WORK_PT"; then echo "pytest_gpu: no test passed (no GPU seen?)"; rc=5; fi
exit "$rc"
PTEOF

cat > "$WORK/sanitize.sh" <<'SANEOF'
PY=$1; TOOL=$2; EXTRA=$3
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
[ -n "$CS" ] || { echo "compute-sanitizer not found"; exit 3; }
opts=(--tool "$TOOL" --print-limit 20 --error-exitcode 9)
[ "$TOOL" = memcheck ] && opts+=(--leak-check no)
[ "$TOOL" = racecheck ] && opts+=(--racecheck-report hazard)
"$CS" "${opts[@]}" "$PY" "$EXTRA" sanitize
rc=$?
echo "compute-sanitizer --tool $TOOL exit $rc (9 = errors found)"
exit $rc
SANEOF

cat > "$WORK/ncu.sh" <<'NCUEOF'
PY=$1; EXTRA=$2
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "ncu not found"; exit 3; }
"$NCU" --clock-control none --profile-from-start off --target-processes all \
  -k 'regex:bn_(stats|normalize|grad|dx)' -c 16 \
  --section SpeedOfLight --section Occupancy --section LaunchStats \
  --section MemoryWorkloadAnalysis --section SchedulerStats \
  "$PY" "$EXTRA" ncu
NCUEOF


# ---- choose the Python that has CuPy (the device image's python3 is the one with PyTorch) -------
PY=""
for c in "${PYTHON:-}" python3 /opt/torch/.venv/bin/python3 python; do
  [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 || continue
  if timeout 60 "$c" -c 'import cupy, numpy' >/dev/null 2>&1; then PY=$c; break; fi
done
if [ -z "$PY" ]; then
  for c in "${PYTHON:-}" python3 python; do
    [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && { PY=$c; break; }
  done
fi
say "gpu_check: repo $REPO, python ${PY:-none}, budget ${BUDGET}s, out $OUT, skip: ${GPU_CHECK_SKIP:-none}"
printf '%-11s %-12s %6s\n' stage status time > "$SUMMARY"

SKIP_LIST=" ${GPU_CHECK_SKIP:-} "
# asked NAME: true when GPU_CHECK_SKIP names the stage
asked() { [[ "$SKIP_LIST" == *" $1 "* ]]; }
# run NAME ... : a stage that needs no GPU;  gpu NAME ... : one that does
run() { if asked "$1"; then skip_line "$1" "SKIP(asked)" "named in GPU_CHECK_SKIP"; else stage "$@"; fi; }
gpu() {
  if (( HAVE_GPU == 0 )) && ! asked "$1"; then skip_line "$1" "SKIP(no-GPU)" "no GPU seen"
  else run "$@"; fi
}
[ -z "$PY" ] && say "gpu_check: no Python found; nothing can run"

run env 40 5 bash "$WORK/env.sh" "${PY:-python3}"
[ -n "$PY" ] && run deps 150 10 bash "$WORK/deps.sh" "$PY"

# A GPU is there when nvidia-smi lists one or CuPy counts one (after deps: it may have installed
# CuPy). Without one every GPU stage is skipped at once, saying so, and only compile runs.
HAVE_GPU=0
if [ -n "$PY" ]; then
  if nvidia-smi -L >/dev/null 2>&1 \
     || timeout 60 "$PY" -c 'import cupy, sys; sys.exit(0 if cupy.cuda.runtime.getDeviceCount() > 0 else 1)' >/dev/null 2>&1; then
    HAVE_GPU=1
  fi
fi
if (( HAVE_GPU == 0 )); then
  say "gpu_check: no GPU seen (nvidia-smi -L fails or is absent, and CuPy counts no device): GPU stages skipped"
  echo "no GPU seen: nvidia-smi -L failed or is absent, and CuPy counts no device" >> "$SUMMARY"
fi

PYTEST_OPTS=(-q -rfEs -p no:cacheprovider --durations=8)
[ -n "$PY" ] && "$PY" -c 'import pytest_timeout' 2>/dev/null && PYTEST_OPTS+=(--timeout=120)
export WORK_PT="$WORK/pytest_last.txt"
BENCH_OPTS=(--require-gpu --calls 20 --repeat 10 --warmup 3 --graph-calls 20)
gpu pytest 200 60 bash "$WORK/pytest_gpu.sh" "$PY" tests/test_gpu_kernels.py -m gpu "${PYTEST_OPTS[@]}"
gpu bench 150 50 "$PY" benchmarks/bench_gpu.py --quick --dtype float32 "${BENCH_OPTS[@]}" \
  --out "$OUT/bench_float32_quick.md"
gpu checks 110 40 "$PY" "$EXTRA" checks "$OUT/checks.json" "$SUMMARY"
gpu bench16 150 60 "$PY" benchmarks/bench_gpu.py --quick --dtype float16 bfloat16 "${BENCH_OPTS[@]}" \
  --out "$OUT/bench_16bit_quick.md"
gpu micro 150 60 "$PY" "$EXTRA" micro "$OUT/micro.json" "$SUMMARY"
gpu racecheck 75 40 bash "$WORK/sanitize.sh" "$PY" racecheck "$EXTRA"
gpu memcheck 60 35 bash "$WORK/sanitize.sh" "$PY" memcheck "$EXTRA"
gpu initcheck 60 35 bash "$WORK/sanitize.sh" "$PY" initcheck "$EXTRA"
gpu ncu 90 50 bash "$WORK/ncu.sh" "$PY" "$EXTRA"
gpu benchfull 240 150 "$PY" benchmarks/bench_gpu.py --dtype float32 "${BENCH_OPTS[@]}" \
  --out "$OUT/bench_float32_full.md"
[ -n "$PY" ] && run compile 80 45 "$PY" -m pytest tests/test_cuda_compile.py -q -p no:cacheprovider

# ---- summary: stage table, test result lines, the benchmark tables; printed last ----------------
{
  echo
  echo "pytest result lines:"
  grep -E '[0-9]+ (passed|failed|skipped|errors?|deselected).* in [0-9.]+s' "$LOG" | head -4
  grep -E '^(FAILED|ERROR) ' "$LOG" | head -20
  grep -E 'compute-sanitizer --tool .* exit|ERROR SUMMARY|RACECHECK SUMMARY|hazard' "$LOG" | head -12
  for f in "$OUT"/bench_*.md; do
    [ -f "$f" ] && { echo; echo "== $(basename "$f")"; grep -E '^- (goals|PyTorch backend|device)|^\|' "$f"; }
  done
  echo
  echo "total $(( SECONDS - START ))s of budget ${BUDGET}s; files: $(ls "$OUT" | tr '\n' ' ')"
} >> "$SUMMARY"
echo
echo "================================ SUMMARY ($SUMMARY) ================================"
cat "$SUMMARY"
echo
echo "================================ COMPACT (stages, goals, tests, failures) ================================"
grep -E '^(stage|env|deps|pytest|bench|checks|bench16|micro|racecheck|memcheck|initcheck|ncu|benchfull|compile) +(status|OK|SKIP|FAIL|TIMEOUT)' "$SUMMARY"
grep -E '^no GPU seen' "$SUMMARY"
grep -hE '^- goals' "$OUT"/bench_*.md 2>/dev/null
grep -E '[0-9]+ (passed|failed|skipped|errors?|deselected).* in [0-9.]+s' "$LOG" | head -4
grep -E '^  FAIL |^extra checks:|^micro: |^cupy_bn internals' "$SUMMARY" | head -20
grep -E 'compute-sanitizer --tool .* exit|ERROR SUMMARY' "$LOG" | head -8
rm -rf "$WORK"
exit 0
