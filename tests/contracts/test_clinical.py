"""The clinical metadata encoding (``contracts.clinical``): defined once, every field with an
explicit "unknown", recorded in ``metadata.json`` and config.pbtxt, and a version of another
encoding refused with both versions named."""

from __future__ import annotations

import math

import numpy as np
import pytest

from contracts import clinical
from contracts.labels import BODY_SITES, UNKNOWN_SITE
from contracts.metadata import METADATA_FILE, VersionMetadata
from contracts.repository import promote, record, rollback
from contracts.tensors import CLINICAL_INPUT_NAME, INPUT_NAME
from contracts.triton_config import (
    CONFIG_FILE,
    production_config,
    read_config,
    set_clinical_input,
    write_config,
)


def decode(vector: np.ndarray) -> tuple[float | None, str, str]:
    """The inverse of the encoding, written from the field list alone (not the encoder's code)."""
    fields = dict(zip(clinical.FIELDS, vector.tolist(), strict=True))
    age = fields["age"] * clinical.AGE_SCALE if fields["age_known"] == 1 else None
    sexes = [s for s in ("male", "female") if fields[f"sex={s}"] == 1]
    sites = [s for s in BODY_SITES if fields.get(f"site={s}") == 1]
    return age, (sexes or ["unknown"])[0], (sites or [UNKNOWN_SITE])[0]


def test_round_trip_of_every_known_site_sex_and_an_age():
    assert clinical.DIM == len(clinical.FIELDS) == 2 + 2 + len(BODY_SITES) - 1
    for i, site in enumerate(s for s in BODY_SITES if s != UNKNOWN_SITE):
        sex = ("male", "female")[i % 2]
        age = 5.0 * i
        vector = clinical.encode(age, sex, site)
        assert vector.dtype == np.float32 and vector.shape == (clinical.DIM,)
        got_age, got_sex, got_site = decode(vector)
        assert got_age == pytest.approx(age) and (got_sex, got_site) == (sex, site)
        assert vector.sum() == pytest.approx(age / 100 + 3)  # one-hots: one each


def test_every_field_unknown_is_the_defined_vector():
    expected = np.zeros(clinical.DIM, np.float32)  # age 0 with age_known 0, no one-hot set
    for age in (None, float("nan"), math.inf, -3, "", "abc", True):
        for sex in (None, "unknown", "", "other", 3):
            for site in (None, "unknown", "", "elbow", "the moon", 7):
                np.testing.assert_array_equal(clinical.encode(age, sex, site), expected)
    np.testing.assert_array_equal(clinical.UNKNOWN, expected)
    assert clinical.unknown_fields(None, "unknown", "elbow") == ["age", "sex", "site"]


def test_an_unknown_site_is_unknown_not_an_error_and_the_other_fields_stay():
    vector = clinical.encode(45, "female", "left elbow")
    assert decode(vector) == (pytest.approx(45.0), "female", UNKNOWN_SITE)
    assert clinical.unknown_fields(45, "female", "left elbow") == ["site"]
    # Case and spaces as a form may send them; ages past 100 are clipped, not wrapped.
    np.testing.assert_array_equal(
        clinical.encode(130, " Male ", "Lower Extremity"),
        clinical.encode(100, "male", "lower extremity"),
    )
    assert clinical.encode(130, "male", "back")[0] == 1.0


def test_batch_form_and_rows_match_the_single_form():
    rows = [
        {"age": 80, "sex": "male", "localization": "scalp"},
        {"age": None, "sex": "female", "site": "back"},
        {},
    ]
    batch = clinical.encode_rows(rows)
    assert batch.shape == (3, clinical.DIM) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0], clinical.encode(80, "male", "scalp"))
    np.testing.assert_array_equal(batch[1], clinical.encode(None, "female", "back"))
    np.testing.assert_array_equal(batch[2], clinical.UNKNOWN)
    np.testing.assert_array_equal(
        clinical.encode_batch([80, None], ["male", "female"], ["scalp", "back"]), batch[:2]
    )
    assert clinical.encode_batch([], [], []).shape == (0, clinical.DIM)


def test_describe_is_what_metadata_records_and_passes_the_check():
    described = clinical.describe()
    assert described["version"] == clinical.ENCODING_VERSION
    assert described["dim"] == clinical.DIM and described["fields"] == list(clinical.FIELDS)
    assert described["sites"] == [s for s in BODY_SITES if s != UNKNOWN_SITE]
    clinical.check_compatible(described)
    clinical.check_compatible(None)  # an image-only version


def test_a_version_of_another_encoding_is_refused_naming_both():
    other = {**clinical.describe(), "version": "clinical-v0"}
    with pytest.raises(clinical.ClinicalEncodingError) as refused:
        clinical.check_compatible(other, "skin_lesion version 4")
    message = str(refused.value)
    assert "'clinical-v0'" in message and repr(clinical.ENCODING_VERSION) in message
    assert "skin_lesion version 4" in message
    # Same name, other layout: also refused (a release that changed it without a new name).
    with pytest.raises(clinical.ClinicalEncodingError, match="incompatible release"):
        clinical.check_compatible({**clinical.describe(), "dim": clinical.DIM + 1})
    meta = VersionMetadata.from_dict(
        {"name": "skin_lesion", "version": 4, "input_size": [48, 64], "clinical": other}
    )
    with pytest.raises(clinical.ClinicalEncodingError, match=r"'clinical-v0'.*'clinical-v1'"):
        meta.check_clinical()


def test_metadata_lists_both_inputs_for_a_fusion_version_and_one_otherwise():
    fusion = VersionMetadata("skin_lesion", (48, 64), clinical=clinical.describe())
    data = fusion.to_dict()
    assert [i["name"] for i in data["inputs"]] == [INPUT_NAME, CLINICAL_INPUT_NAME]
    assert data["inputs"][1] == {
        "name": CLINICAL_INPUT_NAME,
        "datatype": "FP32",
        "shape": [-1, clinical.DIM],
    }
    back = VersionMetadata.from_dict(data)
    assert back.clinical == clinical.describe() and back.clinical_dim() == clinical.DIM
    assert back.input_names() == [INPUT_NAME, CLINICAL_INPUT_NAME]
    image_only = VersionMetadata.from_dict(VersionMetadata("skin_lesion", (48, 64)).to_dict())
    assert image_only.clinical is None and image_only.input_names() == [INPUT_NAME]
    assert "clinical" not in image_only.extra and "clinical" not in image_only.to_dict()


def test_the_triton_config_declares_the_clinical_input_and_promote_can_drop_it():
    cfg = production_config("skin_lesion", (48, 64), 7, 1, clinical_dim=clinical.DIM)
    assert [(t.name, list(t.dims)) for t in cfg.input] == [
        (INPUT_NAME, [-1, -1, 3]),
        (CLINICAL_INPUT_NAME, [clinical.DIM]),
    ]
    assert list(cfg.model_warmup[0].inputs[CLINICAL_INPUT_NAME].dims) == [clinical.DIM]
    assert set_clinical_input(cfg, None)  # rolled back to an image-only version
    assert [t.name for t in cfg.input] == [INPUT_NAME]
    assert CLINICAL_INPUT_NAME not in cfg.model_warmup[0].inputs
    assert not set_clinical_input(cfg, None)
    plain = production_config("skin_lesion", (48, 64), 7, 1)
    assert [t.name for t in plain.input] == [INPUT_NAME]


def test_promote_and_rollback_set_the_inputs_of_the_served_version(tmp_path):
    model_dir = tmp_path / "skin_lesion"
    versions = {
        1: VersionMetadata("skin_lesion", (48, 64), version=1),
        2: VersionMetadata("skin_lesion", (48, 64), version=2, clinical=clinical.describe()),
    }
    for number, meta in versions.items():
        (model_dir / str(number)).mkdir(parents=True)
        meta.write(model_dir / str(number) / METADATA_FILE)
        (model_dir / str(number) / "model.pt").write_bytes(b"stands in for TorchScript")
    write_config(model_dir / CONFIG_FILE, production_config("skin_lesion", (48, 64), 7, 1))
    record(model_dir, "first_export", 1, None)

    def inputs() -> list[str]:
        return [t.name for t in read_config(model_dir / CONFIG_FILE).input]

    assert inputs() == [INPUT_NAME]
    assert promote(model_dir, 2) == 1
    assert inputs() == [INPUT_NAME, CLINICAL_INPUT_NAME]
    assert rollback(model_dir) == (2, 1)
    assert inputs() == [INPUT_NAME]
