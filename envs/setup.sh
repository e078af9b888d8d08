#!/usr/bin/env bash
# Build the stand-ins for Kaggle's GPU and TPU images as virtual environments:
#   .venv-kaggle-gpu from envs/kaggle-gpu.txt, .venv-kaggle-tpu from envs/kaggle-tpu.txt.
# Run from the repository root: `bash envs/setup.sh [gpu|tpu]...` (both when none is named).
# Our package is deliberately NOT installed: tests install the wheel with --no-deps into them,
# the way the Kaggle kernels do, so our code runs on the image's versions.
# Idempotent: a venv whose stored hash of its requirements file matches is left alone; any other
# (missing, half-built, built from an older file) is removed and built afresh.
# The interpreter: $KAGGLE_STANDIN_PYTHON if set, else the newest pyenv 3.12.x, else python3.12 on PATH.
set -euo pipefail

if [[ ! -f setup.py || ! -d envs ]]; then
    echo "envs/setup.sh: run it from the repository root (no setup.py or envs/ in $PWD)" >&2
    exit 2
fi

find_python() {
    if [[ -n "${KAGGLE_STANDIN_PYTHON:-}" ]]; then
        echo "$KAGGLE_STANDIN_PYTHON"
        return
    fi
    # The pyenv shim for python3.12 is not on pyenv's path unless 3.12 is selected: use the real binary.
    if command -v pyenv >/dev/null 2>&1; then
        local root candidate
        root=$(pyenv root)
        candidate=$(ls -d "$root"/versions/3.12.*/bin/python3.12 2>/dev/null | sort -V | tail -n 1 || true)
        if [[ -n "$candidate" && -x "$candidate" ]]; then
            echo "$candidate"
            return
        fi
    fi
    if command -v python3.12 >/dev/null 2>&1 && python3.12 -c 'import sys' >/dev/null 2>&1; then
        command -v python3.12
        return
    fi
    echo "envs/setup.sh: no Python 3.12 found: install it with pyenv (pyenv install 3.12), put python3.12" \
         "on PATH, or set KAGGLE_STANDIN_PYTHON=/path/to/python3.12" >&2
    exit 3
}

build() {
    local name=$1 req="envs/kaggle-$1.txt" venv=".venv-kaggle-$1"
    local stamp="$venv/.requirements.sha256" want
    [[ -f "$req" ]] || { echo "envs/setup.sh: $req is missing" >&2; exit 2; }
    want=$(sha256sum "$req" | cut -d' ' -f1)
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]; then
        echo "$venv: up to date with $req"
        return
    fi
    local py version
    py=$(find_python)
    version=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [[ "$version" != "3.12" ]]; then
        echo "envs/setup.sh: $py is Python $version; Kaggle's images run 3.12" >&2
        exit 3
    fi
    local start=$SECONDS
    echo "$venv: building from $req with $py"
    rm -rf "$venv"
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
    "$venv/bin/python" -m pip check
    echo "$want" > "$stamp"
    echo "$venv: built in $((SECONDS - start)) s, $(du -sh "$venv" | cut -f1)"
}

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(gpu tpu)
for target in "${targets[@]}"; do
    case "$target" in
        gpu|tpu) build "$target" ;;
        *) echo "envs/setup.sh: unknown stand-in '$target' (gpu or tpu)" >&2; exit 2 ;;
    esac
done
