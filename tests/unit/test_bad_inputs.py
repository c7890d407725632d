"""Inputs that never crash: one table of bad inputs (config YAML, ``--set`` overrides, prompt templates, data
files, HTTP bodies), each answered by ONE line naming the file / line / field and the fix.

* CLI cases run ``ragrec.cli.main`` in-process (``config show``, ``data check``, a few ``run``): exit code 2,
  exactly one ``ragrec: error:`` line holding the expected words, no traceback, and nothing written (no run
  folder, no finished artifact).
* HTTP cases post to the FastAPI app of the service (``make_api`` + the real request models and checks, no Ray):
  a 4xx whose one-line ``detail`` holds the expected words.
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures' real types
import json
import logging
from pathlib import Path

import pytest
from serving_helpers import checking_client

from ragrec.cli import main

# ------------------------------------------------------------------------------------------ CLI harness

_ITEMS = "item_id,title,genres\n1,Alien (1979),Horror\n2,Heat (1995),Crime\n3,Up (2009),Animation\n"
_HEADER = "user_id,item_id,rating,timestamp"


def _rows(ts0: int = 1_000_000_000, scale: int = 1) -> list[str]:
    return [f"{u},{i},{(u + i) % 5 + 1},{(ts0 + u * 1000 + i) * scale}" for u in range(1, 11) for i in (1, 2, 3)]


@pytest.fixture(autouse=True)
def _fresh_log_handler(monkeypatch):
    """``setup_logging`` binds its handler to the sys.stderr of the first call: give each test its own."""
    monkeypatch.setattr(logging.getLogger("ragrec"), "handlers", [])


def _cli(argv: list[str], capsys, tmp_path: Path) -> str:
    """Run the CLI; assert exit 2, one error line, no traceback, nothing written; return the error line."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("ragrec: error:")]
    assert len(lines) == 1, err
    assert not (tmp_path / "runs" / "bad").exists()  # no run folder
    assert not list((tmp_path / "art").rglob("manifest.json"))  # no finished artifact
    return lines[0]


def _config(tmp_path: Path, text: str | bytes) -> Path:
    p = tmp_path / "c.yaml"
    head = f"name: bad\noutput_dir: {tmp_path}/runs\nartifacts_dir: {tmp_path}/art\n"
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text if text.startswith(("- ", "retrieval: [")) else head + text)
    return p


def _assert_words(line: str, words: list[str]) -> None:
    missing = [w for w in words if w not in line]
    assert not missing, f"{missing} not in: {line}"


# ------------------------------------------------------------------------------------------ config YAML

_H = 4  # the header written by _config takes 3 lines: the case's first line is line 4

CONFIG_CASES = [
    ("typo-top-level", "nme: x\n", [f"(line {_H})", "unknown field 'nme'", "did you mean 'name'"]),
    ("typo-in-section", "retrieval:\n  kk: 3\n", [f"retrieval.kk (line {_H + 1})", "did you mean 'k'"]),
    ("string-for-int", "retrieval:\n  k: abc\n", [f"retrieval.k (line {_H + 1})", "valid integer"]),
    ("negative-epochs", "lightgcn:\n  epochs: -5\n", ["lightgcn.epochs", "greater than or equal to 1"]),
    ("bool-for-int", "retrieval:\n  k: true\n", ["retrieval.k", "boolean where a number is expected"]),
    ("inf", "retrieval:\n  beta: .inf\n", ["retrieval.beta", "finite number"]),
    ("nan", "retrieval:\n  alpha: .nan\n", ["retrieval.alpha", "finite number"]),
    ("top-p-7", "description:\n  top_p: 7\n", [f"description.top_p (line {_H + 1})", "less than or equal to 1"]),
    ("duplicate-key", "retrieval: {k: 3}\nlora: {r: 4}\nretrieval: {k: 4}\n", ["duplicate key 'retrieval'", "Fix:"]),
    ("not-a-mapping", "- a\n- b\n", ["top level must be a mapping", "Fix:"]),
    ("broken-yaml", "retrieval: [1\n", ["line 2, column 1", "not valid YAML", "Fix:"]),
    ("unknown-method", "method: foo\n", [f"method (line {_H})", "'rallrec'"]),
    ("float-seed", "seed: 1.5\n", [f"seed (line {_H})", "valid integer"]),
    ("split-sum", "data:\n  split: [0.5, 0.5, 0.5]\n", ["data", "summing to 1"]),
    (
        "encoding",
        "data:\n  encoding: klingon\n",
        [f"data.encoding (line {_H + 1})", "unknown text encoding", "latin-1"],
    ),
    ("separator", "data:\n  separator: ';;'\n", ["data.separator", "one character"]),
    ("rating-range", "data:\n  rating_range: [5, 1]\n", ["data.rating_range", "min <= max"]),
    ("timestamp-unit", "data:\n  timestamp_unit: us\n", [f"data.timestamp_unit (line {_H + 1})", "'s' or 'ms'"]),
    ("on-duplicate", "data:\n  on_duplicate: maybe\n", ["data.on_duplicate", "'drop', 'error' or 'keep'"]),
    ("on-out-of-range", "data:\n  on_out_of_range: ignore\n", ["data.on_out_of_range", "'error', 'drop' or 'keep'"]),
    ("unknown-variant", "eval:\n  variants: [bogus]\n", ["eval.variants", "unknown eval variants ['bogus']"]),
    ("scalar-for-list", "lora:\n  target_modules: 3\n", ["lora.target_modules", "valid list"]),
    ("scalar-section", "retrieval: 3\n", [f"retrieval (line {_H})", "valid dictionary"]),
    ("dropout-1", "lora:\n  dropout: 1.0\n", ["lora.dropout", "less than 1"]),
    ("not-utf8", "name: caf\xe9\n".encode("latin-1"), ["not UTF-8", "Fix: save it as UTF-8"]),
    (
        "template-typo",
        "description:\n  template: Describe {titel}\n",
        [f"description.template (line {_H + 1})", "unknown placeholder(s) {titel}", "{title}, {genre}"],
    ),
    (
        "template-attribute",
        "ur4rec:\n  item_template: '{title.__class__.__mro__} {genre}'\n",
        ["ur4rec.item_template", "'{title.__class__.__mro__}'", "attribute, index or format syntax", "plain {title}"],
    ),
]


@pytest.mark.parametrize("text, words", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_file(tmp_path, capsys, text, words):
    line = _cli(["config", "show", str(_config(tmp_path, text))], capsys, tmp_path)
    _assert_words(line, [str(tmp_path / "c.yaml"), *words])


def test_missing_config_file(tmp_path, capsys):
    line = _cli(["data", "check", str(tmp_path / "nope.yaml")], capsys, tmp_path)
    _assert_words(line, ["config file", "nope.yaml does not exist"])


# ------------------------------------------------------------------------------------------ --set overrides

SET_CASES = [
    ("unclosed-list", "retrieval.k=[1", ["override 'retrieval.k=[1'", "not valid YAML", "quote a string"]),
    ("no-equals", "retrieval.k", ["override 'retrieval.k'", "section.field=value"]),
    ("unknown-section", "nosuch.x=1", ["nosuch (--set nosuch.x=1)", "unknown field 'nosuch'"]),
    ("not-a-number", "lora.lr=abc", ["lora.lr (--set lora.lr=abc)", "valid number"]),
    ("bool-for-int", "retrieval.k=true", ["retrieval.k (--set retrieval.k=true)", "boolean where a number"]),
    ("duplicate-key", "eval.deepfm={a: 1, a: 2}", ["not valid YAML (duplicate key 'a')"]),
    ("zero-epochs", "lightgcn.epochs=0", ["lightgcn.epochs", "greater than or equal to 1"]),
    ("field-as-section", "retrieval.k.x=1", ["retrieval.k", "valid integer"]),
    ("escaping-name", "name=../../x", ["name (--set name=../../x)", "plain folder name"]),
    ("bad-policy", "data.on_duplicate=ignore", ["data.on_duplicate", "'drop', 'error' or 'keep'"]),
    ("template-typo", "description.template=Describe {titel}", ["unknown placeholder(s) {titel}", "{title}, {genre}"]),
    ("template-mro", "description.template=Describe {title.__class__.__mro__}", ["attribute, index or format"]),
    ("template-index", "description.template=Describe {title[0]}", ["'{title[0]}'", "write a plain {title}"]),
    ("template-conversion", "description.template=Describe {title!r}", ["'{title!r}'", "format syntax"]),
    ("template-no-title", "description.template=Describe the film", ["must contain {title}"]),
    ("rationale-no-target", "rationale.template=Only {history}", ["rationale.template", "must contain {target}"]),
    ("user-template-typo", "ur4rec.user_template=About {user}", ["unknown placeholder(s) {user}", "{history}"]),
    ("item-template-format", "ur4rec.item_template='{title:>10} ({genre})'", ["'{title:>10}'", "format syntax"]),
    ("item-template-unquoted", "ur4rec.item_template={title} ({genre})", ["not valid YAML", "quote a string"]),
]


@pytest.mark.parametrize("override, words", [c[1:] for c in SET_CASES], ids=[c[0] for c in SET_CASES])
def test_bad_override(tmp_path, capsys, override, words):
    line = _cli(["data", "check", str(_config(tmp_path, "")), "--set", override], capsys, tmp_path)
    _assert_words(line, words)


# ------------------------------------------------------------------------------------------ data files


def _generic(tmp_path: Path, inter: str | bytes | None, items: str | bytes = _ITEMS, extra: str = "") -> Path:
    """A generic-dataset config over the files written here (``inter`` None: no interactions file; ``extra``
    more ``data`` fields, e.g. ``", on_duplicate: error"``, or ``"|inter.parquet"`` for another file name)."""
    name = "inter.csv"
    if extra.startswith("|"):
        name, extra = extra[1:], ""
    for fname, text in ((name, inter), ("items.csv", items)):
        if text is not None:
            (tmp_path / fname).write_bytes(text if isinstance(text, bytes) else text.encode())
    data = (
        f"data: {{name: generic, path: {tmp_path}, interactions_file: {name}, items_file: items.csv, "
        f"min_history: 1{extra}}}\n"
    )
    return _config(tmp_path, data)


def _csv(rows: list[str], header: str = _HEADER) -> str:
    return "\n".join([header, *rows]) + "\n"


def _replace(rows: list[str], k: int, col: int, value: str) -> list[str]:
    out = list(rows)
    parts = out[k].split(",")
    parts[col] = value
    out[k] = ",".join(parts)
    return out


_R = _rows()
DATA_CASES = [
    ("missing-file", None, _ITEMS, "", ["inter.csv: interactions file not found", "Fix: set data.interactions_file"]),
    (
        "latin1-items",
        _csv(_R),
        _ITEMS.replace("Alien", "Amélie").encode("latin-1"),
        "",
        ["items.csv line 2", "column 'title'", "data.encoding"],
    ),
    (
        "semicolons",
        _csv([r.replace(",", ";") for r in _R], _HEADER.replace(",", ";")),
        _ITEMS.replace(",", ";"),
        "",
        ["semicolon-separated", "data.separator: ';'"],
    ),
    ("header-only", _csv([]), _ITEMS, "", ["inter.csv: the interactions file has a header but no rows", "Fix:"]),
    ("empty-file", "", _ITEMS, "", ["inter.csv", "cannot read interactions file", "Fix:"]),
    (
        "blank-title",
        _csv(_R),
        _ITEMS.replace("Heat (1995)", "  "),
        "",
        ["items.csv line 3", "title is empty", "give every item a title"],
    ),
    (
        "conflicting-duplicate",
        _csv([*_R, _replace(_R, 4, 2, "1")[4]]),
        _ITEMS,
        "",
        ["inter.csv line 6", "appear twice", "different values", "data.on_duplicate: keep"],
    ),
    (
        "duplicate-policy-error",
        _csv([*_R, _R[4]]),
        _ITEMS,
        ", on_duplicate: error",
        ["inter.csv line 6", "also line 32", "data.on_duplicate: drop"],
    ),
    (
        "rating-1e9",
        _csv(_replace(_R, 2, 2, "1e9")),
        _ITEMS,
        "",
        ["inter.csv line 4", "rating", "[0, 1000]", "data.rating_range"],
    ),
    (
        "rating-negative",
        _csv(_replace(_R, 2, 2, "-7")),
        _ITEMS,
        "",
        ["inter.csv line 4", "outside the plausible range", "data.on_out_of_range: drop"],
    ),
    (
        "rating-over-range",
        _csv(_replace(_R, 0, 2, "6")),
        _ITEMS,
        ", rating_range: [1, 5]",
        ["line 2", "[1, 5]", "widen data.rating_range"],
    ),
    (
        "milliseconds",
        _csv(_rows(scale=1000)),
        _ITEMS,
        "",
        ["inter.csv line 2", "looks like milliseconds", "data.timestamp_unit: ms"],
    ),
    (
        "missing-column",
        _csv(_R, "user_id,item_id,stars,timestamp"),
        _ITEMS,
        "",
        ["column 'rating' (data.columns.rating) not found", "stars"],
    ),
    (
        "rating-not-a-number",
        _csv(_replace(_R, 3, 2, "abc")),
        _ITEMS,
        "",
        ["inter.csv line 5", "rating 'abc' is not a number"],
    ),
    (
        "timestamp-word",
        _csv(_replace(_R, 1, 3, "yesterday")),
        _ITEMS,
        "",
        ["inter.csv line 3", "neither seconds since the epoch nor an ISO"],
    ),
    ("timestamp-empty", _csv(_replace(_R, 1, 3, "")), _ITEMS, "", ["inter.csv line 3", "timestamp", "Fix:"]),
    (
        "unknown-item",
        _csv(_replace(_R, 5, 1, "99")),
        _ITEMS,
        "",
        ["inter.csv line 7", "item_id 99 is not in", "items.csv"],
    ),
    (
        "label-not-binary",
        _csv([r + ",1" for r in _R[:-1]] + [_R[-1] + ",2"], _HEADER + ",label"),
        _ITEMS,
        ", columns: {rating: null, label: label}",
        ["inter.csv line 31", "label 2", "not 0 or 1"],
    ),
    (
        "bad-split-value",
        _csv([r + ",train" for r in _R[:-1]] + [_R[-1] + ",training"], _HEADER + ",split"),
        _ITEMS,
        ", columns: {split: split}",
        ["inter.csv line 31", "'training' is not one of train, valid, test"],
    ),
    (
        "duplicate-item-id",
        _csv(_R),
        _ITEMS + "2,Heat again,Crime\n",
        "",
        ["items.csv line 5", "item id 2 appears twice"],
    ),
    (
        "no-rating-no-label",
        _csv(_R),
        _ITEMS,
        ", columns: {rating: null}",
        ["neither a rating nor a label column", "Fix:"],
    ),
    (
        "corrupt-parquet",
        None,
        _ITEMS,
        "|inter.parquet",
        ["inter.parquet", "cannot read interactions file"],
    ),
    (
        "unsupported-type",
        None,
        _ITEMS,
        "|inter.xlsx",
        ["inter.xlsx", "unsupported interactions file type '.xlsx'"],
    ),
    (
        "all-dropped",
        _csv([r.rsplit(",", 2)[0] + ",9," + r.rsplit(",", 1)[1] for r in _R]),
        _ITEMS,
        ", rating_range: [1, 5], on_out_of_range: drop",
        ["every interaction is out of range", "Fix:"],
    ),
]


@pytest.mark.parametrize("inter, items, extra, words", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_data_file(tmp_path, capsys, inter, items, extra, words):
    if extra.startswith("|"):  # a file of another kind under that name
        (tmp_path / extra[1:]).write_text("not parquet at all\n")
    line = _cli(["data", "check", str(_generic(tmp_path, inter, items, extra))], capsys, tmp_path)
    _assert_words(line, words)
    assert "Fix" in line or "fix" in line or "set data." in line


def test_generic_without_files_and_a_missing_movielens_folder(tmp_path, capsys):
    cfg = _config(tmp_path, "data: {name: generic}\n")
    _assert_words(_cli(["data", "check", str(cfg)], capsys, tmp_path), ["needs an interactions file and an items file"])
    cfg = _config(tmp_path, f"data: {{name: ml-100k, path: {tmp_path}/nothing}}\n")
    _assert_words(_cli(["data", "check", str(cfg)], capsys, tmp_path), ["folder does not exist", "ragrec data fetch"])


def test_the_good_files_pass_data_check_and_write_nothing(tmp_path, capsys):
    """The table's base files are valid: each case above fails because of its one change."""
    assert main(["data", "check", str(_generic(tmp_path, _csv(_R)))]) == 0
    out = capsys.readouterr().out
    assert "dataset generic: 30 interactions, 10 users, 3 items" in out and "protocol rallrec: train" in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "art").exists()


@pytest.mark.parametrize(
    "extra, words",
    [
        ("", ["inter.csv line 6", "different values"]),  # a data error inside the dataset stage
        (", encoding: klingon", ["data.encoding", "unknown text encoding"]),  # a config error before any stage
    ],
    ids=["data-error", "config-error"],
)
def test_ragrec_run_fails_cleanly_before_writing_a_run(tmp_path, capsys, extra, words):
    cfg = _generic(tmp_path, _csv([*_R, _replace(_R, 4, 2, "1")[4]]), _ITEMS, extra)
    _assert_words(_cli(["run", str(cfg)], capsys, tmp_path), words)


# ------------------------------------------------------------------------------------------ HTTP bodies


@pytest.fixture(scope="module")
def client():
    return checking_client(max_body_bytes=4096)


HTTP_CASES = [
    ("string-user", "/predict", {"user_id": "1", "item_ids": [1]}, 422, ["user_id", "integer"]),
    ("float-item", "/predict", {"user_id": 1, "item_ids": [1.5]}, 422, ["item_ids.0", "integer"]),
    ("empty-items", "/predict", {"user_id": 1, "item_ids": []}, 422, ["item_ids", "at least 1"]),
    ("item-over-int64", "/predict", {"user_id": 1, "item_ids": [2**63]}, 422, ["item_ids.0", str(2**63 - 1)]),
    ("as-of-over-int64", "/predict", {"user_id": 1, "item_ids": [1], "as_of": 2**70}, 422, ["as_of"]),
    ("unknown-field", "/predict", {"user_id": 1, "item_ids": [1], "asof": 5}, 422, ["asof", "not permitted"]),
    ("malformed-json", "/predict", b'{"user_id": 1, "item_ids": [1,', 422, ["JSON"]),
    ("no-body", "/predict", b"", 422, ["body"]),
    (
        "too-many-items",
        "/predict",
        {"user_id": 1, "item_ids": list(range(101))},
        413,
        ["101 items", "at most 100", "split"],
    ),
    (
        "body-too-large",
        "/predict",
        {"user_id": 1, "item_ids": [1] * 2000},
        413,
        ["at most 4096 bytes", "max_body_bytes"],
    ),
    ("unknown-user", "/predict", {"user_id": 10, "item_ids": [1]}, 404, ["unknown user_id 10", "0..9"]),
    ("unknown-items", "/predict", {"user_id": 1, "item_ids": [1, 20, -1]}, 404, ["unknown item_ids [20, -1]", "0..19"]),
    ("null-user", "/predict", {"user_id": None, "item_ids": [1]}, 422, ["user_id"]),
    ("nested-list", "/predict", {"user_id": 1, "item_ids": [[1]]}, 422, ["item_ids.0", "integer"]),
    ("top-level-array", "/predict", [1, 2], 422, ["invalid request"]),
    ("string-list", "/predict", {"user_id": 1, "item_ids": "1,2"}, 422, ["item_ids", "list"]),
    ("bool-user", "/predict", {"user_id": True, "item_ids": [1]}, 422, ["user_id", "integer"]),
    (
        "rerank-history-over-int64",
        "/rerank",
        {"user_id": 1, "item_ids": [3], "history_item_ids": [2**64]},
        422,
        ["history_item_ids.0"],
    ),
    (
        "rerank-unknown-history",
        "/rerank",
        {"user_id": 1, "item_ids": [3], "history_item_ids": [99]},
        404,
        ["history_item_ids"],
    ),
]


@pytest.mark.parametrize("route, body, status, words", [c[1:] for c in HTTP_CASES], ids=[c[0] for c in HTTP_CASES])
def test_bad_http_body(client, route, body, status, words):
    if isinstance(body, bytes):
        r = client.post(route, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(route, content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail
    _assert_words(detail, words)


def test_the_table_holds_at_least_60_cases():
    assert len(CONFIG_CASES) + 1 + len(SET_CASES) + len(DATA_CASES) + 2 + 2 + len(HTTP_CASES) >= 60
