#!/bin/sh
# Install the edge gateway on 64-bit Raspberry Pi OS (Bookworm) or Debian 12.
#
#     sudo deploy/install.sh                 install or upgrade, then (re)start the services
#     sudo deploy/install.sh --no-start      install only (image builds, chroots)
#     deploy/install.sh --root DIR           write every file under DIR and only print the
#                                            system changes (users, packages, services)
#
# Safe to run again: nothing is duplicated, an edited /etc/gateway/gateway.yaml is kept,
# generated credentials are never replaced. See deploy/README.md.
set -eu

SRC=$(cd "$(dirname "$0")/.." && pwd)
ROOT=""
START=auto

PREFIX=/opt/gateway
VENV=$PREFIX/venv
SHARE=$PREFIX/share
BIN=$PREFIX/bin
ETC=/etc/gateway
USER_NAME=gateway
APT_PACKAGES="python3 python3-venv mosquitto"

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || { echo "install.sh: --root needs a directory" >&2; exit 2; }
                ROOT=$(cd "$2" && pwd); shift 2 ;;
        --root=*) ROOT=$(cd "${1#--root=}" && pwd); shift ;;
        --no-start) START=no; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

say() { printf '%s\n' "$*"; }

# System changes: run them, or in --root mode print them and leave the system alone.
system() {
    if [ -n "$ROOT" ]; then
        say "would run: $*"
    else
        "$@"
    fi
}

# put MODE SRC DEST: copy a file under $ROOT, replacing it only when its content changed.
put() {
    if [ -f "$ROOT$3" ] && cmp -s "$2" "$ROOT$3"; then
        chmod "$1" "$ROOT$3"
        return 0
    fi
    install -D -m "$1" "$2" "$ROOT$3"
    say "installed $3"
}

# own OWNER PATH...: ownership only means something on the real system.
own() {
    owner=$1
    shift
    system chown "$owner" "$@"
}

check_platform() {
    arch=$(uname -m)
    case "$arch" in
        aarch64|x86_64) ;;
        armv6l|armv7l|armhf)
            echo "install.sh: 32-bit ARM ($arch) is not supported: grpcio publishes no" \
                 "armv7 wheels. Install 64-bit Raspberry Pi OS (arm64)." >&2
            exit 1 ;;
        *) echo "install.sh: warning: untested architecture $arch" >&2 ;;
    esac
    if [ -r /etc/os-release ]; then
        # shellcheck disable=SC1091
        . /etc/os-release
        case "${VERSION_CODENAME:-}" in
            bookworm|trixie) ;;
            *) echo "install.sh: warning: made for Debian 12 (bookworm);" \
                    "this is ${PRETTY_NAME:-unknown}" >&2 ;;
        esac
    fi
}

install_packages() {
    if [ -n "$ROOT" ]; then
        say "would run: apt-get install --no-install-recommends $APT_PACKAGES (those missing)"
        return 0
    fi
    missing=""
    for p in $APT_PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" \
            || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # shellcheck disable=SC2086
        apt-get install -y -qq --no-install-recommends $missing
    fi
}

create_user() {
    if [ -n "$ROOT" ] || ! getent passwd "$USER_NAME" >/dev/null 2>&1; then
        system useradd --system --user-group --home-dir /var/lib/gateway --no-create-home \
            --shell /usr/sbin/nologin --comment edge-gateway "$USER_NAME"
    fi
    # dialout opens the Zigbee stick; the unit adds it too (SupplementaryGroups=dialout)
    if [ -n "$ROOT" ] || ! id -nG "$USER_NAME" | tr ' ' '\n' | grep -qx dialout; then
        system usermod -a -G dialout "$USER_NAME"
    fi
}

# The pinned dependencies, one per line, from pyproject.toml.
requirements() {
    python3 - "$SRC/pyproject.toml" <<'EOF'
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
print("# pinned dependencies of gateway", project["version"], "(from pyproject.toml)")
for req in project["dependencies"]:
    print(req)
EOF
}

install_python() {
    tmp=$(mktemp)
    requirements > "$tmp"
    put 0644 "$tmp" "$SHARE/requirements.txt"
    rm -f "$tmp"
    # pure-Python packages published as source only (deploy/pure-sdists.txt) may build
    no_binary=$(sed 's/#.*//' "$SRC/deploy/pure-sdists.txt" | tr -s ' \n' ',' | sed 's/^,//; s/,$//')
    if [ -n "$ROOT" ]; then
        say "would run: python3 -m venv $VENV"
        say "would run: $VENV/bin/pip install --only-binary=:all: --no-binary=$no_binary" \
            "-r $SHARE/requirements.txt"
        say "would run: $VENV/bin/pip install --no-deps --force-reinstall $SRC"
        return 0
    fi
    # a venv whose interpreter is gone (e.g. after a Python upgrade) is rebuilt
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "" 2>/dev/null; then
        rm -rf "$VENV"
        python3 -m venv "$VENV"
    fi
    pip="$VENV/bin/python -m pip --disable-pip-version-check --no-input -q"
    $pip install --upgrade pip
    # dependencies from wheels only (deploy/check_wheels.py proves they exist for aarch64):
    # a Pi has no compiler and should not need one
    $pip install --only-binary=:all: --no-binary="$no_binary" -r "$SHARE/requirements.txt"
    # the gateway itself is pure Python and builds from source without a compiler
    $pip install --no-deps --force-reinstall "$SRC"
}

install_files() {
    put 0755 "$SRC/deploy/firstboot.sh" "$BIN/gateway-firstboot"
    put 0755 "$SRC/deploy/add-device.sh" "$BIN/gateway-add-device"
    if [ ! -L "$ROOT/usr/local/sbin/gateway-add-device" ]; then
        mkdir -p "$ROOT/usr/local/sbin"
        ln -s "$BIN/gateway-add-device" "$ROOT/usr/local/sbin/gateway-add-device"
        say "installed /usr/local/sbin/gateway-add-device -> $BIN/gateway-add-device"
    fi
    put 0644 "$SRC/systemd/gateway.service" /etc/systemd/system/gateway.service
    put 0644 "$SRC/systemd/gateway-firstboot.service" \
        /etc/systemd/system/gateway-firstboot.service
    put 0644 "$SRC/hardware/99-gateway-zigbee.rules" /etc/udev/rules.d/99-gateway-zigbee.rules
    put 0644 "$SRC/deploy/README.md" "$SHARE/README.md"
}

# Like a dpkg conffile: the example replaces an unedited copy, never an edited one.
install_config() {
    mkdir -p "$ROOT$ETC"
    chmod 0750 "$ROOT$ETC"
    own "root:$USER_NAME" "$ETC"
    new="$SRC/configs/gateway.yaml"
    conf="$ROOT$ETC/gateway.yaml"
    shipped="$ROOT$SHARE/gateway.yaml.example"
    if [ ! -e "$conf" ]; then
        install -m 0640 "$new" "$conf"
        say "installed $ETC/gateway.yaml (from configs/gateway.yaml)"
    elif cmp -s "$new" "$conf"; then
        :
    elif [ -f "$shipped" ] && cmp -s "$shipped" "$conf"; then
        install -m 0640 "$new" "$conf"
        say "updated $ETC/gateway.yaml (it was the unedited example)"
    else
        install -m 0640 "$new" "$conf.new"
        say "kept edited $ETC/gateway.yaml; the new example is $ETC/gateway.yaml.new"
    fi
    own "root:$USER_NAME" "$ETC/gateway.yaml"
    put 0644 "$new" "$SHARE/gateway.yaml.example"
    # credentials: root only; systemd hands them to the service (LoadCredential=)
    mkdir -p "$ROOT$ETC/credentials"
    chmod 0700 "$ROOT$ETC/credentials"
}

install_mosquitto() {
    put 0644 "$SRC/deploy/mosquitto/gateway.conf" /etc/mosquitto/conf.d/gateway.conf
    put 0640 "$SRC/deploy/mosquitto/gateway.acl" /etc/mosquitto/gateway.acl
    if [ ! -e "$ROOT/etc/mosquitto/gateway.passwd" ]; then
        # accounts are added by first boot (the gateway's) and gateway-add-device
        install -m 0640 /dev/null "$ROOT/etc/mosquitto/gateway.passwd"
        say "installed /etc/mosquitto/gateway.passwd (empty)"
    fi
    # mosquitto reads both after dropping root: they belong to its user
    own mosquitto:mosquitto /etc/mosquitto/gateway.acl /etc/mosquitto/gateway.passwd
}

enable_services() {
    # `systemctl enable` works offline (in an image chroot) as well as on a running system
    if [ -n "$ROOT" ]; then
        system systemctl --root="$ROOT" enable gateway-firstboot.service gateway.service
    else
        systemctl enable gateway-firstboot.service gateway.service mosquitto.service
    fi
    if [ "$START" = auto ] && { [ -n "$ROOT" ] || [ ! -d /run/systemd/system ]; }; then
        START=no
    fi
    if [ "$START" = no ]; then
        say "services enabled; not started (they start at next boot)"
        return 0
    fi
    systemctl daemon-reload
    udevadm control --reload
    udevadm trigger --subsystem-match=tty --action=add
    # credentials and the gateway's mosquitto account before either service starts
    systemctl restart gateway-firstboot.service
    systemctl restart mosquitto.service
    systemctl restart gateway.service
    say "gateway started: systemctl status gateway; journalctl -u gateway -f"
}

# gateway check on the installed config, in the service's environment (EnvironmentFile=,
# LoadCredential=): it warns when the local mosquitto's queue for the gateway's session is
# shorter than the config's outage (README, "Local MQTT devices"). Never fails the install.
check_config() {
    gateway="$VENV/bin/gateway"
    if [ -n "$ROOT" ]; then
        say "would run: $gateway check $ETC/gateway.yaml"
        return 0
    fi
    if [ ! -f "$ETC/gateway.env" ]; then
        say "$ETC/gateway.yaml not checked yet: it uses the id and credentials first boot" \
            "creates; then see $SHARE/README.md, \"Credentials in the config\""
        return 0
    fi
    id=$(sed -n 's/^GATEWAY_ID=//p' "$ETC/gateway.env")
    if ! env GATEWAY_ID="$id" CREDENTIALS_DIRECTORY="$ETC/credentials" \
            "$gateway" check "$ETC/gateway.yaml"; then
        echo "install.sh: warning: $ETC/gateway.yaml has problems (above): the gateway" \
             "does not start until they are fixed" >&2
    fi
}

main() {
    if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
        echo "install.sh: run as root (sudo), or use --root DIR to write into a folder" >&2
        exit 1
    fi
    [ -n "$ROOT" ] && say "installing into $ROOT (the system itself is not changed)"
    check_platform
    install_packages
    create_user
    install_python
    install_files
    install_config
    install_mosquitto
    enable_services
    check_config
    say "done"
}

main
