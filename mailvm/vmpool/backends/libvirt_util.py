"""libvirt plumbing for the qemu backend's ``libvirt`` launcher (no knowledge of slots or templates).

The qemu backend can start its QEMU processes itself (``launcher = raw``) or
through libvirt (``launcher = libvirt``).  Through libvirt a VM is a
*transient* domain (``createXML``, flag ``AUTODESTROY``: libvirt kills it when
the connection that made it closes, so a crashed pool leaves no domain
behind) whose XML carries only what libvirt insists on generating itself
(name, vCPUs, accelerator, CPU model, a placeholder memory size) and puts the
machine and every device in ``<qemu:commandline>``: the same arguments the raw
launcher uses, so both launchers run the same machine.

What libvirt emits anyway and how the launcher lives with it (QEMU 7.2 merges
repeated ``-machine``/``-m``/``-sandbox`` options, the last value winning):

* ``-machine pc-i440fx-7.2,...,memory-backend=pc.ram`` plus a ``pc.ram``
  RAM object of ``<memory>``: the commandline's ``-machine pc,nvdimm=on,
  memory-backend=ram0`` wins, so ``pc.ram`` is an unused 1 MiB block (it is
  in the migration stream, as 256 zero pages);
* ``-m 1``: the commandline's ``-m 256M,slots=1,maxmem=...`` wins;
* ``-accel``/``-cpu``: from ``<features><tcg><tb-cache>`` and ``<cpu>``;
* ``-sandbox off`` *after* the commandline when qemu.conf has
  ``seccomp_sandbox = 0``: harmless, QEMU applies each ``-sandbox`` in turn
  and the commandline's ``-sandbox on,...,spawn=deny`` filter, once
  installed, stays (``Seccomp: 2`` in /proc/PID/status, tested);
* ``-S``: a reference VM is started running; a clone with ``START_PAUSED``
  (it waits for its incoming migration anyway).

QMP reaches a domain two ways: libvirt's passthrough
(``libvirt_qemu.qemuMonitorCommand[WithFiles]``, about 2 ms a call here) or the
domain's own QMP socket declared in the commandline; the launcher measures
and uses the faster one (docs/qemu-backend.md).

libvirt-python is imported lazily: without it the backend's libvirt launcher
is unavailable (a reason string), the raw launcher is unaffected.
"""

from __future__ import annotations

import json
import logging
import os
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_URI = "qemu:///system"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
#: every domain the backend makes is named ``mailvm-...`` (tests and clean-up look for the prefix)
DOMAIN_PREFIX = "mailvm-"
#: libvirt's RAM object is unused (the commandline's memory backend replaces it): keep it tiny
PLACEHOLDER_MEM_KIB = 1024
PID_DIR = "/run/libvirt/qemu"
LOG_DIR = "/var/log/libvirt/qemu"
MAX_REPLY = 1 << 20
START_HINT = "start it with scripts/start-libvirtd.sh"


class LibvirtUnavailable(Exception):
    """libvirt-python is missing or libvirtd does not answer (the message says which)."""


class MonitorError(Exception):
    """A QMP command through libvirt's passthrough failed (QEMU's or libvirt's error text)."""


def modules() -> tuple[Any, Any]:
    """(libvirt, libvirt_qemu), imported on first use; LibvirtUnavailable when not installed."""
    try:
        import libvirt
        import libvirt_qemu
    except ImportError as exc:
        raise LibvirtUnavailable(f"libvirt-python is not installed ({exc})") from None
    return libvirt, libvirt_qemu


def _quiet_errors(libvirt: Any) -> None:
    """libvirt prints every error on stderr by default; errors here become exceptions only."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def open_connection(uri: str = DEFAULT_URI) -> Any:
    """A read-write connection to libvirtd; LibvirtUnavailable (with the fix) when it does not answer."""
    libvirt, _ = modules()
    _quiet_errors(libvirt)
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise LibvirtUnavailable(f"libvirt {uri}: {exc.get_error_message()}; {START_HINT}") from None
    if conn is None:
        raise LibvirtUnavailable(f"libvirt {uri}: no connection; {START_HINT}")
    return conn


def probe(uri: str = DEFAULT_URI) -> str | None:
    """None when libvirtd answers on ``uri`` and has a QEMU driver, else why not."""
    try:
        conn = open_connection(uri)
    except LibvirtUnavailable as exc:
        return str(exc)
    try:
        libvirt, _ = modules()
        try:
            conn.getVersion()
        except libvirt.libvirtError as exc:
            return f"libvirt {uri}: no QEMU driver: {exc.get_error_message()}"
        return None
    finally:
        close_connection(conn)


def close_connection(conn: Any) -> None:
    """Close ``conn``; its AUTODESTROY domains die with it.  Never raises."""
    try:
        conn.close()
    except Exception as exc:  # libvirtError or a dead connection: nothing left to do
        log.debug("libvirt: close failed: %s", exc)


@dataclass(frozen=True)
class DomainSpec:
    """What the launcher asks libvirt for; everything else is in ``qemu_args``."""

    name: str
    kind: str  # "qemu" (TCG) | "kvm"
    emulator: str
    qemu_args: tuple[str, ...]
    vcpus: int = 1
    tb_cache_mib: int | None = None  # TCG translation cache (libvirt >= 8.0: <tcg><tb-cache>)


def domain_xml(spec: DomainSpec) -> str:
    """The transient domain's XML (pure).  Values are escaped by ElementTree."""
    if spec.kind not in ("qemu", "kvm"):
        raise ValueError(f"domain type must be qemu or kvm, not {spec.kind!r}")
    if not spec.name.startswith(DOMAIN_PREFIX):
        raise ValueError(f"domain name {spec.name!r} does not start with {DOMAIN_PREFIX!r}")
    ET.register_namespace("qemu", QEMU_NS)
    dom = ET.Element("domain", {"type": spec.kind})
    ET.SubElement(dom, "name").text = spec.name
    ET.SubElement(dom, "memory", {"unit": "KiB"}).text = str(PLACEHOLDER_MEM_KIB)
    ET.SubElement(dom, "vcpu").text = str(spec.vcpus)
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", {"arch": "x86_64", "machine": "pc"}).text = "hvm"
    feats = ET.SubElement(dom, "features")
    ET.SubElement(feats, "acpi")
    if spec.kind == "qemu" and spec.tb_cache_mib:
        tcg = ET.SubElement(feats, "tcg")
        ET.SubElement(tcg, "tb-cache", {"unit": "MiB"}).text = str(spec.tb_cache_mib)
    ET.SubElement(dom, "cpu", {"mode": "host-passthrough" if spec.kind == "kvm" else "maximum"})
    ET.SubElement(dom, "clock", {"offset": "utc"})
    for ev in ("on_poweroff", "on_reboot", "on_crash"):
        ET.SubElement(dom, ev).text = "destroy"
    devs = ET.SubElement(dom, "devices")
    ET.SubElement(devs, "emulator").text = spec.emulator
    ET.SubElement(devs, "controller", {"type": "usb", "model": "none"})
    ET.SubElement(devs, "memballoon", {"model": "none"})
    cmd = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
    for arg in spec.qemu_args:
        ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", {"value": arg})
    return ET.tostring(dom, encoding="unicode")


def create(conn: Any, xml: str, paused: bool) -> Any:
    """Start a transient domain (AUTODESTROY; START_PAUSED when ``paused``); MonitorError on failure."""
    libvirt, _ = modules()
    flags = libvirt.VIR_DOMAIN_START_AUTODESTROY | (libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)
    try:
        return conn.createXML(xml, flags)
    except libvirt.libvirtError as exc:
        raise MonitorError(f"libvirt createXML: {exc.get_error_message()}") from None


def qemu_pid(name: str, pid_dir: str = PID_DIR) -> int | None:
    """The QEMU pid libvirt recorded for domain ``name`` (None when absent or unreadable)."""
    try:
        with open(os.path.join(pid_dir, f"{name}.pid"), "rb") as f:
            raw = f.read(32)
        pid = int(raw.strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 1 else None


def log_path(name: str) -> str:
    """Where libvirt (``stdio_handler = "file"``) writes the domain's command line and QEMU's stderr."""
    return os.path.join(LOG_DIR, f"{name}.log")


def monitor(dom: Any, cmd: str, args: dict[str, Any] | None = None, fds: list[int] | None = None) -> Any:
    """Run one QMP command through libvirt's passthrough; its ``return`` value, else MonitorError."""
    libvirt, libvirt_qemu = modules()
    req: dict[str, Any] = {"execute": cmd}
    if args:
        req["arguments"] = args
    text = json.dumps(req)
    try:
        if fds:
            reply, files = libvirt_qemu.qemuMonitorCommandWithFiles(dom, text, fds, 0)
            for f in files or ():  # QMP commands here return no descriptors; close any anyway
                f.close()
        else:
            reply = libvirt_qemu.qemuMonitorCommand(dom, text, 0)
    except libvirt.libvirtError as exc:
        raise MonitorError(f"QMP {cmd} via libvirt: {exc.get_error_message()}") from None
    if not isinstance(reply, str) or len(reply) > MAX_REPLY:
        raise MonitorError(f"QMP {cmd} via libvirt: reply missing or too long")
    try:
        msg = json.loads(reply)
    except ValueError as exc:
        raise MonitorError(f"QMP {cmd} via libvirt: bad JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise MonitorError(f"QMP {cmd} via libvirt: reply is not an object")
    if "error" in msg:
        err = msg["error"]
        raise MonitorError(f"QMP {cmd}: {str(err.get('desc') if isinstance(err, dict) else err)[:500]}")
    return msg.get("return")


def destroy(dom: Any) -> None:
    """Stop a domain (libvirt SIGTERMs, then SIGKILLs QEMU); a domain already gone is fine.  Never raises."""
    try:
        libvirt, _ = modules()
    except LibvirtUnavailable:
        return
    try:
        dom.destroy()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
            log.warning("libvirt: destroying %s: %s", _name(dom), exc.get_error_message())
    except Exception as exc:  # a closed connection: AUTODESTROY has done it
        log.debug("libvirt: destroying %s: %s", _name(dom), exc)


def _name(dom: Any) -> str:
    try:
        return str(dom.name())
    except Exception:
        return "?"


def our_domains(conn: Any, prefix: str = DOMAIN_PREFIX) -> list[str]:
    """Names of running domains whose name starts with ``prefix``."""
    libvirt, _ = modules()
    try:
        return sorted(d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
                      if d.name().startswith(prefix))
    except libvirt.libvirtError as exc:
        raise LibvirtUnavailable(f"libvirt: listing domains: {exc.get_error_message()}") from None


def destroy_all(conn: Any, prefix: str) -> list[str]:
    """Destroy every running domain whose name starts with ``prefix``; the names.  Never raises."""
    try:
        names = our_domains(conn, prefix)
    except LibvirtUnavailable as exc:
        log.warning("%s", exc)
        return []
    libvirt, _ = modules()
    for name in names:
        try:
            destroy(conn.lookupByName(name))
        except libvirt.libvirtError:
            pass  # gone meanwhile
    return names


def wait_gone(conn: Any, name: str, deadline: float) -> bool:
    """True once no active domain ``name`` exists (libvirt cleans up after QEMU's death asynchronously)."""
    libvirt, _ = modules()
    while True:
        try:
            conn.lookupByName(name)
        except libvirt.libvirtError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)


__all__ = ["DEFAULT_URI", "DOMAIN_PREFIX", "DomainSpec", "LibvirtUnavailable", "MonitorError", "close_connection",
           "create", "destroy", "destroy_all", "domain_xml", "log_path", "modules", "monitor", "open_connection", "our_domains",
           "probe", "qemu_pid", "wait_gone"]
