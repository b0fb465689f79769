"""Invalidation messages: what goes on the wire and what a receiver accepts."""

from __future__ import annotations

import orjson
import pytest

from strata.errors import CodecError, StrataError
from strata.invalidation import Heartbeat, Invalidation, decode_message


def test_single_key_message_round_trips() -> None:
    message = Invalidation(schema="players", op="set", origin="inst-a", id="p1", version=7)

    assert Invalidation.decode(message.encode()) == message


def test_integer_id_stays_an_integer() -> None:
    message = Invalidation(schema="accounts", op="delete", origin="inst-a", id=42)

    decoded = Invalidation.decode(message.encode())

    assert decoded.id == 42
    assert isinstance(decoded.id, int)


def test_single_key_wire_format_is_the_documented_json() -> None:
    message = Invalidation(schema="players", op="delete", origin="inst-a", id="p1", version=None)

    assert orjson.loads(message.encode()) == {
        "schema": "players",
        "id": "p1",
        "op": "delete",
        "origin": "inst-a",
        "version": None,
    }


def test_batch_message_round_trips_as_one_message() -> None:
    message = Invalidation(
        schema="players", op="set", origin="inst-a", ids=("p1", 2, "p3"), versions=(1, None, 3)
    )

    decoded = Invalidation.decode(message.encode())

    assert decoded == message
    assert decoded.is_batch


def test_batch_wire_format_adds_ids_and_versions() -> None:
    message = Invalidation(schema="s", op="delete", origin="o", ids=("a", "b"), versions=(5, 6))

    body = orjson.loads(message.encode())

    assert body["ids"] == ["a", "b"]
    assert body["versions"] == [5, 6]
    assert body["id"] is None


def test_invalidate_all_round_trips_and_covers_no_keys() -> None:
    message = Invalidation(schema="players", op="invalidate_all", origin="inst-a")

    decoded = Invalidation.decode(message.encode())

    assert decoded == message
    assert decoded.keys() == []
    assert "ids" not in orjson.loads(message.encode())


def test_keys_of_a_single_key_message() -> None:
    message = Invalidation(schema="s", op="set", origin="o", id="k", version=3)

    assert message.keys() == [("k", 3)]


def test_keys_of_a_batch_pair_ids_with_versions() -> None:
    message = Invalidation(schema="s", op="set", origin="o", ids=("a", 1), versions=(10, None))

    assert message.keys() == [("a", 10), (1, None)]


def test_batch_without_versions_has_a_none_version_per_id() -> None:
    message = Invalidation(schema="s", op="delete", origin="o", ids=("a", "b"))

    assert message.keys() == [("a", None), ("b", None)]
    assert Invalidation.decode(message.encode()) == message


def test_decode_accepts_str_and_memoryview() -> None:
    raw = Invalidation(schema="s", op="set", origin="o", id="k").encode()

    assert Invalidation.decode(raw.decode()) == Invalidation.decode(memoryview(raw))


def test_decode_ignores_unknown_keys() -> None:
    raw = orjson.dumps(
        {"schema": "s", "id": "k", "op": "set", "origin": "o", "version": 1, "future": True}
    )

    assert Invalidation.decode(raw) == Invalidation(
        schema="s", op="set", origin="o", id="k", version=1
    )


def test_heartbeat_round_trips_through_decode_message() -> None:
    beat = Heartbeat(origin="inst-a", seq=12)

    assert decode_message(beat.encode()) == beat


def test_invalidation_decode_refuses_a_heartbeat() -> None:
    with pytest.raises(CodecError):
        Invalidation.decode(Heartbeat(origin="inst-a", seq=1).encode())


def _raw(**fields: object) -> bytes:
    body: dict[str, object] = {"schema": "s", "id": "k", "op": "set", "origin": "o"}
    body.update(fields)
    return orjson.dumps({k: v for k, v in body.items() if v is not _DROP})


_DROP = object()


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(b"[1, 2]", id="array"),
        pytest.param(b'"text"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(_raw(op="upsert"), id="unknown-op"),
        pytest.param(_raw(op=_DROP), id="missing-op"),
        pytest.param(_raw(schema=_DROP), id="missing-schema"),
        pytest.param(_raw(schema=""), id="empty-schema"),
        pytest.param(_raw(schema=3), id="schema-not-string"),
        pytest.param(_raw(origin=_DROP), id="missing-origin"),
        pytest.param(_raw(origin=""), id="empty-origin"),
        pytest.param(_raw(id=1.5), id="float-id"),
        pytest.param(_raw(id=True), id="bool-id"),
        pytest.param(_raw(id={"a": 1}), id="object-id"),
        pytest.param(_raw(id=None), id="set-without-id"),
        pytest.param(_raw(version="7"), id="string-version"),
        pytest.param(_raw(version=False), id="bool-version"),
        pytest.param(_raw(id=None, ids="abc"), id="ids-not-a-list"),
        pytest.param(_raw(id=None, ids=["a", 1.5]), id="float-in-ids"),
        pytest.param(_raw(id=None, ids=["a", "b"], versions=[1]), id="versions-too-short"),
        pytest.param(_raw(id=None, ids=["a"], versions=["1"]), id="string-in-versions"),
        pytest.param(_raw(ids=["a"]), id="both-id-and-ids"),
        pytest.param(_raw(op="invalidate_all"), id="invalidate-all-with-id"),
        pytest.param(orjson.dumps({"op": "heartbeat", "origin": "o"}), id="heartbeat-no-seq"),
        pytest.param(
            orjson.dumps({"op": "heartbeat", "origin": "o", "seq": "1"}), id="heartbeat-bad-seq"
        ),
    ],
)
def test_malformed_input_raises_codec_error(raw: bytes) -> None:
    with pytest.raises(CodecError):
        decode_message(raw)


def test_non_bytes_input_raises_codec_error() -> None:
    with pytest.raises(CodecError):
        Invalidation.decode(12345)  # type: ignore[arg-type]


def test_codec_error_is_a_strata_error() -> None:
    with pytest.raises(StrataError):
        Invalidation.decode(b"{")


def test_id_too_large_for_json_cannot_be_encoded() -> None:
    message = Invalidation(schema="s", op="set", origin="o", id=2**70)

    with pytest.raises(CodecError):
        message.encode()


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"op": "set"}, id="set-without-id"),
        pytest.param({"op": "set", "id": "a", "ids": ("b",)}, id="id-and-ids"),
        pytest.param({"op": "invalidate_all", "id": "a"}, id="invalidate-all-with-id"),
        pytest.param({"op": "delete", "ids": ("a", "b"), "versions": (1,)}, id="short-versions"),
        pytest.param({"op": "delete", "ids": ("a",), "version": 3}, id="batch-with-version"),
        pytest.param({"op": "merge", "id": "a"}, id="unknown-op"),
    ],
)
def test_inconsistent_message_cannot_be_built(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="invalidation"):
        Invalidation(schema="s", origin="o", **fields)  # type: ignore[arg-type]
