"""The journal's entry codec and its refusal rule, without servers."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import pytest

from strata import errors
from strata.journal.entry import decode_entry, encode_row, pack, unpack
from strata.journal.flusher import is_refusal


def test_a_row_with_bytes_that_are_not_utf8_comes_back_as_written() -> None:
    row = {
        "id": "a",
        "blob": b"\xff\xfe\x00",
        "sealed": bytes(range(256)),
        "at": dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC),
        "naive": dt.datetime(2026, 1, 2),
        "day": dt.date(2026, 1, 2),
        "time": dt.time(12, 30),
        "uid": uuid.UUID(int=7),
        "price": decimal.Decimal("1.10"),
        "big": 2**70,
        "doc": {"nested": [1, "two", None]},
    }
    fields = {b"o": b"set", b"v": b"42", b"i": pack("a"), b"r": encode_row(row, frozenset({"x"}))}

    entry = decode_entry("items", b"1-0", fields)

    assert entry.row == row
    assert entry.kept == frozenset({"x"})
    assert (entry.id, entry.version, entry.op) == ("a", 42, "set")


def test_ids_keep_their_type() -> None:
    for id in ("a", 7, uuid.UUID(int=3)):
        assert unpack(pack(id)) == id


def test_a_delete_entry_has_no_row() -> None:
    fields = {b"o": b"delete", b"v": b"9", b"i": pack(3), b"r": b""}
    entry = decode_entry("items", b"1-0", fields)
    assert (entry.op, entry.row, entry.id) == ("delete", None, 3)


@pytest.mark.parametrize(
    "fields",
    [
        {b"o": b"set", b"v": b"1", b"i": pack("a"), b"r": b"\xc1"},
        {b"o": b"upsert", b"v": b"1", b"i": pack("a")},
        {b"o": b"set", b"v": b"x", b"i": pack("a")},
        {b"v": b"1", b"i": pack("a")},
    ],
)
def test_a_damaged_entry_is_a_codec_error(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(errors.CodecError):
        decode_entry("items", b"1-0", fields)


def test_a_value_the_journal_cannot_hold_is_refused_before_anything_is_written() -> None:
    with pytest.raises(errors.InvalidValueError):
        pack({"x": object()})


def test_constraint_and_type_errors_are_refusals_and_outages_are_not() -> None:
    class DataError(Exception):  # the shape of asyncpg.DataError
        pass

    refused_type = errors.TierError("refused a value", tier="l3")
    refused_type.__cause__ = DataError()
    assert is_refusal(errors.IntegrityError("unique", tier="l3"))
    assert is_refusal(refused_type)
    assert not is_refusal(errors.TierUnavailableError("down", tier="l3"))
    assert not is_refusal(errors.TierError("no such table: run migrate", tier="l3"))
    assert not is_refusal(OSError("reset"))
