"""The two init scripts of the guest image, as text the builder writes into it.

``INITRAMFS_INIT`` is ``/init`` of the initramfs (busybox): it loads the
virtio modules, mounts the ext4 root read-only (``/dev/vda``), puts a tmpfs
overlay on top (so the base image is never written: every write lands in
guest RAM and dies with the clone) and switches to it.  ``GUEST_INIT`` is
PID 1 of the real root: it mounts the usual file systems, brings up
loopback only (there is no network device) and starts the guest agent on
the shared page (an NVDIMM region mapped through ``/dev/mem``) with the
doorbell named on the kernel command line (``mailvm.page_addr``,
``mailvm.page_size``, ``mailvm.doorbell``).  After the agent's one job the
guest idles until the host destroys it.

Before the agent starts, ``mailvm.warmup`` on the kernel command line may warm
the guest up, so that the template (saved once the agent is READY) holds a
warm page cache and every clone starts from it: ``files`` reads the sandbox
tools and their libraries and imports the guest modules the sandbox runs in
separate processes; ``run`` also detonates a harmless script once (bwrap,
strace, fakenet, cgroups: every path a job takes), then deletes its traces.
Any failure there is only logged: the agent starts regardless.

When the image has Wine (its loader and the shipped prefix), ``mailvm.guest.winewarm``
is started before the agent and PID 1 waits (up to 100 s) for its socket: a
sandbox with wineserver, Wine's session processes and the page cache warm is then part
of the template; the agent gets the socket in ``MAILVM_WINE_WARM`` and hands Windows
samples to it.
"""

from __future__ import annotations

#: kernel modules the initramfs loads (dependencies are added from each module's .modinfo):
#: virtio and overlay to boot; netfilter for fakenet's ``iptables -t nat ... -j REDIRECT``
#: (iptables-nft: nf_tables with the xt compatibility layer for REDIRECT and the tcp match)
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "virtio_console", "overlay",
                     "nf_tables", "nft_compat", "nft_chain_nat", "xt_REDIRECT", "xt_tcpudp")

INITRAMFS_INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /lower /rw /newroot
/bin/busybox --install -s /bin
fail() { echo "initramfs: $*"; poweroff -f; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /etc/modules.order); do
    insmod "/lib/modules/$m" || echo "initramfs: insmod $m failed"
done
i=0
while [ ! -b /dev/vda ]; do
    i=$((i+1)); [ $i -gt 400 ] && fail "no /dev/vda"
    sleep 0.05
done
mount -t ext4 -o ro,noload /dev/vda /lower || fail "cannot mount the root image"
mount -t tmpfs -o mode=0755 tmpfs /rw || fail "cannot mount the tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || fail "overlay"
mount --move /dev /newroot/dev
umount /sys /proc
exec switch_root /newroot /sbin/mailvm-init
"""

GUEST_INIT = r"""#!/bin/sh
# PID 1 of a mailvm guest (written by mailvm.vmpool.image.build)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
[ -e /dev/null ] || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
hostname sandbox
ip link set lo up
arg() { for w in $(cat /proc/cmdline); do case "$w" in "$1="*) echo "${w#*=}";; esac; done; }
PAGE_ADDR=$(arg mailvm.page_addr)
PAGE_SIZE=$(arg mailvm.page_size)
BELL=$(arg mailvm.doorbell)
# vport:NAME = the virtio-serial port QEMU named NAME (its /dev node number is not fixed)
case "$BELL" in
vport:*)
    want=${BELL#vport:}; BELL=""; i=0
    while [ -z "$BELL" ] && [ $i -lt 200 ]; do
        for n in /sys/class/virtio-ports/*/name; do
            [ -r "$n" ] && [ "$(cat "$n")" = "$want" ] && d=${n%/name} && BELL="dev:/dev/${d##*/}"
        done
        [ -n "$BELL" ] || { i=$((i+1)); sleep 0.05; }
    done
    [ -n "$BELL" ] || { echo "mailvm-init: no virtio port named $want" > /dev/console; BELL="poll:0.01"; } ;;
esac
case "$BELL" in
dev:*)
    i=0
    while [ ! -e "${BELL#dev:}" ] && [ $i -lt 200 ]; do i=$((i+1)); sleep 0.05; done ;;
esac
WARM=$(arg mailvm.warmup)
case "$WARM" in
files|run)
    for t in bwrap strace ip nsenter unshare setpriv prlimit mount sleep sh iptables-restore python3; do
        p=$(command -v "$t") && cat "$p" > /dev/null
    done
    bwrap --version; strace -V; ip -V; iptables-restore --version; setpriv --version
    PYTHONPATH=/opt/mailvm python3 -c "import mailvm.guest.fakenet, mailvm.guest.sandbox, mailvm.guest.detonate"
    ;;
esac > /dev/null 2>&1
if [ "$WARM" = run ]; then
    w=/tmp/mailvm-warmup
    mkdir -p "$w/work" && printf '#!/bin/sh\necho warm > warm.txt\ncat warm.txt\n' > "$w/warm.sh"
    PYTHONPATH=/opt/mailvm timeout 120 python3 -c '
import sys
from mailvm.guest.detonate import detonate
r = detonate(sys.argv[1], {"timeout_s": 30, "idle_s": 0.2}, sys.argv[2], lambda: False)
print("mailvm-init: warm-up detonation:", r.get("verdict"), r.get("stopped"), r.get("duration_s"))
' "$w/warm.sh" "$w/work" > /dev/console 2>&1 || echo "mailvm-init: warm-up failed" > /dev/console
    rm -rf "$w"
fi
# Wine in the image: a warm Wine sandbox (wineserver and its session running as a sandbox uid, inside
# the sandbox's namespaces) is made now, so the template -- and every clone -- holds it warm.
# Bounded: the host waits for READY (at least 120 s); a warm-up not done in 100 s is killed (with its
# sandbox: everything in it dies with the daemon) and Windows samples run cold.  Wine's session does not
# fit a guest under ~400 MiB (it thrashes), so smaller guests skip it.
# (mailvm.wine=cold on the kernel command line skips it too: for measuring what it buys)
MEM_KB=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
if [ -x /usr/lib/wine/wine64 ] && [ -f /var/lib/mailvm/wine-prefix/system.reg ] && [ "$(arg mailvm.wine)" != cold ]; then
  if [ "${MEM_KB:-0}" -lt 400000 ]; then
    echo "mailvm-init: ${MEM_KB} kB RAM is too little for a warm Wine session (give the guest 512 MiB)" > /dev/console
  else
    t0=$(cut -d' ' -f1 /proc/uptime)
    PYTHONPATH=/opt/mailvm python3 -m mailvm.guest.winewarm --socket /run/mailvm-wine/warm.sock \
        --workdir /tmp/mailvm-wine > /dev/console 2>&1 &
    WW=$!
    i=0
    while [ ! -S /run/mailvm-wine/warm.sock ] && kill -0 $WW 2>/dev/null && [ $i -lt 1000 ]; do
        i=$((i+1)); sleep 0.1
    done
    if [ -S /run/mailvm-wine/warm.sock ]; then
        export MAILVM_WINE_WARM=/run/mailvm-wine/warm.sock
        echo "mailvm-init: warm Wine ready ($t0 -> $(cut -d' ' -f1 /proc/uptime) s uptime)" > /dev/console
    else
        kill -9 $WW 2>/dev/null
        echo "mailvm-init: no warm Wine sandbox; Windows samples run cold" > /dev/console
    fi
  fi
fi
# a device doorbell also rings the host back (its writes reach QEMU's socket): the host then
# blocks until the agent's answer instead of looking at the page (image manifest: agent_answers)
ANSWER=""
case "$BELL" in dev:*) ANSWER="--answer bell" ;; esac
echo "mailvm-init: agent on page $PAGE_ADDR+$PAGE_SIZE, doorbell $BELL $ANSWER" > /dev/console
cd /
PYTHONPATH=/opt/mailvm python3 -m mailvm.guest.agent --page /dev/mem --offset "$PAGE_ADDR" \
    --size "$PAGE_SIZE" --doorbell "$BELL" $ANSWER --once --workdir /tmp/mailvm-agent
echo "mailvm-init: agent exited with status $?" > /dev/console
while :; do sleep 3600; done
"""
