"""One prediction at Triton within a deadline, retried only where retrying is safe.

Inference is idempotent (same input, same output, nothing stored at Triton), so a call that
failed with UNAVAILABLE (server restarting, connection refused) may be sent again. Retries
back off exponentially and never outlive the overall deadline; a bad request or a model that
is not loaded is never retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np

from serving.triton.client import AsyncTritonClassifier, TritonUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


async def predict_with_retries(
    client: AsyncTritonClassifier,
    batch: np.ndarray,
    version: int,
    deadline_s: float,
    retries: int,
    backoff_s: float = 0.05,
) -> np.ndarray:
    """``client.predict(batch, version)`` with bounded retries on ``TritonUnavailable``.

    Raises:
        TritonUnavailable: still unavailable after the retries, or the deadline passed.
        TritonModelNotReady, TritonBadRequest: at once, without retrying.
    """
    return await _with_retries(
        lambda: client.predict(batch, version), deadline_s, retries, backoff_s
    )


async def predict_outputs_with_retries(  # noqa: PLR0913 (the call and its retry policy)
    client: AsyncTritonClassifier,
    batch: np.ndarray,
    version: int,
    outputs: tuple[str, ...],
    deadline_s: float,
    retries: int,
    backoff_s: float = 0.05,
    clinical: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """``client.predict_outputs(batch, version, outputs, clinical)``: the named outputs of one
    call (probabilities, the gate's score, the class-activation maps; ``clinical``: a fusion
    version's second input), retried as :func:`predict_with_retries`."""
    return await _with_retries(
        lambda: client.predict_outputs(batch, version, outputs, clinical),
        deadline_s,
        retries,
        backoff_s,
    )


async def _with_retries(
    call: Callable[[], Awaitable[T]], deadline_s: float, retries: int, backoff_s: float
) -> T:
    deadline = time.monotonic() + deadline_s
    attempt = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TritonUnavailable(f"no answer from Triton within {deadline_s:.1f} s")
        try:
            async with asyncio.timeout(remaining):
                return await call()
        except TimeoutError:
            raise TritonUnavailable(f"no answer from Triton within {deadline_s:.1f} s") from None
        except TritonUnavailable as e:
            pause = backoff_s * 2**attempt
            if attempt >= retries or time.monotonic() + pause >= deadline:
                raise
            attempt += 1
            log.info("Triton unavailable (%s); retry %d in %.2f s", e, attempt, pause)
            await asyncio.sleep(pause)
