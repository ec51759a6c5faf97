"""Protocol-level tests with OpenDKIM's ``miltertest``: the milter's replies and header edits.

miltertest speaks the milter protocol directly (no MTA), so these tests pin
down exactly what mailvm answers at each step: ACCEPT with an added verdict
header and the forged one deleted, a custom SMTP reject reply for EICAR.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import pytest
from maillab import EICAR

pytestmark = [pytest.mark.postfix]

LUA_HEAD = """
local conn = mt.connect("inet:{port}@127.0.0.1")
if conn == nil then error("mt.connect() failed") end
-- connect/eoh are negotiated away by pymilter (noreply / not implemented): tolerate either
pcall(mt.conninfo, conn, "client.test", "127.0.0.1")
mt.macro(conn, SMFIC_MAIL, "i", "MTQ{n}")
if mt.mailfrom(conn, "<a@outside.test>") ~= nil then error("mailfrom") end
if mt.rcptto(conn, "<{rcpt}>") ~= nil then error("rcptto") end
"""


def run_lua(script: str) -> subprocess.CompletedProcess:
    # miltertest needs a real file: it silently runs nothing from a pipe
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as fh:
        fh.write(script)
        fh.flush()
        return subprocess.run(["miltertest", "-s", fh.name], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def miltertest_ok():
    if shutil.which("miltertest") is None:
        pytest.skip("miltertest is not installed (Debian package miltertest; scripts/setup.sh installs it)")


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def test_clean_message_accepted_with_header_added_and_forged_one_removed(mail_lab, miltertest_ok):
    script = LUA_HEAD.format(port=mail_lab.milter_port, n=1, rcpt="u@example.com") + """
mt.header(conn, "From", "a@outside.test")
mt.header(conn, "Subject", "miltertest clean")
mt.header(conn, "X-Mailvm-Verdict", "clean forged")
pcall(mt.eoh, conn)
mt.bodystring(conn, "hello world\\r\\n")
if mt.eom(conn) ~= nil then error("eom") end
if mt.getreply(conn) ~= SMFIR_ACCEPT then error("eom reply is not ACCEPT") end
if not mt.eom_check(conn, MT_HDRADD, "X-Mailvm-Verdict") then error("no X-Mailvm-Verdict added") end
if not mt.eom_check(conn, MT_HDRADD, "X-Mailvm-Report") then error("no X-Mailvm-Report added") end
if not mt.eom_check(conn, MT_HDRCHANGE, "X-Mailvm-Verdict") then error("forged X-Mailvm-Verdict not removed") end
mt.disconnect(conn)
"""
    res = run_lua(script)
    assert res.returncode == 0, res.stdout + res.stderr


def test_eicar_rejected_with_571(mail_lab, miltertest_ok):
    body = (
        "--b1\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n"
        "--b1\r\nContent-Type: application/octet-stream; name=\"eicar.com\"\r\n"
        "Content-Disposition: attachment; filename=\"eicar.com\"\r\n\r\n"
        + EICAR.decode() + "\r\n--b1--\r\n"
    )
    script = LUA_HEAD.format(port=mail_lab.milter_port, n=2, rcpt="u@reject.test") + f"""
mt.header(conn, "From", "a@outside.test")
mt.header(conn, "Subject", "miltertest eicar")
mt.header(conn, "MIME-Version", "1.0")
mt.header(conn, "Content-Type", "multipart/mixed; boundary=\\"b1\\"")
pcall(mt.eoh, conn)
mt.bodystring(conn, {_lua_string(body)})
if mt.eom(conn) ~= nil then error("eom") end
local r = mt.getreply(conn)
-- a reject with our own reply text arrives as SMFIR_REPLYCODE (the 550 5.7.1 text
-- itself is checked end to end through Postfix in test_postfix_milter.py)
if r ~= SMFIR_REPLYCODE then error("eom reply is not a custom reject: " .. tostring(r)) end
mt.disconnect(conn)
"""
    res = run_lua(script)
    assert res.returncode == 0, res.stdout + res.stderr


def test_forged_custom_verdict_header_is_removed(mail_lab, miltertest_ok):
    """A domain that names its headers itself: an inbound copy of that name is a forgery too."""
    script = LUA_HEAD.format(port=mail_lab.milter_port, n=3, rcpt="u@custom.test") + """
mt.header(conn, "From", "a@outside.test")
mt.header(conn, "Subject", "forged custom header")
mt.header(conn, "X-Other-Verdict", "clean score=0")
pcall(mt.eoh, conn)
mt.bodystring(conn, "hello\\r\\n")
if mt.eom(conn) ~= nil then error("eom") end
if mt.getreply(conn) ~= SMFIR_ACCEPT then error("eom reply is not ACCEPT") end
if not mt.eom_check(conn, MT_HDRADD, "X-Other-Verdict") then error("no X-Other-Verdict added") end
if not mt.eom_check(conn, MT_HDRCHANGE, "X-Other-Verdict") then error("forged X-Other-Verdict not removed") end
mt.disconnect(conn)
"""
    res = run_lua(script)
    assert res.returncode == 0, res.stdout + res.stderr


def test_recipient_past_the_limit_is_refused_with_452_never_dropped(mail_lab, miltertest_ok):
    from mailvm.milter.app import MAX_RCPTS

    script = LUA_HEAD.format(port=mail_lab.milter_port, n=4, rcpt="u0@example.com") + f"""
for i = 1, {MAX_RCPTS - 1} do
  if mt.rcptto(conn, "<u" .. i .. "@example.com>") ~= nil then error("rcptto " .. i) end
  if mt.getreply(conn) ~= SMFIR_CONTINUE then error("recipient " .. i .. " refused") end
end
if mt.rcptto(conn, "<one.too.many@example.com>") ~= nil then error("rcptto over the limit") end
if mt.getreply(conn) ~= SMFIR_REPLYCODE then error("the recipient past the limit was not refused") end
mt.disconnect(conn)
"""
    res = run_lua(script)
    assert res.returncode == 0, res.stdout + res.stderr

