#!/bin/sh
# First boot of a gateway (gateway-firstboot.service runs it before mosquitto and the
# gateway, at every boot; it only does work the first time):
#   - a unique gateway id derived from /etc/machine-id  -> /etc/gateway/gateway.env
#   - generated credentials, root only (0600)           -> /etc/gateway/credentials/
#   - the gateway's own account on the local mosquitto  -> /etc/mosquitto/gateway.passwd
# Nothing that exists is replaced: to rotate a credential, delete its file and reboot.
#
#     gateway-firstboot [--root DIR]     (DIR: work on a folder instead of /)
set -eu

ROOT=""
case "${1:-}" in
    --root) [ $# -ge 2 ] || { echo "gateway-firstboot: --root needs a directory" >&2; exit 2; }
            ROOT=$2 ;;
    --root=*) ROOT=${1#--root=} ;;
    "") ;;
    *) echo "usage: gateway-firstboot [--root DIR]" >&2; exit 2 ;;
esac

ETC=$ROOT/etc/gateway
CREDENTIALS=$ETC/credentials
PASSWD=$ROOT/etc/mosquitto/gateway.passwd
# credentials this image generates; the unit hands them over with LoadCredential=
GENERATED="uplink-password mqtt-password"

say() { printf 'gateway-firstboot: %s\n' "$*"; }

random_secret() {
    # 32 characters from [A-Za-z0-9]: about 190 bits
    LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32
}

gateway_id() {
    machine_id=$(cat "$ROOT/etc/machine-id" 2>/dev/null || true)
    case "$machine_id" in
        ""|uninitialized)
            echo "gateway-firstboot: $ROOT/etc/machine-id is not set yet; cannot derive" \
                 "the gateway id" >&2
            exit 1 ;;
    esac
    # app-specific hash: machine-id(5) asks not to publish the machine id itself
    printf 'gw-%s\n' "$(printf 'gateway:%s' "$machine_id" | sha256sum | cut -c1-12)"
}

umask 077
mkdir -p "$CREDENTIALS"
chmod 0700 "$CREDENTIALS"

if ! grep -qs '^GATEWAY_ID=' "$ETC/gateway.env"; then
    id=$(gateway_id)
    printf '# written by gateway-firstboot: this gateway'"'"'s id in cloud topics\nGATEWAY_ID=%s\n' \
        "$id" >> "$ETC/gateway.env"
    chmod 0644 "$ETC/gateway.env"
    say "gateway id $id"
fi

for name in $GENERATED; do
    if [ ! -s "$CREDENTIALS/$name" ]; then
        random_secret > "$CREDENTIALS/$name.tmp"
        mv "$CREDENTIALS/$name.tmp" "$CREDENTIALS/$name"
        say "generated credential $name"
    fi
    chmod 0600 "$CREDENTIALS/$name"
done

# The gateway's account on the local broker: (re)written when missing from the password
# file, or when the password file is older than the credential (it was rotated).
if [ -f "$PASSWD" ] && { ! grep -q '^gateway:' "$PASSWD" \
        || [ -n "$(find "$CREDENTIALS/mqtt-password" -newer "$PASSWD")" ]; }; then
    password=$(cat "$CREDENTIALS/mqtt-password")
    printf '%s\n%s\n' "$password" "$password" \
        | mosquitto_passwd "$PASSWD" gateway >/dev/null
    chmod 0640 "$PASSWD"
    if [ -z "$ROOT" ] && getent passwd mosquitto >/dev/null 2>&1; then
        chown mosquitto:mosquitto "$PASSWD"
    fi
    say "mosquitto account gateway set"
fi
