"""Hand-written PDFs for tests: pages with text, images and link annotations (no PDF library needed)."""

from __future__ import annotations


def _esc(text: str) -> bytes:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("latin-1")


class Doc:
    """A hand-written PDF: pages with text lines, images and link annotations, an optional catalog extra.

    Object 1 is the catalog, 2 the page tree, 3 the font; everything else is added in order.
    """

    def __init__(self) -> None:
        self.objects: list[bytes] = [b"", b"", b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
        self.pages: list[int] = []
        self.catalog_extra = b""

    def add(self, body: bytes) -> int:
        self.objects.append(body)
        return len(self.objects)

    def stream(self, data: bytes, extra: bytes = b"") -> int:
        return self.add(b"<< /Length %d %s>>\nstream\n" % (len(data), extra) + data + b"\nendstream")

    def page(self, lines: tuple[str, ...] = (), links: tuple[tuple[str, tuple[float, float, float, float], str], ...] = (),
             image: tuple[float, float, float, float] | None = None, annots: tuple[int, ...] = (),
             extra: bytes = b"", image_extra: bytes = b"",
             picture: tuple[int, tuple[float, float, float, float]] | None = None) -> "Doc":
        """``links``: (url, rect, label drawn inside the rect); ``image``: rect covered by an image (whose
        dictionary gets ``image_extra``); ``picture``: (object number of an image added with
        :func:`gray_image`, rect it is drawn in); ``extra``: added to the page dictionary."""
        content = bytearray()
        resources = b"/Font << /F1 3 0 R >>"
        if image is not None:
            img = self.stream(b"\x80", b"/Type /XObject /Subtype /Image /Width 1 /Height 1 /ColorSpace /DeviceGray "
                                       b"/BitsPerComponent 8 " + image_extra)
            x0, y0, x1, y1 = image
            content += b"q %g 0 0 %g %g %g cm /Im1 Do Q\n" % (x1 - x0, y1 - y0, x0, y0)
            resources += b" /XObject << /Im1 %d 0 R" % img + (b" /Pic %d 0 R" % picture[0] if picture else b"") + b" >>"
        elif picture is not None:
            resources += b" /XObject << /Pic %d 0 R >>" % picture[0]
        if picture is not None:
            x0, y0, x1, y1 = picture[1]
            content += b"q %g 0 0 %g %g %g cm /Pic Do Q\n" % (x1 - x0, y1 - y0, x0, y0)
        if lines:
            content += b"BT /F1 11 Tf 14 TL 72 740 Td\n"
            for line in lines:
                content += b"(" + _esc(line) + b") Tj T*\n"
            content += b"ET\n"
        refs = list(annots)
        for url, rect, label in links:
            if label:
                content += b"BT /F1 12 Tf %g %g Td (" % (rect[0] + 2, rect[1] + 2) + _esc(label) + b") Tj ET\n"
            refs.append(self.add(b"<< /Type /Annot /Subtype /Link /Rect [%g %g %g %g] /Border [0 0 0] "
                                 b"/A << /S /URI /URI (" % rect + _esc(url) + b") >> >>"))
        contents = self.stream(bytes(content))
        annot_arr = b" /Annots [" + b" ".join(b"%d 0 R" % r for r in refs) + b"]" if refs else b""
        self.pages.append(self.add(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << "
                                   + resources + b" >> /Contents %d 0 R" % contents + annot_arr + extra + b" >>"))
        return self

    def build(self) -> bytes:
        self.objects[0] = b"<< /Type /Catalog /Pages 2 0 R " + self.catalog_extra + b">>"
        self.objects[1] = (b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % p for p in self.pages)
                           + b"] /Count %d >>" % len(self.pages))
        out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
        offsets = []
        for i, obj in enumerate(self.objects, start=1):
            offsets.append(len(out))
            out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
        xref = len(out)
        out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(offsets) + 1)
        for off in offsets:
            out += b"%010d 00000 n \n" % off
        out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(offsets) + 1, xref)
        return bytes(out)


def gray_image(pixels: bytes, width: int, height: int) -> bytes:
    """An image XObject's dictionary tail and Flate-compressed data for ``Doc.add`` (8-bit grayscale)."""
    import zlib
    data = zlib.compress(pixels)
    return (b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray /BitsPerComponent 8 "
            b"/Filter /FlateDecode /Length %d >>\nstream\n" % (width, height, len(data)) + data + b"\nendstream")
