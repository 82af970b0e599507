#!/usr/bin/env bash
# The GPU checks, prepared as one call for a session that the device tool lends a machine
# (NVIDIA H100/H200, 15 minutes of device time in all, starts included): the GPU-vs-CPU
# tests, the CUDA kernels on the device, and the GPU figures of the simulator, ePIE, mepie
# (issue 15), ML and the direct methods (issue 16), each step under its own time limit, every
# log written to $OUT as it goes (what finished comes back even if the call is cut off).
#
# 1. Here, once per session (~16 MB of wheels; the device machine reaches no network):
#        bash benchmarks/gpu_session.sh wheels
#    The device image holds numpy, scipy, numba, numba-cuda, cupy, h5py, click, matplotlib,
#    psutil, threadpoolctl, tqdm, pyyaml, setuptools and pytest (Python 3.12; the device
#    library's KINDS.md); the wheels are the rest of ptyengine's dependencies.
# 2. The device tool: run(command="bash benchmarks/gpu_session.sh run", carry=[".whl"],
#    timeout_s=450). The steps' limits add up to 405 s after a ~30 s install: with the
#    machine's start (1-2 min) that leaves ~6 of the 15 minutes for rerunning a failed step.
# 3. Record the numbers in benchmarks/RESULTS.md ("GPU") with the machine's line from
#    $OUT/env.log.
#
# PTYENGINE_GPU_SESSION_DEVICE=cpu runs step 2's commands here on the CPU (no wheels, the
# checkout's own environment, OUT defaulting to /tmp/gpu-session): a rehearsal that catches
# a broken command line before device time is spent on it.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(pyfftw==0.15.1 zarr==3.1.6 numcodecs==0.16.6 google-crc32c crc32c donfig ase==3.29.0)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_5_x86_64)

wheels() {
    local exclude
    exclude=$(git rev-parse --git-path info/exclude) && mkdir -p "$(dirname "$exclude")" || exit 1
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
    rm -rf .whl && mkdir .whl
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${PLATFORMS[@]/#/--platform=}" -d .whl "${WHEELS[@]}" || exit 1
    du -sh .whl
}

step() {  # step NAME SECONDS COMMAND...: run under a time limit, log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s): $*"
    local t0=$SECONDS
    timeout --kill-after=5 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "   rc $rc after $((SECONDS - t0)) s; last lines:"
    tail -n 6 "$OUT/$name.log" | sed 's/^/   | /'
}

run() {
    local device=${PTYENGINE_GPU_SESSION_DEVICE:-gpu}
    if [[ $device == gpu ]]; then
        : "${OUT:?run on the device machine, where \$OUT is the folder that comes back}"
        ls .whl/*.whl >/dev/null 2>&1 || { echo "no .whl/: run '$0 wheels' here first"; exit 1; }
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl || exit 1
        export PYTHONPATH=/tmp/site
        # ptyengine itself, laid out as installed (kernels/ and datasets/ become
        # ptyengine.kernels and ptyengine.datasets: pyproject's package-dir); pure Python, so
        # a copy is the install. The tests and benchmarks then import this copy.
        # (fresh each call: a rerun on a warm machine must not keep the last call's copy)
        rm -rf /tmp/site/ptyengine && cp -r ptyengine /tmp/site/ptyengine &&
            cp -r kernels /tmp/site/ptyengine/kernels &&
            cp -r datasets /tmp/site/ptyengine/datasets || exit 1
        PY=python3
    else
        OUT=${OUT:-/tmp/gpu-session}
        PY=${PYTHON:-python}
    fi
    mkdir -p "$OUT"
    export PYTHONUNBUFFERED=1
    local repo=$PWD
    {
        date -u
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
        nproc
        $PY -c "import numpy, numba, ptyengine, sys; print(sys.version); print('numpy', numpy.__version__, 'numba', numba.__version__, 'ptyengine', ptyengine.__file__)"
        $PY -c "import cupy; print('cupy', cupy.__version__, cupy.cuda.runtime.getDeviceProperties(0)['name'])" 2>&1
        # numba-cuda before its DLPack import syncs the stream per cupy argument per launch
        # (NUMBA_CUDA_ARRAY_INTERFACE_SYNC): the version tells whether the timings carry that
        $PY -c "import importlib.metadata as m; print('numba-cuda', m.version('numba-cuda'))" 2>&1
    } >"$OUT/env.log" 2>&1
    cat "$OUT/env.log"
    # from /tmp, so that the checkout's ptyengine/ (no kernels/ inside) does not shadow the
    # installed package; pytest's rootdir and conftest stay the checkout's. First the
    # doctor's tiny CPU and GPU runs: where they fail, so does every step after them.
    (cd /tmp && step doctor 30 $PY -m ptyengine doctor)
    (cd /tmp && step tests 100 $PY -m pytest -q -p no:cacheprovider --rootdir "$repo" \
        "$repo/tests/test_gpu.py" "$repo/tests/test_kernels.py")
    step simulate 25 $PY benchmarks/bench_simulate.py --device "$device" --positions 256
    step mepie 50 $PY benchmarks/bench_mepie.py --device "$device" --window 128 --scan 24 \
        --slices 1,4,8,16 --iterations 3 --rounds 1
    step epie 70 $PY benchmarks/bench_epie.py --device "$device" --sizes 160 --batches 16,64
    step ml 70 $PY benchmarks/bench_ml.py --device "$device" --iterations 8 --repeats 2 \
        --out /tmp/ptyengine-bench-ml
    step direct 60 $PY benchmarks/bench_direct_speed.py --device "$device" --gb 0.5 \
        --repeats 1 --methods read,ssb,tcbf,wdd --dir /tmp/ptyengine-direct
    echo "logs in $OUT"
}

case ${1:-} in
    wheels) wheels ;;
    run) run ;;
    *) echo "usage: $0 wheels|run   (see the comment at the top)"; exit 2 ;;
esac
