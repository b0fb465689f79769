"""An L2 payload may carry its own expiry in the binding trailer, so a read needs no PTTL:
the expiry is covered by the key-hash like the envelope, and a payload bound without one
(the journal's, or one written by an older Strata) still verifies."""

from __future__ import annotations

from strata.tiers.redis_scripts import bind, unbind, unbind_entry

ENVELOPE = b"Sj0000000000000007" + b'{"id":"p1"}'


def test_a_payload_bound_with_its_expiry_gives_both_back() -> None:
    stored = bind("app:items:s:p1", ENVELOPE, expires_ms=1_700_000_000_123)
    assert unbind_entry("app:items:s:p1", stored) == (ENVELOPE, 1_700_000_000_123)
    assert unbind("app:items:s:p1", stored) == ENVELOPE


def test_a_payload_bound_with_no_expiry_says_so() -> None:
    assert unbind_entry("k", bind("k", ENVELOPE, expires_ms=0)) == (ENVELOPE, 0)


def test_a_payload_bound_without_its_expiry_leaves_it_unknown() -> None:
    assert unbind_entry("k", bind("k", ENVELOPE)) == (ENVELOPE, None)


def test_an_expiry_bound_payload_under_another_key_does_not_verify() -> None:
    stored = bind("app:items:s:p1", ENVELOPE, expires_ms=5)
    assert unbind_entry("app:items:s:p2", stored) is None


def test_a_tampered_expiry_does_not_verify() -> None:
    stored = bind("k", ENVELOPE, expires_ms=1_000)
    at = stored.rindex(b"@") - 1  # the expiry's last digit
    tampered = stored[:at] + (b"9" if stored[at : at + 1] != b"9" else b"8") + stored[at + 1 :]
    assert unbind_entry("k", tampered) is None
