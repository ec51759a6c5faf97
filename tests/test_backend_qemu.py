"""The qemu backend with real QEMU (TCG here): image, template, flash clones, doorbell, clean-up.

A session-scoped fixture builds the guest image into a fixed cache
(``MAILVM_TEST_IMAGE_DIR``, default /var/cache/mailvm-test/image: rebuilt
only when an input changes) and prepares one backend whose template is also
kept in ``.../qemu-pool`` for the session (sessions running side by side
share it safely: templates are locked while in use); its RAM file leaves
/dev/shm at the end unless MAILVM_TEST_KEEP_TEMPLATES is set.  Every slot the tests make is tracked
and destroyed at teardown, and the session fails if a QEMU process of this
session's backend (its ``mailvm-<instance>-`` name) is still running.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import statistics
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mailvm.config import PoolConfig
from mailvm.guest import protocol as P
from mailvm.vmpool.backends import BACKENDS
from mailvm.vmpool.backends.qemu import QemuBackend, VMPaths, VMSpec, qemu_argv
from mailvm.vmpool.image.layout import Image, load_image
from mailvm.vmpool.shmpage import PageError
from mailvm.procfs import find_processes
from backend_helpers import track_slots

pytestmark = pytest.mark.qemu

CACHE = Path(os.environ.get("MAILVM_TEST_IMAGE_DIR", "/var/cache/mailvm-test/image"))
POOL_DIR = CACHE.parent / "qemu-pool"
PAGE = 8 << 20


def soon(s: float = 20.0) -> float:
    return time.monotonic() + s


def our_qemus(marker: str) -> list[int]:
    """Live qemu-system processes whose command line mentions ``marker``."""
    return find_processes(b"qemu-system", marker.encode())


@pytest.fixture(scope="session")
def image() -> Image:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        pytest.skip("building the guest image needs root and debootstrap")
    from mailvm.vmpool.image.build import BuildOptions, build

    result = build(BuildOptions(cache_dir=str(CACHE)))
    print(f"\nimage {result.image.version}: {result.stages} in {result.seconds:.1f} s")
    return result.image


@pytest.fixture(scope="session")
def backend(image):
    cfg = PoolConfig(backend="qemu", accel="tcg", work_dir=str(POOL_DIR), page_bytes=PAGE, ready_timeout_s=60.0,
                     image_dir=str(CACHE))
    b = QemuBackend(cfg, image_dir=str(CACHE))
    t0 = time.monotonic()
    b.prepare()
    print(f"\nprepare: {time.monotonic() - t0:.1f} s, template {b.template.meta}")
    yield from serve_prepared(b)


def serve_prepared(b: QemuBackend):
    """Yield a prepared backend; then destroy its slots, close it, drop its template, check for leftovers."""
    made = track_slots(b)
    yield b
    for slot in made:
        slot.destroy()
    b.close()
    if not os.environ.get("MAILVM_TEST_KEEP_TEMPLATES"):  # 256 MiB of /dev/shm: not left behind in CI
        print(f"\ntemplate removed: {b.discard_template()}")
    left = our_qemus(f"mailvm-{b.instance}-")
    for pid in left:  # never leave them running, but fail the check
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"QEMU processes left after the session: {left}"


# -- without a VM ----------------------------------------------------------------------------
def _fake_image(tmp_path) -> Image:
    return Image(str(tmp_path), {"key": "k" * 64})


def test_registered():
    assert BACKENDS["qemu"] is QemuBackend


def test_command_line_has_no_network_and_clones_are_copy_on_write(tmp_path):
    spec = VMSpec(_fake_image(tmp_path), "tcg", 256, PAGE, "vport")
    clone = VMPaths("/dev/shm/t.ram", False, "/dev/shm/p", "/q", "/b", "/c")
    argv = qemu_argv(spec, clone, incoming=True)
    joined = " ".join(argv)
    assert "-nodefaults" in argv and "-netdev" not in argv and "-nic" not in joined and "-net " not in joined
    assert "mem-path=/dev/shm/t.ram,share=off" in joined
    assert "mem-path=/dev/shm/p,share=on" in joined
    assert argv[-2:] == ["-incoming", "defer"]
    assert "spawn=deny" in joined
    ref = qemu_argv(spec, VMPaths("/dev/shm/t.ram", True, "/dev/shm/p", "/q", "/b", "/c"), incoming=False)
    assert "share=on" in ref[ref.index("-object") + 1] and "-incoming" not in ref
    assert "mailvm.doorbell=vport:mailvm.bell" in joined and "virtserialport" in joined
    assert "mailvm.doorbell=dev:/dev/ttyS1" in " ".join(qemu_argv(VMSpec(spec.image, "tcg", 256, PAGE, "serial"), clone, True))
    # everything that shapes the guest changes the template key
    keys = {VMSpec(spec.image, a, m, p, d).key("q")
            for a, m, p, d in [("tcg", 256, PAGE, "vport"), ("kvm", 256, PAGE, "vport"), ("tcg", 512, PAGE, "vport"),
                               ("tcg", 256, 2 * PAGE, "vport"), ("tcg", 256, PAGE, "serial")]}
    assert len(keys) == 5


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        QemuBackend(PoolConfig(), doorbell="carrier-pigeon")
    with pytest.raises(ValueError):
        QemuBackend(PoolConfig(), doorbell="poll")  # needs MIN
    with pytest.raises(ValueError):
        QemuBackend(PoolConfig(), mem_mib=8)


def test_probe_without_an_image_names_the_build_command(tmp_path):
    cfg = PoolConfig()
    cfg.image_dir = str(tmp_path / "none")  # type: ignore[attr-defined]
    why = QemuBackend.probe(cfg)
    if shutil.which("qemu-system-x86_64") is None:
        assert "not installed" in why
    else:
        assert "mvctl image build" in why


def test_a_template_in_use_by_another_pool_is_not_removed(tmp_path):
    """Two pools in one work dir (test sessions side by side): an old template is removed
    only when no pool holds its lock."""
    import fcntl

    cfg = PoolConfig(work_dir=str(tmp_path))
    user, other = QemuBackend(cfg), QemuBackend(cfg)
    tag = "a" * 16
    (tmp_path / f"qemu-template-{tag}").mkdir()
    held = user.templates.flock(tag, fcntl.LOCK_SH, time.monotonic() + 5)
    other.templates.remove_old(keep="b" * 64)
    assert (tmp_path / f"qemu-template-{tag}").is_dir()
    os.close(held)
    other.templates.remove_old(keep="b" * 64)
    assert not (tmp_path / f"qemu-template-{tag}").exists()
    assert not (tmp_path / f"qemu-template-{tag}.lock").exists()


def test_unknown_launcher_is_refused():
    with pytest.raises(ValueError, match="launcher"):
        QemuBackend(PoolConfig(), launcher="docker")
    with pytest.raises(ValueError, match="control_via"):
        QemuBackend(PoolConfig(), launcher="libvirt", control_via="carrier-pigeon")


# -- image ---------------------------------------------------------------------------------------
def test_image_manifest_and_cache(image):
    m = image.manifest
    for pkg in ("python3", "strace", "bubblewrap", "iproute2", "iptables"):
        assert pkg in m["packages"], pkg
    assert m["inputs"]["kernel"]["package"].startswith("linux-image-") and "cloud" in m["inputs"]["kernel"]["package"]
    assert "mailvm/guest/agent.py" in m["inputs"]["agent"]
    for name in ("vmlinuz", "initrd.img"):
        h = hashlib.sha256(Path(image.dir, name).read_bytes()).hexdigest()
        assert h == m["files"][name]["sha256"]
    assert "virtio_console.ko" in m["initramfs_modules_loaded"]
    from mailvm.vmpool.image.build import BuildOptions, build

    t0 = time.monotonic()
    again = build(BuildOptions(cache_dir=str(CACHE)))
    assert again.cached and again.image.key == image.key and time.monotonic() - t0 < 30
    assert load_image(str(CACHE)).key == image.key


# -- template and clones ------------------------------------------------------------------------
def test_prepared_under_tcg_and_template_private(backend, image):
    info = backend.info()
    assert info.name == "qemu" and info.accel == "tcg" and "TCG" in info.isolation
    d = info.details  # what `mvctl pool status` prints
    assert d["image_version"] == image.version and d["launcher"] == "raw"
    assert 0 <= d["template_age_s"] < 30 * 86400
    assert d["template_created_at"] == backend.template.meta["created_at"]
    t = backend.template
    assert os.stat(t.dir).st_mode & 0o777 == 0o700
    assert os.stat(t.ram).st_mode & 0o777 == 0o600
    assert t.meta["state_bytes"] < 8 << 20  # device state only: RAM stays in the shared file


def test_clone_is_prewarmed_cheap_when_idle_and_destroyed_cleanly(backend):
    slot = backend.create_slot("idle")
    assert slot.alive() and slot.page.state() == P.READY
    print(f"\nrefill timings: {slot.stats()['timings_ms']}")
    pid = slot.vm.pid
    assert "\nSeccomp:\t2" in Path(f"/proc/{pid}/status").read_text()  # QEMU under its seccomp filter
    assert slot.vm.paths.kernel == backend.template.stub_kernel  # the clone did not load the real kernel
    time.sleep(0.5)
    cpu0, t0, hb0 = slot.stats()["cpu_s"], time.monotonic(), slot.page.heartbeat()
    time.sleep(3.0)
    used = (slot.stats()["cpu_s"] - cpu0) / (time.monotonic() - t0)
    print(f"idle clone CPU: {used * 100:.2f} % of a core, PSS {slot.stats()['pss_kib']} KiB")
    assert used < 0.05  # target < 2 %, measured ~0.7 %; generous on a shared 2-core host
    assert slot.page.heartbeat() > hb0  # asleep, but alive
    page, d = slot.page.path, slot.slot_dir
    slot.destroy()
    slot.destroy()
    assert not slot.alive() and not os.path.exists(page) and not os.path.exists(d)
    assert pid not in our_qemus(f"mailvm-{backend.instance}-")


def _job(slot, data=b"#!/bin/sh\ntrue\n", name="t.sh", timeout=20.0):
    t0 = time.perf_counter()
    slot.page.submit(data, name, {"timeout_s": timeout, "idle_s": 2, "max_result_bytes": 1 << 20})
    slot.ring()
    try:
        st = slot.page.wait_state({P.RUNNING, P.DONE, P.FAILED}, soon(), alive=slot.alive)
        handover = (time.perf_counter() - t0) * 1000
        assert st in (P.RUNNING, P.DONE, P.FAILED)
        st = slot.page.wait_state({P.DONE, P.FAILED}, soon(timeout + 60), alive=slot.alive, heartbeat_timeout=20)
    except (PageError, TimeoutError) as exc:
        raise AssertionError(f"{exc}; {slot.vm.log_tail()}") from None
    return handover, st, slot.page.read_result(1 << 20)


def test_job_round_trip_and_handover(backend):
    figures = []
    for i in range(3):
        slot = backend.create_slot(f"h{i}")
        handover, st, result = _job(slot)
        figures.append(handover)
        assert result["verdict"] in ("clean", "suspicious", "malicious", "error")
        slot.destroy()
    print(f"\nhand-over (submit+ring -> RUNNING): {', '.join(f'{f:.2f}' for f in figures)} ms")
    # proves the mechanism (a doorbell to a running clone, no restore or boot at hand-over: a cold
    # boot takes ~10 s, a full restore ~150-350 ms here); the 2 ms target is a benchmark figure
    assert statistics.median(figures) < 250


def test_the_clone_agent_rings_back_and_the_host_blocks_on_it(backend, monkeypatch):
    """The image's agent answers on its virtio-serial doorbell (manifest agent_answers): the host
    waits for RUNNING and DONE on that socket, with sleep-polling forbidden in the page wait."""
    import types

    from mailvm.vmpool import shmpage

    assert backend.image.manifest.get("agent_answers") is True
    slot = backend.create_slot("ans")
    try:
        fd = slot.answer_fd()
        assert fd is not None and slot.answer_fd() == fd

        def no_sleep(_s):
            raise AssertionError("the page wait slept in a loop although the agent rings back")

        monkeypatch.setattr(shmpage, "time", types.SimpleNamespace(monotonic=time.monotonic, sleep=no_sleep))
        slot.page.submit(b"#!/bin/sh\necho rung back\n", "t.sh", {"timeout_s": 20, "idle_s": 2})
        slot.ring()
        try:
            assert slot.page.wait_state({P.RUNNING, P.DONE, P.FAILED}, soon(), alive=slot.alive,
                                        wake_fd=fd) in (P.RUNNING, P.DONE)
            assert slot.page.wait_state({P.DONE, P.FAILED}, soon(80), alive=slot.alive, heartbeat_timeout=20,
                                        wake_fd=fd) == P.DONE
        except (PageError, TimeoutError) as exc:
            raise AssertionError(f"{exc}; {slot.vm.log_tail()}") from None
        assert slot.page.read_result(1 << 20)["verdict"] in ("clean", "suspicious", "malicious")
    finally:
        slot.destroy()


def test_four_slots_in_parallel(backend):
    slots, errors = [], []

    def make(i):
        try:
            slots.append(backend.create_slot(f"par{i}"))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=make, args=(i,)) for i in range(4)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"\n4 clones in {time.monotonic() - t0:.2f} s")
    assert not errors and len(slots) == 4
    assert len({s.vm.pid for s in slots}) == 4
    results = []
    for s in slots:
        s.page.submit(b"#!/bin/sh\ntrue\n", f"{s.id}.sh", {"timeout_s": 20, "idle_s": 2})
        s.ring()
    for s in slots:
        assert s.page.wait_state({P.DONE, P.FAILED}, soon(120), alive=s.alive) in P.TERMINAL
        results.append(s.page.read_result(1 << 20))
    assert len(results) == 4
    for s in slots:
        s.destroy()


def test_killed_qemu_is_detected_quickly(backend):
    slot = backend.create_slot("kill")
    slot.page.submit(b"#!/bin/sh\nsleep 30\n", "slow.sh", {"timeout_s": 60})
    os.kill(slot.vm.pid, signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(PageError, match="died"):
        slot.page.wait_state({P.DONE, P.FAILED}, soon(), alive=slot.alive)
    assert time.monotonic() - t0 < 1.0
    assert not slot.alive()
    slot.destroy()
    assert not os.path.exists(slot.slot_dir)


def _sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_guest_writes_stay_in_their_clone(backend, image):
    """Clone A writes (the agent stores the sample in guest /tmp, the tmpfs overlay): the
    template RAM, its state and the root image, from which clone B starts, are unchanged."""
    t = backend.template
    before = (_sha(t.ram), _sha(t.state), os.path.getmtime(image.rootfs))
    a = backend.create_slot("writer")
    marker = os.urandom(64 * 1024)  # 64 KiB of guest writes: the sample file, in a tmpfs
    _job(a, marker, "marker.bin")
    a.destroy()
    b = backend.create_slot("next")
    assert (_sha(t.ram), _sha(t.state), os.path.getmtime(image.rootfs)) == before
    with open(t.ram, "rb") as f:
        assert marker[:4096] not in f.read()
    assert b.page.state() == P.READY
    b.destroy()


def test_template_is_reused_by_a_new_backend(backend):
    if load_image(str(CACHE)).key != backend.image.key:
        pytest.skip("another test session rebuilt the shared guest image meanwhile (its agent code differs)")
    t = backend.template
    before = (os.stat(t.state).st_mtime_ns, os.stat(t.ram).st_ino, t.meta.get("created_at"))
    b2 = QemuBackend(backend.cfg, image_dir=backend.image_dir)
    try:
        b2.prepare()
        # reused, not remade: same key, same state file and RAM file, same creation time
        # (a mechanism check rather than a wall-clock bound, which a loaded 2-core host breaks)
        assert b2.template.key == t.key
        after = (os.stat(b2.template.state).st_mtime_ns, os.stat(b2.template.ram).st_ino, b2.template.meta.get("created_at"))
        assert after == before
    finally:
        b2.close()


# -- end to end through the real detonation runner -----------------------------------------------
def _runner_in_image(image: Image) -> bool:
    return "mailvm/guest/detonate.py" in image.manifest.get("inputs", {}).get("agent", {})


BENIGN = b"#!/bin/sh\necho hello > greeting.txt\ncat greeting.txt\n"
MALICIOUS = textwrap.dedent("""\
    #!/bin/sh
    mkdir -p "$HOME/.config/autostart"
    printf '[Desktop Entry]\\nType=Application\\nExec=/tmp/.x\\n' > "$HOME/.config/autostart/x.desktop"
    python3 -c 'import socket; s=socket.socket(); s.settimeout(3); s.connect(("203.0.113.10", 4444))' || true
    (setsid sleep 987654 &)
    """).encode()


@pytest.mark.slow
@pytest.mark.parametrize("data,name,expected", [(BENIGN, "hello.sh", "clean"), (MALICIOUS, "update.sh", "malicious")])
def test_end_to_end_verdicts_match_the_process_backend(backend, image, data, name, expected):
    if not _runner_in_image(image):
        pytest.skip("mailvm.guest.detonate not in the image yet")
    slot = backend.create_slot(f"e2e-{expected}")
    handover, st, result = _job(slot, data, name, timeout=60)
    print(f"\n{name}: {P.state_name(st)} {result['verdict']} {result['score']}",
          [f["id"] for f in result["findings"]])
    assert st == P.DONE and result["verdict"] == expected, result["findings"]
    if expected == "malicious":  # the same behaviours the process backend sees, seen from inside the VM
        ids = {f["id"] for f in result["findings"]}
        assert {"persistence_autostart", "network_raw_ip"} <= ids, ids
    slot.destroy()
