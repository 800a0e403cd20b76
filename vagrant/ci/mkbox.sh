#!/usr/bin/env bash
# Builds a Debian bookworm vagrant-libvirt box offline, from the apt mirror
# this machine uses: debootstrap (with everything the end-to-end suite
# needs, since the VM has no network), an MBR disk image written without
# loop devices (this kernel has no partition-table support), GRUB
# installed by one software-emulated boot of the image itself, then a
# compressed qcow2 in a box tar. Output: $1 (the .box file).
set -euo pipefail
BOX_OUT=$(realpath -m "${1:?usage: mkbox.sh OUT.box}")
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/nsproxy-box.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
ROOTFS=$PWD/rootfs
DISK_GB=${DISK_GB:-8}
MIRROR=${MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
PUBKEY=${PUBKEY:-$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub | head -1)}
[ -s "$PUBKEY" ] || { echo "vagrant's insecure public key not found" >&2; exit 1; }

# The system first; then, with apt inside the tree, what
# vagrant/provision.sh would install (the test proxies, origin servers and
# tools), since the CI VM has no network. (debootstrap --include of the
# Python packages fails to configure them in its own order.)
base=systemd-sysv,udev,dbus,linux-image-amd64,grub-pc,openssh-server,sudo,iproute2,ifupdown,isc-dhcp-client,netbase,rsync,procps,less,kmod
suite=$(sed -n 's/^VM_PACKAGES="\(.*\)"$/\1/p' "$HERE/../provision.sh")
[ -n "$suite" ] || { echo "no VM_PACKAGES in vagrant/provision.sh" >&2; exit 1; }
debootstrap --variant=minbase --include="$base" bookworm "$ROOTFS" "$MIRROR" >debootstrap.log 2>&1 \
  || { tail -30 debootstrap.log >&2; exit 1; }
# No service may start in the tree while packages are installed.
printf '#!/bin/sh\nexit 101\n' > "$ROOTFS/usr/sbin/policy-rc.d"
chmod 755 "$ROOTFS/usr/sbin/policy-rc.d"
# shellcheck disable=SC2086
chroot "$ROOTFS" env DEBIAN_FRONTEND=noninteractive sh -c \
  "apt-get update -qq && apt-get install -y -qq --no-install-recommends $suite && apt-get clean" >apt.log 2>&1 \
  || { tail -30 apt.log >&2; exit 1; }
rm -f "$ROOTFS/usr/sbin/policy-rc.d"

# ---------- 1. configure the guest tree ----------
echo bookworm > "$ROOTFS/etc/hostname"
cat > "$ROOTFS/etc/hosts" <<'EOF'
127.0.0.1 localhost
127.0.1.1 bookworm
::1 localhost ip6-localhost ip6-loopback
EOF
cat > "$ROOTFS/etc/network/interfaces" <<'EOF'
auto lo
iface lo inet loopback

allow-hotplug eth0
iface eth0 inet dhcp
EOF
# empty machine-id: systemd generates a fresh one on first boot of every VM
: > "$ROOTFS/etc/machine-id"
rm -f "$ROOTFS/var/lib/dbus/machine-id"

# vagrant user: password "vagrant", passwordless sudo, the well-known insecure key
chroot "$ROOTFS" /bin/sh -ec '
  id vagrant >/dev/null 2>&1 || useradd -m -s /bin/bash -G sudo vagrant
  echo "vagrant:vagrant" | chpasswd
  echo "root:vagrant" | chpasswd
'
echo 'vagrant ALL=(ALL) NOPASSWD:ALL' > "$ROOTFS/etc/sudoers.d/vagrant"
chmod 0440 "$ROOTFS/etc/sudoers.d/vagrant"
install -d -m 0700 "$ROOTFS/home/vagrant/.ssh"
install -m 0600 "$PUBKEY" "$ROOTFS/home/vagrant/.ssh/authorized_keys"
chroot "$ROOTFS" chown -R vagrant:vagrant /home/vagrant/.ssh

# sshd: no DNS lookups; host keys are made on each VM's first boot, not baked into the box
printf 'UseDNS no\n' > "$ROOTFS/etc/ssh/sshd_config.d/vagrant.conf"
rm -f "$ROOTFS"/etc/ssh/ssh_host_*
mkdir -p "$ROOTFS/etc/systemd/system/ssh.service.d"
cat > "$ROOTFS/etc/systemd/system/ssh.service.d/hostkeys.conf" <<'EOF'
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
EOF

# bootloader config: serial console, classic eth0 naming, no boot menu delay
cat > "$ROOTFS/etc/default/grub" <<'EOF'
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200"
GRUB_DISABLE_OS_PROBER=true
EOF
rm -f "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*_Packages 2>/dev/null || true

# ---------- 2. disk image: MBR + one ext4 partition, built without loop devices ----------
FSUUID=$(cat /proc/sys/kernel/random/uuid)
echo "UUID=$FSUUID / ext4 errors=remount-ro 0 1" > "$ROOTFS/etc/fstab"
# one-shot "init" used only for the GRUB-install boot below; it deletes itself
cat > "$ROOTFS/usr/local/sbin/box-install-bootloader" <<'EOS'
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mountpoint -q /proc || mount -t proc proc /proc; mountpoint -q /sys || mount -t sysfs sys /sys
mountpoint -q /dev || mount -t devtmpfs dev /dev
mount -o remount,rw /
if grub-install --target=i386-pc /dev/vda && update-grub; then echo BOOTLOADER-INSTALLED; fi
rm -f /usr/local/sbin/box-install-bootloader
sync; echo u > /proc/sysrq-trigger; sleep 1
echo o > /proc/sysrq-trigger
sleep 60
EOS
chmod 755 "$ROOTFS/usr/local/sbin/box-install-bootloader"
rm -f disk.raw
truncate -s ${DISK_GB}G disk.raw
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q disk.raw
mkfs.ext4 -q -L root -U "$FSUUID" -E offset=1048576,nodiscard -d "$ROOTFS" disk.raw $(( DISK_GB * 1024 - 1 ))M
rm -f "$ROOTFS/usr/local/sbin/box-install-bootloader"
sfdisk -l disk.raw

# ---------- 2b. install GRUB from inside the guest (host kernel lacks partition-table support) ----------
# Software emulation (TCG): the host's /dev/kvm here is PVM-backed and cannot run a stock Debian kernel.
KERNEL=$(ls "$ROOTFS"/boot/vmlinuz-* | sort -V | tail -1)
INITRD=$(ls "$ROOTFS"/boot/initrd.img-* | sort -V | tail -1)
# (-nodefaults, no NIC: this boot has no network at all.)
timeout 900 qemu-system-x86_64 -accel ${QEMU_ACCEL:-tcg,thread=multi} -cpu max -smp 2 -m 1024 \
  -nodefaults -display none -no-reboot -serial file:grub-install-console.log \
  -kernel "$KERNEL" -initrd "$INITRD" \
  -append "root=/dev/vda1 rw console=ttyS0 init=/usr/local/sbin/box-install-bootloader panic=-1" \
  -drive file=disk.raw,if=virtio,format=raw
grep -q BOOTLOADER-INSTALLED grub-install-console.log || { echo "GRUB install failed, see grub-install-console.log" >&2; exit 1; }

# ---------- 3. package as a vagrant-libvirt box ----------
rm -rf box && mkdir box
qemu-img convert -c -O qcow2 disk.raw box/box.img
rm -f disk.raw
cat > box/metadata.json <<EOF
{"provider": "libvirt", "format": "qcow2", "virtual_size": ${DISK_GB}}
EOF
cat > box/Vagrantfile <<'EOF'
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
  end
end
EOF
rm -rf "$ROOTFS"
tar -C box -cf "$BOX_OUT.tmp" metadata.json Vagrantfile box.img
mv "$BOX_OUT.tmp" "$BOX_OUT"
ls -l "$BOX_OUT"
