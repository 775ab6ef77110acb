"""Splits, the training-set cap and class weights: pure functions over the data table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.errors import ConfigError, DataError
from contracts.labels import CLASSES
from training import data


def _table(lesions: list[tuple[str, int]], dates: list[str] | None = None) -> pd.DataFrame:
    """One row per image of each (label, n_images) lesion, as ``training.data`` builds it."""
    rows: list[dict] = []
    for g, (label, n) in enumerate(lesions):
        rows += [
            {"image_id": f"img{len(rows) + i}", "group": f"les{g}", "label": label}
            for i in range(n)
        ]
    df = pd.DataFrame(rows)
    df["date"] = pd.to_datetime(dates) if dates is not None else pd.NaT
    return df


def _sides(splits: dict[str, pd.DataFrame]) -> dict[str, set[str]]:
    return {name: set(part["group"]) for name, part in splits.items()}


lesion_tables = st.lists(
    st.tuples(st.sampled_from(CLASSES), st.integers(3, 6), st.lists(st.integers(1, 4), min_size=6)),
    min_size=1,
    max_size=4,
    unique_by=lambda t: t[0],
).map(lambda spec: _table([(c, n) for c, k, sizes in spec for n in sizes[:k]]))


@settings(max_examples=60, deadline=None)
@given(
    df=lesion_tables,
    val=st.floats(0, 0.25),
    test=st.floats(0, 0.25),
    seed=st.integers(0, 2**31),
)
def test_grouped_split_properties(df, val, test, seed):
    splits = data.grouped_split(df, val, test, seed)
    # Every row lands in exactly one split.
    ids = pd.concat([s["image_id"] for s in splits.values()])
    assert ids.is_unique and set(ids) == set(df["image_id"])
    # No lesion crosses sides.
    sides = _sides(splits)
    assert not (sides["train"] & sides["val"] or sides["train"] & sides["test"])
    assert not sides["val"] & sides["test"]
    # Stratified: every class in every split asked for, none in a split not asked for.
    for name, fraction in (("train", 1), ("val", val), ("test", test)):
        assert set(splits[name]["label"]) == (set(df["label"]) if fraction else set())
    # Seeded and independent of row order.
    again = data.grouped_split(df.sample(frac=1, random_state=seed % 1000), val, test, seed)
    assert _sides(again) == sides


def test_grouped_split_on_the_real_metadata(ham_dir):
    df = data.load_ham10000(ham_dir)
    splits = data.grouped_split(df, 0.15, 0.15, seed=42)
    sides = _sides(splits)
    assert not (sides["train"] & sides["val"] or sides["train"] & sides["test"])
    assert sum(len(s) for s in splits.values()) == len(df)
    lesions = df.groupby("label")["group"].nunique()
    for name, fraction in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        share = splits[name].groupby("label")["group"].nunique() / lesions
        assert share.between(fraction - 0.03, fraction + 0.03).all(), (name, share)
    for name, part in data.grouped_split(df, 0.15, 0.15, seed=42).items():
        assert part["image_id"].tolist() == splits[name]["image_id"].tolist()
    assert _sides(data.grouped_split(df, 0.15, 0.15, seed=7)) != sides
    # Rows keep their input order within a split, index reset to row position.
    position = {image_id: i for i, image_id in enumerate(df["image_id"])}
    order = splits["test"]["image_id"].map(position)
    assert order.is_monotonic_increasing and list(splits["test"].index) == list(range(len(order)))


def test_too_few_lesions_for_the_fractions():
    df = _table([("nv", 1)] * 20 + [("df", 2), ("df", 1)])
    with pytest.raises(DataError) as err:
        data.grouped_split(df, 0.15, 0.15)
    message = str(err.value)
    assert "class 'df' has only 2 lesion(s), too few for a train/val/test split" in message
    assert "Add images of 'df', or set val_fraction or test_fraction to 0" in message
    splits = data.grouped_split(df, 0.15, 0.0)
    assert splits["test"].empty and set(splits["val"]["label"]) == {"nv", "df"}


@pytest.mark.parametrize(("val", "test"), [(0.5, 0.5), (-0.1, 0.2), (1.0, 0.0)])
def test_impossible_fractions(val, test):
    with pytest.raises(ConfigError, match="sum to less than 1"):
        data.grouped_split(_table([("nv", 1)] * 5), val, test)


def test_temporal_split_by_first_date_of_each_lesion():
    # Lesion les3 has one photo before and one after the cutoff: it stays whole, in train.
    lesions = [("nv", 1), ("mel", 1), ("nv", 1), ("mel", 2), ("nv", 1), ("bcc", 1), ("nv", 1)]
    dates = ["2019-01-01", "2019-02-01", "2019-03-01", "2019-04-01", "2020-06-01",
             "2020-02-01", "2020-03-01", "2020-04-01"]  # fmt: skip
    splits = data.temporal_split(_table(lesions, dates), "2020-01-01", val_fraction=0.25)
    assert _sides(splits) == {
        "train": {"les0", "les1", "les2"},
        "val": {"les3"},  # the latest quarter of the lesions before the cutoff
        "test": {"les4", "les5", "les6"},
    }
    assert splits["val"]["image_id"].tolist() == ["img3", "img4"]


def test_temporal_split_default_cutoff_and_errors():
    dates = pd.date_range("2018-01-01", periods=20, freq="MS").astype(str).tolist()
    df = _table([("nv", 1)] * 20, dates)
    splits = data.temporal_split(df, None, 0.15, 0.25)
    assert len(splits["test"]) == 5 and splits["test"]["date"].min() > splits["train"]["date"].max()
    with pytest.raises(DataError, match=r"dates run from 2018-01-01 to 2019-08-01"):
        data.temporal_split(df, "2030-01-01")
    with pytest.raises(ConfigError, match="is not a date"):
        data.temporal_split(df, "next tuesday")
    with pytest.raises(DataError, match=r"needs a date on every row, 20 have none"):
        data.temporal_split(_table([("nv", 1)] * 20))


def test_limit_per_class_is_seeded_and_keeps_order():
    df = _table([("nv", 1)] * 30 + [("df", 1)] * 3)
    small = data.limit_per_class(df, 5, seed=1)
    assert small["label"].value_counts().to_dict() == {"nv": 5, "df": 3}
    assert small["image_id"].tolist() == data.limit_per_class(df, 5, seed=1)["image_id"].tolist()
    assert set(small["image_id"]) != set(data.limit_per_class(df, 5, seed=2)["image_id"])
    assert small["image_id"].map(lambda s: int(s[3:])).is_monotonic_increasing


def test_class_weights_known_answers():
    labels = ["akiec"] + ["bcc"] * 3  # n=4, k=2 classes present
    assert data.class_weights(labels, "none").tolist() == [1.0] * 7
    expected = {
        "inverse": [2.0, 2 / 3],  # n / (k n_c)
        "sqrt_inverse": [1.4641016, 0.8452994],  # sqrt(2), sqrt(2/3), times 4 / 3.8637
        "effective": [1.9990010, 0.6670003],  # 1 and 0.001 / (1 - 0.999^3), times 4 / 2.001
    }
    for scheme, want in expected.items():
        w = data.class_weights(labels, scheme)
        assert w.shape == (7,)
        np.testing.assert_allclose(w[:2], want, rtol=1e-6)
        assert w[2:].tolist() == [0.0] * 5  # classes absent from training
        assert (w[0] * 1 + w[1] * 3) / 4 == pytest.approx(1.0)  # mean over samples is 1
    with pytest.raises(ConfigError, match="class_weighting 'focal' is unknown"):
        data.class_weights(labels, "focal")
