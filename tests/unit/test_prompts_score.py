"""SCoRe texts: liked-item lists, behaviour documents d(H(u)) and the prompts P^r, P^b, P^s."""

import pyarrow as pa
import pytest

from ragrec.llm.prompts_score import (
    NO_HISTORY,
    basic_prompts,
    ci_prompts,
    history_documents,
    liked_lists,
    rationale_prompts,
    user_documents,
)

ITEMS = pa.table(
    {"item_id": pa.array([0, 1, 2, 3], pa.int64()), "title": ["Heat (1995)", "Fargo (1996)", "Up (2009)", "Big (1988)"]}
)


def test_liked_lists_keeps_the_most_recent_liked_items_per_row():
    ids = pa.array([[0, 1, 2, 3], [3, 2], [], [1, 0, 2]], pa.list_(pa.int64()))
    liked = pa.array([[True, False, True, True], [False, False], [], [True, True, True]], pa.list_(pa.bool_()))
    assert liked_lists(ids, liked, 2).to_pylist() == [[2, 3], [], [], [0, 2]]
    assert liked_lists(ids, liked, 10).to_pylist() == [[0, 2, 3], [], [], [1, 0, 2]]
    with pytest.raises(ValueError, match="must align"):
        liked_lists(ids, pa.array([[True]] * 4, pa.list_(pa.bool_())), 2)


def test_user_documents_use_liked_training_items_in_time_order():
    inter = pa.table(
        {
            "user_id": pa.array([0, 0, 0, 1, 0], pa.int64()),
            "item_id": pa.array([2, 0, 1, 3, 3], pa.int64()),
            "timestamp": pa.array([30, 10, 20, 5, 40], pa.int64()),
            "label": pa.array([1, 1, 0, 0, 1], pa.int8()),
        }
    )
    docs = user_documents(inter, ITEMS, 3, max_items=2)
    assert docs.column("doc").to_pylist() == ['"Up (2009)", "Big (1988)"', NO_HISTORY, NO_HISTORY]
    assert docs.column("n_liked").to_pylist() == [2, 0, 0]


def _samples(labels=True):
    cols = {
        "user_id": pa.array([0, 1], pa.int64()),
        "item_id": pa.array([3, 0], pa.int64()),
        "history_item_ids": pa.array([[0, 1, 2], [2]], pa.list_(pa.int64())),
        "history_ratings": pa.array([[5.0, 2.0, 4.0], [1.0]], pa.list_(pa.float32())),
    }
    if labels:
        cols["history_labels"] = pa.array([[1, 0, 1], [0]], pa.list_(pa.int8()))
    return pa.table(cols)


def test_history_documents_from_labels_or_ratings_agree():
    a = history_documents(_samples(True), ITEMS, max_items=5).to_pylist()
    b = history_documents(_samples(False), ITEMS, max_items=5, label_threshold=3.0).to_pylist()
    assert a == b == ['"Heat (1995)", "Up (2009)"', NO_HISTORY]


def test_prompts_fill_history_target_and_similar_users():
    s = _samples()
    hist = history_documents(s, ITEMS, max_items=5)
    pb = basic_prompts(s, hist, ITEMS).to_pylist()
    assert pb[0] == (
        'The user has highly rated the following movies: "Heat (1995)", "Up (2009)". Based on this '
        'information, predict whether the user would enjoy the movie titled "Big (1988)". Respond with '
        "either 'Yes' or 'No'."
    )
    ps = ci_prompts(s, hist, [pa.array(['"Up (2009)"', "x"]), pa.array(['"Fargo (1996)"', "y"])], ITEMS).to_pylist()
    assert ps[0].startswith(
        'The user has highly rated the following movies: "Heat (1995)", "Up (2009)". Other users '
        'with similar preferences have given high ratings to the movies: ["Up (2009)"]; '
        '["Fargo (1996)"]. Based on this information'
    )
    assert ps[1].endswith("movie titled \"Heat (1995)\". Respond with either 'Yes' or 'No'.") and "[x]; [y]" in ps[1]
    assert ci_prompts(s, hist, [], ITEMS).to_pylist() == pb
    pr = rationale_prompts(s, hist, ITEMS, "Watched: {history}. Target {target}?")
    assert pr == [
        'Watched: "Heat (1995)", "Up (2009)". Target "Big (1988)"?',
        f'Watched: {NO_HISTORY}. Target "Heat (1995)"?',
    ]
    with pytest.raises(ValueError, match="must contain"):
        rationale_prompts(s, hist, ITEMS, "no placeholders")
