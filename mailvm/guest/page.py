"""The guest side of the shared page: an mmap of a file, or of ``/dev/mem`` at an offset.

The guest agent uses :class:`GuestPage` to publish READY, acknowledge a job,
read the request (bounds-checked: the guest trusts the host's offsets no more
than it must) and write its result.  Store order matters and is kept here:
data first, then offsets, then ``state`` last, so the host never sees a state
whose data is not there yet (x86 keeps stores in program order; see
``docs/protocol.md`` for other architectures).

Standard library only (runs inside the VM).
"""

from __future__ import annotations

import logging
import mmap
import os
import stat

from mailvm.guest import protocol as P

log = logging.getLogger(__name__)


class GuestPage:
    """The region as the guest sees it: ``size`` bytes at ``offset`` of ``path``."""

    def __init__(self, mm: mmap.mmap, size: int, path: str = "") -> None:
        self._mm = mm
        self.size = size
        self.path = path

    @classmethod
    def open(cls, path: str, size: int, offset: int = 0) -> "GuestPage":
        """Map an existing file (host-created page, NVDIMM ``/dev/pmem0``) or ``/dev/mem`` at ``offset``."""
        if size < P.MIN_REGION:
            raise ValueError(f"page size {size} is below the minimum {P.MIN_REGION}")
        if offset < 0 or offset % mmap.ALLOCATIONGRANULARITY:
            raise ValueError(f"offset {offset} is not a multiple of {mmap.ALLOCATIONGRANULARITY}")
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_size < offset + size:
                raise ValueError(f"{path} has {st.st_size} bytes, the page needs {offset + size}")
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)
        finally:
            os.close(fd)
        return cls(mm, size, path)

    def close(self) -> None:
        try:
            self._mm.close()
        except (BufferError, ValueError):  # pragma: no cover - a view still exported
            pass

    # -- reading -----------------------------------------------------------
    def header(self) -> P.Header:
        return P.unpack_header(self._mm[: P.HEADER.size])

    def needs_attention(self) -> bool:
        """Cheap check for the idle loop: a job is waiting, or our header is gone (page replaced)."""
        if self._mm[P.OFF_MAGIC : P.OFF_MAGIC + 8] != P.MAGIC:
            return True
        return P.U32.unpack_from(self._mm, P.OFF_STATE)[0] in (P.REQUEST, P.EMPTY)

    def read_span(self, off: int, length: int) -> bytes:
        """Bytes of the data area; ProtocolError when the span leaves the region or enters the header."""
        if not P.span_ok(off, length, self.size):
            raise P.ProtocolError(f"span {off}+{length} is outside the data area of a {self.size}-byte region")
        return self._mm[off : off + length]

    # -- writing (state always last) ---------------------------------------
    # Fields are stored by slice assignment (one memcpy of the packed bytes), never with
    # struct.pack_into: pack_into zeroes its target before writing, so a reader on the other
    # side could see a transient 0, i.e. state EMPTY in the middle of REQUEST -> RUNNING.
    def _put(self, off: int, raw: bytes) -> None:
        self._mm[off : off + len(raw)] = raw

    def _u32(self, off: int, value: int) -> None:
        self._put(off, P.U32.pack(value))

    def _u64(self, off: int, value: int) -> None:
        self._put(off, P.U64.pack(value))

    def publish_ready(self, boot_id: int, pid: int, heartbeat: int) -> None:
        """Write a fresh READY header, leaving the host's fields (seq, job, name) as they are."""
        h = self.header()
        self._u32(P.OFF_STATE, P.EMPTY)
        self._u32(P.OFF_VERSION, P.VERSION)
        self._u64(P.OFF_ACK_SEQ, h.seq)
        self._u64(P.OFF_HEARTBEAT, heartbeat)
        self._put(P.OFF_RESULT_OFF, P.RESULT_FIELDS.pack(0, 0))
        self._u64(P.OFF_BOOT_ID, boot_id)
        self._u32(P.OFF_AGENT_PID, pid & 0xFFFFFFFF)
        self._mm[P.OFF_MAGIC : P.OFF_MAGIC + 8] = P.MAGIC
        self._u32(P.OFF_STATE, P.READY)

    def beat(self, counter: int) -> None:
        self._u64(P.OFF_HEARTBEAT, counter & 0xFFFFFFFFFFFFFFFF)

    def take(self, last_seq: int) -> int | None:
        """The hand-over's fast path: acknowledge a new job at once; its seq, or None.

        A new job is state REQUEST with a seq other than ``last_seq``.  Two
        field reads and two stores, nothing else: under TCG every guest
        instruction between the doorbell and this acknowledgement is emulated,
        so the request is validated after it (a bad one ends FAILED).
        """
        if P.U32.unpack_from(self._mm, P.OFF_STATE)[0] != P.REQUEST:
            return None
        seq = P.U64.unpack_from(self._mm, P.OFF_SEQ)[0]
        if seq == last_seq or self._mm[P.OFF_MAGIC : P.OFF_MAGIC + 8] != P.MAGIC:
            return None  # seen already, or not our header (the slow path republishes READY)
        self.acknowledge(seq)
        return seq

    def acknowledge(self, seq: int) -> None:
        """Take job ``seq``: ack_seq first, RUNNING last."""
        self._u64(P.OFF_ACK_SEQ, seq)
        self._u32(P.OFF_STATE, P.RUNNING)

    def finish(self, seq: int, result_off: int, payload: bytes, state: int) -> None:
        """Write the result bytes, then their offset/length, then DONE or FAILED."""
        if state not in P.TERMINAL:
            raise ValueError(f"finish() needs DONE or FAILED, not {P.state_name(state)}")
        if not P.span_ok(result_off, len(payload), self.size):
            raise P.ProtocolError(f"result of {len(payload)} bytes at {result_off} does not fit the region")
        self._mm[result_off : result_off + len(payload)] = payload
        self._put(P.OFF_RESULT_OFF, P.RESULT_FIELDS.pack(result_off, len(payload)))
        self._u64(P.OFF_ACK_SEQ, seq)
        self._u32(P.OFF_STATE, state)
