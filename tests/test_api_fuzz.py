"""Fuzz every operation of the OpenAPI spec with schemathesis, authenticated as a platform
admin, against the real app on a real SQLite file: no 5xx, no response that contradicts
the schema (status codes, content types, bodies). Schemathesis also sends invalid data
(wrong types, out-of-range numbers, malformed bodies) to every operation."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from coordinator.api import AdminSettings, create_app
from coordinator.db import Database
from coordinator.services.keys import bootstrap_admin_key

EXAMPLES_PER_OPERATION = int(os.environ.get("LEPTON_FUZZ_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


# Schemathesis needs the schema when tests are collected, so the app is built at import time
# in a temporary directory that the module-scoped fixture below removes afterwards.
_DATA_DIR = tempfile.TemporaryDirectory(prefix="lepton-fuzz-")
_APP = create_app(AdminSettings(data_dir=Path(_DATA_DIR.name)))
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP)


@pytest.fixture(scope="module")
def admin_headers() -> Iterator[dict[str, str]]:
    db: Database = _APP.state.context.db
    _, key = bootstrap_admin_key(db)
    yield {"Authorization": f"Bearer {key}"}
    db.dispose()
    _DATA_DIR.cleanup()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_error_and_no_schema_violation(
    case: schemathesis.Case, admin_headers: dict[str, str]
) -> None:
    case.call_and_validate(headers=admin_headers, checks=CHECKS)
