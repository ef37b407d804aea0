# Sourced by the tools/device_gpu_*.sh scripts on a lent device machine: $OUT, unbuffered
# Python, the carried wheels (.whl/, see device_gpu_run.sh) installed to /tmp/site, and the
# carried fixtures (device_fixtures/).
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export ZEMOSAIC_OOC_FIXTURES=$PWD/device_fixtures
# CuPy's compiled kernels: kept in the repo folder .cupy_cache (git-ignored) and sent back as
# one file, $OUT/cupy_cache.tgz (the device tool returns a limited number of files); unpack it
# into .cupy_cache here and carry that folder, so a later call skips the cold compiles
export CUPY_CACHE_DIR=$PWD/.cupy_cache
mkdir -p "$CUPY_CACHE_DIR"
trap 'tar czf "$OUT/cupy_cache.tgz" -C "$CUPY_CACHE_DIR" . 2>/dev/null' EXIT
