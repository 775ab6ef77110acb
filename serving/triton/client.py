"""The gRPC clients of the exported classifier (names and tensors: :mod:`contracts.tensors`).

Every call carries a deadline and fails with one of a small set of exceptions:
``TritonUnavailable`` (server down, unreachable or too slow), ``TritonModelNotReady`` (no such
model or version loaded), ``TritonBadRequest`` (the input is wrong), all ``TritonError``.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from contracts.tensors import (
    CLINICAL_DATATYPE,
    CLINICAL_INPUT_NAME,
    DEFAULT_MODEL_NAME,
    INPUT_DATATYPE,
    INPUT_NAME,
    OOD_OUTPUT_NAME,
    OUTPUT_NAME,
)
from serving.request_context import current_request_id

DEFAULT_URL = "127.0.0.1:8001"
DEFAULT_TIMEOUT_S = 10.0


class TritonError(RuntimeError):
    """A Triton call failed; the message says what happened."""


class TritonUnavailable(TritonError):
    """The server cannot be reached, or did not answer within the deadline."""


class TritonModelNotReady(TritonError):
    """The server answers but the model (or the requested version) is not loaded."""


class TritonBadRequest(TritonError):
    """The server rejected the input (shape, dtype, batch size)."""


def map_error(exc: InferenceServerException, url: str, model: str) -> TritonError:
    """Translate tritonclient's exception (a gRPC status in a string) into ours."""
    status = str(exc.status() or "")
    message = str(exc.message() or exc)
    lowered = message.lower()
    if "DEADLINE_EXCEEDED" in status:
        return TritonUnavailable(f"Triton at {url} did not answer within the deadline: {message}")
    if "UNAVAILABLE" in status and ("model" not in lowered or "connect" in lowered):
        return TritonUnavailable(
            f"Triton at {url} is unreachable ({message}); is the server running? "
            "Start one with `python -m serving.triton`."
        )
    if "NOT_FOUND" in status or "UNAVAILABLE" in status or "unknown model" in lowered:
        return TritonModelNotReady(
            f"model {model!r} is not ready on Triton at {url}: {message}; "
            "check `python -m serving.versions list`."
        )
    if "INVALID_ARGUMENT" in status or "unexpected shape" in lowered:
        return TritonBadRequest(f"Triton rejected the request for {model!r}: {message}")
    if "CANCELLED" in status:
        return TritonUnavailable(f"call to Triton at {url} was cancelled: {message}")
    return TritonError(f"Triton at {url} failed for {model!r}: [{status}] {message}")


def check_batch(batch: np.ndarray) -> np.ndarray:
    """Validate a batch before it travels: ``uint8 [N, H, W, 3]``, N >= 1."""
    if not isinstance(batch, np.ndarray) or batch.dtype != np.uint8:
        kind = getattr(batch, "dtype", type(batch).__name__)
        raise TritonBadRequest(f"expected a numpy uint8 array [N, H, W, 3], got {kind}")
    if batch.ndim != 4 or batch.shape[3] != 3 or batch.shape[0] < 1:
        raise TritonBadRequest(
            f"expected RGB images [N, H, W, 3] with N >= 1, got shape {batch.shape}; "
            "resize with contracts.images.eval_resize and stack them"
        )
    return np.ascontiguousarray(batch)


def check_clinical(clinical: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """Validate a fusion version's clinical rows before they travel: ``float32 [N, D]``, one
    row per image of ``batch`` (``contracts.clinical.encode_batch`` makes them)."""
    rows = np.asarray(clinical)
    if (
        rows.ndim != 2
        or rows.shape[0] != batch.shape[0]
        or not np.issubdtype(rows.dtype, np.number)
    ):
        raise TritonBadRequest(
            f"expected the clinical rows float32 [N, D] with N = {batch.shape[0]} images, got "
            f"{rows.dtype} {list(rows.shape)}; encode them with contracts.clinical.encode_batch"
        )
    return np.ascontiguousarray(rows, np.float32)


def _clinical_input(clinical: np.ndarray, module: Any) -> Any:
    """The ``clinical__1`` input of a fusion version (its model's second argument)."""
    tensor = module.InferInput(CLINICAL_INPUT_NAME, list(clinical.shape), CLINICAL_DATATYPE)
    tensor.set_data_from_numpy(clinical)
    return tensor


def input_size(metadata: dict[str, Any]) -> tuple[int, int] | None:
    """``(height, width)`` the served model expects, from Triton's model metadata (JSON form);
    None when the model takes any size (``-1``: each version's ``metadata.json`` says)."""
    for tensor in metadata.get("inputs", []):
        if tensor["name"] == INPUT_NAME:
            *_, height, width, _channels = (int(d) for d in tensor["shape"])
            return None if height < 0 or width < 0 else (height, width)
    raise TritonError(f"model metadata has no input {INPUT_NAME!r}: {metadata}")


def _request(
    batch: np.ndarray, module: Any, outputs: tuple[str, ...] = (OUTPUT_NAME,)
) -> tuple[list[Any], list[Any]]:
    tensor = module.InferInput(INPUT_NAME, list(batch.shape), INPUT_DATATYPE)
    tensor.set_data_from_numpy(batch)
    return [tensor], [module.InferRequestedOutput(name) for name in outputs]


WITH_SCORE = (OUTPUT_NAME, OOD_OUTPUT_NAME)


def _with_score(result: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities [N, 7], ood_score [N])`` of an answer that has both outputs."""
    probs, score = result.as_numpy(OUTPUT_NAME), result.as_numpy(OOD_OUTPUT_NAME)
    if probs is None or score is None:
        raise TritonError(f"Triton's answer lacks {OUTPUT_NAME!r} or {OOD_OUTPUT_NAME!r}")
    return probs, score.reshape(len(score))


def _no_score_output(error: TritonError, version: int | None) -> TritonError:
    """A clearer error when the (served) version has no score output: exported without the
    gate (``gate.ood`` absent from its metadata.json)."""
    if isinstance(error, TritonBadRequest) and OOD_OUTPUT_NAME in str(error):
        which = f"version {version}" if version else "the served version"
        return TritonBadRequest(
            f"{which} has no {OOD_OUTPUT_NAME!r} output (exported without the "
            f"out-of-distribution gate: no gate.ood in its metadata.json); call predict: {error}"
        )
    return error


class _Classifier:
    """What both clients share: the endpoint, the model, the deadline and the call arguments.

    Args:
        url: ``host:port`` of Triton's gRPC endpoint.
        model_name: the model's name in the repository.
        timeout_s: deadline of every call, in seconds.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        model_name: str = DEFAULT_MODEL_NAME,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.url, self.model_name, self.timeout_s = url, model_name, timeout_s
        # Channels are opened on first use (the asyncio one inside the running event loop).
        self._sync_client: grpcclient.InferenceServerClient | None = None
        self._aio_client: aioclient.InferenceServerClient | None = None

    def _model_args(self, version: int | None) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_version": str(version or ""),
            "client_timeout": self.timeout_s,
        }

    def _infer_args(
        self,
        batch: np.ndarray,
        version: int | None,
        module: Any,
        outputs: tuple[str, ...] = (OUTPUT_NAME,),
        clinical: np.ndarray | None = None,
    ) -> dict[str, Any]:
        inputs, requested = _request(check_batch(batch), module, outputs)
        if clinical is not None:  # a fusion version's second input (contracts.clinical)
            inputs.append(_clinical_input(check_clinical(clinical, batch), module))
        # The gateway's request id names the inference in Triton's logs and traces too.
        traced = {"request_id": request_id} if (request_id := current_request_id()) else {}
        return {**self._model_args(version), "inputs": inputs, "outputs": requested, **traced}

    def _error(self, exc: InferenceServerException) -> TritonError:
        return map_error(exc, self.url, self.model_name)


class TritonClassifier(_Classifier):
    """Blocking gRPC client for the exported classifier (arguments: :class:`_Classifier`)."""

    @property
    def client(self) -> grpcclient.InferenceServerClient:
        if self._sync_client is None:
            self._sync_client = grpcclient.InferenceServerClient(self.url)
        return self._sync_client

    def predict(
        self, batch: np.ndarray, version: int | None = None, clinical: np.ndarray | None = None
    ) -> np.ndarray:
        """Probabilities ``float32 [N, 7]`` for a ``uint8 [N, H, W, 3]`` batch; ``clinical``:
        the patients' metadata rows ``float32 [N, D]`` for a fusion version (its
        ``clinical__1`` input, ``contracts.clinical.encode_batch``), None for an image-only one."""
        args = self._infer_args(batch, version, grpcclient, clinical=clinical)
        try:
            result = self.client.infer(**args)
        except InferenceServerException as exc:
            raise self._error(exc) from None
        return cast(np.ndarray, result.as_numpy(OUTPUT_NAME))

    def predict_with_score(
        self, batch: np.ndarray, version: int | None = None, clinical: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities ``float32 [N, 7]`` and out-of-distribution scores ``float32 [N]``
        (higher = further from the training photos; refuse over the version's
        ``gate.ood.threshold``) for a ``uint8 [N, H, W, 3]`` batch (and the clinical rows of
        a fusion version: :meth:`TritonClassifier.predict`).

        Raises:
            TritonBadRequest: also when the version has no score output (no gate).
        """
        args = self._infer_args(batch, version, grpcclient, WITH_SCORE, clinical)
        try:
            result = self.client.infer(**args)
        except InferenceServerException as exc:
            raise _no_score_output(self._error(exc), version) from None
        return _with_score(result)

    def ready(self, version: int | None = None) -> bool:
        """True when the server answers and the model (version) is loaded; never raises."""
        try:
            return bool(self.client.is_model_ready(**self._model_args(version)))
        except InferenceServerException:
            return False

    def model_metadata(self, version: int | None = None) -> dict[str, Any]:
        """Triton's metadata of the model: name, loaded ``versions``, tensor names and shapes."""
        try:
            metadata = self.client.get_model_metadata(**self._model_args(version), as_json=True)
        except InferenceServerException as exc:
            raise self._error(exc) from None
        return cast(dict[str, Any], metadata)

    def close(self) -> None:
        if self._sync_client is not None:
            self._sync_client.close()
            self._sync_client = None

    def __enter__(self) -> TritonClassifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncTritonClassifier(_Classifier):
    """The same client on ``tritonclient.grpc.aio``, for asyncio code such as the gateway.

    The gRPC channel is created on first use, inside the running event loop.
    """

    @property
    def client(self) -> aioclient.InferenceServerClient:
        if self._aio_client is None:
            self._aio_client = aioclient.InferenceServerClient(self.url)
        return self._aio_client

    async def predict(
        self, batch: np.ndarray, version: int | None = None, clinical: np.ndarray | None = None
    ) -> np.ndarray:
        """Probabilities ``float32 [N, 7]`` for a ``uint8 [N, H, W, 3]`` batch; ``clinical``:
        as :meth:`TritonClassifier.predict`."""
        args = self._infer_args(batch, version, aioclient, clinical=clinical)
        try:
            result = await self.client.infer(**args)
        except InferenceServerException as exc:
            raise self._error(exc) from None
        return cast(np.ndarray, result.as_numpy(OUTPUT_NAME))

    async def predict_outputs(
        self,
        batch: np.ndarray,
        version: int | None,
        outputs: tuple[str, ...],
        clinical: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """The named outputs of one inference for a ``uint8 [N, H, W, 3]`` batch (and the
        clinical rows of a fusion version: :meth:`TritonClassifier.predict`).

        Raises:
            TritonBadRequest: also when the version lacks one of the outputs.
        """
        args = self._infer_args(batch, version, aioclient, outputs, clinical)
        try:
            result = await self.client.infer(**args)
        except InferenceServerException as exc:
            raise self._error(exc) from None
        return {name: result.as_numpy(name) for name in outputs}

    async def predict_with_score(
        self, batch: np.ndarray, version: int | None = None, clinical: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities ``float32 [N, 7]`` and out-of-distribution scores ``float32 [N]``
        (higher = further from the training photos; refuse over the version's
        ``gate.ood.threshold``) for a ``uint8 [N, H, W, 3]`` batch (and the clinical rows of
        a fusion version: :meth:`TritonClassifier.predict`).

        Raises:
            TritonBadRequest: also when the version has no score output (no gate).
        """
        args = self._infer_args(batch, version, aioclient, WITH_SCORE, clinical)
        try:
            result = await self.client.infer(**args)
        except InferenceServerException as exc:
            raise _no_score_output(self._error(exc), version) from None
        return _with_score(result)

    async def ready(self, version: int | None = None) -> bool:
        """True when the server answers and the model (version) is loaded; never raises."""
        try:
            return bool(await self.client.is_model_ready(**self._model_args(version)))
        except InferenceServerException:
            return False

    async def model_metadata(self, version: int | None = None) -> dict[str, Any]:
        """Triton's metadata of the model: name, loaded ``versions``, tensor names and shapes."""
        try:
            metadata = await self.client.get_model_metadata(
                **self._model_args(version), as_json=True
            )
        except InferenceServerException as exc:
            raise self._error(exc) from None
        return cast(dict[str, Any], metadata)

    async def close(self) -> None:
        if self._aio_client is not None:
            await self._aio_client.close()
            self._aio_client = None

    async def __aenter__(self) -> AsyncTritonClassifier:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def load_models(grpc_url: str, names: list[str], timeout_s: float = 120.0) -> None:
    """Ask a running server to (re)load models from its repository; it re-reads the config.

    Raises:
        TritonError: a model failed to load, or the server cannot be reached.
    """
    with grpcclient.InferenceServerClient(grpc_url) as client:
        for name in names:
            try:
                client.load_model(name, client_timeout=timeout_s)
            except InferenceServerException as exc:
                raise map_error(exc, grpc_url, name) from None
