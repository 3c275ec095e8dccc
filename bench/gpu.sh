#!/usr/bin/env bash
# The GPU check of issue 7 in few device calls: bench/gpu.sh STAGE [STAGE ...]
#
#   wheels    (here, not on the GPU machine) download into .whl/ what the GPU image lacks:
#             numpy 2.4.x (numba-cuda 0.30.4 cannot compile kernels under the image's numpy
#             2.5) and dask/distributed for tests/test_distributed.py. .whl/ must be listed in
#             .git/info/exclude and named in the device tool's carry.
#   setup     install .whl/ into /tmp/site (no network there) and check that the GPU is used.
#   test      the whole test suite on the GPU, NUMBACONV_TEST_REQUIRE_CUDA=1 (a CUDA test that
#             cannot run fails the session), 8 xdist workers; junit XML in $OUT.
#   sanitize  compute-sanitizer memcheck and racecheck over the CUDA tests of the kernel
#             families (conv, pool, dense, norm, activation, parity).
#   profile   ncu counters (speed of light, occupancy, warp stalls, pipes, memory) of the conv
#             kernels on four bench layers at batch 32 (ResNet-50 3x3 at 56 and 7: the two GEMM
#             tiles; MobileNetV2 depthwise at 112 and 14); ncu.txt in $OUT.
#   bench     python -m numbaconv bench on CUDA: conv sets at batch 32 and 1, host overhead,
#             ResNet-18 / MobileNetV2 end to end; gpu.json/.md/.png in $OUT; then ptxas
#             registers/stack/spills/occupancy per kernel (bench/kernels.py, cuda-kernels.*).
#
# One device call runs at most 10 minutes; a cold numba cache makes the first call the longest.
# Suggested calls (each with carry [".whl"]):
#   bash bench/gpu.sh setup test
#   bash bench/gpu.sh setup sanitize bench
#   bash bench/gpu.sh setup profile
# Then copy the files from $OUT into bench/results/.
set -uo pipefail

OUT="${OUT:-/tmp/gpu-out}"
mkdir -p "$OUT"
PY=python3
status=0
start=$SECONDS
step() { echo; echo "=== [$((SECONDS - start))s] $*"; }
fail() { echo "FAILED: $*"; status=1; }

stage_wheels() {
    local pins=(numpy==2.4.6 dask==2026.8.0 distributed==2026.8.0 partd==1.4.2 locket==1.0.0
                tblib==3.2.2 zict==3.0.0 tornado==6.6.1)
    mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}" \
        || fail "wheel download"
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    ls .whl
}

stage_setup() {
    ls .whl/numpy-2.4*.whl >/dev/null 2>&1 || { fail "no numpy 2.4 wheel in .whl (run the wheels stage here and carry .whl)"; return; }
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { fail "wheel install"; return; }
    export PYTHONPATH="/tmp/site:$PWD"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
        | tee "$OUT/gpu.txt"
    $PY - <<'PY' | tee -a "$OUT/gpu.txt" || fail "numbaconv does not see the GPU"
import numpy, numba, numba_cuda, numbaconv as nc
from numba import cuda
assert numpy.__version__.startswith("2.4"), numpy.__version__
assert cuda.is_available(), "numba.cuda.is_available() is False"
print("numpy", numpy.__version__, "numba", numba.__version__, "numba-cuda", numba_cuda.__version__)
print("device:", cuda.get_current_device().name, "cc", cuda.get_current_device().compute_capability)
nc.info()
PY
}

stage_test() {
    local ignore=()
    $PY -c "import nbclient, nbformat, ipykernel" 2>/dev/null \
        || { ignore+=(--ignore=tests/test_notebooks.py); echo "note: nbclient/ipykernel missing: tests/test_notebooks.py not run (it has no CUDA test)"; }
    NUMBACONV_TEST_REQUIRE_CUDA=1 NUMBACONV_TEST_REQUIRE_PTX=1 timeout 560 \
        $PY -m pytest -q -rs -n 8 -p no:cacheprovider tests "${ignore[@]}" \
        --junitxml="$OUT/gpu-tests.xml" 2>&1 | tail -40
    [ "${PIPESTATUS[0]}" = 0 ] || fail "test suite"
    $PY .ci/check_junit.py "$OUT/gpu-tests.xml" gpu 100 --name-contains cuda || fail "CUDA tests skipped or too few"
}

stage_sanitize() {
    local files=(tests/test_conv.py tests/test_pool.py tests/test_dense.py tests/test_norm.py
                 tests/test_activation.py tests/test_parity.py)
    for tool in memcheck racecheck; do
        step "compute-sanitizer --tool $tool"
        NUMBACONV_TEST_DEVICES=cuda timeout 270 compute-sanitizer --tool "$tool" \
            --error-exitcode 99 --print-limit 20 \
            $PY -m pytest -q -x -p no:cacheprovider "${files[@]}" -k cuda 2>&1 \
            | tee "$OUT/sanitize-$tool.txt" | tail -15
        [ "${PIPESTATUS[0]}" = 0 ] || fail "compute-sanitizer $tool"
    done
}

stage_profile() {
    # One launch per layer (the compile happens on the first call, before any launch); only
    # the conv kernels are profiled (not the k-table fill).
    cat > /tmp/ncu_layers.py <<'PY'
import numpy as np
import numbaconv as nc
from numbaconv import bench

layers = {la[0]: la for s in bench.SETS.values() for la in s}
rng = np.random.default_rng(0)
for name in ("resnet50.3x3.56", "resnet50.3x3.7", "mobilenetv2.dw3x3.112.32",
             "mobilenetv2.dw3x3.14.576"):
    _, c, oc, hw, k, s, p, g = layers[name]
    x = nc.to_device(rng.standard_normal((32, c, hw, hw), dtype=np.float32))
    w = nc.to_device(rng.standard_normal((oc, c // g, k, k), dtype=np.float32))
    nc.to_numpy(nc.functional.conv2d(x, w, stride=s, padding=p, groups=g))
    print("profiled", name, flush=True)
PY
    NUMBACONV_DEVICE=cuda timeout 400 ncu --clock-control none --target-processes all \
        --kernel-name regex:'conv2d_(gemm|depthwise)' \
        --section SpeedOfLight --section Occupancy --section LaunchStats \
        --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
        --section WarpStateStats --section InstructionStats \
        $PY /tmp/ncu_layers.py > "$OUT/ncu.txt" 2>&1 || fail "ncu profile"
    grep -E "profiled|conv2d_|Duration|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Issue Slots Busy|No Eligible|DRAM Throughput" \
        "$OUT/ncu.txt" | head -80
}


stage_bench() {
    NUMBACONV_DEVICE=cuda timeout 420 $PY -m numbaconv bench --fresh --out "$OUT" \
        --only conv overhead e2e --sets resnet50 mobilenetv2 --batches 32 1 --nets resnet18 \
        || fail "bench"
    $PY bench/kernels.py --out "$OUT" | tail -3 || echo "note: bench/kernels.py failed (nvJitLink?)"
}

[ $# -gt 0 ] || { sed -n '2,25p' "$0"; exit 2; }
for s in "$@"; do
    case "$s" in
        wheels|setup|test|sanitize|profile|bench) step "$s"; "stage_$s" ;;
        *) echo "unknown stage $s (wheels, setup, test, sanitize, profile, bench)"; exit 2 ;;
    esac
done
step "done, status $status"
exit $status
