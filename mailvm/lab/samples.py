"""Sample messages the lab sends: made here, so ``make run`` needs no file from outside the tree.

* ``clean``: a plain-text + HTML message with a small text attachment (nothing to detonate).
* ``eicar-zip``: the EICAR anti-malware test file inside a zip, as an "invoice" attachment.

The EICAR string is the industry's harmless test file (68 bytes, defined by EICAR); it is
assembled from parts at run time so that this source file itself does not match a scanner.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Callable

# the 68-byte EICAR test string, in two halves (joined in eicar())
_EICAR_HEAD = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$"
_EICAR_TAIL = "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
_EICAR_SHA256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"


def eicar() -> bytes:
    """The 68-byte EICAR test file (checked against its published SHA-256)."""
    data = (_EICAR_HEAD + _EICAR_TAIL).encode("ascii")
    if hashlib.sha256(data).hexdigest() != _EICAR_SHA256:  # pragma: no cover - a typo above
        raise AssertionError("EICAR string assembled wrongly")
    return data


def eicar_zip(member: str = "eicar.com") -> bytes:
    """A zip (deflated) holding the EICAR test file as ``member``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(member, eicar())
    return buf.getvalue()


def _base(subject: str, to: str, sender: str) -> EmailMessage:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = to
    m["Subject"] = subject
    m["Date"] = formatdate(localtime=False)
    m["Message-ID"] = make_msgid(domain="lab.test")
    return m


def clean_message(to: str = "user@example.com", sender: str = "sender@lab.test") -> bytes:
    m = _base("Minutes of the Tuesday meeting", to, sender)
    text = ("Hello,\n\nthe minutes of Tuesday's meeting are attached.\n"
            "Next meeting: Thursday at 10:00, room 2.\n\nRegards,\nThe secretary\n")
    m.set_content(text)
    m.add_alternative("<html><body><p>Hello,</p><p>the minutes of Tuesday's meeting are attached.<br>"
                      "Next meeting: Thursday at 10:00, room 2.</p><p>Regards,<br>The secretary</p></body></html>",
                      subtype="html")
    m.add_attachment("1. Budget approved.\n2. Next release in May.\n3. Any other business: none.\n",
                     filename="minutes.txt")
    return m.as_bytes()


def eicar_zip_message(to: str = "user@example.com", sender: str = "sender@lab.test") -> bytes:
    m = _base("invoice", to, sender)
    m.set_content("Please see the attached invoice.\n")
    m.add_attachment(eicar_zip(), maintype="application", subtype="zip", filename="invoice.zip")
    return m.as_bytes()


#: sample name -> builder(to, sender) -> raw message bytes (``mvctl lab send --sample NAME``)
SAMPLES: dict[str, Callable[[str, str], bytes]] = {
    "clean": clean_message,
    "eicar-zip": eicar_zip_message,
}
