"""Strata: an async three-tier data store (memory, Redis, PostgreSQL) behind one typed API."""

from __future__ import annotations

from strata import errors
from strata.cache import Cost
from strata.config import Config, WriteMode
from strata.crypto import generate_key
from strata.datastore import DataStore
from strata.fields import Field
from strata.observability import Observer, Observers, Stats
from strata.query import Projection, Q, Query
from strata.schema import (
    Eviction,
    Index,
    MemPolicy,
    PostgresPolicy,
    RedisPolicy,
    Schema,
    SchemaHooks,
)
from strata.tiers.base import Id
from strata.tx import Tx

__version__ = "0.1.0"

__all__ = [
    "Config",
    "Cost",
    "DataStore",
    "Eviction",
    "Field",
    "Id",
    "Index",
    "MemPolicy",
    "Observer",
    "Observers",
    "PostgresPolicy",
    "Projection",
    "Q",
    "Query",
    "RedisPolicy",
    "Schema",
    "SchemaHooks",
    "Stats",
    "Tx",
    "WriteMode",
    "__version__",
    "errors",
    "generate_key",
]
