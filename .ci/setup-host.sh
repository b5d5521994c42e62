#!/bin/sh
# Installs and starts what the libvirt backend needs on a fresh Debian machine:
# QEMU, the libvirt daemon and clients, the schema validator, OVMF, the
# `libvirt-qemu` user and group, the runtime directories and a QEMU driver
# configuration fit for running as root in a container without systemd. Then
# starts virtlogd and libvirtd and waits until libvirtd answers.
#
# Run as root. Safe to re-run: every step checks before it changes anything.
# Environment:
#   SKIP_APT=1          do not run apt-get (packages already present)
#   LIBVIRT_URI=...     the URI to wait for (default qemu:///system)
set -eu

LIBVIRT_URI=${LIBVIRT_URI:-qemu:///system}
# binutils: `as` and `ld` build the test guest (images/build.rs). No libvirt
# headers: the launcher speaks libvirt's RPC protocol itself.
PACKAGES="qemu-system-x86 libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libxml2-utils ovmf binutils genisoimage mtools nftables busybox iproute2 qemu-utils docker-registry skopeo apache2-utils"
QEMU_CONF=/etc/libvirt/qemu.conf
# Marks the qemu.conf this script wrote.
MARKER="# Written by ch-launcher .ci/setup-host.sh"

log() { printf 'setup-host: %s\n' "$*"; }
die() { printf 'setup-host: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

missing_packages() {
    for p in $PACKAGES; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || printf '%s ' "$p"
    done
}

if [ "${SKIP_APT:-0}" != 1 ]; then
    missing=$(missing_packages)
    if [ -n "$missing" ]; then
        log "installing: $missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        # shellcheck disable=SC2086 # word splitting of the package list is wanted
        apt-get install -y -q --no-install-recommends $missing
    else
        log "packages already installed"
    fi
fi

for tool in libvirtd virtlogd virsh qemu-system-x86_64; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found after installation"
done

# libvirt-daemon-system normally creates these; it is not installed because it
# needs systemd, so do its part by hand.
getent group kvm >/dev/null || groupadd --system kvm
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent group libvirt >/dev/null || groupadd --system libvirt
if ! getent passwd libvirt-qemu >/dev/null; then
    useradd --system --gid libvirt-qemu --groups kvm --home-dir /var/lib/libvirt \
        --no-create-home --shell /usr/sbin/nologin libvirt-qemu
fi

install -d -m 0755 /etc/libvirt /var/run/libvirt /var/log/libvirt /var/log/libvirt/qemu \
    /var/lib/libvirt /var/lib/libvirt/qemu /var/lib/libvirt/qemu/nvram /var/cache/libvirt

# QEMU runs as root (below), so /dev/kvm only has to exist and be usable by
# root; its owner is left alone (in a container it may be the host's node).
if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    log "warning: /dev/kvm is missing or not read-writable; QEMU cannot start KVM guests"
fi

# QEMU runs as root, because the launcher's sockets and the images it is given
# belong to root; no security driver, because containers have neither SELinux
# nor AppArmor profiles for QEMU; no cgroup controllers, because cgroups are
# not delegated to a container (libvirt would fail to create the machine's
# scope); no ownership bookkeeping, because nothing is relabelled.
write_qemu_conf() {
    tmp=$(mktemp "$QEMU_CONF.XXXXXX")
    cat >"$tmp" <<CONF
$MARKER: edit that script, not this file.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "logd"
CONF
    chmod 0644 "$tmp"
    mv "$tmp" "$QEMU_CONF"
}

restart_needed=0
# A configuration from elsewhere (libvirt-daemon-system ships one) is kept
# aside once, then replaced: its defaults (QEMU as libvirt-qemu, cgroups,
# AppArmor) do not work in a container.
if [ -e "$QEMU_CONF" ] && ! head -n1 "$QEMU_CONF" | grep -qF "$MARKER"; then
    if [ ! -e "$QEMU_CONF.before-ch-launcher" ]; then
        cp -p "$QEMU_CONF" "$QEMU_CONF.before-ch-launcher"
        log "saved the previous $QEMU_CONF as $QEMU_CONF.before-ch-launcher"
    fi
fi
before=$(cat "$QEMU_CONF" 2>/dev/null || true)
write_qemu_conf
if [ "$before" != "$(cat "$QEMU_CONF")" ]; then
    log "wrote $QEMU_CONF"
    restart_needed=1
fi

running() { pidof "$1" >/dev/null 2>&1; }

# virtlogd writes the `<log>` files of serial chardevs; libvirtd refuses to
# start such domains without it.
if ! running virtlogd; then
    log "starting virtlogd"
    virtlogd -d
fi

if running libvirtd && [ "$restart_needed" = 1 ]; then
    log "restarting libvirtd to apply the new configuration"
    for pid in $(pidof libvirtd); do kill "$pid"; done
    i=0
    while running libvirtd; do
        i=$((i + 1))
        [ "$i" -le 50 ] || die "libvirtd did not exit"
        sleep 0.1
    done
fi
if ! running libvirtd; then
    log "starting libvirtd"
    libvirtd -d
fi

i=0
until virsh -c "$LIBVIRT_URI" version >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -le 100 ] || die "libvirtd does not answer on $LIBVIRT_URI (see /var/log/libvirt)"
    sleep 0.1
done
log "libvirtd answers on $LIBVIRT_URI: $(virsh -c "$LIBVIRT_URI" version 2>/dev/null | grep -i 'running hypervisor' || true)"
