"""The shared-page protocol between the host (pool) and the guest agent: layout and codecs.

Standard library only: this module runs on both sides (the host's
``mailvm.vmpool.shmpage`` and the guest's ``mailvm.guest.page``), so the two
sides can never disagree on an offset.  It holds constants and pure
pack/unpack/bounds helpers; no I/O.  ``docs/protocol.md`` describes the
layout and the hand-shake in prose.

One region per slot, little-endian.  Page 0 (``HEADER_SIZE`` bytes) is the
header; data follows::

    off  size  field        written by
    0    8     magic        guest   b"MAILVM\\x00\\x01"
    8    4     version      guest   2 (version 1 = the same without boot_id/agent_pid)
    12   4     state        both    EMPTY READY REQUEST RUNNING DONE FAILED
    16   8     seq          host    job number, incremented per job
    24   8     ack_seq      guest   echoes seq when it takes the job
    32   8     heartbeat    guest   incremented while the agent is alive
    40   8     request_off  host    sample bytes
    48   8     request_len  host
    56   8     options_off  host    options JSON (object)
    64   8     options_len  host
    72   8     result_off   guest   result JSON
    80   8     result_len   guest
    88   256   name         host    file name, UTF-8, NUL padded
    344  8     boot_id      guest   random, non-zero, fixed for the agent's life   (v2)
    352  4     agent_pid    guest   the agent's pid inside its guest (informational) (v2)
    356  4     reserved     -       zero

Data area (the host's choice, checked by the guest; see :func:`plan_request`):
request bytes at ``HEADER_SIZE``; options at the next ``DATA_ALIGN`` boundary
after them; the result at the next boundary after the options (the guest's
choice, see :func:`result_offset`), up to the end of the region.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"MAILVM\x00\x01"
ZERO_MAGIC = b"\x00" * 8
VERSION = 2

EMPTY, READY, REQUEST, RUNNING, DONE, FAILED = range(6)
STATE_NAMES = {EMPTY: "EMPTY", READY: "READY", REQUEST: "REQUEST", RUNNING: "RUNNING", DONE: "DONE", FAILED: "FAILED"}
TERMINAL = frozenset({DONE, FAILED})

HEADER_SIZE = 4096  # page 0; the data area starts here
DATA_ALIGN = 4096
NAME_BYTES = 256
MAX_NAME_BYTES = NAME_BYTES - 1  # at least one NUL always ends the name
MAX_OPTIONS_BYTES = 64 * 1024
MIN_RESULT_AREA = 64 * 1024  # the host refuses a job that leaves less room than this for the result
MIN_REGION = HEADER_SIZE + 2 * DATA_ALIGN + MIN_RESULT_AREA

#: the header as one struct (see the module docstring for the table)
HEADER = struct.Struct("<8sIIQQQQQQQQQ256sQII")
assert HEADER.size == 360

OFF_MAGIC = 0
OFF_VERSION = 8
OFF_STATE = 12
OFF_SEQ = 16
OFF_ACK_SEQ = 24
OFF_HEARTBEAT = 32
OFF_REQUEST_OFF = 40
OFF_REQUEST_LEN = 48
OFF_OPTIONS_OFF = 56
OFF_OPTIONS_LEN = 64
OFF_RESULT_OFF = 72
OFF_RESULT_LEN = 80
OFF_NAME = 88
OFF_BOOT_ID = 344
OFF_AGENT_PID = 352

U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
#: request_off .. result_len: six u64 written by the host in one piece
JOB_FIELDS = struct.Struct("<QQQQQQ")
#: result_off, result_len: written by the guest in one piece
RESULT_FIELDS = struct.Struct("<QQ")

#: the detonation result's schema number (``mailvm.guest.detonate``)
RESULT_SCHEMA = 1


class ProtocolError(ValueError):
    """Bytes on the page that do not follow the protocol (either side may raise it)."""


@dataclass(frozen=True)
class Header:
    magic: bytes
    version: int
    state: int
    seq: int
    ack_seq: int
    heartbeat: int
    request_off: int
    request_len: int
    options_off: int
    options_len: int
    result_off: int
    result_len: int
    name_raw: bytes
    boot_id: int
    agent_pid: int
    reserved: int = 0

    @property
    def name(self) -> str:
        return decode_name(self.name_raw)

    @property
    def state_name(self) -> str:
        return state_name(self.state)


def unpack_header(buf: bytes | bytearray | memoryview) -> Header:
    """Decode the header from the first ``HEADER.size`` bytes of ``buf`` (no validation)."""
    if len(buf) < HEADER.size:
        raise ProtocolError(f"header needs {HEADER.size} bytes, got {len(buf)}")
    return Header(*HEADER.unpack_from(buf, 0))


def pack_header(h: Header) -> bytes:
    return HEADER.pack(
        h.magic, h.version, h.state, h.seq, h.ack_seq, h.heartbeat,
        h.request_off, h.request_len, h.options_off, h.options_len,
        h.result_off, h.result_len, h.name_raw, h.boot_id, h.agent_pid, h.reserved,
    )


def state_name(state: int) -> str:
    return STATE_NAMES.get(state, f"invalid({state})")


def align_up(n: int, align: int = DATA_ALIGN) -> int:
    return (n + align - 1) // align * align


def encode_name(name: str) -> bytes:
    """UTF-8, cut at a character boundary to fit ``MAX_NAME_BYTES``, NUL padded to ``NAME_BYTES``."""
    raw = name.replace("\x00", "").encode("utf-8", "replace")
    if len(raw) > MAX_NAME_BYTES:
        raw = raw[:MAX_NAME_BYTES].decode("utf-8", "ignore").encode("utf-8")
    return raw.ljust(NAME_BYTES, b"\x00")


def decode_name(raw: bytes) -> str:
    """The name up to the first NUL; undecodable bytes become U+FFFD."""
    return raw.split(b"\x00", 1)[0].decode("utf-8", "replace")


def span_ok(off: int, length: int, size: int, lo: int = HEADER_SIZE) -> bool:
    """True when ``[off, off+length)`` lies inside ``[lo, size)`` (never touches the header)."""
    return lo <= off and 0 <= length and off + length <= size


@dataclass(frozen=True)
class RequestPlan:
    request_off: int
    options_off: int
    result_min_off: int  # where the guest will put the result
    result_room: int  # bytes from there to the end of the region


def plan_request(size: int, request_len: int, options_len: int) -> RequestPlan:
    """Where a job's bytes go in a region of ``size`` bytes; ProtocolError when they do not fit."""
    if options_len > MAX_OPTIONS_BYTES:
        raise ProtocolError(f"options are {options_len} bytes, at most {MAX_OPTIONS_BYTES}")
    req_off = HEADER_SIZE
    opt_off = align_up(req_off + request_len)
    res_off = result_offset(req_off, request_len, opt_off, options_len)
    room = size - res_off
    if room < MIN_RESULT_AREA:
        raise ProtocolError(
            f"a {request_len}-byte request does not fit a {size}-byte region "
            f"(needs {res_off + MIN_RESULT_AREA} bytes with the result area)"
        )
    return RequestPlan(req_off, opt_off, res_off, room)


def result_offset(request_off: int, request_len: int, options_off: int, options_len: int) -> int:
    """The guest's result offset: the first aligned byte after both request and options."""
    return align_up(max(HEADER_SIZE, request_off + request_len, options_off + options_len))


__all__ = [
    "MAGIC", "VERSION", "EMPTY", "READY", "REQUEST", "RUNNING", "DONE", "FAILED", "STATE_NAMES", "TERMINAL",
    "HEADER", "HEADER_SIZE", "DATA_ALIGN", "NAME_BYTES", "MAX_OPTIONS_BYTES", "MIN_RESULT_AREA", "MIN_REGION",
    "RESULT_SCHEMA", "Header", "ProtocolError", "RequestPlan", "unpack_header", "pack_header", "state_name",
    "align_up", "encode_name", "decode_name", "span_ok", "plan_request", "result_offset",
]
