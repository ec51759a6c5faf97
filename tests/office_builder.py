"""Office documents built at test time (no binary fixtures): ODF with Basic macros bound to document events,
OOXML with a VBA project (``vbaProject.bin``, written here: a compound file and MS-OVBA's dir stream and
compressed module source), a DOCX with a remote template, and plain documents.

The compound-file writer covers what a VBA project needs (version 3, 512-byte sectors, every stream below the
4,096-byte cut-off lives in the mini stream, one FAT sector); oletools' ``olevba`` reads what it writes (the
tests check that).
"""

from __future__ import annotations

import io
import struct
import zipfile
from dataclasses import dataclass
from xml.sax.saxutils import escape

# ------------------------------------------------------------------ compound file (MS-CFB, version 3)

SECTOR = 512
MINI = 64
CUTOFF = 4096
FREESECT, ENDOFCHAIN, FATSECT, NOSTREAM = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF


@dataclass
class _Entry:
    name: str
    kind: int  # 1 storage, 2 stream, 5 root
    data: bytes = b""
    children: list["_Entry"] | None = None
    sid: int = 0
    left: int = NOSTREAM
    right: int = NOSTREAM
    child: int = NOSTREAM
    start: int = ENDOFCHAIN
    size: int = 0


def _cfb_key(name: str) -> tuple[int, str]:
    return len(name), name.upper()


def compound_file(tree: dict) -> bytes:
    """A compound file from ``{"name": bytes | {...}}`` (a dict is a storage); streams must be < 4,096 bytes."""
    root = _Entry("Root Entry", 5, children=[])
    entries = [root]

    def add(parent: _Entry, items: dict) -> None:
        for name, value in items.items():
            if isinstance(value, dict):
                e = _Entry(name, 1, children=[])
                entries.append(e)
                parent.children.append(e)
                add(e, value)
            else:
                if len(value) >= CUTOFF:
                    raise ValueError(f"stream {name} too large for this writer")
                e = _Entry(name, 2, bytes(value))
                entries.append(e)
                parent.children.append(e)

    add(root, tree)
    for sid, e in enumerate(entries):
        e.sid = sid

    def link(parent: _Entry) -> None:
        kids = sorted(parent.children or [], key=lambda e: _cfb_key(e.name))

        def build(lo: int, hi: int) -> int:
            if lo >= hi:
                return NOSTREAM
            mid = (lo + hi) // 2
            node = kids[mid]
            node.left = build(lo, mid)
            node.right = build(mid + 1, hi)
            return node.sid

        parent.child = build(0, len(kids))
        for k in kids:
            if k.kind == 1:
                link(k)

    link(root)
    # mini stream: every stream, 64-byte aligned
    mini = bytearray()
    minifat: list[int] = []
    for e in entries:
        if e.kind != 2:
            continue
        e.size = len(e.data)
        if not e.data:
            e.start = ENDOFCHAIN
            continue
        first = len(mini) // MINI
        n = -(-len(e.data) // MINI)
        e.start = first
        mini += e.data + b"\0" * (n * MINI - len(e.data))
        minifat += [first + k + 1 for k in range(n - 1)] + [ENDOFCHAIN]
    # sectors: 0 FAT, then directory, mini FAT, mini stream
    dir_bytes = bytearray()
    n_dir = -(-len(entries) * 128 // SECTOR)
    n_minifat = -(-len(minifat) * 4 // SECTOR) if minifat else 0
    n_mini = -(-len(mini) // SECTOR)
    fat = [FATSECT]
    dir_start = len(fat)
    fat += [dir_start + k + 1 for k in range(n_dir - 1)] + [ENDOFCHAIN]
    minifat_start = len(fat) if n_minifat else ENDOFCHAIN
    if n_minifat:
        fat += [minifat_start + k + 1 for k in range(n_minifat - 1)] + [ENDOFCHAIN]
    mini_start = len(fat) if n_mini else ENDOFCHAIN
    if n_mini:
        fat += [mini_start + k + 1 for k in range(n_mini - 1)] + [ENDOFCHAIN]
    if len(fat) > SECTOR // 4:
        raise ValueError("too many sectors for one FAT sector")
    root.start, root.size = mini_start, len(mini)
    for e in entries:
        name = e.name.encode("utf-16-le") + b"\0\0"
        dir_bytes += struct.pack("<64sHBBIII16sIQQIQ", name, len(name), e.kind, 1, e.left, e.right, e.child,
                                 b"\0" * 16, 0, 0, 0, e.start, e.size)
    dir_bytes += (b"\0" * 64 + struct.pack("<HBBIII", 0, 0, 0, NOSTREAM, NOSTREAM, NOSTREAM) + b"\0" * 48) * (
        n_dir * 4 - len(entries))
    header = struct.pack("<8s16sHHHHH6sIIIIIIIII", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", b"\0" * 16, 0x3E, 3,
                         0xFFFE, 9, 6, b"\0" * 6, 0, 1, dir_start, 0, CUTOFF, minifat_start, n_minifat, ENDOFCHAIN, 0)
    header += struct.pack("<109I", 0, *([FREESECT] * 108))
    fat_sector = struct.pack(f"<{len(fat)}I", *fat) + b"\xff" * (SECTOR - 4 * len(fat))
    mf = struct.pack(f"<{len(minifat)}I", *minifat) if minifat else b""
    mf += b"\xff" * (n_minifat * SECTOR - len(mf))
    ms = bytes(mini) + b"\0" * (n_mini * SECTOR - len(mini))
    return header + fat_sector + bytes(dir_bytes) + mf + ms


# ------------------------------------------------------------------ VBA project (MS-OVBA)


def ovba_compress(data: bytes) -> bytes:
    """MS-OVBA compression: full 4,096-byte chunks stored raw, the last one as literal tokens."""
    out = bytearray(b"\x01")
    for i in range(0, max(len(data), 1), 4096):
        chunk = data[i:i + 4096]
        if len(chunk) == 4096:
            out += struct.pack("<H", 0x3000 | (4096 + 2 - 3)) + chunk
            continue
        body = bytearray()
        for j in range(0, len(chunk), 8):
            body += b"\x00" + chunk[j:j + 8]
        if len(body) + 2 > 4098:
            raise ValueError("last chunk too large for literal-only compression")
        out += struct.pack("<H", 0xB000 | (len(body) + 2 - 3)) + body
    return bytes(out)


def _rec(rid: int, data: bytes) -> bytes:
    return struct.pack("<HI", rid, len(data)) + data


def vba_project(modules: dict[str, str], document_module: str = "ThisDocument") -> bytes:
    """``vbaProject.bin`` with ``modules`` (name -> source); ``document_module`` is the document's class module."""
    d = bytearray()
    d += _rec(0x01, struct.pack("<I", 1))  # SysKind: Win32
    d += _rec(0x02, struct.pack("<I", 0x409)) + _rec(0x14, struct.pack("<I", 0x409))
    d += _rec(0x03, struct.pack("<H", 1252)) + _rec(0x04, b"Project")
    d += _rec(0x05, b"") + _rec(0x40, b"") + _rec(0x06, b"") + _rec(0x3D, b"")
    d += _rec(0x07, struct.pack("<I", 0)) + _rec(0x08, struct.pack("<I", 0))
    d += struct.pack("<HIIH", 0x09, 4, 1, 0)  # PROJECTVERSION
    d += _rec(0x0C, b"") + _rec(0x3C, b"")
    d += struct.pack("<HIH", 0x0F, 2, len(modules)) + _rec(0x13, struct.pack("<H", 0xFFFF))
    streams: dict[str, bytes] = {}
    for name, source in modules.items():
        b = name.encode("latin-1")
        u = name.encode("utf-16-le")
        d += _rec(0x19, b) + _rec(0x47, u) + _rec(0x1A, b) + _rec(0x32, u)
        d += _rec(0x1C, b"") + _rec(0x48, b"") + _rec(0x31, struct.pack("<I", 0))
        d += _rec(0x1E, struct.pack("<I", 0)) + _rec(0x2C, struct.pack("<H", 0xFFFF))
        d += struct.pack("<HI", 0x22 if name == document_module else 0x21, 0)
        d += struct.pack("<HI", 0x2B, 0)
        attr = f'Attribute VB_Name = "{name}"\r\n'
        if name == document_module:
            attr += (f'Attribute VB_Base = "1Normal.{name}"\r\nAttribute VB_GlobalNameSpace = False\r\n'
                     "Attribute VB_Creatable = False\r\nAttribute VB_PredeclaredId = True\r\n"
                     "Attribute VB_Exposed = True\r\nAttribute VB_TemplateDerived = True\r\n"
                     "Attribute VB_Customizable = True\r\n")
        streams[name] = ovba_compress((attr + source.replace("\r\n", "\n").replace("\n", "\r\n")).encode("latin-1"))
    d += struct.pack("<HI", 0x10, 0)
    project = "ID=\"{00000000-0000-0000-0000-000000000000}\"\r\n"
    for name in modules:
        project += (f"Document={name}/&H00000000\r\n" if name == document_module else f"Module={name}\r\n")
    project += ('Name="Project"\r\nHelpContextID="0"\r\nVersionCompatible32="393222000"\r\n\r\n'
                "[Host Extender Info]\r\n&H00000001={3832D640-CF90-11CF-8E43-00A0C911005A};VBE;&H00000000\r\n")
    vba = {"_VBA_PROJECT": b"\xcc\x61\xff\xff\x00\x00\x00", "dir": ovba_compress(bytes(d)), **streams}
    return compound_file({"VBA": vba, "PROJECT": project.encode("latin-1")})


# ------------------------------------------------------------------ OOXML

_W_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
_REL_NS = "http://schemas.openxmlformats.org/package/2006/relationships"
_OFFICE_DOC = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"
_VBA_REL = "http://schemas.microsoft.com/office/2006/relationships/vbaProject"
_TEMPLATE_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/attachedTemplate"
_SETTINGS_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/settings"


def _zip(files: dict[str, bytes | str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def docx(text: str = "Quarterly report", *, vba: dict[str, str] | None = None,
         remote_template: str = "") -> bytes:
    """A Word document: ``vba`` adds a VBA project (a .docm), ``remote_template`` an attached template URL in
    ``word/_rels/settings.xml.rels`` (the remote-template injection trick)."""
    macro = vba is not None
    main = ("application/vnd.ms-word.document.macroEnabled.main+xml" if macro else
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml")
    types = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
             '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
             '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
             '<Default Extension="xml" ContentType="application/xml"/>'
             f'<Override PartName="/word/document.xml" ContentType="{main}"/>'
             '<Override PartName="/word/settings.xml" ContentType="application/vnd.openxmlformats-officedocument.'
             'wordprocessingml.settings+xml"/>'
             + ('<Default Extension="bin" ContentType="application/vnd.ms-office.vbaProject"/>' if macro else "")
             + "</Types>")
    rels = (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Relationships xmlns="{_REL_NS}">'
            f'<Relationship Id="rId1" Type="{_OFFICE_DOC}" Target="word/document.xml"/></Relationships>')
    doc_rels = (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Relationships xmlns="{_REL_NS}">'
                f'<Relationship Id="rId1" Type="{_SETTINGS_REL}" Target="settings.xml"/>'
                + (f'<Relationship Id="rId9" Type="{_VBA_REL}" Target="vbaProject.bin"/>' if macro else "")
                + "</Relationships>")
    paras = "".join(f"<w:p><w:r><w:t>{escape(line)}</w:t></w:r></w:p>" for line in text.split("\n"))
    document = (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><w:document xmlns:w="{_W_NS}">'
                f"<w:body>{paras}</w:body></w:document>")
    rel_ns = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    settings = (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><w:settings xmlns:w="{_W_NS}" '
                f'xmlns:r="{rel_ns}">' + ('<w:attachedTemplate r:id="rId1"/>' if remote_template else "")
                + "</w:settings>")
    files: dict[str, bytes | str] = {"[Content_Types].xml": types, "_rels/.rels": rels,
                                     "word/document.xml": document, "word/_rels/document.xml.rels": doc_rels,
                                     "word/settings.xml": settings}
    if remote_template:
        files["word/_rels/settings.xml.rels"] = (
            f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Relationships xmlns="{_REL_NS}">'
            f'<Relationship Id="rId1" Type="{_TEMPLATE_REL}" Target="{escape(remote_template)}" '
            'TargetMode="External"/></Relationships>')
    if macro:
        files["word/vbaProject.bin"] = vba_project(vba)
    return _zip(files)


# ------------------------------------------------------------------ ODF

_ODF_NS = ('xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
           'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
           'xmlns:script="urn:oasis:names:tc:opendocument:xmlns:script:1.0" '
           'xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:ooo="http://openoffice.org/2004/office" '
           'xmlns:dom="http://www.w3.org/2001/xml-events"')


def odt(text: str = "Meeting notes", *, basic: str = "", event: str = "dom:load") -> bytes:
    """An OpenDocument text; ``basic`` is the body of ``Sub Main`` in the document's Standard library, bound to
    the document event ``event`` (``dom:load``: Open Document)."""
    listeners = ""
    if basic:
        listeners = ('<office:scripts><office:event-listeners><script:event-listener script:language="ooo:script" '
                     f'script:event-name="{event}" xlink:href="vnd.sun.star.script:Standard.Module1.Main?'
                     'language=Basic&amp;location=document" xlink:type="simple"/></office:event-listeners>'
                     "</office:scripts>")
    paras = "".join(f"<text:p>{escape(line)}</text:p>" for line in text.split("\n"))
    content = (f'<?xml version="1.0" encoding="UTF-8"?><office:document-content {_ODF_NS} office:version="1.3">'
               f"{listeners}<office:body><office:text>{paras}</office:text></office:body></office:document-content>")
    entries = ['<manifest:file-entry manifest:full-path="/" '
               'manifest:media-type="application/vnd.oasis.opendocument.text"/>',
               '<manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/>']
    files: dict[str, bytes | str] = {"content.xml": content}
    if basic:
        files["Basic/Standard/Module1.xml"] = (
            '<?xml version="1.0" encoding="UTF-8"?><script:module xmlns:script="http://openoffice.org/2000/script" '
            f'script:name="Module1" script:language="StarBasic">Sub Main\n{escape(basic)}\nEnd Sub\n</script:module>')
        files["Basic/Standard/script-lb.xml"] = (
            '<?xml version="1.0" encoding="UTF-8"?><library:library xmlns:library="http://openoffice.org/2000/library" '
            'library:name="Standard" library:readonly="false" library:passwordprotected="false">'
            '<library:element library:name="Module1"/></library:library>')
        files["Basic/script-lc.xml"] = (
            '<?xml version="1.0" encoding="UTF-8"?><library:libraries '
            'xmlns:library="http://openoffice.org/2000/library" xmlns:xlink="http://www.w3.org/1999/xlink">'
            '<library:library library:name="Standard" library:link="false"/></library:libraries>')
        for p in ("Basic/Standard/Module1.xml", "Basic/Standard/script-lb.xml", "Basic/script-lc.xml"):
            entries.append(f'<manifest:file-entry manifest:full-path="{p}" manifest:media-type="text/xml"/>')
    files["META-INF/manifest.xml"] = (
        '<?xml version="1.0" encoding="UTF-8"?><manifest:manifest '
        'xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.3">'
        + "".join(entries) + "</manifest:manifest>")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(zipfile.ZipInfo("mimetype"), "application/vnd.oasis.opendocument.text")  # stored, first
        for name, data in files.items():
            z.writestr(name, data, zipfile.ZIP_DEFLATED)
    return buf.getvalue()


_SS_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"


def xlsx(cells: tuple[str, ...] = ("Total", "42"), *, vba: dict[str, str] | None = None) -> bytes:
    """An Excel workbook with one sheet; ``vba`` adds a VBA project (an .xlsm) whose document module for the
    workbook is ``ThisWorkbook`` (the workbook's code name) and ``Sheet1`` for the sheet."""
    macro = vba is not None
    main = ("application/vnd.ms-excel.sheet.macroEnabled.main+xml" if macro else
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml")
    types = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
             '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
             '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
             '<Default Extension="xml" ContentType="application/xml"/>'
             f'<Override PartName="/xl/workbook.xml" ContentType="{main}"/>'
             '<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-'
             'officedocument.spreadsheetml.worksheet+xml"/>'
             + ('<Default Extension="bin" ContentType="application/vnd.ms-office.vbaProject"/>' if macro else "")
             + "</Types>")
    rels = (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Relationships xmlns="{_REL_NS}">'
            f'<Relationship Id="rId1" Type="{_OFFICE_DOC}" Target="xl/workbook.xml"/></Relationships>')
    wb_rels = (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Relationships xmlns="{_REL_NS}">'
               '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
               'worksheet" Target="worksheets/sheet1.xml"/>'
               + (f'<Relationship Id="rId9" Type="{_VBA_REL}" Target="vbaProject.bin"/>' if macro else "")
               + "</Relationships>")
    rel_ns = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    workbook = (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><workbook xmlns="{_SS_NS}" '
                f'xmlns:r="{rel_ns}"><workbookPr codeName="ThisWorkbook"/><sheets>'
                '<sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>')
    row = "".join(f'<c r="{chr(65 + k)}1" t="inlineStr"><is><t>{escape(v)}</t></is></c>' for k, v in enumerate(cells))
    sheet = (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><worksheet xmlns="{_SS_NS}">'
             f'<sheetPr codeName="Sheet1"/><sheetData><row r="1">{row}</row></sheetData></worksheet>')
    files: dict[str, bytes | str] = {"[Content_Types].xml": types, "_rels/.rels": rels, "xl/workbook.xml": workbook,
                                     "xl/_rels/workbook.xml.rels": wb_rels, "xl/worksheets/sheet1.xml": sheet}
    if macro:
        files["xl/vbaProject.bin"] = vba_project(vba, document_module="ThisWorkbook")
    return _zip(files)
