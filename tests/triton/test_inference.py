"""Real images through the real Triton over gRPC: equal to eager PyTorch, batched, bounded."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from contracts.tensors import DEFAULT_MODEL_NAME
from serving.triton.client import (
    AsyncTritonClassifier,
    TritonBadRequest,
    TritonClassifier,
    TritonModelNotReady,
    TritonUnavailable,
    input_size,
)

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def test_real_images_equal_eager_model(triton, expected, lesions):
    _, images = lesions
    with TritonClassifier(triton.grpc_url) as client:
        served = np.concatenate([client.predict(images[:1]), client.predict(images[1:])])
        metadata = client.model_metadata()
    assert served.shape == (len(images), 7) and served.dtype == np.float32
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)
    assert metadata["versions"] == ["1"]
    # Any image size (versions may differ): each version's metadata.json gives its own.
    assert input_size(metadata) is None
    assert [int(d) for d in metadata["inputs"][0]["shape"]] == [-1, -1, -1, 3]


def test_async_client_equals_eager_model(triton, expected, lesions):
    _, images = lesions

    async def run():
        async with AsyncTritonClassifier(triton.grpc_url) as client:
            assert await client.ready()
            parts = await asyncio.gather(
                *(client.predict(images[i : i + 4]) for i in range(0, 28, 4))
            )
            return np.concatenate(parts), await client.model_metadata()

    served, metadata = asyncio.run(run())
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)
    assert metadata["name"] == DEFAULT_MODEL_NAME


def _counts(url: str) -> tuple[int, int]:
    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(DEFAULT_MODEL_NAME, as_json=True)
    model = stats["model_stats"][0]
    return int(model.get("inference_count", 0)), int(model.get("execution_count", 0))


def test_concurrent_requests_are_batched(triton, expected, lesions):
    _, images = lesions
    inferences0, executions0 = _counts(triton.grpc_url)
    n = 32
    results: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        client = TritonClassifier(triton.grpc_url, timeout_s=60)
        barrier.wait()
        results[i] = client.predict(images[i % len(images)][None])
        client.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    inferences, executions = _counts(triton.grpc_url)
    inferences, executions = inferences - inferences0, executions - executions0
    assert inferences == n
    assert executions < inferences, f"{n} requests ran in {executions} executions: no batching"
    for i, probs in results.items():
        np.testing.assert_allclose(probs[0], expected[i % len(images)], rtol=0, atol=1e-5)


def test_bad_requests_get_clear_errors(triton, lesions):
    _, images = lesions
    with TritonClassifier(triton.grpc_url) as client:
        with pytest.raises(TritonBadRequest, match="shape"):
            client.predict(np.zeros((1, 10, 10, 3), np.uint8))
        with pytest.raises(TritonBadRequest, match="uint8"):
            client.predict(images.astype(np.float32))
        with pytest.raises(TritonModelNotReady, match="version 9"):
            client.predict(images[:1], version=9)
        assert not client.ready(version=9)
    with pytest.raises(TritonModelNotReady, match="no_such_model"):
        TritonClassifier(triton.grpc_url, "no_such_model").predict(images[:1])


def test_hung_server_fails_within_deadline(triton, lesions):
    """A server that stops answering (SIGSTOP) costs the caller its deadline, not a hang."""
    _, images = lesions
    deadline = 1.5
    client = TritonClassifier(triton.grpc_url, timeout_s=deadline)
    assert client.ready()
    os.kill(triton.process.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(TritonUnavailable, match="deadline"):
            client.predict(images[:1])
        assert time.monotonic() - start < deadline + 1.0

        async def call() -> None:
            async with AsyncTritonClassifier(triton.grpc_url, timeout_s=deadline) as aclient:
                await aclient.predict(images[:1])

        start = time.monotonic()
        with pytest.raises(TritonUnavailable):
            asyncio.run(call())
        assert time.monotonic() - start < deadline + 1.0
    finally:
        os.kill(triton.process.pid, signal.SIGCONT)
    # And it recovers (given time to work off what queued up while it was stopped).
    assert TritonClassifier(triton.grpc_url, timeout_s=60).predict(images[:1]).shape == (1, 7)
