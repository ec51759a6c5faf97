"""The qemu backend's libvirt launcher with a real libvirtd and QEMU (TCG here).

A session fixture makes sure libvirtd answers: when it does not, it runs
``scripts/start-libvirtd.sh`` (libvirtd by hand, no systemd) and skips the
tests, printing why, only when that script cannot start it.  The guest image
is built into the same cache as tests/test_backend_qemu.py; the libvirt
template lives next to the raw one (``.../libvirt-pool``; removed from
/dev/shm at the end unless MAILVM_TEST_KEEP_TEMPLATES is set).  At teardown
no domain and no QEMU process of this session's backends may be left.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mailvm.config import PoolConfig
from mailvm.guest import protocol as P
from mailvm.vmpool.backends import libvirt_util as lv
from mailvm.vmpool.backends.qemu import QemuBackend, VMPaths, VMSpec, guest_args
from mailvm.vmpool.image.layout import Image
from mailvm.vmpool.shmpage import PageError
from mailvm.procfs import find_processes
from test_backend_qemu import _job

pytestmark = [pytest.mark.libvirt, pytest.mark.qemu]

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("MAILVM_TEST_IMAGE_DIR", "/var/cache/mailvm-test/image"))
POOL_DIR = CACHE.parent / "libvirt-pool"
PAGE = 8 << 20
BENIGN = b"#!/bin/sh\necho hello > greeting.txt\ncat greeting.txt\n"


def soon(s: float = 20.0) -> float:
    return time.monotonic() + s


def qemus_named(marker: str) -> list[int]:
    """Live qemu-system processes whose command line mentions ``marker``."""
    return find_processes(b"qemu-system", marker.encode())


# -- without libvirtd ---------------------------------------------------------------------------
def _fake_spec(tmp_path) -> VMSpec:
    return VMSpec(Image(str(tmp_path), {"key": "k" * 64}), "tcg", 256, PAGE, "vport", "libvirt")


def test_domain_xml_carries_the_raw_machine(tmp_path):
    spec = _fake_spec(tmp_path)
    paths = VMPaths("/dev/shm/t.ram", False, "/dev/shm/p", "/s/qmp.sock", "/s/bell.sock", "/s/con")
    args = guest_args(spec, paths, incoming=True)
    xml = lv.domain_xml(lv.DomainSpec("mailvm-x-1", "qemu", "/usr/bin/qemu-system-x86_64", tuple(args),
                                      tb_cache_mib=64))
    root = ET.fromstring(xml)
    assert root.get("type") == "qemu" and root.findtext("name") == "mailvm-x-1"
    got = [a.get("value") for a in root.iter(f"{{{lv.QEMU_NS}}}arg")]
    assert got == args  # the same machine and devices as the raw launcher, in order
    assert "mem-path=/dev/shm/t.ram,share=off" in " ".join(got) and got[-2:] == ["-incoming", "defer"]
    assert root.find("features/tcg/tb-cache").text == "64"
    assert root.find("devices/memballoon").get("model") == "none"
    assert root.find("devices/controller").get("model") == "none"
    assert root.find("devices/interface") is None  # no network
    assert int(root.findtext("memory")) == lv.PLACEHOLDER_MEM_KIB
    with pytest.raises(ValueError):
        lv.domain_xml(lv.DomainSpec("not-ours", "qemu", "/q", ()))
    # an argument with XML metacharacters stays one intact value
    odd = lv.domain_xml(lv.DomainSpec("mailvm-x", "kvm", "/q", ("-append", "a<b & 'c' \"d\"")))
    assert [a.get("value") for a in ET.fromstring(odd).iter(f"{{{lv.QEMU_NS}}}arg")][1] == "a<b & 'c' \"d\""
    assert ET.fromstring(odd).find("features/tcg") is None and ET.fromstring(odd).find("cpu").get("mode") == "host-passthrough"


def test_unreachable_libvirtd_is_a_reason_not_a_crash():
    why = lv.probe("qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    assert why and "start-libvirtd.sh" in why


# -- with libvirtd -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def libvirtd() -> str:
    why = lv.probe()
    if why is None:
        return "already running"
    script = ROOT / "scripts" / "start-libvirtd.sh"
    if os.geteuid() != 0:
        pytest.skip(f"libvirtd does not answer ({why}) and starting it needs root")
    res = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        msg = f"libvirtd cannot start here: {res.stderr.strip() or res.stdout.strip()}"
        print(f"\nSKIP: {msg}")
        pytest.skip(msg)
    why = lv.probe()
    assert why is None, f"start-libvirtd.sh succeeded but libvirt still does not answer: {why}"
    return "started by scripts/start-libvirtd.sh"


@pytest.fixture(scope="session")
def image() -> Image:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        pytest.skip("building the guest image needs root and debootstrap")
    from mailvm.vmpool.image.build import BuildOptions, build

    return build(BuildOptions(cache_dir=str(CACHE))).image


def _make_backend(control_via: str = "qmp") -> QemuBackend:
    cfg = PoolConfig(backend="qemu", accel="tcg", work_dir=str(POOL_DIR), page_bytes=PAGE, ready_timeout_s=60.0)
    return QemuBackend(cfg, image_dir=str(CACHE), launcher="libvirt", control_via=control_via)


@pytest.fixture(scope="session")
def backends(libvirtd, image):
    """Two libvirt backends on one template: control through the own QMP socket, and through libvirt."""
    made: list[QemuBackend] = []
    try:
        for via in ("qmp", "libvirt"):
            b = _make_backend(via)
            made.append(b)
            t0 = time.monotonic()
            b.prepare()
            print(f"\nlibvirt backend ({via}) prepared in {time.monotonic() - t0:.1f} s (libvirtd {libvirtd})")
        yield {b.control_via: b for b in made}
    finally:
        conn = lv.open_connection()
        try:
            for b in made:
                b.close()
            if made and not os.environ.get("MAILVM_TEST_KEEP_TEMPLATES"):
                print(f"\ntemplate removed: {made[0].discard_template()}")
            deadline = soon(10)
            left_domains: list[str] = []
            for b in made:
                prefix = f"mailvm-{b.instance}-"
                while (left_domains := lv.our_domains(conn, prefix)) and time.monotonic() < deadline:
                    time.sleep(0.05)
                left_qemus = qemus_named(prefix)
                for pid in left_qemus:
                    os.kill(pid, signal.SIGKILL)
                assert not left_domains and not left_qemus, f"left after the session: {left_domains} {left_qemus}"
        finally:
            lv.close_connection(conn)


def test_template_made_through_libvirt(backends, image):
    b = backends["qmp"]
    info = b.info()
    assert info.accel == "tcg" and info.details["launcher"] == "libvirt"
    assert info.details["image_version"] == image.version
    assert b.template.meta["launcher"] == "libvirt" and b.template.key == backends["libvirt"].template.key
    assert os.stat(b.template.dir).st_mode & 0o777 == 0o700


def test_clone_is_a_transient_domain_running_the_same_machine(backends):
    b = backends["qmp"]
    slot = b.create_slot("dom")
    try:
        conn = b._connection()
        assert slot.vm.name in lv.our_domains(conn, f"mailvm-{b.instance}-")
        dom = conn.lookupByName(slot.vm.name)
        assert not dom.isPersistent()  # transient: nothing of it stays in libvirt's configuration
        cmd = Path(f"/proc/{slot.vm.pid}/cmdline").read_bytes().split(b"\0")
        assert f"tcg,tb-size={b.tb_mib}".encode() in cmd and b"-incoming" in cmd
        assert any(a.startswith(b"memory-backend-file,id=ram0") and a.endswith(b"share=off") for a in cmd)
        assert not any(a.startswith(b"-netdev") or a.startswith(b"-nic") for a in cmd)
        # libvirt appends "-sandbox off" (seccomp_sandbox = 0); our seccomp filter must still be in force
        status = Path(f"/proc/{slot.vm.pid}/status").read_text()
        assert "\nSeccomp:\t2" in status
        assert slot.page.state() == P.READY
        print(f"\nrefill through libvirt: {slot.stats()['timings_ms']}")
    finally:
        name, pid, log_path = slot.vm.name, slot.vm.pid, slot.vm.log_path
        slot.destroy()
    assert name not in lv.our_domains(b._connection(), f"mailvm-{b.instance}-")
    assert pid not in qemus_named(name) and not os.path.exists(log_path) and not os.path.exists(slot.slot_dir)


@pytest.mark.parametrize("via", ["qmp", "libvirt"])
def test_clone_runs_a_job_with_either_control_path(backends, via):
    slot = backends[via].create_slot(f"job-{via}")
    try:
        handover, st, result = _job(slot)
        assert st in (P.DONE, P.FAILED) and result["verdict"] in ("clean", "suspicious", "malicious", "error")
        print(f"\ncontrol via {via}: refill {slot.stats()['timings_ms']['total']} ms, hand-over {handover:.2f} ms")
    finally:
        slot.destroy()


@pytest.mark.slow
def test_clone_through_libvirt_runs_the_benign_sample(backends, image):
    if "mailvm/guest/detonate.py" not in image.manifest.get("inputs", {}).get("agent", {}):
        pytest.skip("mailvm.guest.detonate not in the image yet")
    slot = backends["qmp"].create_slot("benign")
    try:
        _, st, result = _job(slot, BENIGN, "hello.sh", timeout=60)
        print(f"\nbenign via libvirt: {result['verdict']} {[f['id'] for f in result['findings']]}")
        assert st == P.DONE and result["verdict"] == "clean", result["findings"]
    finally:
        slot.destroy()


def test_killed_qemu_is_noticed_and_its_domain_disappears(backends):
    b = backends["qmp"]
    slot = b.create_slot("kill")
    os.kill(slot.vm.pid, signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(PageError, match="died"):
        slot.page.wait_state({P.DONE, P.FAILED}, soon(), alive=slot.alive)
    assert time.monotonic() - t0 < 1.0 and not slot.alive()
    slot.destroy()
    assert lv.wait_gone(b._connection(), slot.vm.name, soon(10))


def test_closing_the_backend_destroys_the_domains_it_left(libvirtd, image, backends):
    """A pool that closes without destroying its slots leaves no domain running."""
    b = _make_backend()
    b.prepare()  # the template is cached by the session's backends: no boot
    slot = b.create_slot("orphan")
    name, pid = slot.vm.name, slot.vm.pid
    b.close()  # no slot.destroy()
    conn = lv.open_connection()
    try:
        assert lv.wait_gone(conn, name, soon(10)), f"domain {name} survived close()"
    finally:
        lv.close_connection(conn)
    assert pid not in qemus_named(name)
    slot.destroy()  # files; the domain is gone already


CRASHING_POOL = """
import os, sys
from mailvm.config import PoolConfig
from mailvm.vmpool.backends.qemu import QemuBackend
cfg = PoolConfig(backend="qemu", accel="tcg", work_dir=sys.argv[1], page_bytes=int(sys.argv[3]))
b = QemuBackend(cfg, image_dir=sys.argv[2], launcher="libvirt", spares=0)
slot = b.create_slot("crash")
print(slot.vm.name, flush=True)
os._exit(3)  # no destroy, no close: as if the pool process were killed
"""


def test_a_crashed_pool_leaves_no_domain(libvirtd, image, backends):
    """AUTODESTROY: libvirt kills a domain when the connection that made it goes away."""
    res = subprocess.run([os.sys.executable, "-c", CRASHING_POOL, str(POOL_DIR), str(CACHE), str(PAGE)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 3, res.stderr[-2000:]
    name = res.stdout.strip().splitlines()[-1]
    assert name.startswith("mailvm-")
    conn = lv.open_connection()
    try:
        assert lv.wait_gone(conn, name, soon(10)), f"domain {name} outlived its pool process"
    finally:
        lv.close_connection(conn)
    end = soon(5)
    while qemus_named(name) and time.monotonic() < end:
        time.sleep(0.02)
    assert qemus_named(name) == []
    for d in POOL_DIR.glob("qslot-crash-*"):  # the crashed pool's files (its page in /dev/shm too)
        shutil.rmtree(d, ignore_errors=True)
    for p in Path("/dev/shm").glob("mailvm-crash-*.page"):
        p.unlink()
