"""Query parameters shared by every list endpoint."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

# 1000 rows of hosts is ~1 MB of JSON: the largest page worth serving in one response.
MAX_LIMIT = 1000
# Offsets beyond 2**31 are nonsense for our tables and overflow some back ends' integer types.
MAX_OFFSET = 2**31 - 1

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="page size")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="rows to skip")]
# A row id in a path: ids are 32-bit integer columns, so a number outside 1..2**31-1 names no row
# (and overflowed the database driver: 500, issue 18); out of range is a 422 naming the field.
MAX_ID = 2**31 - 1
RowId = Annotated[int, Path(ge=1, le=MAX_ID, description="row id")]
