"""Field encryption: AES-256-GCM with key ids, bound to table, primary key and column.

Stored envelope (bytes, the same in L3 and L2):

    0x01 | len(key_id) (1 byte) | key_id (ascii) | nonce (12 bytes) | ciphertext + tag

The associated data is ``table \\0 primary key \\0 column``: a ciphertext copied to another
row or column fails authentication instead of decrypting to the wrong owner's value.
Several keys may be configured (``{key_id: key}``) so old rows still decrypt after the active
key changes.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from strata.errors import ConfigError, DecryptionError, EncryptionError

__all__ = ["FieldCipher", "generate_key"]

_VERSION = 1
_NONCE = 12


def generate_key() -> str:
    """A new random 256-bit key, base64 encoded (the form ``Config.encryption_key`` takes)."""
    return base64.b64encode(os.urandom(32)).decode()


def _decode_key(key: str | bytes, key_id: str) -> bytes:
    if isinstance(key, bytes) and len(key) == 32:
        return key
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"encryption key {key_id!r} is not valid base64") from exc
    if len(raw) != 32:
        raise ConfigError(
            f"encryption key {key_id!r} must be 32 bytes (AES-256), got {len(raw)}; "
            "make one with strata.crypto.generate_key()"
        )
    return raw


class FieldCipher:
    def __init__(
        self, keys: str | bytes | Mapping[str, str | bytes], active_key_id: str | None = None
    ):
        if isinstance(keys, str | bytes):
            keys = {active_key_id or "k1": keys}
        if not keys:
            raise ConfigError("encryption_key mapping is empty")
        self._keys: dict[str, AESGCM] = {}
        for key_id, key in keys.items():
            if not key_id or len(key_id.encode()) > 255 or not key_id.isascii():
                raise ConfigError(f"encryption key id {key_id!r} must be 1-255 ascii characters")
            self._keys[key_id] = AESGCM(_decode_key(key, key_id))
        if active_key_id is None:
            active_key_id = next(iter(keys)) if len(keys) == 1 else None
        if active_key_id is None or active_key_id not in self._keys:
            raise ConfigError(
                "encryption_key_id must name one of the configured keys "
                f"({', '.join(self._keys)}), got {active_key_id!r}"
            )
        self.active_key_id = active_key_id
        self._header = bytes([_VERSION, len(active_key_id)]) + active_key_id.encode()

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        try:
            sealed = self._keys[self.active_key_id].encrypt(nonce, plaintext, aad)
        except (OverflowError, ValueError) as exc:
            raise EncryptionError(f"cannot encrypt: {exc}") from exc
        return self._header + nonce + sealed

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        blob = bytes(blob)
        if len(blob) < 2 or blob[0] != _VERSION:
            raise DecryptionError("not a Strata encrypted value (unknown envelope version)")
        n = blob[1]
        key_id = blob[2 : 2 + n].decode("ascii", "replace")
        body = blob[2 + n :]
        aead = self._keys.get(key_id)
        if aead is None:
            raise DecryptionError(
                f"value was encrypted with key id {key_id!r}, which is not configured",
                key_id=key_id,
            )
        if len(body) < _NONCE + 16:
            raise DecryptionError("encrypted value is truncated", key_id=key_id)
        try:
            return aead.decrypt(body[:_NONCE], body[_NONCE:], aad)
        except InvalidTag as exc:
            raise DecryptionError(
                f"cannot decrypt with key {key_id!r}: wrong key, or the value was altered or "
                "moved from another row or column",
                key_id=key_id,
            ) from exc

    @staticmethod
    def aad(table: str, pk: object, column: str) -> bytes:
        return f"{table}\0{pk}\0{column}".encode()
