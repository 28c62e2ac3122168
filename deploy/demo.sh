#!/bin/sh
# Install the gateway into ./.venv and run it on configs/demo.yaml: simulated devices,
# no hardware, no cloud. Stop it with Ctrl-C. Works as a normal user (asks for sudo only
# if Debian's python3-venv is missing) or as root.
set -eu
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "the gateway needs Python 3.11 or newer ($PYTHON is $("$PYTHON" -V 2>&1))" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq python3-venv >/dev/null
fi
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install -q --disable-pip-version-check .

echo "gateway installed in $VENV; starting on configs/demo.yaml (Ctrl-C stops it)."
echo "In another terminal: $VENV/bin/gateway status --config configs/demo.yaml"
exec "$VENV/bin/gateway" run --config configs/demo.yaml
