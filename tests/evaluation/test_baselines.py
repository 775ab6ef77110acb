import numpy as np
import pandas as pd
import pytest

from contracts.errors import DataError
from contracts.labels import CLASS_INDEX
from training.evaluation.baselines import (
    DemographicBaseline,
    MajorityBaseline,
    age_band,
    label_indices,
)

TRAIN = pd.DataFrame(
    {
        "site": ["back"] * 4 + ["face"] * 2,
        "age": [50, 50, 50, 50, 70, None],
        "sex": ["male"] * 4 + ["female", "female"],
        "label": ["nv", "nv", "nv", "mel", "bkl", "bkl"],
    }
)


def _rows(*rows):
    return pd.DataFrame(rows, columns=["site", "age", "sex"])


def test_age_bands():
    assert [age_band(a) for a in (0, 29, 30, 45, 59, 60, 74, 75, 85, None, np.nan)] == [
        "<30", "<30", "30-44", "45-59", "45-59", "60-74", "60-74", "75+", "75+",
        "unknown", "unknown",
    ]  # fmt: skip


def test_cell_counts_dominate_with_little_smoothing():
    p = DemographicBaseline(strength=1e-9).fit(TRAIN).predict_proba(_rows(("back", 55, "male")))
    assert p[0, CLASS_INDEX["nv"]] == pytest.approx(0.75)
    assert p[0, CLASS_INDEX["mel"]] == pytest.approx(0.25)


def test_backs_off_to_site_then_to_prior():
    base = DemographicBaseline(strength=2.0).fit(TRAIN)
    # Laplace prior over 6 cases and 7 classes: (count + 1) / 13.
    prior = np.array([1, 1, 3, 1, 2, 4, 1]) / 13
    np.testing.assert_allclose(base.prior_, prior)
    # "back" has 4 cases (3 nv, 1 mel): P(c|back) = (n + 2 prior) / 6.
    site = (np.array([0, 0, 0, 0, 1, 3, 0]) + 2 * prior) / 6
    p = base.predict_proba(_rows(("back", 20, "female"), ("ear", 50, "male"), ("back", 50, "male")))
    np.testing.assert_allclose(p[0], site)  # unseen cell -> its site
    np.testing.assert_allclose(p[1], prior)  # unseen site -> the prior
    cell = (np.array([0, 0, 0, 0, 1, 3, 0]) + 2 * site) / 6
    np.testing.assert_allclose(p[2], cell)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


def test_missing_age_and_sex_are_their_own_band():
    base = DemographicBaseline(strength=1e-9).fit(TRAIN)
    p = base.predict_proba(_rows(("face", None, None), ("face", np.nan, "female")))
    assert p[1].argmax() == CLASS_INDEX["bkl"] and p[1].max() == pytest.approx(1.0)
    assert p[0].argmax() == CLASS_INDEX["bkl"]  # (face, unknown, unknown) unseen -> face


def test_majority_predicts_the_prior():
    p = MajorityBaseline().fit(TRAIN["label"]).predict_proba(TRAIN)
    assert (p.argmax(1) == CLASS_INDEX["nv"]).all()
    assert p[0, CLASS_INDEX["bkl"]] == pytest.approx(2 / 6)


def test_bad_labels_are_named():
    with pytest.raises(DataError, match="melanoma"):
        label_indices(pd.Series(["mel", "melanoma"]))
    with pytest.raises(DataError, match="columns"):
        DemographicBaseline().fit(TRAIN.drop(columns="age"))
