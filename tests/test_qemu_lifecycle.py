"""The qemu backend's lifecycle with real QEMU (TCG here): privileges, a new image, orphans.

* QEMU drops root (``-runas``) after opening its files: every clone runs as
  ``mailvm-qemu`` (Uid lines in /proc), still under its seccomp filter, still
  restores and runs a job; the template stays root-only.
* A running backend notices ``<image_dir>/current`` pointing at a new image,
  makes its template in the background while the old template's clones keep
  serving, then clones the new one; idle clones of the old template are
  destroyed, busy ones are not.
* A pool process that is SIGKILLed leaves no QEMU (its watchdog kills them);
  without the watchdog they survive, and the next backend in the work dir
  kills them at start.

Uses the cached test image (``MAILVM_TEST_IMAGE_DIR``, default
/var/cache/mailvm-test/image; built by tests/test_backend_qemu.py, never
modified here: the "new image" is a hard-linked copy in a temporary directory
with its own manifest key).  Templates live in ``.../lifecycle-pool``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailvm.config import PoolConfig
from mailvm.guest import protocol as P
from mailvm.procfs import find_processes, is_gone, kill_if, start_ticks
from mailvm.vmpool import reaper
from mailvm.vmpool.backends import libvirt_util as lv
from mailvm.vmpool.backends.qemu import QemuBackend, resolve_qemu_user
from mailvm.vmpool.image.layout import CURRENT, MANIFEST, Image, ImageMissing, load_image

pytestmark = pytest.mark.qemu

CACHE = Path(os.environ.get("MAILVM_TEST_IMAGE_DIR", "/var/cache/mailvm-test/image"))
WORK = CACHE.parent / "lifecycle-pool"
PAGE = 8 << 20
USER = "mailvm-qemu"
SCRIPT = b"#!/bin/sh\necho hello > greeting.txt\ncat greeting.txt\n"


def soon(s: float = 20.0) -> float:
    return time.monotonic() + s


def qemus(instance: str) -> list[int]:
    return find_processes(b"qemu-system", f"mailvm-{instance}-".encode())


def cfg_for(work_dir: Path) -> PoolConfig:
    return PoolConfig(backend="qemu", accel="tcg", work_dir=str(work_dir), page_bytes=PAGE, ready_timeout_s=90.0)


def ids(pid: int) -> dict[str, list[int]]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("Uid", "Gid", "Groups", "Seccomp"):
            out[key] = [int(v) for v in val.split()]
    return out


def run_job(slot, timeout: float = 30.0) -> dict:
    slot.page.submit(SCRIPT, "hello.sh", {"timeout_s": timeout, "idle_s": 2, "max_result_bytes": 1 << 20})
    slot.ring()
    st = slot.page.wait_state({P.DONE, P.FAILED}, soon(timeout + 90), alive=slot.alive, heartbeat_timeout=30)
    assert st == P.DONE, P.state_name(st)
    return slot.page.read_result(1 << 20)


def need_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        pytest.skip(f"user {USER} does not exist (scripts/setup.sh creates it)")


@pytest.fixture(scope="module")
def image() -> Image:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    if os.geteuid() != 0:
        pytest.skip("dropping QEMU's privileges needs a root pool")
    try:
        return load_image(str(CACHE))
    except ImageMissing as exc:
        pytest.skip(f"no test image (run tests/test_backend_qemu.py first): {exc}")


@pytest.fixture(scope="module")
def backend(image):
    need_user()
    b = QemuBackend(cfg_for(WORK), image_dir=str(CACHE), qemu_user=USER, image_poll_s=0)
    b.prepare()
    yield b
    b.close()
    if not os.environ.get("MAILVM_TEST_KEEP_TEMPLATES"):
        b.discard_template()
    left = qemus(b.instance)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"QEMU processes left: {left}"


# -- without a VM -------------------------------------------------------------------------------
def test_owner_records_and_kill_if(tmp_path):
    inst = "0123abcd"
    reaper.write_owner(str(tmp_path), inst)
    assert reaper.owner_alive(str(tmp_path), inst)
    child = subprocess.Popen(["sleep", "30"])
    end = soon(5)
    while b"sleep" not in Path(f"/proc/{child.pid}/cmdline").read_bytes() and time.monotonic() < end:
        time.sleep(0.005)  # until the child has exec'd
    try:
        reaper.write_owner(str(tmp_path), "feedf00d", pid=child.pid)
        assert reaper.owner_alive(str(tmp_path), "feedf00d") and start_ticks(child.pid) is not None
        assert not kill_if(child.pid, b"not-its-command-line") and child.poll() is None
        assert kill_if(child.pid, b"sleep")
        child.wait(5)
        assert not reaper.owner_alive(str(tmp_path), "feedf00d")  # the pid is gone
    finally:
        child.kill()
        child.wait()
    (tmp_path / f"{reaper.SLOT_PREFIX}feedf00d-x").mkdir()
    (tmp_path / f"{reaper.SLOT_PREFIX}abcdef99-y").mkdir()  # no record, no QEMU: a leaked slot's dir
    (tmp_path / f"{reaper.NAME_PREFIX}abcdef99-y.page").write_bytes(b"")
    (tmp_path / f"{reaper.SLOT_PREFIX}{inst}-z").mkdir()
    # a dead owner, or no owner and no QEMU: their files go; a live owner's stay
    assert reaper.sweep(str(tmp_path), str(tmp_path)) == {"abcdef99": [], "feedf00d": []}
    assert not (tmp_path / f"{reaper.SLOT_PREFIX}feedf00d-x").exists()
    assert not (tmp_path / f"{reaper.SLOT_PREFIX}abcdef99-y").exists()
    assert not (tmp_path / f"{reaper.NAME_PREFIX}abcdef99-y.page").exists()
    assert (tmp_path / f"{reaper.SLOT_PREFIX}{inst}-z").exists()
    assert not reaper.owner_path(str(tmp_path), "feedf00d").exists()
    assert reaper.owner_path(str(tmp_path), inst).exists()  # ours: alive, kept
    with pytest.raises(ValueError):
        reaper.reap_instance(str(tmp_path), str(tmp_path), "../etc")


def test_watchdog_stops_quietly_on_close(tmp_path):
    (tmp_path / f"{reaper.SLOT_PREFIX}00c0ffee-x").mkdir()
    w = reaper.start_watchdog(str(tmp_path), str(tmp_path), "00c0ffee")
    assert w.alive() and find_processes(b"mailvm.vmpool.reaper", b"00c0ffee") == [w.proc.pid]
    w.stop()
    assert w.proc.returncode == 0 and (tmp_path / f"{reaper.SLOT_PREFIX}00c0ffee-x").exists()  # nothing reaped


# -- privileges ------------------------------------------------------------------------------
def test_user_resolution():
    assert resolve_qemu_user("root")[0] is None and "root" in resolve_qemu_user("root")[1]
    run_as, warning = resolve_qemu_user("mailvm-no-such-user")
    assert run_as is None and "ROOT" in warning and "useradd" in warning
    with pytest.raises(ValueError, match="qemu_user"):
        QemuBackend(PoolConfig(), qemu_user="evil;rm -rf /")


@pytest.mark.slow
def test_clones_run_unprivileged_and_the_template_stays_root_only(backend):
    pw = need_user()
    assert backend.info().details["qemu_user"] == USER and backend.info().details["warnings"] == []
    slot = backend.create_slot("priv")
    try:
        pid = slot.vm.pid
        got = ids(pid)
        assert got["Uid"] == [pw.pw_uid] * 4 and got["Gid"] == [pw.pw_gid] * 4, got
        assert set(got.get("Groups", [])) <= {pw.pw_gid}, got
        assert got["Seccomp"] == [2]  # still under QEMU's own filter
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert cmd[cmd.index(b"-runas") + 1] == USER.encode()
        result = run_job(slot)  # restored, running and detonating as an unprivileged process
        assert result["verdict"] in ("clean", "suspicious", "malicious")
    finally:
        slot.destroy()
    t = backend.template
    for path, mode in ((t.dir, 0o700), (t.ram, 0o600), (t.state, 0o600)):
        st = os.stat(path)
        assert st.st_uid == 0 and st.st_mode & 0o777 == mode, (path, oct(st.st_mode))
    # the QEMU user cannot open the template behind QEMU's back (QEMU opened it before dropping root)
    for path in (t.ram, t.state):
        r = subprocess.run(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", "--",
                            "head", "-c1", path], capture_output=True)
        assert r.returncode != 0 and b"Permission denied" in r.stderr, (path, r)


@pytest.mark.slow
def test_missing_user_means_root_with_a_warning(backend):
    b = QemuBackend(backend.cfg, image_dir=backend.image_dir, qemu_user="mailvm-no-such-user", image_poll_s=0)
    try:
        b.prepare()  # reuses the module's template: the user is not part of its key
        d = b.info().details
        assert d["qemu_user"] == "root" and any("ROOT" in w for w in d["warnings"])
        slot = b.create_slot("root")
        try:
            assert ids(slot.vm.pid)["Uid"] == [0] * 4
            assert b"elevateprivileges=deny" in Path(f"/proc/{slot.vm.pid}/cmdline").read_bytes()
        finally:
            slot.destroy()
    finally:
        b.close()
    assert qemus(b.instance) == []


@pytest.mark.slow
@pytest.mark.libvirt
def test_libvirt_clones_run_unprivileged_too(image):
    pw = need_user()
    why = lv.probe(lv.DEFAULT_URI)
    if why:
        pytest.skip(f"libvirtd does not answer (scripts/start-libvirtd.sh starts it): {why}")
    b = QemuBackend(cfg_for(CACHE.parent / "libvirt-pool"), image_dir=str(CACHE), launcher="libvirt",
                    qemu_user=USER, image_poll_s=0)
    try:
        b.prepare()
        slot = b.create_slot("lv-priv")
        try:
            got = ids(slot.vm.pid)
            assert got["Uid"] == [pw.pw_uid] * 4 and got["Seccomp"] == [2], got
            assert run_job(slot)["verdict"] in ("clean", "suspicious", "malicious")
        finally:
            slot.destroy()
    finally:
        b.close()
        if not os.environ.get("MAILVM_TEST_KEEP_TEMPLATES"):
            b.discard_template()


# -- orphans --------------------------------------------------------------------------------------
CHILD = r"""
import json, sys, time
from mailvm.config import PoolConfig
from mailvm.vmpool.backends.qemu import QemuBackend
work, images, user, watchdog = sys.argv[1:5]
cfg = PoolConfig(backend="qemu", accel="tcg", work_dir=work, page_bytes=8 << 20, ready_timeout_s=90.0)
b = QemuBackend(cfg, image_dir=images, qemu_user=user, image_poll_s=0, watchdog=watchdog == "1")
b.prepare()
slots = [b.create_slot(f"orphan{i}") for i in range(2)]
end = time.monotonic() + 60
while len(b.clones.waiting) < b.spares and time.monotonic() < end:  # the spare QEMU too
    time.sleep(0.05)
print(json.dumps({"instance": b.instance, "pids": [s.vm.pid for s in slots],
                  "paths": [s.slot_dir for s in slots] + [s.page.path for s in slots]}), flush=True)
time.sleep(600)
"""


def _pool_child(image: Image, watchdog: bool) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(WORK), str(CACHE), USER,
                             "1" if watchdog else "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    if not select.select([proc.stdout], [], [], 240)[0]:
        proc.kill()
        raise AssertionError("the pool child did not make its slots in time")
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise AssertionError(f"the pool child exited with {proc.returncode}")
    return proc, json.loads(line)


def _wait_gone(pids: list[int], s: float) -> float:
    t0 = time.monotonic()
    while any(not is_gone(p) for p in pids) and time.monotonic() - t0 < s:
        time.sleep(0.02)
    return time.monotonic() - t0


@pytest.mark.slow
def test_sigkilled_pool_leaves_no_qemu(backend, image):
    proc, info = _pool_child(image, watchdog=True)
    inst = info["instance"]
    try:
        running = qemus(inst)
        assert set(info["pids"]) <= set(running) and len(running) == 3, running  # 2 clones + 1 spare
        watchdogs = find_processes(b"mailvm.vmpool.reaper", inst.encode())
        assert len(watchdogs) == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        took = _wait_gone(running, 5.0)
        assert qemus(inst) == [], f"QEMUs of the killed pool still run after {took:.1f} s"
        print(f"\nQEMUs of the SIGKILLed pool gone {took * 1000:.0f} ms after its death")
        assert _wait_gone(watchdogs, 5.0) < 5.0
        for p in info["paths"]:
            assert not os.path.exists(p), p
        assert not reaper.owner_path(str(WORK), inst).exists()
        other = backend.create_slot("still-fine")  # another live backend's QEMUs were left alone
        assert other.alive()
        other.destroy()
    finally:
        proc.kill()
        for pid in qemus(inst):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_without_watchdog_the_next_backend_kills_the_orphans(backend, image):
    proc, info = _pool_child(image, watchdog=False)
    inst = info["instance"]
    mine = backend.create_slot("bystander")
    try:
        running = qemus(inst)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(1.0)
        assert set(qemus(inst)) == set(running) and running  # nothing else kills them: the problem is real
        b = QemuBackend(backend.cfg, image_dir=backend.image_dir, qemu_user=USER, image_poll_s=0)
        try:
            b.prepare()  # sweeps the work dir: owner record names a dead process
            assert _wait_gone(running, 5.0) < 5.0 and qemus(inst) == []
            for p in info["paths"]:
                assert not os.path.exists(p), p
            assert mine.alive() and mine.page.state() == P.READY  # a live pool's clone is not touched
        finally:
            b.close()
    finally:
        mine.destroy()
        proc.kill()
        for pid in qemus(inst):
            os.kill(pid, signal.SIGKILL)


# -- a new image while running --------------------------------------------------------------------
def _publish(images: Path, src: Image, key: str, note: str) -> Path:
    """A complete image dir ``image-<key>`` of hard links to ``src``'s files, manifest written last,
    then ``current`` switched atomically: what ``mvctl image build`` does after a rebuild."""
    d = images / f"image-{key[:16]}"
    d.mkdir()
    for name in ("vmlinuz", "initrd.img", "root.img"):
        os.link(os.path.join(src.dir, name), d / name)
    manifest = dict(src.manifest, key=key, built_at=time.time(), test_note=note)
    (d / MANIFEST).write_text(json.dumps(manifest))
    tmp = images / f".{CURRENT}.tmp"
    os.symlink(d.name, tmp)
    os.replace(tmp, images / CURRENT)
    return d


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.mark.slow
def test_a_new_image_is_noticed_built_in_the_background_and_switched(backend, image, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    old_key = hashlib.sha256(f"{image.key}:lifecycle-old:{time.time()}".encode()).hexdigest()
    _publish(images, image, old_key, "the image the pool starts with")
    b = QemuBackend(backend.cfg, image_dir=str(images), qemu_user=USER, image_poll_s=0.5)
    try:
        b.prepare()  # a template of its own: nobody else holds it
        old = b.template
        assert old.key != backend.template.key and b.info().details["image_version"] == old_key[:12]
        busy = b.create_slot("old-busy")
        idle = b.create_slot("old-idle")
        busy.page.submit(b"#!/bin/sh\nsleep 20\necho done\n", "slow.sh", {"timeout_s": 90, "idle_s": 30})
        busy.ring()
        new_key = hashlib.sha256(f"{image.key}:lifecycle-test:{time.time()}".encode()).hexdigest()
        new_dir = _publish(images, image, new_key, "a rebuild: same files, new input hash")
        # the watcher notices within its poll interval and builds in the background ...
        end = soon(10)
        while b.image_pending is None and b.image.key != new_key and time.monotonic() < end:
            time.sleep(0.05)
        assert b.image_pending == new_key[:12], "the backend did not notice the new image"
        # ... while clones of the old template keep coming
        during = b.create_slot("during-build")
        assert during.gen.template.key == old.key and b.image_pending == new_key[:12]
        assert run_job(during)["verdict"] in ("clean", "suspicious", "malicious")
        during.destroy()
        end = soon(300)
        while b.image.key != new_key and time.monotonic() < end:
            time.sleep(0.2)
        assert b.image.key == new_key, f"no switch: {b.info().details}"
        d = b.info().details
        assert d["image_version"] == new_key[:12] and d["template_key"] == b.template.key[:12] != old.key[:12]
        assert 0 <= d["template_age_s"] < 600 and d["image_pending"] is None
        # idle clones of the old template are retired; one that had a job is not
        end = soon(RETIRE_WAIT_S)
        # (the switch thread kills QEMU first, then removes the slot directory and the old template:
        # wait for the whole retirement, not its first step)
        while (idle.vm.alive() or os.path.exists(idle.slot_dir) or b.generations.old or os.path.exists(old.dir)) \
                and time.monotonic() < end:
            time.sleep(0.05)
        assert not idle.alive() and not os.path.exists(idle.slot_dir)
        assert busy.vm.alive() and os.path.exists(busy.slot_dir)
        # no pool holds the old template any more: removed (the busy clone maps its unlinked RAM file)
        assert b.generations.old == [] and not os.path.exists(old.dir) and not os.path.exists(old.ram)
        assert not os.path.exists(b.templates.lock_path(old.key[:16]))
        assert busy.page.wait_state({P.DONE, P.FAILED}, soon(120), alive=busy.alive) == P.DONE
        assert busy.page.read_result(1 << 20)["verdict"] in ("clean", "suspicious", "malicious")
        busy.destroy()
        # new clones (and the spare) come from the new template and the new image, and run a job
        new = b.create_slot("after-switch")
        cmd = _cmdline(new.vm.pid)
        assert new.gen.template.key == b.template.key
        assert f"mem-path={b.template.ram},share=off".encode() in cmd and str(new_dir).encode() in cmd
        assert run_job(new)["verdict"] in ("clean", "suspicious", "malicious")
        new.destroy()
        end = soon(60)
        while time.monotonic() < end:
            rest = qemus(b.instance)
            if rest and all(f"mem-path={b.template.ram},".encode() in _cmdline(p) for p in rest):
                break
            time.sleep(0.1)
        assert rest and all(f"mem-path={b.template.ram},".encode() in _cmdline(p) for p in rest)  # the spare
        assert os.path.isdir(backend.template.dir)  # another pool's template in the work dir: held, kept
    finally:
        b.close()
        if not os.environ.get("MAILVM_TEST_KEEP_TEMPLATES"):
            b.discard_template()
    assert qemus(b.instance) == []


RETIRE_WAIT_S = 15.0
