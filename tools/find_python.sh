# Sourced by torchrun.sh and srun.sh: sets PYTHON to the interpreter their tools run with.
#
# $PYTHON (default: the python on PATH) is kept when it can import torch, mmengine, mmcv and
# timm, so a user's own environment (a cluster install) is never replaced. Otherwise mmvpt's
# environment is used when it is built (`tools/env.sh --locate` knows where it is, and builds
# nothing). Without either, one line on stderr says how to get it, and the sourcing script
# exits with status 1. tools/_bootstrap.py does the same for the python tools.

_mmvpt_tools_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON=${PYTHON:-python}

# The modules $PYTHON lacks, comma-separated (the list of tools/_bootstrap.py); all of them
# when it does not run at all. find_spec finds a module without the seconds an import costs.
_mmvpt_missing_modules() {
    "$PYTHON" -c 'import importlib.util, sys
print(", ".join(name for name in sys.argv[1:] if importlib.util.find_spec(name) is None))' \
        torch mmengine mmcv timm 2>/dev/null || echo "torch, mmengine, mmcv, timm"
}

_mmvpt_missing="$(_mmvpt_missing_modules)"
if [ -n "$_mmvpt_missing" ]; then
    if _mmvpt_env="$(bash "$_mmvpt_tools_dir/env.sh" --locate)"; then
        PYTHON="$_mmvpt_env/bin/python"
    else
        if _mmvpt_python_path="$(command -v "$PYTHON")"; then
            _mmvpt_problem="$PYTHON ($_mmvpt_python_path) cannot import $_mmvpt_missing"
        else
            _mmvpt_problem="$PYTHON is not on PATH"
        fi
        echo "mmvpt: $_mmvpt_problem, and mmvpt's environment${MMVPT_ENV:+ (MMVPT_ENV=$MMVPT_ENV)}" \
            "is not built: run 'bash tools/env.sh' (builds it, ~20 min) or 'source tools/env.sh'" >&2
        exit 1
    fi
fi
unset -v _mmvpt_tools_dir _mmvpt_missing _mmvpt_env _mmvpt_python_path _mmvpt_problem
unset -f _mmvpt_missing_modules
