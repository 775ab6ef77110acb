"""A short soak for CI: 300 uploads at concurrency 32, no error, every answer recorded.

The long run (10,000 uploads, memory followed) is ``python -m benchmarks.load_soak``; its
figures are in docs/reliability.md.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from benchmarks.load_soak import LoadLoop
from serving.db.tables import Prediction
from tests.fixtures_serving import API_KEY

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def test_300_uploads_at_concurrency_32(gateway: Any, photos: list[bytes]) -> None:
    with gateway.engine.connect() as conn:
        before = set(conn.scalars(select(Prediction.id)))
    result = LoadLoop(gateway.url, API_KEY, photos, concurrency=32, requests=300).start().wait(300)
    assert result.statuses == {201: 300}, (result.statuses, result.failures[:5])
    with gateway.engine.connect() as conn:
        stored = set(conn.scalars(select(Prediction.id))) - before
    assert stored == set(result.ids) and len(stored) == 300
    print(f"300 at 32: {300 / result.elapsed_s:.1f} req/s, max {max(result.latencies):.2f} s")
