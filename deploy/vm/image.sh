#!/usr/bin/env bash
# Build the VM image that the VM tests boot under qemu: a real kernel (Debian
# 12's 6.1), cgroup v2 with the memory controller, cloud-init, and the QEMU
# guest agent (the tests run commands in the guest through it). It is made from
# the cached Debian 12 tree of deploy/e2e/rootfs.sh, copied, with packages
# installed in a chroot, then written into an ext4 disk image with mkfs.ext4 -d.
#
#   deploy/vm/image.sh [DIR]      (default /var/cache/agent-vm)
#
# The image lands in DIR/KEY/ (root.img, vmlinuz, initrd.img, .complete), KEY
# being a hash of this script, of the tree's stamp and of this machine's local
# certificate authorities: any change builds a new image (about 3 minutes) and
# removes the old ones. Nothing is done when DIR/KEY/.complete exists.
# Installs qemu-system-x86, qemu-utils, dosfstools and mtools when missing.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-/var/cache/agent-vm}
tree=${AGENT_E2E_ROOTFS:-/var/cache/agent-e2e/bookworm}
# Beyond the tree's packages: the kernel, cloud-init, the guest agent, and git
# and ca-certificates, which user_data.sh installs (baked in, as in an AMI, so
# that its apt step is short under software emulation).
packages=(linux-image-amd64 initramfs-tools cloud-init qemu-guest-agent git ca-certificates)

if [[ $(id -u) -ne 0 ]]; then
  echo "image.sh: must run as root" >&2
  exit 1
fi

missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v qemu-img >/dev/null || missing+=(qemu-utils)
command -v mkfs.vfat >/dev/null || missing+=(dosfstools) # the cloud-init seed volume
command -v mcopy >/dev/null || missing+=(mtools)         # ...and its files
command -v debugfs >/dev/null || missing+=(e2fsprogs)
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [[ ! -f $tree/.complete ]]; then
  "$here/../e2e/rootfs.sh" "$tree"
fi

# key: what the image is made of. Go's vmImage computes the same.
key=$( (
  cat "${BASH_SOURCE[0]}"
  cat "$tree/.complete"
  cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true
) | sha256sum | cut -c1-16)
dest=$out/$key
if [[ -f $dest/.complete ]]; then
  echo "image.sh: $dest is ready"
  exit 0
fi

start=$SECONDS
mkdir -p "$out"
work=$(mktemp -d "$out/build.XXXXXX")
root=$work/root
mounts=()
cleanup() {
  local m
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    m=${mounts[i]}
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

echo "image.sh: copying $tree"
cp -a "$tree" "$root"
rm -f "$root/.complete"

for m in proc sys dev dev/pts; do
  mkdir -p "$root/$m"
done
mount -t proc proc "$root/proc" && mounts+=("$root/proc")
mount -t sysfs sysfs "$root/sys" && mounts+=("$root/sys")
mount --bind /dev "$root/dev" && mounts+=("$root/dev")
mount --bind /dev/pts "$root/dev/pts" && mounts+=("$root/dev/pts")

cp -L /etc/resolv.conf "$root/etc/resolv.conf"
# No service starts inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"

echo "image.sh: installing ${packages[*]}"
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
  sh -c "apt-get update -q && apt-get install -y -q --no-install-recommends ${packages[*]}"

# This machine's local certificate authorities, as an image built for a network
# behind a TLS-inspecting proxy has them.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  chroot "$root" /usr/sbin/update-ca-certificates
fi

chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root/usr/sbin/policy-rc.d"

# The disk, the network (qemu's user network: 10.0.2.15, gateway and host
# 10.0.2.2, DNS 10.0.2.3), cloud-init's sources, a quiet serial console.
cat >"$root/etc/fstab" <<'FSTAB'
/dev/vda / ext4 rw,errors=remount-ro 0 1
FSTAB
cat >"$root/etc/systemd/network/10-user.network" <<'NET'
[Match]
Name=en* eth*

[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
NET
echo "nameserver 10.0.2.3" >"$root/etc/resolv.conf"
ln -sf /lib/systemd/system/systemd-networkd.service \
  "$root/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
cat >"$root/etc/cloud/cloud.cfg.d/90-agent-vm.cfg" <<'CFG'
# The VM tests give a NoCloud seed (a volume labelled cidata); without this
# cloud-init would probe EC2's metadata address first.
datasource_list: [NoCloud, None]
# The network is configured by systemd-networkd above.
network: {config: disabled}
# No locale is generated in this image; C.UTF-8 is built into glibc (the
# default en_US.UTF-8 would fail update-locale and mark the boot an error).
locale: C.UTF-8
CFG
ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"
# No background apt run taking the dpkg lock from user_data.
ln -sf /dev/null "$root/etc/systemd/system/apt-daily.timer"
ln -sf /dev/null "$root/etc/systemd/system/apt-daily-upgrade.timer"
# The journal survives reboots (the reboot test reads the boot before).
mkdir -p "$root/var/log/journal"
echo agent-vm >"$root/etc/hostname"
: >"$root/etc/machine-id"

for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
  umount "${mounts[i]}"
done
mounts=()

mkdir -p "$work/image"
cp -L "$root/vmlinuz" "$work/image/vmlinuz" 2>/dev/null || cp "$root"/boot/vmlinuz-* "$work/image/vmlinuz"
cp -L "$root/initrd.img" "$work/image/initrd.img" 2>/dev/null || cp "$root"/boot/initrd.img-* "$work/image/initrd.img"
echo "image.sh: mkfs.ext4 -d"
mkfs.ext4 -q -F -L agentroot -d "$root" "$work/image/root.img" 4G
echo "$key" >"$work/image/.complete"

# Replace any older image.
for old in "$out"/*/; do
  old=${old%/}
  [[ $old == "$work" || $(basename "$old") == build.* ]] && continue
  [[ -f $old/.complete ]] && rm -rf "$old"
done
rm -rf "$dest"
mv "$work/image" "$dest"
echo "image.sh: $dest is ready ($((SECONDS - start)) s)"
