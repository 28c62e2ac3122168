#!/bin/bash -e
# pi-gen: install the gateway into the image with deploy/install.sh, in the image's chroot.
# The installer only enables the services (nothing runs in a chroot) and generates no
# secrets: gateway-firstboot.service gives every Pi its own id and credentials at its
# first boot. GATEWAY_SRC (export it in pi-gen's config) is the gateway's source tree;
# by default the tree this stage lives in.
GATEWAY_SRC="${GATEWAY_SRC:-$(cd "$(dirname "$0")/../../../.." && pwd)}"
if [ ! -f "${GATEWAY_SRC}/deploy/install.sh" ]; then
	echo "stage-gateway: no gateway source at ${GATEWAY_SRC} (set GATEWAY_SRC)" >&2
	exit 1
fi

rm -rf "${ROOTFS_DIR}/tmp/gateway-src"
mkdir -p "${ROOTFS_DIR}/tmp/gateway-src"
tar -C "${GATEWAY_SRC}" --exclude=.git --exclude=.venv --exclude='*.pyc' \
	--exclude=__pycache__ --exclude='state*' -cf - . | tar -C "${ROOTFS_DIR}/tmp/gateway-src" -xf -

on_chroot << CHROOT
set -e
sh /tmp/gateway-src/deploy/install.sh --no-start
rm -rf /tmp/gateway-src /root/.cache/pip
CHROOT

# no identity may be baked into the image: first boot creates it on each Pi
rm -f "${ROOTFS_DIR}/etc/gateway/gateway.env"
rm -f "${ROOTFS_DIR}"/etc/gateway/credentials/*
