#!/usr/bin/env bash
# CI's VM stage, as root, offline: boots vagrant/Vagrantfile with
# vagrant-libvirt under software emulation from a box built from the apt
# mirror, copies in nsproxy and the end-to-end test executables built
# here, runs them inside the VM and fails when any test fails there.
# libvirt and every packet of the VM stay in a network namespace made for
# this run; everything is torn down on exit, also on failure.
#   vagrant/ci/run.sh                   # the VM suite (NSP_VM_TESTS)
#   NSP_VM_TESTS="dataplane leaks" vagrant/ci/run.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"
TESTS=${NSP_VM_TESTS:-dataplane proxy_faults leaks}  # build.sh says why
CACHE=${NSP_VM_CACHE:-/var/tmp/nsproxy-vagrant}
export VM_NETNS="nspvm$$" VM_STATE
VM_STATE=$(mktemp -d /tmp/nsproxy-vm.XXXXXX)
export VAGRANT_HOME="$CACHE/vagrant.d" VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_DEFAULT_PROVIDER=libvirt
export VAGRANT_BOX=local/nsproxy-bookworm VAGRANT_LIBVIRT_DRIVER=qemu VAGRANT_INSERT_KEY=0
export NSP_VM_PREBUILT=1 NSP_VM_SRC="$REPO" NSP_VM_DOMAIN_PREFIX="nsproxy-ci-$$-"
NS=(nsenter "--net=/run/netns/$VM_NETNS")
t0=$(date +%s)
step() { echo "== [vm $(( $(date +%s) - t0 ))s] $*"; }

cleanup() {
  local rc=$?
  step "teardown"
  if [ -e "/run/netns/$VM_NETNS" ] && [ -d "$REPO/vagrant/.vagrant" ]; then
    (cd "$REPO/vagrant" && "${NS[@]}" vagrant destroy -f >/dev/null 2>&1) || true
  fi
  "$HERE/teardown.sh"
  rm -rf "$VM_STATE" "$REPO/vagrant/.vagrant"
  step "done, exit $rc"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Vagrant's record of a run cut short names a domain that is gone.
rm -rf "$REPO/vagrant/.vagrant"
step "host: qemu, libvirt, vagrant; libvirtd in netns $VM_NETNS"
"$HERE/host-setup.sh"

# The box depends only on how it is made: rebuilt when mkbox.sh or the
# package list changes, reused otherwise.
key=$(cat "$HERE/mkbox.sh" "$REPO/vagrant/provision.sh" | sha256sum | cut -c1-12)
box="$CACHE/nsproxy-bookworm-$key.box"
mkdir -p "$CACHE"
if [ ! -s "$box" ]; then
  step "building the box $box (debootstrap from the apt mirror, one emulated boot for GRUB)"
  rm -f "$CACHE"/nsproxy-bookworm-*.box
  "$HERE/mkbox.sh" "$box"
else
  step "reusing the box $box"
fi
for v in $(virsh -q vol-list default 2>/dev/null | awk '/nsproxy-bookworm/{print $1}'); do
  virsh -q vol-delete --pool default "$v" >/dev/null
done
vagrant box add --force --name "$VAGRANT_BOX" "$box" >/dev/null

step "building nsproxy and the test executables on the host (release): $TESTS"
cd "$REPO"
"$HERE/build.sh" "$VM_STATE/tests.list"
# The executables name nsproxy and the sources by absolute path: both go
# to the same paths in the VM (the sources are synced to $REPO there).
# Stripped of debug info: everything goes in over ssh to an emulated CPU.
stage="$VM_STATE/stage"
while read -r f; do
  install -D -m 0755 "$f" "$stage$f"
  strip --strip-debug "$stage$f"
done < <(cat "$VM_STATE/tests.list"; echo "$REPO/target/release/nsproxy")
install -D -m 0644 "$VM_STATE/tests.list" "$stage$REPO/target/vm-tests.list"
tar -C "$stage" -cf "$VM_STATE/bundle.tar" "${REPO#/}"

step "building the .deb"
deb=$("$REPO/packaging/build-deb.sh" "$VM_STATE/deb")

step "vagrant up (libvirt, TCG)"
cd "$REPO/vagrant"
"${NS[@]}" vagrant up --provider=libvirt --no-tty
"${NS[@]}" vagrant upload "$VM_STATE/bundle.tar" /tmp/nsproxy-bundle.tar >/dev/null
"${NS[@]}" vagrant upload "$deb" /tmp/nsproxy.deb >/dev/null
"${NS[@]}" vagrant ssh -c "sudo tar -C / -xf /tmp/nsproxy-bundle.tar"

step "the package inside the VM: dpkg -i, --help, policy check, systemd units"
"${NS[@]}" vagrant ssh -c "sudo '$REPO/vagrant/package-test.sh' /tmp/nsproxy.deb"

step "the end-to-end suite inside the VM"
"${NS[@]}" vagrant ssh -c "sudo NSP_TEST_TIME_SCALE=4 NSP_VM_TEST_BINS='$REPO/target/vm-tests.list' '$REPO/vagrant/e2e.sh'"
step "the VM suite passed"
