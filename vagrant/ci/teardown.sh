#!/usr/bin/env bash
# Undoes host-setup.sh and the VM; safe to run twice, and after a failure
# at any step. Stops only the daemons this stage started (PIDs in $VM_STATE).
: "${VM_NETNS:?}" "${VM_STATE:?}"
if [ -s "$VM_STATE/libvirtd.pid" ] && kill -0 "$(cat "$VM_STATE/libvirtd.pid")" 2>/dev/null; then
  # This run's domain, running or not (libvirt keeps a defined domain in
  # /etc/libvirt/qemu across restarts).
  for d in $(virsh -q list --all --name 2>/dev/null); do
    [ "$d" = "${NSP_VM_DOMAIN_PREFIX:-none}default" ] || continue
    virsh -q destroy "$d" >/dev/null 2>&1; virsh -q undefine "$d" --remove-all-storage >/dev/null 2>&1
  done
  # Stopping libvirt's networks also stops the dnsmasq it started for them.
  for n in $(virsh -q net-list --name 2>/dev/null); do virsh -q net-destroy "$n" >/dev/null 2>&1; done
fi
for d in libvirtd virtlogd; do
  f="$VM_STATE/$d.pid"
  [ -s "$f" ] || continue
  pid=$(cat "$f")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    echo "stopped $d (pid $pid)"
  fi
  rm -f "$f" "/run/$d.pid"
done
ip netns del "$VM_NETNS" 2>/dev/null || true
exit 0
