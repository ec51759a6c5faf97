"""The milter asks Postfix only for what it uses (issue 14 item 4): the milter protocol's
negotiation flags skip the callbacks mailvm does not implement and the replies it never sends."""

from __future__ import annotations

import Milter

from mailvm.milter.app import MailvmMilter, milter_flags


def _negotiated() -> int:
    """What pymilter's negotiate() agrees to when the MTA offers every protocol option."""
    offered = 0
    for name in dir(Milter):
        if name.startswith("P_"):
            offered |= getattr(Milter, name)
    opts = [0, offered, 0, 0]
    assert MailvmMilter(service=None).negotiate(opts) == Milter.CONTINUE
    return opts[1]


def test_unused_callbacks_are_not_requested_and_non_answers_not_awaited():
    got = _negotiated()
    # callbacks mailvm has no use for: the MTA does not send them at all
    for flag in (Milter.P_NODATA, Milter.P_NOEOH, Milter.P_NOUNKNOWN):
        assert got & flag, hex(flag)
    # callbacks that never refuse: the MTA sends them and does not wait for an answer
    for flag in (Milter.P_NR_CONN, Milter.P_NR_HELO, Milter.P_NR_MAIL, Milter.P_NR_HDR, Milter.P_NR_BODY):
        assert got & flag, hex(flag)
    # what mailvm does use stays on: envelope, headers, body, recipients (it may refuse one: no NR)
    for flag in (Milter.P_NOCONNECT, Milter.P_NOHELO, Milter.P_NOMAIL, Milter.P_NORCPT, Milter.P_NOHDRS,
                 Milter.P_NOBODY, Milter.P_NR_RCPT):
        assert not got & flag, hex(flag)
    # header values with their leading space (byte-exact stored copy), asked for explicitly
    assert got & Milter.P_HDR_LEADSPC


def test_only_the_actions_used_are_requested():
    assert milter_flags() == Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGBODY | Milter.QUARANTINE
