"""A message's one copy on disk while the milter holds it.

The milter writes the header block and then the body chunks, as they arrive, into one file in
the spool directory; the scan worker reads that same file.  No second copy is written
(issue: the message used to be spooled as a body temporary file and then again as the
worker's ``msg-*.eml``).  The file is readable by the scan workers' group (0640) and removed
when the transaction ends.
"""

from __future__ import annotations

import logging
import os
import tempfile

log = logging.getLogger(__name__)


class MessageSpool:
    """``write_head()`` once, ``write()`` body chunks, ``finish()`` for the bytes, ``close()``."""

    def __init__(self, directory: str) -> None:
        fd, self.path = tempfile.mkstemp(prefix="msg-", suffix=".eml", dir=directory)
        try:
            os.fchmod(fd, 0o640)  # the scan worker reads it as the worker group (mailvm.privilege)
            self._fh = os.fdopen(fd, "w+b")
        except BaseException:
            os.close(fd)
            os.unlink(self.path)
            raise
        self.head_written = False

    def write_head(self, head: bytes) -> None:
        if self.head_written:
            raise RuntimeError("the header block is written once")
        self._fh.write(head)
        self.head_written = True

    def write(self, chunk: bytes) -> None:
        self._fh.write(chunk)

    def finish(self) -> bytes:
        """Flush (the worker reads the file) and return the whole message."""
        self._fh.flush()
        self._fh.seek(0)
        return self._fh.read()

    def close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            fh.close()
        finally:
            try:
                os.unlink(self.path)
            except OSError as exc:
                log.warning("could not remove spool file %s: %s", self.path, exc)
