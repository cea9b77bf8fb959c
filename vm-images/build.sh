#!/usr/bin/env bash
# Builds the appliance image from Debian stable with mmdebstrap, without loop devices or
# mounts: out/sluice.raw and out/sluice.qcow2, a disk with an MBR (syslinux), a FAT boot
# partition (kernel, initrd, syslinux) and an ext4 root made with `mke2fs -d`.
#
# Environment: SLUICE_BIN (default target/release/sluice), SUITE (trixie), MIRROR,
# SECURITY_MIRROR, SOURCE_DATE_EPOCH (default: the last commit's time, for reproducible file
# times, filesystem ids and package selection from the same mirror state), OUT (vm-images/out).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
SUITE=${SUITE:-trixie}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SLUICE_BIN=${SLUICE_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/sluice}
OUT=${OUT:-$here/out}
BOOT_MIB=${BOOT_MIB:-96}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}
export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH
PACKAGES=systemd-sysv,udev,dbus,linux-image-cloud-amd64,iproute2,iputils-ping,traceroute,e2fsprogs,kmod,ca-certificates,systemd-timesyncd,less,bird2,nftables

step() { printf 'image: [%s] %s\n' "$(date +%T)" "$*"; }
[ "$(id -u)" = 0 ] || { echo "image: needs root (mmdebstrap installs packages into a tree owned by root)" >&2; exit 1; }
[ -x "$SLUICE_BIN" ] || { echo "image: $SLUICE_BIN is missing: run make build" >&2; exit 1; }
for tool in mmdebstrap mkfs.vfat mcopy syslinux sfdisk qemu-img faketime; do
    command -v "$tool" >/dev/null || { echo "image: $tool is missing: run scripts/setup.sh" >&2; exit 1; }
done
start=$(date +%s)
mkdir -p "$OUT"
work=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/rootfs

step "Debian $SUITE with its cloud kernel (mmdebstrap, $MIRROR)"
mmdebstrap --quiet --variant=minbase --include="$PACKAGES" \
    --aptopt='Acquire::Retries "3"' \
    --customize-hook='rm -f "$1"/etc/machine-id "$1"/var/lib/dbus/machine-id; : > "$1"/etc/machine-id' \
    "$SUITE" "$root" \
    "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
    "deb $SECURITY_MIRROR $SUITE-security main"

step "sluice and its services"
install -m 0755 "$SLUICE_BIN" "$root/usr/bin/sluice"
cp -a "$here/rootfs/." "$root/"
version=$("$SLUICE_BIN" --version | awk '{ print $2 }')
commit=$(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)
cat > "$root/etc/sluice-release" <<REL
SLUICE_VERSION=$version
SLUICE_COMMIT=$commit
DEBIAN_SUITE=$SUITE
BUILT=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
REL
echo sluice > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tsluice\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
printf 'LABEL=sluice-root\t/\text4\tdefaults,noatime,errors=remount-ro\t0\t1\n' > "$root/etc/fstab"
printf 'Sluice router %s (%s)\n\n' "$version" "$commit" > "$root/etc/issue"
systemctl --root="$root" enable systemd-networkd.service sluice-prepare.service sluice.service \
    sluice-banner.service >/dev/null 2>&1
# BIRD is run by the sluice daemon (--bird), with the configuration it renders from its store:
# Debian's own bird.service (with /etc/bird/bird.conf) must not start a second one.
systemctl --root="$root" disable bird.service >/dev/null 2>&1 || true
systemctl --root="$root" mask bird.service >/dev/null 2>&1
# Nobody logs in with a password: the console is the web console (root stays locked).
chroot "$root" passwd -l root >/dev/null

# What differs between two builds of the same packages: logs, caches, file times.
rm -f "$root"/var/cache/ldconfig/aux-cache "$root"/var/log/dpkg.log "$root"/var/log/alternatives.log \
    "$root"/var/log/apt/*.log "$root"/var/log/bootstrap.log
find "$root" -newermt "@$SOURCE_DATE_EPOCH" -print0 |
    xargs -0r touch --no-dereference --date="@$SOURCE_DATE_EPOCH"

kernel=$(cd "$root/boot" && ls vmlinuz-* | sort -V | tail -n1)
initrd=initrd.img-${kernel#vmlinuz-}
[ -f "$root/boot/$initrd" ] || { echo "image: no initrd for $kernel" >&2; exit 1; }

step "boot partition (FAT, syslinux; kernel ${kernel#vmlinuz-})"
cat > "$work/syslinux.cfg" <<CFG
SERIAL 0 115200
DEFAULT sluice
PROMPT 0
TIMEOUT 0
LABEL sluice
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND root=LABEL=sluice-root ro console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0
CFG
# mtools and syslinux stamp files with the clock: run them at SOURCE_DATE_EPOCH.
at_epoch() { faketime -f "@$(date -u -d "@$SOURCE_DATE_EPOCH" '+%Y-%m-%d %H:%M:%S')" "$@"; }
at_epoch mkfs.vfat -n SLUICEBOOT -i 51ce0001 -C "$work/boot.img" $((BOOT_MIB * 1024)) >/dev/null
at_epoch mcopy -i "$work/boot.img" "$root/boot/$kernel" ::/vmlinuz
at_epoch mcopy -i "$work/boot.img" "$root/boot/$initrd" ::/initrd.img
at_epoch mcopy -i "$work/boot.img" "$work/syslinux.cfg" ::/syslinux.cfg
at_epoch syslinux --install "$work/boot.img"

step "root filesystem (ext4)"
used_mib=$(du -sm --apparent-size "$root" | cut -f1)
root_mib=$(( (used_mib * 13 / 10 + 256 + 63) / 64 * 64 ))
# The image's own mke2fs (Debian stable's: 1.47.1 and later write the files of -d in a sorted
# order, so that the result does not depend on the order the directory lists them in).
"$root"/usr/lib64/ld-linux-x86-64.so.2 --library-path "$root/usr/lib/x86_64-linux-gnu" \
    "$root"/usr/sbin/mke2fs -q -t ext4 -L sluice-root -U 51ce0000-0000-4000-8000-000000000002 \
    -E root_owner=0:0,hash_seed=51ce0000-0000-4000-8000-000000000003 \
    -d "$root" "$work/root.img" "${root_mib}M"

step "disk"
boot_sectors=$((BOOT_MIB * 2048))
root_sectors=$((root_mib * 2048))
disk=$work/sluice.raw
truncate -s $(( (2048 + boot_sectors + root_sectors) * 512 )) "$disk"
sfdisk --quiet "$disk" <<PART
label: dos
label-id: 0x51ce0001
start=2048, size=$boot_sectors, type=c, bootable
start=$((2048 + boot_sectors)), size=$root_sectors, type=83
PART
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$disk" bs=440 count=1 conv=notrunc status=none
dd if="$work/boot.img" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/root.img" of="$disk" bs=1M seek=$((1 + BOOT_MIB)) conv=notrunc,sparse status=none
qemu-img convert -f raw -O qcow2 "$disk" "$work/sluice.qcow2"
mv -f "$disk" "$work/sluice.qcow2" "$OUT/"
touch -d "@$SOURCE_DATE_EPOCH" "$OUT/sluice.raw" "$OUT/sluice.qcow2"

qcow=$(du -k "$OUT/sluice.qcow2" | cut -f1)
step "done in $(( $(date +%s) - start )) s: $OUT/sluice.qcow2 ($((qcow / 1024)) MiB), $OUT/sluice.raw ($(( $(stat -c %s "$OUT/sluice.raw") / 1048576 )) MiB, sparse)"
