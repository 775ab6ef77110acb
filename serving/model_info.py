"""What Triton serves right now: version, input size, referral thresholds, metadata.

The input size comes from Triton's own model metadata (the shape the server will accept);
the thresholds and the rest from the version's ``metadata.json`` in the model repository
folder, when the gateway can read it. There is no default threshold: a version without
validated thresholds is served for its rankings, with no referral advice. The answer is
cached for ``ttl_s`` seconds, and every prediction names the version explicitly, so a version
rolled forward mid-request cannot mix one version's input size or thresholds with another's
probabilities. Each version also gets its gate (:mod:`serving.gate`): the quality thresholds
and the out-of-distribution threshold of its ``metadata.json``, with the settings' overrides; what
a version lacks is logged once as a warning when it is first resolved.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.clinical import ClinicalEncodingError
from contracts.decision import ARGMAX_RULE, DecisionRule
from contracts.metadata import (
    METADATA_FILE,
    REFERRAL_TARGETS,
    MetadataError,
    VersionMetadata,
    read_metadata,
)
from contracts.repository import MODEL_CARD_FILE
from contracts.tensors import CLINICAL_INPUT_NAME
from serving.gate import NO_GATE, Gate, GatePolicy, gate_for
from serving.triton.client import AsyncTritonClassifier, TritonModelNotReady, input_size

log = logging.getLogger(__name__)


EXPORT_HINT = (
    "export it with `python -m training evaluate --model CKPT --export cnn`, which chooses "
    "the thresholds on validation"
)


@dataclass(frozen=True)
class ServedModel:
    """The version Triton serves, with what its ``metadata.json`` says (None: not readable).

    ``thresholds`` holds a validated threshold for every referral target, or is empty: then
    the gateway gives no referral advice for this version and ``no_advice`` says why. ``gate``
    is what the gateway refuses for this version.
    """

    name: str
    version: str
    input_size: tuple[int, int]  # (height, width)
    thresholds: dict[str, float]  # referral target -> threshold; {}: no referral advice
    threshold_source: str  # "metadata.json", or "none" (no referral advice)
    metadata: VersionMetadata | None = None
    referral_status: str = ""  # for /readyz: where the thresholds come from, or why none
    no_advice: str | None = None  # the answers' reason when there is no referral advice
    gate: Gate = NO_GATE
    # A fusion version: its second input is the patient's age, sex and body site
    # (contracts.clinical, checked against this code's encoding when the version was resolved).
    clinical: bool = False
    # Which class the answers name (contracts.decision, from metadata.json; the plain argmax
    # for a version without one).
    decision: DecisionRule = ARGMAX_RULE

    @property
    def explain_output(self) -> str | None:
        """The Triton output with the class-activation maps (``metadata.json`` ``explain``),
        or None: a version exported without them."""
        m = self.metadata
        if m is None:
            return None
        explain = getattr(m, "explain", None) or m.extra.get("explain")
        output = explain.get("output") if isinstance(explain, dict) else None
        return str(output) if output else None


@dataclass(frozen=True)
class ReferralSetup:
    """The referral thresholds of one version, or why it has none.

    Args:
        thresholds: ``{target: threshold}`` for every target in ``REFERRAL_TARGETS``, or
            empty when any is missing (no referral advice).
        source: ``metadata.json``, or ``none`` without thresholds.
        status: one line for ``/readyz``.
        no_advice: the sentence each answer gives instead of advice; None with thresholds.
    """

    thresholds: dict[str, float]
    source: str
    status: str
    no_advice: str | None


def version_metadata(repository: Path | None, model: str, version: str) -> VersionMetadata | None:
    """``<repository>/<model>/<version>/metadata.json``, or None when absent or unreadable.

    An unreadable file (not JSON, not the schema) is logged as a warning, not raised: the
    gateway then serves rankings without referral advice.
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


def referral_setup(metadata: VersionMetadata | None, version: str) -> ReferralSetup:
    """The version's validated referral thresholds, or why there is no referral advice.

    Every target in ``REFERRAL_TARGETS`` needs a threshold in (0, 1] in ``metadata.json``:
    the evaluation chose them on validation at the operating point the referral promises. A
    version without them, or whose ``metadata.json`` cannot be read, gets no threshold at all
    rather than one nobody validated.

    Args:
        metadata: the version's ``metadata.json``, or None when it cannot be read.
        version: the version number, for the sentences.
    """
    if metadata is None:
        return ReferralSetup(
            {},
            "none",
            f"no validated thresholds in version {version}: its metadata.json cannot be read",
            f"no referral advice: model version {version} has no validated operating point "
            "(its metadata.json cannot be read: check SKIN_MODEL_REPOSITORY)",
        )
    found = metadata.referral_thresholds()
    missing = [t for t in REFERRAL_TARGETS if t not in found]
    if missing:
        targets = ", ".join(missing)
        return ReferralSetup(
            {},
            "none",
            f"no validated thresholds in version {version} (none for {targets})",
            f"no referral advice: model version {version} has no validated operating point "
            f"(no threshold for {targets} in its metadata.json; {EXPORT_HINT})",
        )
    return ReferralSetup(
        {t: found[t] for t in REFERRAL_TARGETS},
        "metadata.json",
        f"validated thresholds from metadata.json of version {version}",
        None,
    )


class ModelCatalog:
    """Resolves and caches the served version of one model."""

    def __init__(
        self,
        client: AsyncTritonClassifier,
        repository: Path | None,
        ttl_s: float,
        policy: GatePolicy | None = None,
    ) -> None:
        self.client, self.repository, self.ttl_s = client, repository, ttl_s
        self.policy = policy or GatePolicy()
        self._cached: tuple[float, ServedModel] | None = None
        self._lock = asyncio.Lock()
        self._warned: set[str] = set()  # versions whose gate warnings were logged

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
        referral = referral_setup(file_meta, version)
        size = input_size(meta)
        if size is None:  # any size: the version's metadata.json says which it was trained on
            if file_meta is None:
                raise TritonModelNotReady(
                    f"{self.client.model_name} version {version} takes images of any size and "
                    "its metadata.json, which says which, cannot be read: check "
                    "SKIN_MODEL_REPOSITORY"
                )
            size = file_meta.input_size
        elif file_meta is not None and file_meta.input_size != size:
            log.warning(
                "metadata.json says input_size %s, Triton serves %s",
                list(file_meta.input_size),
                size,
            )
        clinical = takes_clinical(meta, file_meta, self.client.model_name, version)
        outputs = [str(t.get("name")) for t in meta.get("outputs") or []] or None
        gate = gate_for(file_meta, version, self.policy, outputs)
        if version not in self._warned:  # once per version, not at every cache refresh
            self._warned.add(version)
            for warning in gate.warnings:
                log.warning("%s", warning)
        return ServedModel(
            self.client.model_name,
            version,
            size,
            referral.thresholds,
            referral.source,
            file_meta,
            referral.status,
            referral.no_advice,
            gate,
            clinical,
            file_meta.decision_rule() if file_meta is not None else ARGMAX_RULE,
        )

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


class VersionNotServable(TritonModelNotReady):
    """Triton has the version, but this gateway must not serve it (its metadata encoding is
    not this code's); the message says why and is meant for the client and the operator."""


def takes_clinical(
    meta: dict[str, Any], file_meta: VersionMetadata | None, model: str, version: str
) -> bool:
    """Whether the served version takes the patient metadata as its second input, refusing one
    whose encoding this gateway cannot vouch for.

    Triton's model metadata says whether the model has the input
    (:data:`contracts.tensors.CLINICAL_INPUT_NAME`); the version's ``metadata.json`` says which
    encoding its numbers follow. Sending this code's encoding to a model trained on another
    would give confident answers to the wrong question, so such a version is not served.

    Raises:
        VersionNotServable: the version takes the input but its ``metadata.json`` cannot be
            read, does not name an encoding, or names another than this code's (the message
            names both).
    """
    names = {str(t.get("name")) for t in meta.get("inputs") or []}
    if CLINICAL_INPUT_NAME not in names:
        return False
    where = f"{model} version {version}"
    if file_meta is None or file_meta.clinical is None:
        raise VersionNotServable(
            f"{where} takes the patient metadata ({CLINICAL_INPUT_NAME}) but its metadata.json, "
            "which names the encoding, cannot be read or names none: check "
            "SKIN_MODEL_REPOSITORY, or promote a version exported by this release"
        )
    try:
        file_meta.check_clinical()
    except ClinicalEncodingError as e:
        raise VersionNotServable(str(e)) from None
    return True


def _as_json(metadata: VersionMetadata | None) -> dict[str, Any] | None:
    return metadata.to_dict() if metadata is not None else None


def model_card(repository: Path | None, model: str, version: int) -> str:
    """``<repository>/<model>/<version>/MODEL_CARD.md`` (written by ``evaluate --export``).

    Raises:
        FileNotFoundError: no such version, or a version exported without a card.
    """
    if repository is None:
        raise FileNotFoundError("the gateway has no model repository to read cards from")
    path = repository / model / str(version) / MODEL_CARD_FILE
    if not path.is_file():
        what = "no such version" if not path.parent.is_dir() else "exported without a card"
        raise FileNotFoundError(
            f"version {version} of {model!r} has no model card ({what}): cards are written by "
            "`python -m training evaluate --export`"
        )
    return path.read_text()
