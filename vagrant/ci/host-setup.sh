#!/usr/bin/env bash
# Host side of the offline VM stage (CI): qemu + libvirt + vagrant from the
# apt mirror, and libvirtd/virtlogd started by us inside a network namespace
# of their own ($VM_NETNS, loopback only): libvirt's NAT bridge, its
# dnsmasq, the guest's NIC and vagrant's SSH all stay in there, so nothing
# the VM does can leave the machine. PIDs go to $VM_STATE for teardown.sh.
set -euo pipefail
: "${VM_NETNS:?}" "${VM_STATE:?}"
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$VM_STATE"

pkgs=(qemu-system-x86 libvirt-daemon-system libvirt-daemon-driver-qemu dnsmasq-base vagrant
      vagrant-libvirt debootstrap fdisk rsync openssh-client e2fsprogs)
missing=()
for p in "${pkgs[@]}" qemu-utils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The build image may carry qemu-utils 10 from bookworm-backports, which
# breaks bookworm's qemu-system-common 7.2: take bookworm's qemu-utils.
if dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null | grep -q bpo; then missing+=(qemu-utils); fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends --allow-downgrades qemu-utils/bookworm "${pkgs[@]}" >/dev/null
fi

# No udev here: /dev/kvm as udev would leave it, or libvirt re-probes qemu
# on every call (30-50 s per define). The VM itself runs under TCG: this
# kernel's KVM cannot run a stock guest kernel.
if [ -e /dev/kvm ]; then chgrp kvm /dev/kvm && chmod 0660 /dev/kvm; fi

# A run cut short (the machine restarted under it) cannot tear down: its
# namespace stays, named nspvm<pid of its run.sh>. Remove those whose run
# is gone; a live run's namespace is left alone.
for n in $(ip netns list | awk '$1 ~ /^nspvm[0-9]+$/ {print $1}'); do
  pid=${n#nspvm}
  if ! grep -qs 'vagrant/ci/run.sh' "/proc/$pid/cmdline"; then
    echo "removing namespace $n, left by an earlier run (pid $pid is gone)"
    ip netns del "$n"
  fi
done
ip netns add "$VM_NETNS"
ip -n "$VM_NETNS" link set lo up
NS=(nsenter "--net=/run/netns/$VM_NETNS")
if [ "$(ps -p 1 -o comm=)" = systemd ]; then
  echo "error: systemd is PID 1 here; this stage starts its own libvirtd and expects none" >&2
  exit 1
fi
for d in virtlogd libvirtd; do
  if [ -s "/run/$d.pid" ] && kill -0 "$(cat "/run/$d.pid")" 2>/dev/null; then
    echo "error: a $d (pid $(cat "/run/$d.pid")) already runs; this stage starts and stops its own" >&2
    exit 1
  fi
done
"${NS[@]}" virtlogd -d -p /run/virtlogd.pid
"${NS[@]}" libvirtd -d -p /run/libvirtd.pid
cp /run/virtlogd.pid "$VM_STATE/virtlogd.pid"
cp /run/libvirtd.pid "$VM_STATE/libvirtd.pid"
for _ in $(seq 60); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.5; done
virsh -c qemu:///system version >/dev/null
# vagrant-libvirt never starts an existing but inactive pool.
if virsh -q pool-list --all --name | grep -qx default; then virsh -q pool-start default >/dev/null 2>&1 || true; fi
# Every domain in this libvirt was made by this stage (no other libvirtd
# may run, see above), named nsproxy-ci-<pid>-default by run.sh, or
# vagrant_default before it was. Remove those whose run is gone, with
# their disks, so a run cut short never blocks this one.
for d in $(virsh -q list --all --name); do
  case "$d" in
    vagrant_default) ;;
    nsproxy-ci-*) pid=${d#nsproxy-ci-}; pid=${pid%%-*}
      grep -qs 'vagrant/ci/run.sh' "/proc/$pid/cmdline" && continue ;;
    *) continue ;;
  esac
  echo "removing domain $d, left by an earlier run"
  virsh -q destroy "$d" >/dev/null 2>&1 || true
  virsh -q undefine "$d" --remove-all-storage >/dev/null
done
echo "libvirtd pid $(cat /run/libvirtd.pid), virtlogd pid $(cat /run/virtlogd.pid), in netns $VM_NETNS"
