#!/usr/bin/env bash
# python_with VENV MODULE PIP_SPEC: prints the path of a python3 that can
# `import MODULE`, creating the venv VENV with `pip install PIP_SPEC` on first
# use. Fails if there is no python3. Tests that run at once call this together:
# a lock lets one create the venv while the others wait for it (two creating it
# at once broke each other's). Sourced by the broker scripts.

python_with() {
    local venv=$1 module=$2 spec=$3
    command -v python3 >/dev/null 2>&1 || { echo "python3 is not installed" >&2; return 1; }
    mkdir -p "$(dirname "$venv")"
    (
        flock -w 300 9 || { echo "waited 300 s for $venv.lock" >&2; exit 1; }
        if ! "$venv/bin/python" -c "import $module" >/dev/null 2>&1; then
            python3 -m venv "$venv" >&2
            "$venv/bin/python" -m pip install -q "$spec" >&2
        fi
        echo "$venv/bin/python"
    ) 9>"$venv.lock"
}
