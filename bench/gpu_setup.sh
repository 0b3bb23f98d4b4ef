#!/usr/bin/env bash
# Prepare a device machine for the benchmarks and tests. Its image has torch (CUDA) and transformers but not
# datasets, soxr, av or soundfile, and it has no network: the wheels carried in .gpu_wheels/ (gitignored; made on a
# machine with network by `pip download --only-binary=:all: --python-version 3.12 --no-deps -d .gpu_wheels ...`)
# are installed without dependencies into /tmp/site (GPU_SITE), which goes first on PYTHONPATH with src/ and tests/.
#
#   source bench/gpu_setup.sh              # installs, then exports PYTHONPATH and HF_HUB_OFFLINE in this shell
#   bash bench/gpu_setup.sh                # installs and prints the `export ...` line to run
#
# A second run on the same machine reinstalls only when the wheel list changed. Prints the versions it will run.

_gpu_setup() {
    local root site python stamp wheels
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    site="${GPU_SITE:-/tmp/site}"
    python="${PYTHON:-python}"
    stamp="$site/.avemotion-wheels"
    wheels=$(ls "$root"/.gpu_wheels/*.whl 2>/dev/null)
    if [ -z "$wheels" ]; then
        echo "gpu_setup: no wheels in $root/.gpu_wheels: using the packages installed here" >&2
    elif [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wheels" ]; then
        echo "gpu_setup: $site already holds the wheels of .gpu_wheels" >&2
    else
        # --upgrade: a changed wheel list replaces what an earlier run put into the target
        # shellcheck disable=SC2086
        if ! "$python" -m pip install -q --no-deps --upgrade --target "$site" $wheels; then
            echo "gpu_setup: pip install into $site failed" >&2
            return 1
        fi
        echo "$wheels" >"$stamp"
    fi
    GPU_SETUP_EXPORT="export PYTHONPATH=$site:$root/src:$root/tests HF_HUB_OFFLINE=1"
    PYTHONPATH="$site:$root/src:$root/tests" HF_HUB_OFFLINE=1 "$python" - <<'EOF' >&2
import torch, transformers
cuda = torch.cuda.is_available()
gpu = torch.cuda.get_device_name(0) if cuda else "no CUDA device"
print(f"gpu_setup: python {__import__('sys').version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"transformers {transformers.__version__}, {gpu}")
EOF
}

if _gpu_setup; then
    if [ "${BASH_SOURCE[0]}" != "$0" ]; then # sourced: set the environment of the caller's shell
        eval "$GPU_SETUP_EXPORT"
    fi
    echo "$GPU_SETUP_EXPORT"
else
    # shellcheck disable=SC2317
    return 1 2>/dev/null || exit 1
fi
