"""ReLLa/RALLRec CTR prompt text and the mixed augmentation views."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ragrec.config import RetrievalConfig
from ragrec.llm.prompts_ctr import augment_views, build_ctr_prompts
from ragrec.retrieval.history import select_history

ITEMS = pa.table(
    {
        "item_id": pa.array([3, 0, 1, 2], pa.int64()),  # unsorted on purpose: looked up by id
        "title": ["Jumanji (1995)", "Toy Story (1995)", "GoldenEye (1995)", "Dr. Strangelove or: How I Learned " * 4],
        "year": pa.array([1995, 1995, 1995, 1964], pa.int32()),
    }
)
USERS = pa.table(
    {
        "user_id": pa.array([0, 1, 2], pa.int64()),
        "age": pa.array([25, 53, None], pa.int32()),
        "gender": ["F", "M", None],
        "occupation": ["educator", "other", None],
        "zip": ["85711", "94043", "00000"],
    }
)


def ctx_samples(user_ids, targets, ctx, ratings) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array(user_ids, pa.int64()),
            "item_id": pa.array(targets, pa.int64()),
            "context_item_ids": pa.array(ctx, pa.list_(pa.int64())),
            "context_ratings": pa.array(ratings, pa.list_(pa.float32())),
        }
    )


def test_prompt_text_female_user():
    s = ctx_samples([0], [3], [[1, 0, 2]], [[4.0, 1.0, 5.0]])
    (p,) = build_ctr_prompts(s, ITEMS, USERS, max_title_chars=20)
    lines = p.split("\n")
    assert lines[0] == "The user is a female. Her job is educator. Her age is 25."
    assert lines[1] == "She watched the following movies in the past, and rated them:"
    # numbered from 0, in the given (retrieval) order, with stars;
    # long title cut to 20 chars ("Dr. Strangelove or: " + trailing space trimmed)
    assert lines[2:5] == [
        "0. GoldenEye (1995) (4 stars)",
        "1. Toy Story (1995) (1 star)",
        "2. Dr. Strangelove or: (5 stars)",
    ]
    assert lines[5] == "Note that more stars the user rated the movie, the user liked the movie more."
    assert lines[6] == "Based on the movies she has watched, deduce if she will like the movie ***Jumanji (1995)***."
    assert p.endswith("\nYou should ONLY tell me yes or no.")
    assert len(lines) == 8


def test_pronouns_follow_gender_and_missing_profile_is_omitted():
    s = ctx_samples([1, 2, 0], [0, 0, 0], [[3], [3], [3]], [[3.5], [2.0], [2.0]])
    male, unknown, _ = build_ctr_prompts(s, ITEMS, USERS)
    assert male.startswith("The user is a male. His job is other. His age is 53.\nHe watched the following")
    assert "Based on the movies he has watched, deduce if he will like the movie ***Toy Story (1995)***." in male
    assert "0. Jumanji (1995) (3.5 stars)" in male
    assert " she " not in male and "Her " not in male
    # user 2 has no profile fields at all: no profile sentence, neutral wording
    assert unknown.startswith("The user watched the following movies in the past, and rated them:\n0. Jumanji")
    assert "deduce if the user will like the movie ***Toy Story (1995)***" in unknown
    # no users table: same neutral prompt for everyone
    assert build_ctr_prompts(s, ITEMS, None)[0] == unknown.replace("(2 stars)", "(3.5 stars)")


def test_prompt_errors():
    s = ctx_samples([0], [3], [[7]], [[4.0]])
    with pytest.raises(ValueError, match="id 7 is not in the table"):
        build_ctr_prompts(s, ITEMS, USERS)
    with pytest.raises(ValueError, match="select_history"):
        build_ctr_prompts(s.drop_columns(["context_ratings"]), ITEMS, USERS)
    gappy = ITEMS.filter(pa.array([True, True, False, True]))
    with pytest.raises(ValueError, match="dense ids"):
        build_ctr_prompts(ctx_samples([0], [3], [[0]], [[4.0]]), gappy, USERS)


def _train_samples(n=40, seed=0) -> pa.Table:
    rng = np.random.default_rng(seed)
    hists = [rng.choice(30, size=int(rng.integers(3, 12)), replace=False).tolist() for _ in range(n)]
    return pa.table(
        {
            "sample_id": pa.array(np.arange(n) + 100, pa.int64()),
            "user_id": pa.array(rng.integers(0, 3, n), pa.int64()),
            "item_id": pa.array(rng.integers(0, 30, n), pa.int64()),
            "label": pa.array(rng.integers(0, 2, n), pa.int8()),
            "history_item_ids": pa.array(hists, pa.list_(pa.int64())),
            "history_ratings": pa.array([[float(1 + h % 5) for h in hh] for hh in hists], pa.list_(pa.float32())),
            "split": ["train"] * n,
        }
    )


def test_augment_views_produces_the_three_documented_views():
    samples = _train_samples()
    emb = np.random.default_rng(1).normal(size=(30, 6)).astype(np.float32)
    retrieved = select_history(samples, RetrievalConfig(k=5, strategy="rerank"), emb)
    recent = select_history(samples, RetrievalConfig(k=5, strategy="recent"), None)
    out = augment_views(retrieved, recent, np.random.default_rng(0))
    assert out.num_rows == 3 * samples.num_rows
    assert set(out.column_names) == set(retrieved.column_names) | {"view"}
    rows = out.to_pylist()
    assert [r["view"] for r in rows[:12]] != sorted(r["view"] for r in rows[:12])  # shuffled, views mixed
    by = {(r["sample_id"], r["view"]): r for r in rows}
    assert len(by) == out.num_rows  # each sample exactly once per view
    for s, ret, rec in zip(samples.to_pylist(), retrieved.to_pylist(), recent.to_pylist()):
        h = s["history_item_ids"]
        v_ret, v_time, v_rec = (by[(s["sample_id"], v)] for v in ("retrieved", "time_ordered", "recent"))
        assert v_ret["context_item_ids"] == ret["context_item_ids"]
        assert v_time["context_item_ids"] == sorted(ret["context_item_ids"], key=h.index)
        assert v_rec["context_item_ids"] == h[::-1][:5] == rec["context_item_ids"]
        for v in (v_ret, v_time, v_rec):
            assert v["label"] == s["label"] and v["item_id"] == s["item_id"]
            assert v["context_ratings"] == [float(1 + i % 5) for i in v["context_item_ids"]]
    # same seed, same order
    again = augment_views(retrieved, recent, np.random.default_rng(0))
    assert again.column("sample_id").equals(out.column("sample_id"))


def test_augment_views_rejects_mismatch_and_test_rows():
    samples = _train_samples()
    recent = select_history(samples, RetrievalConfig(k=5, strategy="recent"), None)
    with pytest.raises(ValueError, match="same order"):
        augment_views(recent, recent.take(np.arange(samples.num_rows)[::-1]), np.random.default_rng(0))
    test_rows = recent.set_column(recent.schema.get_field_index("split"), "split", pa.array(["test"] * recent.num_rows))
    with pytest.raises(ValueError, match="split == 'train'"):
        augment_views(test_rows, test_rows, np.random.default_rng(0))


def test_genres_and_stats_lines_are_optional_and_exact():
    items = ITEMS.append_column(
        "genres", pa.array([["Adventure"], ["Animation", "Comedy"], [], ["War"]], pa.list_(pa.string()))
    )
    s = ctx_samples([0, 2], [3, 1], [[1, 0], [0]], [[4.0, 1.0], [5.0]])
    plain = build_ctr_prompts(s, items, USERS)
    assert plain == build_ctr_prompts(s, ITEMS, USERS)  # both off: the paper's prompt, genres ignored
    p0, p1 = build_ctr_prompts(
        s,
        items,
        USERS,
        genres=True,
        stats={
            "user_mean": np.array([3.94, np.nan]),
            "user_count": np.array([120, 0]),
            "item_mean": np.array([4.25, np.nan]),
            "item_count": np.array([85, 0]),
            "kind": "rating",
        },
    )
    lines = p0.split("\n")
    assert lines[2:4] == ["0. GoldenEye (1995) (4 stars)", "1. Toy Story (1995) [Animation, Comedy] (1 star)"]
    assert lines[5] == (
        "On average she rated past movies 3.9 stars (120 ratings). Other users rated this movie 4.2 stars (85 ratings)."
    )
    assert "***Jumanji (1995) [Adventure]***" in lines[6]
    assert "No other user has rated this movie yet." in p1 and "On average" not in p1
    with pytest.raises(ValueError, match="prompt.genres"):
        build_ctr_prompts(s, ITEMS, USERS, genres=True)
