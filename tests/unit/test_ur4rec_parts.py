"""UR4Rec's own pieces: the generation prompts, the list arrays, the table augmenter and the ranking report rows."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from ragrec.config import RunConfig, UR4RecConfig
from ragrec.data.lists import left_padded
from ragrec.llm.prompts_ur4rec import fill_template, item_phrases, item_prompts, user_histories, user_prompts
from ragrec.methods.ranking import POPULARITY, popularity_scores, ranking_row, ranking_rows, trivial_notes
from ragrec.models.augment import TableAugmenter

ITEMS = pa.table(
    {
        "item_id": [0, 1, 2],
        "title": ["Heat (1995)", "Alien {title} (1979)", "Up"],
        "genres": [["Action", "Crime", "Thriller"], ["Horror"], []],
    }
)


def test_item_phrases_name_title_genres_and_article():
    assert item_phrases(ITEMS).to_pylist() == [
        '"Heat (1995)", an Action, Crime and Thriller movie',
        '"Alien {title} (1979)", a Horror movie',
        '"Up", an unknown genre movie',
    ]


def test_user_history_keeps_the_last_items_before_the_cut_in_time_order():
    inter = pa.table(
        {
            "user_id": [0, 0, 0, 0, 1],
            "item_id": [2, 0, 1, 2, 1],
            "rating": [1.0, 4.0, 2.0, 5.0, 3.0],
            "timestamp": [1, 2, 3, 9, 5],
        }
    )
    cut = np.array([9, np.iinfo(np.int64).max])  # user 0's first held-out target is at t=9
    ids, ratings = user_histories(inter, cut, 3, max_items=2)
    assert ids.to_pylist() == [[0, 1], [1], []]
    assert ratings.to_pylist() == [[4.0, 2.0], [3.0], []]
    text = user_prompts("H: {history}.", ITEMS, ids, ratings).to_pylist()
    heat, alien = '"Heat (1995)", an Action, Crime and Thriller movie', '"Alien {title} (1979)", a Horror movie'
    assert text[0] == f"H: [{heat}, 4 stars; {alien}, 2 stars]."
    assert text[2] == "H: (no rated movies yet)."


def test_templates_fill_named_fields_only_and_name_a_typo():
    out = item_prompts(UR4RecConfig().item_template, ITEMS).to_pylist()
    assert '"Alien {title} (1979)" (Horror)' in out[1]  # a brace in a title is text, not a field
    with pytest.raises(ValueError, match=r"ur4rec.item_template: unknown field\(s\) \['\{titel\}'\]"):
        fill_template("Describe {titel}", {"title": pa.array(["a"])}, "ur4rec.item_template")
    with pytest.raises(ValueError, match=r"missing field\(s\) \['\{history\}'\]"):
        fill_template("no field", {"history": pa.array(["a"])}, "ur4rec.user_template")
    assert fill_template("{a}-{b}-{a}", {"a": pa.array(["x", "y"]), "b": pa.array(["1", "2"])}).to_pylist() == [
        "x-1-x",
        "y-2-y",
    ]


def test_left_padded_keeps_the_last_items_shifted_by_one():
    lists = pa.array([[5, 6, 7], [], [0], [1, 2, 3, 4, 9]], pa.list_(pa.int64()))
    assert left_padded(lists, 3).tolist() == [[6, 7, 8], [0, 0, 0], [0, 0, 1], [4, 5, 10]]


def test_table_augmenter_concatenates_the_user_and_candidate_rows():
    users = np.arange(6, dtype=np.float32).reshape(3, 2)
    items = np.arange(12, dtype=np.float32).reshape(4, 3) * 10
    aug = TableAugmenter(users, items)
    out = aug(torch.tensor([2, 0]), torch.zeros(2, 5, dtype=torch.long), torch.tensor([[3, 1], [0, 0]]))
    assert aug.dim == 5 and out.shape == (2, 2, 5)
    assert out[0, 0].tolist() == [4, 5, 90, 100, 110] and out[1, 1].tolist() == [0, 1, 0, 10, 20]
    assert not list(aug.parameters())  # nothing to train: the +text / +LLM rows are fixed features


def test_ranking_rows_pair_a_row_with_its_reference_and_flag_rows_below_popularity():
    rng = np.random.default_rng(0)
    n, c = 200, 10
    target = rng.integers(0, c, n)
    users = np.repeat(np.arange(20), 10)
    good = rng.normal(size=(n, c))
    good[np.arange(n), target] += 3.0  # the target on top nearly always
    bad = rng.normal(size=(n, c))
    cfg = RunConfig(eval={"bootstrap": 200})
    rows = ranking_rows({"good": good, "bad": bad}, target, users, cfg, pairs=[("good", "bad")])
    assert rows[0]["ndcg@5"] > 0.9 > rows[1]["ndcg@5"]
    assert rows[0]["delta"] == pytest.approx(rows[0]["ndcg@5"] - rows[1]["ndcg@5"])
    assert 0 < rows[0]["delta_lo"] <= rows[0]["delta"] <= rows[0]["delta_hi"] and rows[0]["reference"] == "bad"
    assert "delta" not in rows[1]
    assert rows[1]["ndcg@5_lo"] <= rows[1]["ndcg@5"] <= rows[1]["ndcg@5_hi"]
    pop = ranking_row(POPULARITY, good * 0 + np.arange(c), target, users, cfg)  # a fixed order: a trivial row
    notes = trivial_notes([*rows, pop])
    assert notes[0].startswith("1 of 2 rows beat")


def test_popularity_scores_are_the_candidates_training_counts():
    counts = np.array([5, 0, 2, 9])
    assert popularity_scores(counts, np.array([[3, 0, 1], [2, 2, 0]])).tolist() == [[9, 5, 0], [2, 2, 5]]


def test_a_ranking_sweep_selects_by_ndcg_and_tabulates_ranking_metrics():
    from ragrec.tuning.report import TrialRow, best_row, trials_frame
    from ragrec.tuning.spec import load_sweep

    spec = load_sweep("configs/sweep_ur4rec_ml100k.yaml")
    assert spec.config.metric == "ndcg@10" and spec.config.mode == "max"
    rows = [
        TrialRow("a", {"ur4rec.proxies": 4}, {"ndcg@10": 0.41, "map@10": 0.30, "n": 500}),
        TrialRow("b", {"ur4rec.proxies": 8}, {"ndcg@10": 0.47, "map@10": 0.33, "n": 500}),
        TrialRow("c", {"ur4rec.proxies": 16}, {}, error="RuntimeError: boom"),
    ]
    assert best_row(rows, "ndcg@10", "max").trial_id == "b"
    df = trials_frame(rows, ["ur4rec.proxies"], "ndcg@10", "max")
    assert list(df["trial_id"]) == ["b", "a", "c"] and "map@10" in df.columns and "auc" not in df.columns


def test_a_ranking_metric_is_refused_for_nothing_but_a_typo():
    from pydantic import ValidationError

    from ragrec.tuning.spec import SweepConfig

    with pytest.raises(ValidationError, match="ndcg@10"):
        SweepConfig(base="x.yaml", search_space={"ur4rec.proxies": {"grid": [4]}}, metric="ndgc@10")
