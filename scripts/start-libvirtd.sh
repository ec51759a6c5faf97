#!/usr/bin/env bash
# Start libvirtd by hand where no systemd runs (containers, CI), idempotently.
#
# 1. Writes the qemu driver settings mailvm's libvirt launcher needs into
#    /etc/libvirt/qemu.conf, between marker lines (other settings are kept;
#    an earlier uncommented line for one of these keys is commented out):
#      user/group root        QEMU opens the template RAM file and page files
#      dynamic_ownership = 0  libvirt must not chown the shared template files
#      namespaces = []        no private /dev mount namespace (none without systemd helpers)
#      security_driver "none" no AppArmor/SELinux labelling here
#      stdio_handler "file"   no virtlogd needed
#      seccomp_sandbox = 0    libvirt's own -sandbox kills QEMU on exec: migration
#                             (mailvm adds its own -sandbox through qemu:commandline)
# 2. Starts libvirtd (under `tini -s`, a subreaper, when installed) unless one already answers.
# 3. Waits until `virsh -c qemu:///system` answers (at most LIBVIRTD_WAIT_S s).
#
# Exit status: 0 libvirtd answers; 1 it could not be started (reason on stderr).
# Usage: scripts/start-libvirtd.sh        (as root)
set -euo pipefail

CONF_DIR=${LIBVIRT_CONF_DIR:-/etc/libvirt}
CONF=$CONF_DIR/qemu.conf
SOCK=/run/libvirt/libvirt-sock
URI=qemu:///system
WAIT_S=${LIBVIRTD_WAIT_S:-30}
BEGIN="# >>> mailvm (scripts/start-libvirtd.sh) >>>"
END="# <<< mailvm <<<"

die() { echo "start-libvirtd: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (the system libvirtd)"
command -v libvirtd >/dev/null || die "libvirtd is not installed (apt-get install libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients)"
command -v virsh >/dev/null || die "virsh is not installed (apt-get install libvirt-clients)"

answers() { timeout 10 virsh -q -c "$URI" version >/dev/null 2>&1; }

exec 9>/run/mailvm-start-libvirtd.lock
flock -w "$WAIT_S" 9 || die "another start-libvirtd.sh holds the lock"

if answers; then
  echo "start-libvirtd: libvirtd already answers on $URI"
  exit 0
fi

# -- the default QEMU user ---------------------------------------------------------
# libvirt resolves its compiled-in QEMU user and group (Debian: libvirt-qemu) before it reads
# qemu.conf; libvirt-daemon-system's maintainer scripts create them, which we do not install.
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null ||
  useradd --system --gid libvirt-qemu --no-create-home --home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu

# -- qemu.conf ---------------------------------------------------------------
mkdir -p "$CONF_DIR" "$CONF_DIR/qemu" /var/lib/libvirt/qemu /var/log/libvirt/qemu /run/libvirt
touch "$CONF"
block=$(cat <<EOF
$BEGIN
user = "root"
group = "root"
dynamic_ownership = 0
namespaces = [ ]
security_driver = "none"
stdio_handler = "file"
seccomp_sandbox = 0
$END
EOF
)
tmp=$(mktemp "$CONF.XXXXXX")
# drop our old block, comment out other live settings of the same keys, append our block
awk -v b="$BEGIN" -v e="$END" '
  $0 == b { skip = 1; next }
  $0 == e { skip = 0; next }
  skip { next }
  /^[ \t]*(user|group|dynamic_ownership|namespaces|security_driver|stdio_handler|seccomp_sandbox)[ \t]*=/ {
    print "#mailvm# " $0; next }
  { print }
' "$CONF" > "$tmp"
printf '%s\n' "$block" >> "$tmp"
if cmp -s "$tmp" "$CONF"; then
  rm -f "$tmp"
else
  chmod 0644 "$tmp"
  mv "$tmp" "$CONF"
  echo "start-libvirtd: wrote mailvm settings into $CONF"
fi

# -- the daemon ----------------------------------------------------------------
# a libvirtd that holds its pid file but does not answer is stale: stop that one only
pidfile=/run/libvirtd.pid
if [ -s "$pidfile" ]; then
  pid=$(cat "$pidfile")
  if [ -d "/proc/$pid" ] && grep -q libvirtd "/proc/$pid/comm" 2>/dev/null; then
    echo "start-libvirtd: libvirtd pid $pid does not answer; stopping it" >&2
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    [ -d "/proc/$pid" ] && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
fi

log=/var/log/libvirt/libvirtd-mailvm.log
# libvirt daemonizes every QEMU (its parent becomes the nearest "subreaper", else PID 1) and
# waits until the dead QEMU is reaped before a domain is gone.  Without systemd, PID 1 may
# reap late (here: about 1.4 s per QEMU), so libvirtd runs under tini as a subreaper, which
# reaps at once.  Without tini: plain `libvirtd -d`.
if command -v tini >/dev/null; then
  setsid tini -s -- libvirtd -p "$pidfile" >>"$log" 2>&1 9>&- </dev/null &
  disown || true
else
  echo "start-libvirtd: tini not installed: dead QEMUs are reaped by PID 1 (slow without an init)" >&2
  libvirtd -d -p "$pidfile" >>"$log" 2>&1 9>&- || die "libvirtd -d failed: $(tail -c 2000 "$log")"
fi

end=$((SECONDS + WAIT_S))
until [ -S "$SOCK" ] && answers; do
  if [ $SECONDS -ge $end ]; then
    die "libvirtd did not answer on $URI within ${WAIT_S} s: $(tail -c 2000 "$log")"
  fi
  sleep 0.2
done
echo "start-libvirtd: libvirtd $(cat "$pidfile" 2>/dev/null) answers on $URI"
