"""Benign tools reading their own data are not attacks: gpgsm reading ~/.gnupg, Mono sizing itself."""

from __future__ import annotations

from mailvm.guest.rules import RuleContext, RuleEngine

H = "/home/user"


def _ids(events, ctx=None):
    eng = RuleEngine(ctx or RuleContext(sample_path="/work/tool"))
    for ev in events:
        eng.feed(ev)
    return {f.id for f in eng.findings()}


def _exec(pid, path):
    return {"t": 0.1, "type": "exec", "pid": pid, "path": path, "argv": [path], "ok": True}


def _read(pid, path):
    return {"t": 0.2, "type": "file", "op": "read", "pid": pid, "path": path, "ok": True}


def test_gpg_reading_its_keyring_is_not_credential_access():
    assert "credential_access" not in _ids([_exec(11, "/usr/bin/gpgsm"), _read(11, f"{H}/.gnupg/pubring.kbx")])
    assert "credential_access" in _ids([_exec(12, "/work/tool"), _read(12, f"{H}/.gnupg/pubring.kbx")])


def test_mono_reading_the_cpu_topology_is_not_an_anti_vm_probe():
    assert "anti_vm_probe" not in _ids([_exec(21, "/usr/bin/mono"), _read(21, "/sys/class/dmi/id/product_name")])
    assert "anti_vm_probe" in _ids([_exec(22, "/work/tool"), _read(22, "/sys/class/dmi/id/product_name")])
