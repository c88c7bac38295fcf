#!/bin/bash -e
# Installs the matrix-intercom .deb (placed in files/ by image/pi-gen/README.md's steps) with
# its dependencies from the image's apt sources, enables the service and leaves a commented
# provisioning example on the boot partition.
shopt -s nullglob
debs=(files/matrix-intercom_*.deb)
if [ "${#debs[@]}" -ne 1 ]; then
	echo "stage-intercom: need exactly one files/matrix-intercom_*.deb (of the image's architecture), found ${#debs[@]}" >&2
	exit 1
fi
install -m 644 "${debs[0]}" "${ROOTFS_DIR}/tmp/matrix-intercom.deb"
on_chroot <<'CHEOF'
apt-get update
apt-get install -y --no-install-recommends /tmp/matrix-intercom.deb
rm -f /tmp/matrix-intercom.deb
systemctl enable matrix-intercom.service
CHEOF
# Example provisioning file on the FAT boot partition (/boot/firmware since bookworm): a copy of
# the commented default config; the owner fills in homeserver, user_id, password, room.
install -m 644 "${ROOTFS_DIR}/etc/matrix-intercom/config.toml" \
	"${ROOTFS_DIR}/boot/firmware/matrix-intercom.toml.example"
