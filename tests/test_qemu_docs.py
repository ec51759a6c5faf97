"""Documents and web pages inside qemu flash clones: the image with LibreOffice and Chromium (``with_docs``).

A session-scoped fixture builds (cached) a guest image with the documents stage into
``MAILVM_TEST_DOCS_IMAGE_DIR`` (default /var/cache/mailvm-test/image-docs).  A backend on it boots the reference
VM once (1 GiB guests: LibreOffice and Chromium need more than the default 256 MiB); each test detonates a
document built by the test in a clone and expects what the process backend sees: a .docm whose auto-open macro
starts a shell is malicious by detonation in LibreOffice; an HTML attachment whose password form posts to
another domain is judged by the browser run.  The figures printed (guest duration, host wall time) are the ones
docs/launchers.md quotes.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from mailvm.config import PoolConfig
from mailvm.guest import protocol as P
from mailvm.vmpool.backends.qemu import QemuBackend
from mailvm.vmpool.image.layout import Image
from test_backend_qemu import PAGE, _job, serve_prepared

sys.path.insert(0, str(Path(__file__).parent))
from office_builder import docx  # noqa: E402
from test_guest_browser import PHISH  # noqa: E402
from test_guest_office import VBA_SHELL  # noqa: E402

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

CACHE = Path(os.environ.get("MAILVM_TEST_DOCS_IMAGE_DIR", "/var/cache/mailvm-test/image-docs"))
POOL_DIR = CACHE.parent / "qemu-pool-docs"
READY_S = 900.0
GUEST_MEM_MIB = 1024


def _missing() -> str | None:
    for tool, pkg in (("qemu-system-x86_64", "qemu-system-x86"), ("debootstrap", "debootstrap"),
                      ("debugfs", "e2fsprogs")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {pkg})"
    if os.geteuid() != 0:
        return "building the guest image needs root"
    return None


@pytest.fixture(scope="session")
def docs_image() -> Image:
    why = _missing()
    if why:
        print(f"\nskipping the documents VM tests: {why}")
        pytest.skip(why)
    from mailvm.vmpool.image.build import BuildOptions, build

    t0 = time.monotonic()
    result = build(BuildOptions(cache_dir=str(CACHE), with_docs=True))
    print(f"\ndocuments image {result.image.version}: {result.stages} in {time.monotonic() - t0:.1f} s; "
          f"{result.image.manifest.get('docs')}")
    return result.image


@pytest.fixture(scope="session")
def docs_backend(docs_image):
    cfg = PoolConfig(backend="qemu", accel="tcg", work_dir=str(POOL_DIR), page_bytes=PAGE, ready_timeout_s=READY_S,
                     guest_mem_mib=GUEST_MEM_MIB)
    b = QemuBackend(cfg, image_dir=str(CACHE))
    t0 = time.monotonic()
    b.prepare()
    print(f"\nprepare (documents image, {GUEST_MEM_MIB} MiB): {time.monotonic() - t0:.1f} s")
    yield from serve_prepared(b)


def _anon_mib(slot) -> float:
    """Anonymous memory of the clone's QEMU (what one more clone really costs), MiB."""
    pid = slot.vm.pid
    pid = pid() if callable(pid) else pid
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Anonymous:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return -1.0


def test_image_records_the_documents_stage(docs_image):
    m = docs_image.manifest
    assert m["with_docs"] is True and m["docs"]["added_bytes"] > 100 << 20
    assert {"libreoffice-core", "libreoffice-writer", "chromium"} <= set(m["docs"]["packages"])
    assert m["rootfs_recipe"]["docs"], m["rootfs_recipe"]


def test_docm_auto_open_shell_is_malicious_in_a_clone(docs_backend):
    slot = docs_backend.create_slot("docm")
    t0 = time.monotonic()
    _, st, result = _job(slot, docx("Invoice", vba={"ThisDocument": VBA_SHELL}), "Invoice_0412.docm", timeout=240.0)
    wall = time.monotonic() - t0
    ids = {f["id"] for f in result["findings"]}
    print(f"\ndocm in a clone: {P.state_name(st)} {result['verdict']} {sorted(ids)}; guest {result['duration_s']:.1f} s,"
          f" host {wall:.1f} s; clone anon {_anon_mib(slot):.0f} MiB; {result.get('execution')}")
    assert st == P.DONE and result["launcher"] == "libreoffice" and result["executed"] is True
    assert result["verdict"] == "malicious" and "viewer_spawns_shell" in ids, result["findings"]
    slot.destroy()


def test_password_form_page_is_judged_by_the_browser_in_a_clone(docs_backend):
    slot = docs_backend.create_slot("html")
    t0 = time.monotonic()
    _, st, result = _job(slot, PHISH, "Microsoft_Login.html", timeout=400.0)
    wall = time.monotonic() - t0
    ids = {f["id"] for f in result["findings"]}
    print(f"\nHTML in a clone: {P.state_name(st)} {result['verdict']} {sorted(ids)}; guest "
          f"{result['duration_s']:.1f} s, host {wall:.1f} s; clone anon {_anon_mib(slot):.0f} MiB; "
          f"{result.get('execution')}")
    for f in result["findings"]:
        print(f"  {f['id']} {f['severity']} {f['detail'][:200]}")
    assert st == P.DONE and result["launcher"] == "html_chromium" and result["executed"] is True
    assert "page_password_form_other_domain" in ids and result["verdict"] == "malicious", result["findings"]
    slot.destroy()
