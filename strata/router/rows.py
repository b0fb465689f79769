"""Model <-> L3 row, and projected rows.

A canonical L3 row is a dict of column name -> value (see ``strata.tiers.base``): encrypted
columns are sealed here on the way in and opened on the way out, enums stored by name are
mapped back, renamed columns go back to their field names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pydantic
from pydantic import BaseModel, TypeAdapter
from pydantic_core import PydanticSerializationError

from strata.crypto import FieldCipher
from strata.errors import InvalidQueryError, InvalidValueError
from strata.schema import VERSION_COLUMN, ColumnKind, ColumnSpec, CompiledSchema, enum_to_text

__all__ = ["RowMapper"]


class RowMapper:
    """The row conversions of one schema, resolved once."""

    __slots__ = (
        "aad_table",
        "batch",
        "cipher",
        "column_fields",
        "cs",
        "datetime_fields",
        "encrypted",
        "encrypted_columns",
        "enum_by_name",
        "finite_fields",
        "json_fields",
        "model",
        "name",
        "pk_column",
        "pk_field",
        "renames",
        "simple_rows",
        "to_check",
    )

    def __init__(self, cs: CompiledSchema, cipher: FieldCipher | None) -> None:
        self.cs = cs
        self.cipher = cipher
        self.name = cs.name
        self.model = cs.model
        self.pk_field = cs.pk.field
        self.pk_column = cs.pk.name
        self.aad_table = cs.table.name
        self.column_fields = {c.field for c in cs.columns}
        self.json_fields = {
            c.field for c in cs.columns if c.value_kind is ColumnKind.JSON or c.meta.encrypted
        }
        # JSON values and floats (encrypted or not) must be finite: JSON (the L2 codec, the
        # JSON columns) has no NaN nor infinity, and SQLite stores NaN as NULL.
        self.finite_fields = {
            c.field for c in cs.columns if c.value_kind in (ColumnKind.JSON, ColumnKind.FLOAT)
        }
        self.datetime_fields = [c.field for c in cs.columns if c.value_kind is ColumnKind.DATETIME]
        self.encrypted = cs.encrypted
        self.encrypted_columns = frozenset(c.name for c in cs.encrypted)
        self.renames = [(c.name, c.field) for c in cs.columns if c.name != c.field]
        self.enum_by_name = [
            c
            for c in cs.columns
            if c.enum_type is not None
            and not c.meta.encrypted
            and not all(isinstance(m.value, str) for m in c.enum_type)
        ]
        self.simple_rows = not (self.renames or self.encrypted or self.enum_by_name)
        # to_rows: one serializer call for a batch (no renames, nothing to seal), then only
        # the columns that may need a conversion or a check are looked at
        self.batch: TypeAdapter[list[Any]] | None = None
        if not (self.renames or self.encrypted):
            try:
                self.batch = TypeAdapter(list[cs.model])  # type: ignore[name-defined]
            except pydantic.PydanticUserError:  # a model pydantic cannot adapt: one at a time
                self.batch = None
        self.to_check = [(c.name, c.kind) for c in cs.columns if c.kind not in _NEVER_STR]

    def normalised(self, value: BaseModel) -> BaseModel:
        """The value every tier will give back, checked once before any tier is written: a
        NaN or infinity in a float field or inside a JSON field is refused (JSON cannot
        carry it, SQLite makes NaN NULL: tiers would hand back something else), and a naive
        datetime becomes UTC (as PostgreSQL stores it), so L1 and L2 do not hand back what
        L3 would not. ``value`` is the write's private copy: changed in place."""
        d = value.__dict__
        for f in self.finite_fields:
            if not _finite(d.get(f)):
                raise InvalidValueError(
                    f"{self.name}.{f}: NaN and infinity cannot be stored (not in JSON, not "
                    "in a float column: no tier could give them back the same)",
                    schema=self.name,
                )
        for f in self.datetime_fields:
            v = d.get(f)
            if isinstance(v, datetime) and v.tzinfo is None:
                # not setattr: validate_assignment or a frozen model must not refuse it, and
                # the field stays assigned (or not) as it was
                value.__dict__[f] = v.replace(tzinfo=UTC)
        return value

    def to_row(self, value: BaseModel, id: Any) -> dict[str, Any]:
        """Canonical L3 row (column -> value); encrypted columns sealed here."""
        return self._columns(value, id, self.column_fields, self.cs.columns)

    def to_rows(self, values: Mapping[Any, BaseModel]) -> dict[Any, dict[str, Any]]:
        """``to_row`` of each value (by id), the model dumps done in one serializer call."""
        batch, model = self.batch, self.model
        models = list(values.values())
        if batch is None or len(models) < 2 or any(type(v) is not model for v in models):
            return {i: self.to_row(v, i) for i, v in values.items()}
        fields = self.column_fields
        include = None if len(fields) == len(model.model_fields) else {"__all__": fields}
        try:
            rows: list[dict[str, Any]] = batch.dump_python(
                models, include=include, warnings="error"
            )
            if self.json_fields:
                wanted = {"__all__": self.json_fields}
                dumped = batch.dump_python(models, mode="json", include=wanted, warnings="error")
                for row, js in zip(rows, dumped, strict=True):
                    row.update(js)
        except (PydanticSerializationError, TypeError, ValueError):
            for i, v in values.items():
                self.to_row(v, i)  # raises, naming the value
            raise
        checks = self.to_check
        if checks:
            for row in rows:
                for name, kind in checks:
                    v = row[name]
                    if v is None:
                        continue
                    if kind is ColumnKind.ENUM:
                        row[name] = enum_to_text(v) if not isinstance(v, str) else v
                    elif kind is ColumnKind.DATETIME:
                        if v.tzinfo is None:
                            row[name] = v.replace(tzinfo=UTC)
                    elif type(v) is str and not v.isascii():
                        _check_utf8(self.name, name, v)
        return dict(zip(values, rows, strict=True))

    def partial_row(self, values: Mapping[str, Any], id: Any) -> dict[str, Any]:
        """Canonical L3 columns for some fields only (``patch``), values already validated:
        checked and normalised as a whole value would be (NaN, naive datetimes)."""
        value = self.normalised(self.model.model_construct(**values))
        specs = [self.cs.by_field[f] for f in values]
        return self._columns(value, id, set(values), specs)

    def _columns(
        self, value: BaseModel, id: Any, fields: set[str], specs: Sequence[ColumnSpec]
    ) -> dict[str, Any]:
        try:
            # warnings="error": a model_construct() value of the wrong type is refused here
            # rather than stored as whatever the driver makes of it.
            data = value.model_dump(include=fields, warnings="error")
            json_fields = self.json_fields & fields
            if json_fields:
                data.update(value.model_dump(mode="json", include=json_fields, warnings="error"))
        except (PydanticSerializationError, TypeError, ValueError) as exc:
            # model_construct() lets any value in; it shows here, before any tier is touched.
            raise InvalidValueError(
                f"{self.name}: {id!r} cannot be stored: {exc}", schema=self.name
            ) from exc
        row: dict[str, Any] = {}
        for spec in specs:
            v = data[spec.field]
            if v is not None:
                kind = spec.kind
                if kind is ColumnKind.ENCRYPTED:
                    assert self.cipher is not None
                    v = self.cipher.encrypt(
                        orjson.dumps(v), FieldCipher.aad(self.aad_table, id, spec.name)
                    )
                elif kind is ColumnKind.ENUM:
                    v = enum_to_text(v) if not isinstance(v, str) else v
                elif kind is ColumnKind.DATETIME and v.tzinfo is None:
                    v = v.replace(tzinfo=UTC)
                elif type(v) is str and not v.isascii():
                    _check_utf8(self.name, spec.field, v)
            row[spec.name] = v
        return row

    def from_row(self, row: dict[str, Any]) -> tuple[BaseModel, int]:
        version = row.pop(VERSION_COLUMN, 0) or 0
        if not self.simple_rows:
            pk = row[self.pk_column]
            for spec in self.encrypted:
                blob = row.get(spec.name)
                if blob is not None:
                    assert self.cipher is not None
                    plain = self.cipher.decrypt(
                        blob, FieldCipher.aad(self.aad_table, pk, spec.name)
                    )
                    row[spec.name] = orjson.loads(plain)
            for spec in self.enum_by_name:
                v = row.get(spec.name)
                if v is not None and spec.enum_type is not None:
                    row[spec.name] = spec.enum_type[v]
            for column, field in self.renames:
                row[field] = row.pop(column)
        try:
            return self.model.model_validate(row), int(version)
        except pydantic.ValidationError as exc:
            raise InvalidValueError(
                f"{self.name}: a stored row does not fit the model: {exc}", schema=self.name
            ) from exc

    def sealed(self, row: Mapping[str, Any]) -> dict[str, bytes]:
        """The encrypted columns of an L3 row, by field, before decryption (L2 reuses them)."""
        if not self.encrypted:
            return {}
        return {s.field: row[s.name] for s in self.encrypted if row.get(s.name) is not None}

    def projection(
        self, columns: Sequence[str], rows: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Projected rows as dicts keyed by field name (encrypted fields decrypted)."""
        by_column = self.cs.by_column
        enc = [by_column[c] for c in columns if by_column[c].meta.encrypted]
        if enc and self.pk_column not in columns:
            raise InvalidQueryError(
                f"{self.name}: fields() with an encrypted field must include the primary key "
                f"{self.pk_field!r} (it is part of the decryption context)",
                identifier=enc[0].field,
            )
        out = []
        for row in rows:
            for spec in enc:
                blob = row.get(spec.name)
                if blob is not None:
                    assert self.cipher is not None
                    aad = FieldCipher.aad(self.aad_table, row[self.pk_column], spec.name)
                    row[spec.name] = orjson.loads(self.cipher.decrypt(blob, aad))
            out.append({by_column[c].field: row[c] for c in columns})
        return out


_NEVER_STR = frozenset(
    (
        ColumnKind.INT,
        ColumnKind.FLOAT,
        ColumnKind.BOOL,
        ColumnKind.DATE,
        ColumnKind.TIME,
        ColumnKind.BYTES,
        ColumnKind.UUID,
        ColumnKind.DECIMAL,
    )
)
"""Column kinds whose dumped value is never a str nor needs converting (to_rows)."""


def _finite(value: Any) -> bool:
    """No NaN nor infinity anywhere inside a JSON value (models, dicts, lists, tuples)."""
    if type(value) is float:
        return math.isfinite(value)
    if isinstance(value, BaseModel):
        return all(_finite(v) for v in value.__dict__.values())
    if isinstance(value, Mapping):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list | tuple | set | frozenset):
        return all(_finite(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return True


def _check_utf8(schema: str, field: str, text: str) -> None:
    """A lone surrogate (``"\\udcff"``) has no UTF-8 form: no tier could store it."""
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise InvalidValueError(
            f"{schema}.{field}: text is not valid UTF-8 ({exc.reason})", schema=schema
        ) from exc
