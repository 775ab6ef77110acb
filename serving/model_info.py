"""What Triton serves right now: version, input size, referral thresholds, metadata.

The input size comes from Triton's own model metadata (the shape the server will accept);
the thresholds and the rest from the version's ``metadata.json`` in the model repository
folder, when the gateway can read it. The answer is cached for ``ttl_s`` seconds, and every
prediction names the version explicitly, so a version rolled forward mid-request cannot mix
one version's input size or thresholds with another's probabilities.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.metadata import (
    METADATA_FILE,
    REFERRAL_TARGETS,
    MetadataError,
    VersionMetadata,
    read_metadata,
)
from serving.triton.client import AsyncTritonClassifier, TritonModelNotReady, input_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """The version Triton serves, with what its ``metadata.json`` says (None: not readable)."""

    name: str
    version: str
    input_size: tuple[int, int]  # (height, width)
    thresholds: dict[str, float]  # referral target -> threshold
    threshold_source: str  # "metadata.json", "metadata.json+default" or "default"
    metadata: VersionMetadata | None = None


def version_metadata(repository: Path | None, model: str, version: str) -> VersionMetadata | None:
    """``<repository>/<model>/<version>/metadata.json``, or None when absent or unreadable.

    An unreadable file (not JSON, not the schema) is logged as a warning, not raised: the
    gateway then serves with default thresholds.
    """
    if repository is None:
        return None
    path = repository / model / version / METADATA_FILE
    if not path.exists():
        return None
    try:
        return read_metadata(path)
    except MetadataError as e:
        log.warning("%s", e)
        return None


def referral_thresholds(
    metadata: VersionMetadata | None, default: float
) -> tuple[dict[str, float], str]:
    """Referral thresholds per target, and where they come from.

    A target without a valid threshold in (0, 1] in ``metadata.json`` gets ``default``.

    Returns:
        ``({"malignant": t, "mel": t}, source)``; source is ``metadata.json``,
        ``metadata.json+default`` or ``default``.
    """
    found = metadata.referral_thresholds() if metadata is not None else {}
    source = "metadata.json" if len(found) == len(REFERRAL_TARGETS) else "default"
    if 0 < len(found) < len(REFERRAL_TARGETS):
        source = "metadata.json+default"
    return {t: found.get(t, default) for t in REFERRAL_TARGETS}, source


class ModelCatalog:
    """Resolves and caches the served version of one model."""

    def __init__(
        self,
        client: AsyncTritonClassifier,
        repository: Path | None,
        ttl_s: float,
        default_threshold: float,
    ) -> None:
        self.client, self.repository = client, repository
        self.ttl_s, self.default_threshold = ttl_s, default_threshold
        self._cached: tuple[float, ServedModel] | None = None
        self._lock = asyncio.Lock()

    async def served(self) -> ServedModel:
        """The served version, from cache when fresh.

        Raises:
            TritonUnavailable, TritonModelNotReady: Triton cannot say.
        """
        cached = self._cached
        if cached and time.monotonic() - cached[0] < self.ttl_s:
            return cached[1]
        async with self._lock:
            cached = self._cached
            if cached and time.monotonic() - cached[0] < self.ttl_s:
                return cached[1]
            served = await self._resolve()
            self._cached = (time.monotonic(), served)
            return served

    def forget(self) -> None:
        """Drop the cache (after Triton said the cached version is gone)."""
        self._cached = None

    async def _resolve(self) -> ServedModel:
        meta = await self.client.model_metadata()
        versions = [str(v) for v in meta.get("versions") or []]
        if not versions:
            raise TritonModelNotReady(f"Triton serves no version of {self.client.model_name!r}")
        version = max(versions, key=int)
        file_meta = version_metadata(self.repository, self.client.model_name, version)
        thresholds, source = referral_thresholds(file_meta, self.default_threshold)
        size = input_size(meta)
        if file_meta is not None and file_meta.input_size != size:
            log.warning(
                "metadata.json says input_size %s, Triton serves %s",
                list(file_meta.input_size),
                size,
            )
        return ServedModel(self.client.model_name, version, size, thresholds, source, file_meta)

    async def describe(self) -> dict[str, Any]:
        """Triton's view of the model with each loaded version's metadata.json."""
        meta = await self.client.model_metadata()
        versions = sorted((str(v) for v in meta.get("versions") or []), key=int)
        return {
            "name": meta.get("name", self.client.model_name),
            "platform": meta.get("platform"),
            "inputs": meta.get("inputs", []),
            "outputs": meta.get("outputs", []),
            "versions": [
                {
                    "version": v,
                    "ready": await self.client.ready(int(v)),
                    "metadata": _as_json(
                        version_metadata(self.repository, self.client.model_name, v)
                    ),
                }
                for v in versions
            ],
        }


def _as_json(metadata: VersionMetadata | None) -> dict[str, Any] | None:
    return metadata.to_dict() if metadata is not None else None
