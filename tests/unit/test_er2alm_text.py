"""ER2ALM's text side: the RAG corpus (read, chunk, index, queries) and the two LLM steps' prompts and parsers."""

import json
import random
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ragrec.config import ER2ALM_ASPECTS
from ragrec.data.errors import DataError
from ragrec.llm import prompts_er2alm as pe
from ragrec.llm.prompts_er2alm import (
    NO_HISTORY,
    NO_PASSAGES,
    aspect_prompts,
    fit_aspect_prompts,
    parse_aspects,
    parse_profiles,
    profile_prompts,
)
from ragrec.retrieval import corpus as corpus_mod
from ragrec.retrieval.corpus import (
    CorpusIndex,
    chunk_corpus,
    chunk_texts,
    item_queries,
    metadata_corpus,
    read_corpus,
)

ITEMS = pa.table(
    {
        "item_id": [1, 0, 2],  # not in id order: everything is returned by dense item id
        "title": ["Alien {title} (1979)", "Heat (1995)", "Up"],
        "genres": [["Horror", "Sci-Fi"], ["Action", "Crime"], []],
        "year": pa.array([1979, 1995, None], pa.int32()),
    }
)


# ------------------------------------------------------------------------------------------ read_corpus


def _write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_jsonl_casts_ids_and_fills_null_text(tmp_path):
    p = _write_jsonl(
        tmp_path / "c.jsonl",
        [
            json.dumps({"doc_id": 7, "title": "Heat (1995 film)", "text": "A crime film.", "extra": 1}),
            "",
            json.dumps({"doc_id": 8, "title": None, "text": "Another."}),
        ],
    )
    t = read_corpus(p)
    assert t.column_names == ["doc_id", "title", "text"]
    assert t.to_pylist() == [
        {"doc_id": "7", "title": "Heat (1995 film)", "text": "A crime film."},
        {"doc_id": "8", "title": "", "text": "Another."},
    ]


def test_read_jsonl_with_types_changing_between_lines(tmp_path):
    p = _write_jsonl(
        tmp_path / "c.ndjson",
        [json.dumps({"doc_id": 1, "title": "a", "text": "x"}), json.dumps({"doc_id": "b2", "title": 3, "text": "y"})],
    )
    assert read_corpus(p).to_pylist() == [
        {"doc_id": "1", "title": "a", "text": "x"},
        {"doc_id": "b2", "title": "3", "text": "y"},
    ]


def test_read_parquet(tmp_path):
    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"doc_id": ["d1", "d2"], "title": ["T1", "T2"], "text": ["one", None]}), p)
    assert read_corpus(p).to_pylist() == [
        {"doc_id": "d1", "title": "T1", "text": "one"},
        {"doc_id": "d2", "title": "T2", "text": ""},
    ]


def test_missing_column_names_the_file_and_column(tmp_path):
    p = _write_jsonl(tmp_path / "c.jsonl", [json.dumps({"doc_id": "d1", "title": "T"})])
    with pytest.raises(DataError) as e:
        read_corpus(p)
    msg = str(e.value)
    assert str(p) in msg and "'text'" in msg and "doc_id, title" in msg and "\n" not in msg
    q = tmp_path / "c.parquet"
    pq.write_table(pa.table({"doc_id": ["d1"], "body": ["x"]}), q)
    with pytest.raises(DataError, match=r"c\.parquet: .*'title' not found"):
        read_corpus(q)


def test_broken_json_line_is_named(tmp_path):
    p = _write_jsonl(
        tmp_path / "c.jsonl",
        [json.dumps({"doc_id": "d1", "title": "T", "text": "x"}), "", '{"doc_id": "d2", "title": "T", "text": '],
    )
    with pytest.raises(DataError) as e:
        read_corpus(p)
    assert e.value.line == 3 and f"{p} line 3: not valid JSON" in str(e.value)
    p2 = _write_jsonl(tmp_path / "d.jsonl", [json.dumps({"doc_id": "d1", "title": "T", "text": "x"}), "[1, 2]"])
    with pytest.raises(DataError, match=r"d\.jsonl line 2: a line must hold one JSON object"):
        read_corpus(p2)


def test_bad_utf8_unsupported_suffix_missing_file_duplicates(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_bytes(b'{"doc_id": "a", "title": "t", "text": "ok"}\n{"doc_id": "b", "title": "t", "text": "\xff"}\n')
    with pytest.raises(DataError, match=r"c\.jsonl line 2: not valid UTF-8"):
        read_corpus(p)
    csv = tmp_path / "c.csv"
    csv.write_text("doc_id,title,text\n")
    with pytest.raises(DataError, match=r"c\.csv: unsupported corpus file type '\.csv'"):
        read_corpus(csv)
    with pytest.raises(DataError, match=r"nope\.jsonl: corpus file not found"):
        read_corpus(tmp_path / "nope.jsonl")
    d = _write_jsonl(tmp_path / "dup.jsonl", [json.dumps({"doc_id": "a", "title": "", "text": "x"})] * 2)
    with pytest.raises(DataError, match=r"dup\.jsonl line 2: .*doc_id 'a' appears more than once"):
        read_corpus(d)


# ------------------------------------------------------------------------------------------ chunk_corpus


def _docs(texts):
    return pa.table({"doc_id": [f"d{k}" for k in range(len(texts))], "title": ["T"] * len(texts), "text": texts})


def test_chunking_hand_example():
    t = chunk_corpus(_docs(["abcdefghij", "abcdefghijk", "abcd", "   ", None, "héllo wörld"]), 4, 1)
    assert t.column_names == ["doc_id", "chunk_id", "title", "text"]
    assert t.column("text").to_pylist() == [
        "abcd", "defg", "ghij",  # 10 chars, stride 3: the last window ends at the end
        "abcd", "defg", "ghij", "jk",
        "abcd",  # exactly chunk_chars: one chunk
        # blank and null texts have no chunk
        "héll", "lo w", "wörl", "ld",  # characters, not bytes
    ]  # fmt: skip
    assert t.column("doc_id").to_pylist() == ["d0"] * 3 + ["d1"] * 4 + ["d2"] + ["d5"] * 4
    assert t.column("chunk_id").to_pylist() == [0, 1, 2, 0, 1, 2, 3, 0, 0, 1, 2, 3]
    assert chunk_corpus(_docs(["abcdef"]), 3, 0).column("text").to_pylist() == ["abc", "def"]


def test_chunking_matches_python_slicing_across_blocks(monkeypatch):
    rng = random.Random(0)
    alphabet = "ab cdé€😀\n"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))).strip() for _ in range(60)]
    monkeypatch.setattr(corpus_mod, "_BLOCK_BYTES", 37)  # many blocks
    for size, overlap in [(5, 2), (7, 0), (1, 0), (50, 49)]:
        got = chunk_corpus(_docs(texts), size, overlap)
        want, ids = [], []
        for d, s in enumerate(texts):
            if not s:
                continue
            k = 0
            while True:
                want.append(s[k * (size - overlap) : k * (size - overlap) + size])
                ids.append(f"d{d}")
                if k * (size - overlap) + size >= len(s):
                    break
                k += 1
        assert got.column("text").to_pylist() == want
        assert got.column("doc_id").to_pylist() == ids


def test_chunk_overlap_is_validated():
    with pytest.raises(ValueError, match="chunk_overlap"):
        chunk_corpus(_docs(["abc"]), 4, 4)
    with pytest.raises(ValueError, match="chunk_overlap"):
        chunk_corpus(_docs(["abc"]), 4, -1)


# ----------------------------------------------------------------------------------------------- index

_VOCAB = ["heat", "crime", "alien", "space", "toy", "story"]


class FakeEncoder:
    """Counts of the vocabulary words (deterministic, unnormalised: the index normalises)."""

    def __init__(self):
        self.calls = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        out = np.zeros((len(texts), len(_VOCAB)), np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z]+", t.lower()):
                if w in _VOCAB:
                    out[i, _VOCAB.index(w)] += 1
        return out


CHUNKS = pa.table(
    {
        "doc_id": ["h", "a", "a", "t"],
        "chunk_id": pa.array([0, 0, 1, 0], pa.int32()),
        "title": ["Heat", "Alien", "Alien", "Toy Story"],
        "text": ["crime crime", "space space space", "crime", "toy"],
    }
)


def test_corpus_index_top_r():
    enc = FakeEncoder()
    index = CorpusIndex(CHUNKS, enc)
    assert enc.calls == [["Heat: crime crime", "Alien: space space space", "Alien: crime", "Toy Story: toy"]]
    scores, rows = index.search(["Heat (1995), Crime", "alien space"], 2)
    assert rows.tolist() == [[0, 2], [1, 2]]
    np.testing.assert_allclose(scores, [[3 / np.sqrt(10), 0.5], [4 / np.sqrt(20), 0.5]], rtol=1e-5)
    assert rows.dtype == np.int64 and scores.shape == (2, 2)
    assert index.passages(["toy story"], 1) == [["Toy Story: toy"]]
    s, r = index.search(["heat"], 10)  # capped at the number of chunks
    assert r.shape == (1, 4) and r[0, 0] == 0
    s, r = index.search([], 3)
    assert s.shape == (0, 3) and r.shape == (0, 3)
    with pytest.raises(ValueError, match="no chunks"):
        CorpusIndex(CHUNKS.slice(0, 0), enc)


def test_chunk_texts_without_title():
    t = pa.table({"title": ["", "T"], "text": ["a", "b"]})
    assert chunk_texts(t).to_pylist() == ["a", "T: b"]


def test_item_queries_and_metadata_corpus():
    assert item_queries(ITEMS).to_pylist() == [
        "Heat (1995), Action, Crime",
        "Alien {title} (1979), Horror, Sci-Fi",
        "Up",
    ]
    no_year_in_title = pa.table({"item_id": [0], "title": ["Heat"], "genres": [["Action"]], "year": [1995]})
    assert item_queries(no_year_in_title).to_pylist() == ["Heat (1995), Action"]
    desc = pa.table({"item_id": [2, 0], "text": ["A balloon house.", None]})
    mc = metadata_corpus(ITEMS, desc)
    assert mc.to_pylist() == [
        {"doc_id": "0", "title": "Heat (1995)", "text": "Heat (1995). Genres: Action, Crime."},
        {"doc_id": "1", "title": "Alien {title} (1979)", "text": "Alien {title} (1979). Genres: Horror, Sci-Fi."},
        {"doc_id": "2", "title": "Up", "text": "Up. A balloon house."},
    ]
    assert metadata_corpus(ITEMS).column("text")[2].as_py() == "Up."


# --------------------------------------------------------------------------------------------- prompts


def test_aspect_prompts_structure_and_literal_braces():
    prompts = aspect_prompts(ITEMS, [["p1 {passages}\nsecond line", "p2"], ["about {title}"], []]).to_pylist()
    assert len(prompts) == 3
    heat, alien, up = prompts
    assert "Title: Heat (1995)\nYear: 1995\nGenres: Action, Crime\n" in heat
    assert "\n[1] p1 {passages} second line\n[2] p2\n" in heat
    assert "Title: Alien {title} (1979)\n" in alien and "[1] about {title}\n" in alien
    assert "Year: unknown\nGenres: unknown\n" in up and NO_PASSAGES in up
    sections = ["Task description:", "Task instructions:", "Specific detail requirements:", "Output format:"]
    pos = [heat.index(s) for s in [*sections, "Emphasis on details:"]]
    assert pos == sorted(pos) and heat.index("Movie data:") == 0
    fmt = "plot/theme: <text>\ngenre: <text>\nvisual/sound: <text>\nculture/language: <text>\nduration: <text>\n"
    assert fmt + "director: <text>\n" in heat
    with pytest.raises(ValueError, match="passages"):
        aspect_prompts(ITEMS, [[]])


def test_fit_aspect_prompts_drops_the_least_relevant_passages_never_the_item():
    long = "x" * 400
    passages = [["best passage", long, long], ["about {title}"], []]
    count = lambda texts: [len(t) for t in texts]
    full = aspect_prompts(ITEMS, passages).to_pylist()
    # a budget above every prompt changes nothing
    same, fit = fit_aspect_prompts(ITEMS, passages, count, max(map(len, full)))
    assert same.to_pylist() == full and fit == {"passages_dropped": 0, "items_shortened": 0}
    # room for Heat's best passage and one long one, not two: the LAST passage goes, the title stays
    budget = len(full[0]) - 400
    fitted, fit = fit_aspect_prompts(ITEMS, passages, count, budget)
    heat, alien, up = fitted.to_pylist()
    assert fit == {"passages_dropped": 1, "items_shortened": 1}
    assert heat == aspect_prompts(ITEMS, [["best passage", long], ["about {title}"], []]).to_pylist()[0]
    assert heat.startswith("Movie data:\nTitle: Heat (1995)\n") and len(heat) <= budget
    assert (alien, up) == (full[1], full[2])  # dense item order kept for the untouched items
    # room for the best passage only (shorter than the no-passage marker): both long ones go
    heat_only = ITEMS.slice(1, 1)
    one = len(aspect_prompts(heat_only, [["best passage"]]).to_pylist()[0])
    fitted, fit = fit_aspect_prompts(heat_only, passages[:1], count, one)
    assert "[1] best passage\n" in fitted.to_pylist()[0] and fit == {"passages_dropped": 2, "items_shortened": 1}
    with pytest.raises(ValueError, match=r"llm.max_prompt_tokens=.* item 0 needs .* without any passage"):
        fit_aspect_prompts(heat_only, passages[:1], count, one - 1)


def test_profile_prompts_keep_the_last_items_and_aspects():
    aspects = pa.table(
        {
            "plot_theme": ["A heist.", "Crew vs {alien}.", None],
            "genre": ["Crime", None, None],
            "visual_sound": [None, None, None],
            "culture_language": ["English", None, None],
            "duration": [None, None, None],
            "director": ["Michael Mann", "Ridley Scott", None],
        }
    )
    hist = pa.array([[2, 0, 1, 0], [], None, [1]], pa.list_(pa.int64()))
    prompts = profile_prompts(ITEMS, aspects, hist, max_items=3).to_pylist()
    assert len(prompts) == 4
    first = prompts[0]
    assert first.startswith("Movies the user liked most recently")
    block = first.split("\n\n")[0].split("\n")[1:]
    assert block == [
        '1. "Heat (1995)" (Action, Crime) - plot/theme: A heist; genre: Crime; culture/language: English; '
        "director: Michael Mann",
        '2. "Alien {title} (1979)" (Horror, Sci-Fi) - plot/theme: Crew vs {alien}; director: Ridley Scott',
        '3. "Heat (1995)" (Action, Crime) - plot/theme: A heist; genre: Crime; culture/language: English; '
        "director: Michael Mann",
    ]
    assert NO_HISTORY in prompts[1] and NO_HISTORY in prompts[2]
    assert '1. "Alien {title} (1979)"' in prompts[3]
    assert "genre: <preference> [weight: <number between 0 and 1>]\n" in first
    assert first.index("Task description:") < first.index("Output format:") < first.index("Emphasis on details:")
    with pytest.raises(ValueError, match="not in the items table"):
        profile_prompts(ITEMS, aspects, pa.array([[3]], pa.list_(pa.int64())), max_items=3)


# --------------------------------------------------------------------------------------------- parsing

ASPECT_OUTPUTS = [
    # 0: the asked format
    "plot/theme: A heist.\ngenre: Crime\nvisual/sound: Blue night city.\nculture/language: American, English\n"
    "duration: 170 min\ndirector: Michael Mann",
    # 1: numbered, markdown bold, spaced and spelled-out labels
    "1. **Plot / Theme:** A heist.\n2. **Genre**: Crime\n3. Visual & Sound: dark blue\n"
    "4. Culture and Language: English\n5. Running time: 170 min\n6. __Director:__ Michael Mann",
    # 2: chatter, upper case, underscores, bullets, three aspects missing
    "Sure! Here are the aspects:\n- PLOT_THEME :  a boy and a toy \n* genres: Animation\n\n   director: Lasseter\nBye",
    # 3-5: garbage, empty, null
    "I cannot help with that.",
    "",
    None,
    # 6: value on the next line, placeholders, short labels, duplicates, a label-like phrase
    "Plot/theme:\n  Space horror on a ship.\nGenre: n/a\nLanguage: English\nDuration: <text>\nSound: eerie score\n"
    "Director: Ridley Scott\nDirector: someone else\nGenre-bending film: no",
]


def test_parse_aspects_variants_and_counts():
    table, stats = parse_aspects(ASPECT_OUTPUTS)
    assert table.column_names == list(ER2ALM_ASPECTS)
    rows = table.to_pylist()
    full = {
        "plot_theme": "A heist.",
        "genre": "Crime",
        "visual_sound": "Blue night city.",
        "culture_language": "American, English",
        "duration": "170 min",
        "director": "Michael Mann",
    }
    assert rows[0] == full
    assert rows[1] == {**full, "visual_sound": "dark blue", "culture_language": "English"}
    none = dict.fromkeys(ER2ALM_ASPECTS)
    assert rows[2] == {**none, "plot_theme": "a boy and a toy", "genre": "Animation", "director": "Lasseter"}
    assert rows[3] == rows[4] == rows[5] == none
    assert rows[6] == {
        **none,
        "plot_theme": "Space horror on a ship.",
        "culture_language": "English",
        "visual_sound": "eerie score",
        "director": "Ridley Scott",
    }
    assert stats == {
        "parsed": 2,
        "partial": 2,
        "failed": 3,
        "missing_per_aspect": {
            "plot_theme": 3,
            "genre": 4,
            "visual_sound": 4,
            "culture_language": 4,
            "duration": 5,
            "director": 3,
        },
    }


def test_parse_aspects_never_raises():
    weird = ["::::", "\x00\n:\n- :", "genre:" * 1000, "1.\n2.\n**", 123, "plot/theme: {title} [weight: x]"]
    table, stats = parse_aspects(weird)
    assert table.num_rows == 6 and stats["parsed"] + stats["partial"] + stats["failed"] == 6
    assert table.column("plot_theme")[5].as_py() == "{title} [weight: x]"


PROFILE_OUTPUTS = [
    # 0: decimal, percent, clipped, prose 'weight' + bare bracket, NaN, no weight
    "plot/theme: heists [weight: 0.8]\ngenre: crime [weight: 80%]\nvisual/sound: neon (weight 0.99)\n"
    "culture/language: the weight of grief [0.3]\nduration: long [weight: nan]\ndirector: Mann",
    # 1: a bare percentage, above 1, negative, zero, words
    "Genre: comedy [weight: 70]\nPlot/Theme: love [weight: 1.5]\nDirector: anyone [weight: -0.2]\n"
    "visual/sound: bright [weight: 0]\nculture/language: French [weight: high]\nduration: short [weight: 0.5]",
    # 2: nothing
    "no profile here",
    # 3: profile lines without any weight
    "plot/theme: a\ngenre: b\nvisual/sound: c\nculture/language: d\nduration: e\ndirector: f",
    # 4: markdown, unbracketed weight, bare percentage, a fraction; three lines missing
    "- **Genre**: thrillers - weight: 0.9\n- Director: Nolan (90%)\n- Duration: long films, 8/10",
]


def test_parse_profiles_repairs_weights():
    profiles, w, stats = parse_profiles(PROFILE_OUTPUTS, min_weight=0.05)
    assert w.dtype == np.float32 and w.shape == (5, 6)
    m0 = (0.8 + 0.8 + 0.95 + 0.3) / 4
    m1 = (0.95 + 0.7 + 0.05 + 0.5) / 4
    m4 = (0.9 + 0.9 + 0.8) / 3
    # columns: plot_theme, genre, visual_sound, culture_language, duration, director
    want = np.array(
        [
            [0.8, 0.8, 0.95, 0.3, m0, m0],
            [0.95, 0.7, 0.05, m1, 0.5, m1],
            [0.5] * 6,
            [0.5] * 6,
            [m4, 0.9, m4, m4, 0.8, 0.9],
        ],
        np.float32,
    )
    np.testing.assert_allclose(w, want, rtol=1e-6)
    assert profiles.to_pylist()[0] == {
        "plot_theme": "heists",
        "genre": "crime",
        "visual_sound": "neon",
        "culture_language": "the weight of grief",
        "duration": "long",
        "director": "Mann",
    }
    assert profiles.to_pylist()[4] == {
        **dict.fromkeys(ER2ALM_ASPECTS),
        "genre": "thrillers",
        "director": "Nolan",
        "duration": "long films",
    }
    assert profiles.column("culture_language").to_pylist()[1] == "French"
    assert stats == {
        "parsed": 3,
        "partial": 1,
        "failed": 1,
        "missing_per_aspect": {
            "plot_theme": 2,
            "genre": 1,
            "visual_sound": 2,
            "culture_language": 2,
            "duration": 1,
            "director": 1,
        },
        "weight_missing": 16,  # 0: director; 2: all six; 3: all six; 4: three lines
        "weight_invalid": 3,  # nan, -0.2, high
        "weight_percent": 3,  # 80%, 70, 90%
        "weight_fraction": 1,  # 8/10
        "weight_clipped": 3,  # 0.99, 1.5, 0
        "weight_filled": 7,  # 2 + 2 + 3
        "uniform_rows": 2,
    }


def test_parse_profiles_bounds_and_all_missing():
    _, w, stats = parse_profiles([None, "genre: x [weight: 1]"], min_weight=0.1)
    np.testing.assert_allclose(w, [[pe.UNIFORM_WEIGHT] * 6, [0.9] * 6], rtol=1e-6)
    assert stats["uniform_rows"] == 1 and stats["weight_clipped"] == 1 and stats["weight_filled"] == 5
    _, w, _ = parse_profiles([])
    assert w.shape == (0, 6)
    with pytest.raises(ValueError, match="min_weight"):
        parse_profiles(["x"], min_weight=0.5)
