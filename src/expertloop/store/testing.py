"""Test helpers: run the same tests over SQLite and PostgreSQL.

``EXPERTLOOP_TEST_POSTGRES_URL`` names a PostgreSQL database the tests may wipe
(``.ci/postgres.sh`` starts a throwaway server and sets it). Without it the
PostgreSQL parameters are skipped, unless ``EXPERTLOOP_REQUIRE_POSTGRES=1``
(set in CI), where they fail instead.
"""

from __future__ import annotations

import os
from pathlib import Path

PG_ENV = "EXPERTLOOP_TEST_POSTGRES_URL"
REQUIRE_ENV = "EXPERTLOOP_REQUIRE_POSTGRES"


def postgres_url() -> str | None:
    return os.environ.get(PG_ENV) or None


def backend_params() -> list:
    """``pytest.param("sqlite")`` and ``pytest.param("postgresql")`` (skip-marked if absent)."""
    import pytest

    skip = postgres_url() is None and os.environ.get(REQUIRE_ENV) != "1"
    return [
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.skipif(
            skip, reason=f"no PostgreSQL server: set {PG_ENV} (see .ci/postgres.sh)")),
    ]


def fresh_location(backend: str, tmp_path: Path) -> tuple[str, Path]:
    """(location, files_dir) of an empty store for ``backend``; wipes the PG database."""
    if backend == "sqlite":
        return str(tmp_path / "project"), tmp_path / "project"
    url = postgres_url()
    if url is None:
        raise RuntimeError(f"{REQUIRE_ENV}=1 but {PG_ENV} is not set: "
                           "start a server with `source .ci/postgres.sh`")
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()
    files = tmp_path / "files"
    files.mkdir(exist_ok=True)
    return url, files
