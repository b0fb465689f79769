"""An L2 payload is bound to its key: the trailer ``redis_scripts.bind`` adds verifies only
under the key it was written for, and only with the envelope (version included) unchanged."""

from __future__ import annotations

from strata.tiers.redis_scripts import bind, unbind

ENVELOPE = b"Sj0000000000000007" + b'{"id":"p1"}'


def test_a_bound_payload_unbinds_under_its_own_key() -> None:
    assert unbind("app:items:s:p1", bind("app:items:s:p1", ENVELOPE)) == ENVELOPE


def test_a_payload_under_another_key_does_not_verify() -> None:
    assert unbind("app:items:s:p2", bind("app:items:s:p1", ENVELOPE)) is None


def test_a_corrupt_version_does_not_verify() -> None:
    stored = bind("k", ENVELOPE)
    assert unbind("k", stored[:2] + b"f" * 16 + stored[18:]) is None


def test_an_unbound_envelope_does_not_verify() -> None:
    assert unbind("k", ENVELOPE) is None
    assert unbind("k", b"") is None
