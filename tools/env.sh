#!/usr/bin/env bash
# Creates (once) and activates the Python environment mmvpt is tested with.
#
#   source tools/env.sh        # from the repository root: build if missing, then activate
#   bash tools/env.sh          # only build / check it
#   bash tools/env.sh --locate # print its path if it is built (complete), else exit 1; builds nothing
#
# The environment lives outside the repository (default ~/.cache/mmvpt/venv-<hash>), keyed by a
# hash of requirements/*.txt, so clean clones reuse it and a change of pins builds a new one.
# Override the location with MMVPT_ENV=/path. Nothing here needs a GPU.
#
# Extras (requirements/extras/<name>.txt, listed in _MMVPT_EXTRAS) are installed into the
# built environment afterwards, incrementally: they sit outside requirements/*.txt so that a
# new pin there costs a pip install (seconds) instead of a new environment (20 minutes). A
# stamp in the environment keyed by the file's hash marks an extra installed; a changed file
# is installed again.
set -o pipefail

_mmvpt_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_mmvpt_python="${MMVPT_PYTHON:-python3}"

_mmvpt_hash() {
    cat "$_mmvpt_root"/requirements/*.txt | { "$_mmvpt_python" -c 'import sys, hashlib; print(sys.version_info[:2], end="")'; cat; } \
        | sha1sum | cut -c1-10
}

_mmvpt_build_env() {
    local env="$1" req="$_mmvpt_root/requirements" log="$1.log"
    echo "[mmvpt] building the environment in $env (about 20 minutes on 2 cores; log: $log)" >&2
    rm -rf "$env"
    mkdir -p "$(dirname "$env")"
    # Every step ends in `|| exit`: `set -e` would be ignored here whenever a caller tests
    # this function's status (`mmvpt_ensure_env && ...`), and a half-built environment must
    # never be marked complete.
    (
        "$_mmvpt_python" -m venv "$env" || exit
        local pip=("$env/bin/python" -m pip install --no-input --progress-bar off)
        "${pip[@]}" --upgrade pip || exit
        "${pip[@]}" -r "$req/build.txt" || exit
        "${pip[@]}" -r "$req/torch.txt" -c "$req/build.txt" || exit
        # mmcv's ops compile against the torch just installed, so no build isolation; its
        # wheel would be cached by pip without regard to the torch version, so never cache it.
        MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" FORCE_CUDA=0 \
            "${pip[@]}" --no-build-isolation --no-cache-dir -r "$req/mmcv.txt" \
            -c "$req/build.txt" -c "$req/torch.txt" || exit
        "${pip[@]}" -r "$req/runtime.txt" -r "$req/tests.txt" -c "$req/build.txt" \
            -c "$req/torch.txt" -c "$req/mmcv.txt" || exit
        # mmcv/mmengine pull opencv-python, which needs libGL; machines without a display lack it.
        "$env/bin/python" -m pip uninstall -y opencv-python >/dev/null 2>&1
        "${pip[@]}" --force-reinstall --no-deps "opencv-python-headless>=4.10,<5" || exit
        "$env/bin/python" -c 'import torch, torchvision, mmcv.ops, mmengine, mmpretrain, mmseg, timm, cv2' \
            || exit
        touch "$env/.complete"
    ) >"$log" 2>&1
    local rc=$?
    if [ $rc -ne 0 ]; then
        echo "[mmvpt] environment build failed (exit $rc); the last lines of $log:" >&2
        tail -n 30 "$log" >&2
        return $rc
    fi
    echo "[mmvpt] environment ready: $env" >&2
}

# Installed into the test environment: data = tensorflow-datasets & co. for the dataset
# converters and their tests (requirements/extras/data-tensorflow.txt, TensorFlow for
# generating the real datasets, is not: 1.3 GB that no test uses); tests = the reference
# implementations the tests compare with (Hugging Face peft) and ruff, the linter
# tools/run_tests.sh runs first.
_MMVPT_EXTRAS=(data tests)

_mmvpt_extra_stamp() {
    local hash
    hash="$(sha1sum < "$_mmvpt_root/requirements/extras/$2.txt" | cut -c1-10)" || return
    echo "$1/.extra-$2-$hash"
}

_mmvpt_install_extra() {
    local env="$1" name="$2" req="$_mmvpt_root/requirements" log="$1.extra-$2.log" stamp
    stamp="$(_mmvpt_extra_stamp "$env" "$name")" || return
    echo "[mmvpt] installing requirements/extras/$name.txt into $env (log: $log)" >&2
    # `|| exit` on every step, as in _mmvpt_build_env; the core pins are constraints, so the
    # extra can add packages but never move torch, numpy or mmcv.
    (
        "$env/bin/python" -m pip install --no-input --progress-bar off \
            -r "$req/extras/$name.txt" -c "$req/build.txt" -c "$req/torch.txt" \
            -c "$req/mmcv.txt" -c "$req/runtime.txt" || exit
        rm -f "$env/.extra-$name-"*
        touch "$stamp"
    ) >"$log" 2>&1
    local rc=$?
    if [ $rc -ne 0 ]; then
        echo "[mmvpt] installing requirements/extras/$name.txt failed (exit $rc);" \
            "the last lines of $log:" >&2
        tail -n 30 "$log" >&2
        return $rc
    fi
}

_mmvpt_ensure_extras() {
    local env="$1" name stamp
    for name in "${_MMVPT_EXTRAS[@]}"; do
        stamp="$(_mmvpt_extra_stamp "$env" "$name")" || return
        [ -f "$stamp" ] && continue
        exec 9>"$env.lock"
        flock 9
        if [ ! -f "$stamp" ]; then
            _mmvpt_install_extra "$env" "$name" || { flock -u 9; return 1; }
        fi
        flock -u 9
    done
}

# Where the environment is (built or not): the one place that knows, used by every caller.
_mmvpt_env_path() {
    echo "${MMVPT_ENV:-$HOME/.cache/mmvpt/venv-$(_mmvpt_hash)}"
}

# For the tools (tools/_bootstrap.py, tools/find_python.sh): the environment's path when it is
# complete; status 1, nothing printed and nothing built otherwise.
mmvpt_locate_env() {
    local env
    env="$(_mmvpt_env_path 2>/dev/null)"
    [ -f "$env/.complete" ] && echo "$env"
}

mmvpt_ensure_env() {
    local env
    env="$(_mmvpt_env_path)"
    if [ ! -f "$env/.complete" ]; then
        # One builder at a time: a second caller waits for the first.
        mkdir -p "$(dirname "$env")"
        exec 9>"$env.lock"
        flock 9
        if [ ! -f "$env/.complete" ]; then
            _mmvpt_build_env "$env" || { flock -u 9; return 1; }
        fi
        flock -u 9
    fi
    _mmvpt_ensure_extras "$env" || return 1
    export MMVPT_ENV="$env"
    export VIRTUAL_ENV="$env"
    export PATH="$env/bin:$PATH"
    # The checkout itself is the package: no install step to go stale between clones.
    export PYTHONPATH="$_mmvpt_root${PYTHONPATH:+:$PYTHONPATH}"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    # Only when run: a sourcing script's own arguments are visible here as $1.
    if [ "${1:-}" = "--locate" ]; then
        mmvpt_locate_env
    else
        mmvpt_ensure_env && echo "$MMVPT_ENV"
    fi
else
    mmvpt_ensure_env
fi
