#!/bin/sh
# Create (or reset) a device's account on the gateway's local mosquitto broker.
# The device may then publish and subscribe only under devices/NAME/ (see gateway.acl).
#
#     gateway-add-device NAME              new random password, printed once
#     gateway-add-device --delete NAME     remove the account
#     gateway-add-device --root DIR NAME   work on DIR/etc/mosquitto instead of the system
#
# The password is read from $DEVICE_PASSWORD when set (for provisioning scripts).
set -eu

ROOT=""
DELETE=no
while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || { echo "gateway-add-device: --root needs a directory" >&2; exit 2; }
                ROOT=$2; shift 2 ;;
        --root=*) ROOT=${1#--root=}; shift ;;
        --delete) DELETE=yes; shift ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "gateway-add-device: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
if [ $# -ne 1 ]; then
    echo "usage: gateway-add-device [--root DIR] [--delete] NAME" >&2
    exit 2
fi
NAME=$1
PASSWD=$ROOT/etc/mosquitto/gateway.passwd

# NAME becomes a topic level (devices/NAME/...): no "/", "+", "#", nothing odd
if ! printf '%s' "$NAME" | grep -Eqx '[A-Za-z0-9][A-Za-z0-9_.-]{0,63}'; then
    echo "gateway-add-device: bad name '$NAME': use 1 to 64 letters, digits, '_', '.'" \
         "or '-', starting with a letter or digit" >&2
    exit 2
fi
if [ "$NAME" = gateway ]; then
    echo "gateway-add-device: 'gateway' is the gateway's own account (set by first boot)" >&2
    exit 2
fi
if [ ! -f "$PASSWD" ]; then
    echo "gateway-add-device: $PASSWD is missing: run deploy/install.sh first" >&2
    exit 1
fi

if [ "$DELETE" = yes ]; then
    mosquitto_passwd -D "$PASSWD" "$NAME"
    echo "deleted device account $NAME"
else
    password=${DEVICE_PASSWORD:-$(LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 24)}
    printf '%s\n%s\n' "$password" "$password" | mosquitto_passwd "$PASSWD" "$NAME" >/dev/null
    echo "device account $NAME: username $NAME, password $password"
    echo "it may publish and subscribe under devices/$NAME/# on port 1883 (MQTT 5 or 3.1.1)"
fi
chmod 0640 "$PASSWD"

if [ -z "$ROOT" ]; then
    getent passwd mosquitto >/dev/null 2>&1 && chown mosquitto:mosquitto "$PASSWD"
    # mosquitto rereads its password file on SIGHUP
    if [ -d /run/systemd/system ] && systemctl -q is-active mosquitto.service; then
        systemctl reload mosquitto.service
    fi
fi
