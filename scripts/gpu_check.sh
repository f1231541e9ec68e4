#!/usr/bin/env bash
# The whole GPU check in one call, for a session lent a GPU machine (no network there, an image
# with torch, triton and transformers but no gymnasium): about 8 minutes, every stage in its own
# time box and non-fatal, one summary file with every number at the end.
#
#   here (with the registry):  bash scripts/gpu_wheels.sh                  -> .gpu_wheels/
#   there (the device tool):   run(command="bash scripts/gpu_check.sh", carry=[".gpu_wheels"], timeout_s=540)
#
# Stages, in order: the machine and library versions; install (the carried wheels into
# /tmp/site, the C games built with gcc, the checkout itself on PYTHONPATH: no pip install of the
# project); compiled-kernel correctness (all but the paged-decode grid, then a representative six of
# its 72 cases); the kernel bench; the CUDA-graph engine tests; the engine bench at Qwen2-VL-2B and
# LLaVA-1.6-Mistral-7B shapes (random weights, bf16, batch 64, eager decode step); the sampler's cost
# in RL mode; one PPO iteration per path (fast, then RL4VLM's reference); the compiled decode step
# against the eager one and `generate` at Qwen2-VL-2B (time per step, compile cost); last, the
# engine bench at Qwen3-VL-2B and Gemma-3-4B shapes (these two run when the budget leaves time).
#
# Written to $OUT (./gpu_check_out without it): summary.md (each stage's status, seconds, pytest's
# last line and its bench-report lines: tokens/s, ratios, roofline fractions, engine.backend),
# log.txt (every stage's whole output) and the pytest-benchmark JSON files. The device tool brings
# back at most 8 files: keep it at that. GPU_CHECK_BUDGET_S (default 480) bounds the whole run.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$out"
summary="$out/summary.md"
log="$out/log.txt"
budget="${GPU_CHECK_BUDGET_S:-480}"
start=$(date +%s)
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
: >"$log"
echo "# GPU check ($(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))" >"$summary"
echo >>"$summary"

# stage NAME SECONDS COMMAND...: runs COMMAND with at most SECONDS (less when the budget is short),
# appends its output to log.txt and its status, pytest's last line and the bench report to summary.md.
stage() {
    local name=$1 limit=$2
    shift 2
    local left=$((budget - ($(date +%s) - start)))
    if ((left < 15)); then
        echo "## $name: skipped (budget spent)" >>"$summary"
        return
    fi
    ((limit > left)) && limit=$left
    local tmp t0 rc status
    tmp=$(mktemp)
    t0=$(date +%s)
    echo "===== $name (time box ${limit}s) =====" >>"$log"
    # Through bash -c so that a stage may be one of the functions below (exported).
    timeout -k 5 "$limit" bash -c '"$@"' "$name" "$@" >"$tmp" 2>&1
    rc=$?
    cat "$tmp" >>"$log"
    case $rc in
        0) status="ok" ;;
        124 | 137) status="TIMED OUT after ${limit}s" ;;
        *) status="FAILED (exit $rc)" ;;
    esac
    {
        echo "## $name: $status, $(($(date +%s) - t0)) s"
        grep -E '(passed|failed|skipped|deselected|errors?|no tests ran).* in [0-9.]+s' "$tmp" | sed 's/^=* *//; s/ *=*$//'
        awk '/=+ bench report =+/ {on = 1; next} on && (/^$/ || /^=+/ || /^-+/) {on = 0} on' "$tmp"
        [[ $name == machine ]] && sed 's/^/    /' "$tmp"
        [[ $status == ok ]] || tail -n 15 "$tmp" | sed 's/^/    /'
        echo
    } >>"$summary"
    echo "[$name] $status ($(($(date +%s) - t0)) s)"
    rm -f "$tmp"
}

check_machine() {
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv || true
    python3 - <<'PY'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA DEVICE")
for name in ("triton", "transformers", "peft", "pytest_benchmark", "hypothesis", "flash_attn"):
    try:
        module = __import__(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as e:  # report, never stop
        print(name, "missing:", type(e).__name__)
PY
}

install_checkout() {
    local rc=0
    if compgen -G ".gpu_wheels/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu_wheels/*.whl || rc=1
    else
        echo "no .gpu_wheels/ carried: run scripts/gpu_wheels.sh here and carry .gpu_wheels"; rc=1
    fi
    local inc ext
    inc=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['include'])")
    ext=$(python3 -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
    gcc -O2 -std=c11 -shared -fPIC -Wall -Wno-unused-function -Icsrc -I"$inc" csrc/binding.c \
        -o "fastvlmrl/envs/_cards$ext" -lpthread || rc=1
    PYTHONPATH=/tmp/site:$PWD python3 -c "import fastvlmrl.envs._cards, gymnasium, omegaconf, fastvlmrl.kernels; print('imports ok')" || rc=1
    return $rc
}

pytest_gpu() { python3 -m pytest -m gpu -q -p no:cacheprovider "$@"; }

kernel_tests() {
    local rc=0 f=tests/kernels/test_gpu.py::test_paged_decode_matches_reference
    pytest_gpu tests/kernels/test_gpu.py tests/kernels/test_linear.py -k "not test_paged_decode_matches_reference" || rc=1
    # block_size-Hq-Hkv-D-dtype (dtype0 fp16, dtype1 bf16, dtype2 fp32): both block sizes, MHA and
    # GQA, the head sizes 64/80/96/128, every dtype.
    pytest_gpu "$f[16-32-8-128-dtype1]" "$f[256-32-8-128-dtype1]" "$f[16-8-8-64-dtype0]" \
        "$f[16-32-4-80-dtype2]" "$f[256-32-4-96-dtype1]" "$f[256-8-8-128-dtype2]" || rc=1
    return $rc
}

export -f check_machine install_checkout pytest_gpu kernel_tests
stage "machine" 30 check_machine
stage "install" 90 install_checkout
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
stage "kernel tests (compiled, subset)" 100 kernel_tests
stage "kernel bench" 90 python3 -m pytest bench/test_bench_kernels.py -q -p no:cacheprovider \
    --benchmark-columns=min,median,max,rounds --benchmark-group-by=group --benchmark-json="$out/kernels.json"
stage "engine tests (CUDA graphs)" 60 pytest_gpu tests/engine/test_gpu.py
stage "engine bench (qwen2-vl-2b, llava-1.6-mistral-7b)" 150 pytest_gpu bench/test_bench_engine.py \
    -k "test_engine_vs_generate_gpu" --benchmark-json="$out/engine.json"
stage "sampler in RL mode" 45 pytest_gpu bench/test_bench_sampler.py --benchmark-json="$out/sampler.json"
stage "PPO iteration, fast path" 90 pytest_gpu bench/test_bench_ppo_iteration.py -k "gpu and fast" \
    --benchmark-json="$out/ppo_fast.json"
stage "PPO iteration, reference path" 120 pytest_gpu bench/test_bench_ppo_iteration.py -k "gpu and reference"
stage "compiled decode vs eager (qwen2-vl-2b)" 180 pytest_gpu bench/test_bench_engine.py \
    -k "test_compiled_decode_vs_eager" --benchmark-json="$out/engine_compile.json"
stage "engine bench (qwen3-vl-2b, gemma-3-4b)" 150 pytest_gpu bench/test_bench_engine.py \
    -k "test_engine_vs_generate_gpu_newer_families" --benchmark-json="$out/engine_families.json"

echo "total: $(($(date +%s) - start)) s of a ${budget} s budget" >>"$summary"
echo
cat "$summary"
