"""Request and response models, in families (``XBase`` / ``XCreate`` / ``XPublic``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field, field_validator

from contracts.labels import BODY_SITES, CLASSES, CONFIRMATIONS, SEXES
from contracts.quality import REASON_CODES

BodySite = Literal[BODY_SITES]  # type: ignore[valid-type]
ReasonCode = Literal[REASON_CODES]  # type: ignore[valid-type]
Sex = Literal[SEXES]  # type: ignore[valid-type]
ClassCode = Literal[CLASSES]  # type: ignore[valid-type]
Confirmation = Literal[CONFIRMATIONS]  # type: ignore[valid-type]


class Problem(BaseModel):
    """Every error the gateway answers: an RFC 9457 problem (``application/problem+json``,
    serving/problems.py). Branch on ``type``; ``detail`` is one sentence for people saying what
    is wrong and what to do."""

    type: str = Field(
        description="the kind of error: a URI reference, relative to the gateway, whose page "
        "(GET it) says what it means; about:blank where the status says all",
        examples=["/problems/not-found"],
    )
    title: str = Field(description="the kind's fixed summary (the status phrase for about:blank)")
    status: int = Field(description="the HTTP status of this answer")
    detail: str = Field(description="what went wrong in this request, and what to do")
    instance: str = Field(description="the request's path (without the query)")


class InternalProblem(Problem):
    error_id: str = Field(description="names the log entry with the details: quote it")


class InvalidField(BaseModel):
    field: str
    message: str


class ValidationProblem(Problem):
    errors: list[InvalidField]


class PredictionBase(BaseModel):
    """What the client tells about the lesion besides the photo."""

    body_location: BodySite = Field(
        description="HAM10000 localization, or 'unknown' (which excludes nothing)"
    )
    age: int | None = Field(None, ge=0, le=120, description="patient's age in years")
    sex: Sex = "unknown"

    @field_validator("body_location", mode="before")
    @classmethod
    def _normalise_site(cls, value: Any) -> Any:
        # "Lower_Extremity" and "lower extremity" mean the same site.
        return value.strip().lower().replace("_", " ") if isinstance(value, str) else value

    @field_validator("sex", mode="before")
    @classmethod
    def _normalise_sex(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


class PredictionCreate(PredictionBase):
    """The multipart form of ``POST /v1/predictions``."""

    model_config = ConfigDict(extra="forbid")

    image: UploadFile = Field(description="the photo, JPEG or PNG (checked by content)")

    consent_to_store_image: bool = Field(
        False, description="keep the uploaded photo (content-addressed) with the record"
    )
    explain: bool = Field(
        False,
        description="also answer where the model looked: the class-activation maps of the top "
        "classes (`explanation`), where the served version has them",
    )
    request_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00-\x1f\x7f]+$",  # no control characters: PostgreSQL cannot store NUL
        description="client request id for idempotent retries (or the Idempotency-Key header)",
    )


class ModelRef(BaseModel):
    name: str
    version: str


class ClassProbability(BaseModel):
    code: ClassCode
    name: str
    probability: float
    malignant: bool


class ExcludedClass(BaseModel):
    code: ClassCode
    name: str
    original_probability: float = Field(description="the model's probability before the rule")
    malignant: bool
    rule_id: str
    reason: str


class ReferralPublic(BaseModel):
    refer: bool | None = Field(
        description="refer to a dermatologist; null: no referral advice, because the served "
        "version has no validated thresholds (reason says why; the ranking still stands)"
    )
    scores: dict[str, float] = Field(description="P(malignant group) and P(mel)")
    thresholds: dict[str, float] = Field(
        description="the validated threshold per target; empty when there is no advice"
    )
    threshold_source: str = Field(
        description="metadata.json of the served version, or none (no advice); answers "
        "stored by older gateways may say default"
    )
    reason: str


class ImageInfo(BaseModel):
    sha256: str
    format: Literal["jpeg", "png"]
    width: int
    height: int
    brightness: float | None = Field(
        description="mean luminance of the model input, 0-255 (null: refused before the resize)"
    )
    contrast: float | None = Field(description="std of the luminance of the model input")
    stored: bool


class RefusalPublic(BaseModel):
    """Why an upload got no diagnosis (docs/gateway.md, 'What is refused')."""

    code: ReasonCode = Field(description="machine-readable reason (contracts.quality)")
    message: str = Field(description="what is wrong and what to do, for the user")
    features: dict[str, float] | None = Field(
        description="what the checks measured: short_side, aspect (of the decoded image), "
        "brightness, contrast, sharpness, colourfulness (of the model input); null with several "
        "images"
    )
    ood_score: float | None = Field(
        description="the model's out-of-distribution score (null: the model was not asked)"
    )
    threshold: float | None = Field(
        description="the bound the image crossed (the score's limit for out_of_distribution)"
    )


class RefusalRecord(RefusalPublic):
    """A refusal as the 422 answer carries it: with the id of its record."""

    id: str = Field(description="the refusal's record (quote it to the operator)")
    created_at: datetime
    request_id: str | None
    model: ModelRef | None = Field(description="the version whose gate refused (null: none asked)")


class RefusalProblem(Problem):
    """The 422 answer to an upload the gate refused (SKIN_REFUSAL_MODE=reject), type
    ``/problems/image-refused``: ``detail`` is the sentence, ``code`` the reason."""

    code: ReasonCode
    refusal: RefusalRecord


class Timings(BaseModel):
    decode_ms: float
    inference_ms: float
    total_ms: float


class ClassMap(BaseModel):
    code: ClassCode
    name: str
    map: list[list[float]] = Field(
        description="rows of the grid over the whole photo, top to bottom: 1 where the image "
        "counts most for the class, 0 where it does not count for it"
    )


class Explanation(BaseModel):
    """Where the model looked (serving/explain.py): asked with ``explain=true``."""

    available: bool = Field(description="false: the served version has no maps (see note)")
    method: Literal["cam"] | None = Field(description="class-activation maps")
    grid: list[int] | None = Field(description="[rows, columns] of each map")
    maps: list[ClassMap] = Field(description="the top classes of the ranking, best first")
    note: str


class ClinicalUse(BaseModel):
    """Whether the served version read the patient's age, sex and body site, and which of them
    it read as unknown (a missing field is normal, never an error: the answer is then the
    model's with that field unknown, as it was trained to give)."""

    used: bool = Field(
        description="true: the served version takes age, sex and body site as a second input "
        "(a fusion version); false: it looks at the image alone"
    )
    encoding: str | None = Field(
        None, description="the metadata encoding's version (contracts/clinical.py), when used"
    )
    unknown: list[str] = Field(
        default_factory=list,
        description="fields the model read as unknown (age, sex, site): not sent, 'unknown', "
        "or a body site the encoding does not know",
    )


class DecisionPublic(BaseModel):
    """How ``top_class`` was named from the ranking (``contracts.decision``)."""

    rule: Literal["argmax", "balanced"] = Field(
        description="argmax: the most probable class; balanced: the most probable after "
        "dividing each probability by its class's training prior to the power tau (chosen on "
        "validation for the best balanced accuracy), so that a rare class is not swamped by "
        "moles; the probabilities shown are not changed by it"
    )
    tau: float = Field(ge=0, description="0 for argmax")
    most_probable: ClassCode = Field(description="the first class of the ranking")


class PredictionPublic(PredictionBase):
    """The answer to an upload, stored verbatim and sent again to an idempotent retry."""

    id: str
    created_at: datetime
    request_id: str | None
    model: ModelRef
    top_class: ClassCode | None = Field(
        description="the class the version names (see decision); null: refused (see refused)"
    )
    decision: DecisionPublic | None = Field(
        None,
        description="how top_class was named (null when refused, and in answers recorded "
        "before decision rules existed: those named the most probable class)",
    )
    ranking: list[ClassProbability] = Field(
        description="after the body-location rules; empty when refused"
    )
    excluded: list[ExcludedClass]
    referral: ReferralPublic | None = Field(description="null: refused (see refused)")
    image: ImageInfo
    timings: Timings
    explanation: Explanation | None = Field(
        None, description="with explain=true only: where the model looked"
    )
    clinical: ClinicalUse | None = Field(
        None,
        description="what the model made of age, sex and body site (null in answers recorded "
        "before fusion versions existed)",
    )
    refused: RefusalPublic | None = Field(
        None,
        description="set when the gate refused the image and SKIN_REFUSAL_MODE=flag: no "
        "ranking, top class or referral is given (with reject, the default, the answer is 422)",
    )
    disclaimer: str = (
        "Decision support only, not a diagnosis: a clinician decides. "
        "The ranking is over HAM10000's seven classes."
    )


class FeedbackBase(BaseModel):
    diagnosis: ClassCode = Field(description="the confirmed diagnosis")
    confirmation: Confirmation = Field(description="how it was confirmed")


class FeedbackCreate(FeedbackBase):
    model_config = ConfigDict(extra="forbid")


class FeedbackPublic(FeedbackBase):
    prediction_id: str
    revision: int = Field(description="1 for the first feedback, +1 for each change")
    created_at: datetime
    updated_at: datetime


class FeedbackEventPublic(FeedbackBase):
    revision: int
    client_id: str
    received_at: datetime


class PredictionWithFeedback(PredictionPublic):
    feedback: FeedbackPublic | None = None
    feedback_history: list[FeedbackEventPublic] = Field(default_factory=list)


class ModelVersionPublic(BaseModel):
    version: str
    ready: bool
    metadata: dict[str, Any] | None


class GatePublic(BaseModel):
    """What the gateway refuses for the served version (docs/gateway.md)."""

    quality: dict[str, float | None] | None = Field(
        description="the quality thresholds checked (null: no quality checks; a null bound "
        "is not checked)"
    )
    quality_source: str = Field(
        description="metadata.json, settings, both, or none/off without quality checks"
    )
    ood_threshold: float | None = Field(
        description="out-of-distribution score over which an image is refused (null: none)"
    )
    status: str
    warnings: list[str]


class ModelPublic(BaseModel):
    name: str
    platform: str | None
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    versions: list[ModelVersionPublic]
    served_version: str | None
    gate: GatePublic | None = None


class ModelsPublic(BaseModel):
    models: list[ModelPublic]


class Readiness(BaseModel):
    status: Literal["ready", "degraded", "not ready"] = Field(
        description="ready: Triton and the database answer; degraded: one does not, and this "
        "replica answers uploads 503 + Retry-After (HTTP 200); not ready: the same with "
        "strict=true (HTTP 503)"
    )
    checks: dict[str, str]
    referral: str | None = Field(
        None,
        description="where the served version's referral thresholds come from, or why it has "
        "none (then answers carry rankings without referral advice; readiness is unaffected)",
    )
    referral_advice: bool | None = Field(
        None, description="whether answers carry referral advice; null: not known now"
    )
    gate: str | None = Field(
        None,
        description="what the served version's gate checks (quality thresholds, the model's "
        "out-of-distribution score) and what it lacks; readiness is unaffected",
    )
