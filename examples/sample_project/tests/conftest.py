"""The only set-up the plugin needs: which schemas a store registers."""

from __future__ import annotations

import pytest
from shop import SCHEMAS

from strata import Schema


@pytest.fixture
def strata_schemas() -> list[Schema]:
    return SCHEMAS
