#!/usr/bin/env bash
# Issue 11's GPU checks as one prepared command for a GPU machine (the `device` tool). That machine has Python 3.12
# with torch, numba, numpy and pandas, but no package index and none of reefmap's other dependencies.
#
#   here:   bash benchmarks/device_check.sh wheels   # the pinned cp312 wheels (requirements.lock) into .whl/ (~60 MB)
#   there:  bash benchmarks/device_check.sh run      # device tool: carry [".whl"], timeout_s 540
#
# `run` installs the wheels into .site (ignored), then runs:
#   1. the device-path tests on every device torch sees (CUDA there): the kernels' bytes, batch 1 = batch 8 maps,
#      two model steps at once on their own streams, the in-process pipeline; and, on the GPU by default, tile-size
#      invariance, segment() = the tile runner, kill-and-resume and concurrent runs (test_infer, test_run);
#   2. bench_pipeline.py on CUDA: the demo, a fast and the ResNet-34 UNet model, ceiling / bare / in-process /
#      embedded default cluster, ms per step, read amplification.
# Everything it prints also goes to $OUT (default out/device-check): tests.log, bench.txt, bench.json, nvidia-smi.txt.
set -uo pipefail
cd "$(dirname "$0")/.."

# reefmap's runtime and test dependencies that the GPU machine lacks (pandas brings its own), at the versions of
# requirements.lock; with them the carried .whl stays under the 64 MiB a run can carry
WHEELS="affine attrs certifi cffi cftime click click-plugins cligj cloudpickle dask distributed donfig fsspec
google-crc32c iniconfig Jinja2 lazy-importer locket MarkupSafe msgpack numcodecs packaging partd platformdirs pluggy
psutil pycparser pyparsing pyproj pystac pystac-core pystac-ext-classification pystac-ext-datacube pystac-ext-eo
pystac-ext-file pystac-ext-grid pystac-ext-item-assets pystac-ext-label pystac-ext-mgrs pystac-ext-mlm
pystac-ext-pointcloud pystac-ext-projection pystac-ext-raster pystac-ext-render pystac-ext-sar pystac-ext-sat
pystac-ext-scientific pystac-ext-storage pystac-ext-table pystac-ext-timestamps pystac-ext-version pystac-ext-view
pystac-ext-xarray-assets pytest PyYAML rasterio rioxarray sortedcontainers tblib toolz tornado
typing_extensions urllib3 xarray zarr zict"

wheels() {
    local pins=()
    for name in $WHEELS; do
        pin=$(grep -i "^${name}==" requirements.lock) || { echo "device_check: $name is not in requirements.lock" >&2; return 2; }
        pins+=("$pin")
    done
    pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${pins[@]}" && echo "device_check: $(ls .whl | wc -l) wheels in .whl ($(du -sh .whl | cut -f1))"
}

run() {
    local out=${OUT:-out/device-check}
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --target .site .whl/*.whl || return 1
    export PYTHONPATH=$PWD/.site:$PWD
    nvidia-smi > "$out/nvidia-smi.txt" 2>&1
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count())"
    timeout 240 python3 -m pytest -q -p no:cacheprovider -p no:xdist -p no:hypothesispytest -m "not slurm" \
        tests/test_device_path.py tests/test_executors.py tests/test_infer.py tests/test_run.py > "$out/tests.log" 2>&1
    echo "device tests: rc=$?"; tail -n 15 "$out/tests.log"
    timeout 280 python3 benchmarks/bench_pipeline.py --device cuda --size 8192 --tile 1024 --workers 16 \
        --models demo,fast,resnet34_unet --rounds 2 --json > "$out/bench.json" 2> "$out/bench.txt"
    echo "bench: rc=$?"; grep -v "^INFO\|distributed\." "$out/bench.txt" | tail -n 60
}

case "${1:-}" in
    wheels) wheels ;;
    run) run ;;
    *) echo "usage: bash benchmarks/device_check.sh wheels|run" >&2; exit 2 ;;
esac
