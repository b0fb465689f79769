"""Every error Strata raises. One root, each error carries the data that explains it.

    StrataError
    ├── ConfigError                      bad Config value, bad URL, missing encryption key
    ├── LifecycleError                   DataStore used before connect / after close
    ├── SchemaError                      register() refused a schema (.model, .field)
    │   ├── InvalidModelError            not a Pydantic model class / bad model
    │   ├── SchemaDuplicateError         a schema name or model registered twice
    │   ├── NoPrimaryKeyError            no field has primary_key=True
    │   ├── MultiplePrimaryKeysError     more than one primary key
    │   ├── InvalidPrimaryKeyError       primary key not str, int or UUID, or Optional
    │   ├── UnsupportedTypeError         a field type with no column mapping
    │   ├── FieldDefaultRequiredError    omit_cache / omit_l1 / transient without a default
    │   ├── ConflictingFieldOptionsError flags that cannot go together
    │   ├── EncryptionKeyRequiredError   encrypted field but no Config.encryption_key
    │   ├── UnknownIndexFieldError       Index(fields=[...]) names no field
    │   └── SchemaNotRegisteredError     an operation named a schema never registered
    ├── ValidationError                  a value handed to Strata is not acceptable
    │   ├── MissingPrimaryKeyError       set() of a value without its primary key
    │   ├── InvalidValueError            wrong model type, undecodable row (.schema)
    │   ├── ValueTooLargeError           payload over Config.max_value_bytes (.size, .limit)
    │   └── InvalidKeyError              keyed-cache key empty, or ':' / '*' in a segment (.key)
    ├── NotFoundError                    get() of an id that no tier holds (.schema, .id)
    ├── ConflictError                    update() lost the race every attempt (.schema, .id,
    │                                    .attempts)
    ├── QueryError
    │   ├── InvalidQueryError            unknown / hostile identifier, bad lookup (.identifier)
    │   └── CacheMissError               force_l2() search with nothing cached
    ├── UnsupportedOperationError        the schema's tiers cannot do this (e.g. search, l3=None)
    ├── CryptoError
    │   ├── EncryptionError
    │   └── DecryptionError              wrong key, tampered or moved ciphertext (.key_id)
    ├── CodecError                       a cached payload is corrupt or foreign
    ├── TierError                        a tier failed (.tier: "l1" | "l2" | "l3")
    │   ├── TierUnavailableError         could not reach it / timed out
    │   └── IntegrityError               L3 refused the data (unique, not null, ...)
    ├── MigrationError                   migrate refused or failed (.diffs)
    ├── LockTimeoutError                 ds.cache lock not acquired within its wait (.key, .wait)
    ├── TxError
    │   ├── TxFailedError                commit failed; caches untouched
    │   │   └── SerializationError       retryable conflict (serialization / deadlock)
    │   ├── TxTimeoutError               the transaction outlived its timeout
    │   └── TxClosedError                a Tx used after its block ended
    └── WriteBehindError                 write-behind queue problem (.dead_letters)

Driver exceptions never leak: tiers translate them at their boundary and chain the original
with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class StrataError(Exception):
    """Root of every error Strata raises."""


class ConfigError(StrataError):
    pass


class LifecycleError(StrataError):
    pass


class SchemaError(StrataError):
    def __init__(self, message: str, *, model: str | None = None, field: str | None = None):
        super().__init__(message)
        self.model = model
        self.field = field


class InvalidModelError(SchemaError):
    pass


class SchemaDuplicateError(SchemaError):
    pass


class NoPrimaryKeyError(SchemaError):
    pass


class MultiplePrimaryKeysError(SchemaError):
    pass


class InvalidPrimaryKeyError(SchemaError):
    pass


class UnsupportedTypeError(SchemaError):
    pass


class FieldDefaultRequiredError(SchemaError):
    pass


class ConflictingFieldOptionsError(SchemaError):
    pass


class EncryptionKeyRequiredError(SchemaError):
    pass


class UnknownIndexFieldError(SchemaError):
    pass


class SchemaNotRegisteredError(SchemaError):
    pass


class ValidationError(StrataError):
    def __init__(self, message: str, *, schema: str | None = None):
        super().__init__(message)
        self.schema = schema


class MissingPrimaryKeyError(ValidationError):
    pass


class InvalidValueError(ValidationError):
    pass


class ValueTooLargeError(ValidationError):
    def __init__(self, message: str, *, size: int, limit: int, schema: str | None = None) -> None:
        super().__init__(message, schema=schema)
        self.size = size
        self.limit = limit


class InvalidKeyError(ValidationError):
    def __init__(self, message: str, *, key: Any = None) -> None:
        super().__init__(message)
        self.key = key


class LockTimeoutError(StrataError):
    def __init__(self, message: str, *, key: str, wait: float | None) -> None:
        super().__init__(message)
        self.key = key
        self.wait = wait


class NotFoundError(StrataError):
    def __init__(self, schema: str, id: Any):
        super().__init__(f"{schema}: no row with id {id!r}")
        self.schema = schema
        self.id = id


class ConflictError(StrataError):
    """A version-checked write (``ds.update``) found the row changed under it on every
    attempt: nothing of it was written."""

    def __init__(self, schema: str, id: Any, attempts: int):
        super().__init__(
            f"{schema}: {id!r} changed concurrently on each of {attempts} attempt(s); "
            "nothing was written"
        )
        self.schema = schema
        self.id = id
        self.attempts = attempts


class QueryError(StrataError):
    pass


class InvalidQueryError(QueryError):
    def __init__(self, message: str, *, identifier: str | None = None):
        super().__init__(message)
        self.identifier = identifier


class CacheMissError(QueryError):
    pass


class UnsupportedOperationError(StrataError):
    pass


class CryptoError(StrataError):
    pass


class EncryptionError(CryptoError):
    pass


class DecryptionError(CryptoError):
    def __init__(self, message: str, *, key_id: str | None = None):
        super().__init__(message)
        self.key_id = key_id


class CodecError(StrataError):
    pass


class TierError(StrataError):
    def __init__(self, message: str, *, tier: str):
        super().__init__(message)
        self.tier = tier


class TierUnavailableError(TierError):
    pass


class IntegrityError(TierError):
    pass


class MigrationError(StrataError):
    def __init__(self, message: str, *, diffs: Sequence[Any] = ()):
        super().__init__(message)
        self.diffs = list(diffs)


class TxError(StrataError):
    pass


class TxFailedError(TxError):
    pass


class TxTimeoutError(TxError):
    pass


class SerializationError(TxFailedError):
    """A retryable conflict (serialization failure, deadlock): run the whole transaction
    again, e.g. with ``DataStore.retry_tx``."""


class TxClosedError(TxError):
    pass


class WriteBehindError(StrataError):
    def __init__(self, message: str, *, dead_letters: Sequence[Any] = ()):
        super().__init__(message)
        self.dead_letters = list(dead_letters)
