"""Trivial baselines: smoothing by hand; item rate beats chance on real ml-100k."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.metrics import roc_auc_score

from ragrec.evaluation.baselines import trivial_baselines


def _t(users, items, labels=None) -> pa.Table:
    cols = {"user_id": pa.array(users, pa.int64()), "item_id": pa.array(items, pa.int64())}
    if labels is not None:
        cols["label"] = pa.array(labels, pa.int8())
    return pa.table(cols)


def test_smoothing_by_hand():
    # item 0: 3 of 4 positive; item 1: 0 of 2; global 3/6 = 0.5; a = 2
    train = _t([0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 1, 1], [1, 1, 1, 0, 0, 0])
    test = _t([0, 2, 5], [0, 1, 9])  # user 5 and item 9 never seen
    out = trivial_baselines(train, test, a=2.0)
    assert out["item_rate"] == pytest.approx([(3 + 1) / (4 + 2), (0 + 1) / (2 + 2), 0.5])
    # users: 0 -> (2+1)/(2+2) = .75, 2 -> (0+1)/(2+2) = .25, unseen -> .5
    logit = lambda q: math.log(q / (1 - q))
    sig = lambda z: 1 / (1 + math.exp(-z))
    want = [sig(logit(4 / 6) + logit(0.75)), sig(logit(0.25) + logit(0.25)), 0.5]  # logit(g) = 0
    assert out["item_user_logit"] == pytest.approx(want)


def test_item_rate_auc_on_ml100k_time_split(data_dir):
    df = pd.read_csv(data_dir / "ml-100k" / "u.data", sep="\t", names=["user_id", "item_id", "rating", "ts"])
    df = df.sort_values(["ts", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    df["label"] = (df["rating"] > 3).astype(np.int8)
    cut = int(0.8 * len(df))
    train, test = df.iloc[:cut], df.iloc[int(0.9 * len(df)) :]
    tab = lambda d: pa.Table.from_pandas(d[["user_id", "item_id", "label"]], preserve_index=False)
    out = trivial_baselines(tab(train), tab(test))
    auc_item = roc_auc_score(test["label"], out["item_rate"])
    auc_both = roc_auc_score(test["label"], out["item_user_logit"])
    assert auc_item > 0.6, auc_item
    # the global time split's test users are mostly new (few training labels), so the user term adds
    # little here; it must still be a useful ranking
    assert auc_both > 0.6, auc_both
    assert np.all((out["item_rate"] > 0) & (out["item_rate"] < 1))
