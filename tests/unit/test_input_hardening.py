"""Bad user inputs give one clear error naming the file / field and the fix (or a documented behaviour), never a
traceback or silent acceptance: config values (bounds, finite floats, strict numbers, duplicate YAML keys) and
generic data files (encoding, separator, header-only, empty titles, duplicates, rating range, millisecond
timestamps)."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from ragrec import config as config_module
from ragrec.artifacts import ArtifactStore
from ragrec.config import ConfigError, DataConfig, _admits_bool, load_config
from ragrec.data import build_samples
from ragrec.data.errors import DataError
from ragrec.data.generic import load_generic
from ragrec.stages.data import dataset_stage

REPO = Path(__file__).resolve().parents[2]
_SECTIONS = [
    c
    for _, c in inspect.getmembers(config_module, inspect.isclass)
    if issubclass(c, config_module._Strict) and c is not config_module._Strict
]


def _fields(name: str) -> list[tuple[type[BaseModel], str]]:
    return [(c, name) for c in _SECTIONS if name in c.model_fields]


# ---- config values ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, field, bound",
    [
        ("lightgcn.epochs=-5", "lightgcn.epochs", "greater than or equal to 1"),
        ("lightgcn.lr=-1", "lightgcn.lr", "greater than 0"),
        ("lora.lr=-1", "lora.lr", "greater than 0"),
        ("llm.batch_size=0", "llm.batch_size", "greater than or equal to 1"),
        ("lightgcn.batch_size=0", "lightgcn.batch_size", "greater than or equal to 1"),
        ("description.top_p=7", "description.top_p", "less than or equal to 1"),
        ("retrieval.beta=inf", "retrieval.beta", "finite number"),
        ("retrieval.alpha=.nan", "retrieval.alpha", "finite number"),
        ("retrieval.k=true", "retrieval.k", "boolean where a number is expected"),
        ("lora.train_samples=yes", "lora.train_samples", "boolean where a number is expected"),
        ("eval.k_sweep=[5, true]", "eval.k_sweep", "boolean where a number is expected"),
    ],
)
def test_bad_config_values_name_the_field(override, field, bound):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert field in str(e.value) and bound in str(e.value)


@pytest.mark.parametrize("name, bad", [("lr", -1.0), ("lr", 0.0), ("batch_size", 0), ("epochs", -5), ("top_p", 7.0)])
def test_every_section_bounds_the_field(name, bad):
    """Any lr / batch size / epochs / top_p field of any section rejects the value."""
    found = _fields(name)
    assert found
    for cls, field in found:
        with pytest.raises(ValidationError, match=field):
            cls(**{field: bad})


def test_no_number_field_reads_a_boolean():
    checked = 0
    for cls in _SECTIONS:
        for name, f in cls.model_fields.items():
            if _admits_bool(f.annotation) or not any(t in str(f.annotation) for t in ("int", "float")):
                continue
            with pytest.raises(ValidationError, match="boolean where a number is expected"):
                cls(**{name: True})
            checked += 1
    assert checked > 100
    # real booleans still parse, and YAML integers still read as floats
    cfg = load_config(None, ["lora.enabled=false", "eval.fusion=true", "lora.lr=1"])
    assert cfg.lora.enabled is False and cfg.eval.fusion is True and cfg.lora.lr == 1.0


def test_learning_curve_grid_rejects_booleans_too():
    with pytest.raises(ConfigError, match="lora.epochs.*boolean"):
        load_config(None, ["eval.learning_curve_grid={lora.epochs: [1, true]}"])


@pytest.mark.parametrize(
    "text, key, line",
    [
        ("retrieval:\n  k: 3\n  alpha: 0.5\n  k: 4\n", "k", 4),
        ("retrieval: {k: 3}\nlora: {r: 4}\nretrieval: {k: 4}\n", "retrieval", 3),
    ],
)
def test_duplicate_yaml_keys_name_the_key_and_file(tmp_path, capsys, text, key, line):
    from ragrec.cli import main

    p = tmp_path / "dup.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert f"{p} line {line}: duplicate key '{key}'" in msg and "Fix: keep one" in msg and "\n" not in msg
    assert main(["config", "show", str(p)]) == 2
    err = capsys.readouterr().err
    assert "duplicate key" in err and "Traceback" not in err


def test_duplicate_key_in_an_override_value():
    with pytest.raises(ConfigError, match=r"not valid YAML \(duplicate key 'a'\)"):
        load_config(None, ["eval.deepfm={a: 1, a: 2}"])


@pytest.mark.parametrize(
    "override, msg",
    [
        ("data.encoding=klingon", "unknown text encoding 'klingon'"),
        ("data.separator=';;'", "one character"),
        ("data.rating_range=[5, 1]", "min <= max"),
        ("data.timestamp_unit=us", "data.timestamp_unit"),
    ],
)
def test_bad_data_options(override, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(None, [override])


# ---- cache keys: the new data options enter the dataset spec only away from their defaults ----------------------
def _dataset_key(cfg, tmp_path) -> str:
    store = ArtifactStore(str(tmp_path))
    store.run = lambda stage, spec, inputs, compute, version="1": store.artifact(stage, spec, inputs, version)
    return dataset_stage(store, cfg).key


def test_new_data_options_keep_existing_keys(tmp_path):
    pinned = "1fd3dc7900b92c60"  # tests/unit/test_cache_keys.py: the demo's dataset key
    assert _dataset_key(load_config(REPO / "configs/demo.yaml"), tmp_path) == pinned
    for o in (
        "data.encoding=latin-1",
        "data.separator=';'",
        "data.rating_range=[1, 5]",
        "data.timestamp_unit=ms",
        "data.on_duplicate=keep",
        "data.on_out_of_range=drop",
    ):
        assert _dataset_key(load_config(REPO / "configs/demo.yaml", [o]), tmp_path) != pinned, o


# ---- generic data files ---------------------------------------------------------------------------------------
_ITEMS = "item_id,title,genres\n1,Alien (1979),Horror\n2,Heat (1995),Crime\n3,Up (2009),Animation\n"


def _rows(ts0: int = 1_000_000, scale: int = 1, rating=lambda u, i: (u + i) % 5 + 1) -> list[str]:
    return [f"{u},{i},{rating(u, i)},{(ts0 + u * 10 + i) * scale}" for u in range(1, 8) for i in (1, 2, 3)]


def _write(tmp_path: Path, rows: list[str], items: str = _ITEMS, header="user_id,item_id,rating,timestamp") -> None:
    (tmp_path / "inter.csv").write_text("\n".join([header, *rows]) + "\n")
    (tmp_path / "items.csv").write_text(items)


def _load(tmp_path: Path, **kw):
    return load_generic(
        DataConfig(name="generic", path=str(tmp_path), interactions_file="inter.csv", items_file="items.csv", **kw)
    )


def _error(tmp_path: Path, **kw) -> str:
    with pytest.raises(DataError) as e:
        _load(tmp_path, **kw)
    msg = str(e.value)
    assert "\n" not in msg and "Fix: " in msg
    return msg


def test_latin1_file_names_the_file_and_the_encoding_option(tmp_path):
    _write(tmp_path, _rows())
    (tmp_path / "items.csv").write_bytes(_ITEMS.replace("Alien", "Amélie").encode("latin-1"))
    msg = _error(tmp_path)
    assert str(tmp_path / "items.csv") in msg and "line 2" in msg and "column 'title'" in msg
    assert "data.encoding" in msg and "latin-1" in msg
    ds = _load(tmp_path, encoding="latin-1")  # transcoded
    assert ds.items.column("title")[0].as_py() == "Amélie (1979)"


def test_semicolon_file_hints_at_the_separator_option(tmp_path):
    rows = [r.replace(",", ";") for r in _rows()]
    _write(tmp_path, rows, items=_ITEMS.replace(",", ";"), header="user_id;item_id;rating;timestamp")
    msg = _error(tmp_path)
    assert str(tmp_path / "items.csv") in msg and "semicolon-separated" in msg and "data.separator: ';'" in msg
    assert _load(tmp_path, separator=";").interactions.num_rows == 21  # one separator for all the files


def test_header_only_file(tmp_path):
    _write(tmp_path, [])
    msg = _error(tmp_path)
    assert msg.startswith(f"{tmp_path / 'inter.csv'}: the interactions file has a header but no rows")


@pytest.mark.parametrize(
    "items", [_ITEMS.replace("Heat (1995)", "  "), "item_id,title,genres\n1,,Horror\n2,,Crime\n3,,Animation\n"]
)
def test_empty_titles_are_an_error_naming_the_items(tmp_path, items):
    _write(tmp_path, _rows(), items=items)
    msg = _error(tmp_path)
    assert str(tmp_path / "items.csv") in msg and "title is empty" in msg and "item ids" in msg
    assert "give every item a title" in msg
    assert ("item ids 2)" in msg and "line 3" in msg) or ("item ids 1, 2, 3" in msg and "line 2" in msg)


def test_exact_duplicate_interactions_are_dropped_and_counted(tmp_path, caplog):
    _write(tmp_path, _rows() + _rows()[:5])
    with caplog.at_level(logging.WARNING, logger="ragrec.data.generic"):
        ds = _load(tmp_path)
    assert ds.interactions.num_rows == 21
    assert "dropped 5 exact duplicate interactions" in caplog.text
    _write(tmp_path, _rows())
    single = _load(tmp_path)
    assert ds.interactions.equals(single.interactions)
    cfg = DataConfig(min_history=1)
    assert build_samples(ds.interactions, cfg).num_rows == build_samples(single.interactions, cfg).num_rows


def test_conflicting_duplicate_interactions_are_an_error(tmp_path):
    rows = _rows()
    u, i, r, t = rows[4].split(",")
    _write(tmp_path, [*rows, f"{u},{i},{int(r) % 5 + 1},{t}"])
    msg = _error(tmp_path)
    assert str(tmp_path / "inter.csv") in msg and "line 6" in msg and "line 23" in msg
    assert "keep one row per (user, item, timestamp)" in msg


@pytest.mark.parametrize("bad", ["1e9", "-7"])
def test_implausible_ratings_name_the_column_and_range(tmp_path, bad):
    rows = _rows()
    rows[2] = ",".join([*rows[2].split(",")[:2], bad, rows[2].split(",")[3]])
    _write(tmp_path, rows)
    msg = _error(tmp_path)
    assert str(tmp_path / "inter.csv") in msg and "line 4" in msg and "rating" in msg
    assert "outside the plausible range [0, 1000]" in msg and "data.rating_range" in msg
    assert _load(tmp_path, rating_range=(-10, 1e10)).interactions.num_rows == 21
    msg = _error(tmp_path, rating_range=(1, 5))
    assert "[1, 5]" in msg and "widen data.rating_range" in msg


def test_millisecond_timestamps(tmp_path):
    _write(tmp_path, _rows(ts0=1_600_000_000, scale=1000))
    msg = _error(tmp_path)
    assert str(tmp_path / "inter.csv") in msg and "line 2" in msg and "looks like milliseconds" in msg
    assert "data.timestamp_unit: ms" in msg
    ms = _load(tmp_path, timestamp_unit="ms")
    _write(tmp_path, _rows(ts0=1_600_000_000))
    assert ms.interactions.equals(_load(tmp_path).interactions)


# ---- data.on_duplicate / data.on_out_of_range policies --------------------------------------------------------
def test_on_duplicate_keep_keeps_every_row_and_error_names_both_lines(tmp_path, caplog):
    _write(tmp_path, _rows() + _rows()[:5])
    assert _load(tmp_path, on_duplicate="keep").interactions.num_rows == 26
    msg = _error(tmp_path, on_duplicate="error")
    assert "line 2" in msg and "also line 23" in msg and "5 repeated rows" in msg and "data.on_duplicate" in msg
    rows = _rows()
    u, i, r, t = rows[4].split(",")
    _write(tmp_path, [*rows, f"{u},{i},{int(r) % 5 + 1},{t}"])  # differing values: kept apart under keep only
    assert _load(tmp_path, on_duplicate="keep").interactions.num_rows == 22
    assert "data.on_duplicate: keep" in _error(tmp_path)


def test_on_out_of_range_drop_and_keep(tmp_path, caplog):
    rows = _rows()
    rows[2] = ",".join([*rows[2].split(",")[:2], "1e9", rows[2].split(",")[3]])
    rows[5] = ",".join([*rows[5].split(",")[:3], str(1_600_000_000_000)])  # one stray millisecond timestamp
    _write(tmp_path, rows)
    assert "data.on_out_of_range: drop" in _error(tmp_path)
    with caplog.at_level(logging.WARNING, logger="ragrec.data.generic"):
        ds = _load(tmp_path, on_out_of_range="drop")
    assert ds.interactions.num_rows == 19 and "dropped 2 interactions out of range" in caplog.text
    assert float(ds.interactions.column("rating").to_numpy().max()) <= 5
    kept = _load(tmp_path, on_out_of_range="keep").interactions
    assert kept.num_rows == 21 and float(kept.column("rating").to_numpy().max()) == 1e9


def test_mostly_millisecond_timestamps_stay_an_error_under_every_policy(tmp_path):
    _write(tmp_path, _rows(ts0=1_600_000_000, scale=1000))
    for policy in ("error", "drop", "keep"):
        assert "data.timestamp_unit: ms" in _error(tmp_path, on_out_of_range=policy)


# ---- templates: checked at load, filled without str.format ------------------------------------------------------
def test_templates_are_checked_when_the_config_loads():
    from ragrec.config import TEMPLATE_PLACEHOLDERS

    for field, (allowed, required) in TEMPLATE_PLACEHOLDERS.items():
        section, name = field.split(".")
        with pytest.raises(ConfigError, match=rf"{field}.*unknown placeholder\(s\) \{{nope\}}"):
            load_config(None, [f"{field}='{{{required[0]}}} {{nope}}'"])
        with pytest.raises(ConfigError, match=rf"{field}.*attribute, index or format syntax"):
            load_config(None, [f"{field}='{{{required[0]}.__class__}}'"])
        ok = " ".join("{" + a + "}" for a in allowed)
        assert getattr(getattr(load_config(None, [f"{field}='{ok}'"]), section), name) == ok


def test_fill_template_never_evaluates_and_keeps_braces_in_values():
    import pyarrow as pa

    from ragrec.config import DescriptionConfig
    from ragrec.methods.rallrec import description_prompts
    from ragrec.templates import TemplateError, fill_template

    out = fill_template("A {title} {'k': 1} { }", {"title": pa.array(["{genre}", "B"])}).to_pylist()
    assert out == ["A {genre} {'k': 1} { }", "A B {'k': 1} { }"]  # a value's braces are text
    with pytest.raises(TemplateError, match="format syntax"):
        fill_template("{title.__class__.__mro__}", {"title": pa.array(["a"])})
    items = pa.table(
        {
            "item_id": pa.array([0, 1, 2], pa.int64()),
            "title": ["Heat {x}", "Up", "Alien"],
            "genres": pa.array([["Action", "Crime"], [], None], pa.list_(pa.string())),
        }
    )
    t = DescriptionConfig().template  # the former str.format output, for the default template
    want = [
        t.format(title=a, genre=", ".join(g or []) or "unknown")
        for a, g in zip(["Heat {x}", "Up", "Alien"], [["Action", "Crime"], [], None])
    ]
    assert description_prompts(items, t).column("prompt").to_pylist() == want
