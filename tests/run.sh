#!/bin/sh
# Install what the test suite needs (Debian packages, a virtualenv with the gateway and
# its test dependencies) and run the whole suite. Run as root or with sudo:
#     sudo tests/run.sh            # extra arguments go to pytest, e.g. -k outbox
set -eu
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh installs Debian packages: run it as root or with sudo" >&2
    exit 1
fi

# Debian packages: brokers for the tests, the venv module, systemd-analyze for the unit check
APT_PACKAGES="mosquitto mosquitto-clients python3-venv python3-dev systemd"
missing=""
for p in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]"

set +e
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
# pytest exits 5 when nothing was collected: that is a failure here, not a pass
exit $rc
