"""A cache you can trust (issue 14): content-derived keys (an in-place data edit, ``--force`` of an upstream
stage), concurrent writers, truncated files, a full disk, ``ragrec cache ls|verify|gc`` and remote stores that
upload the manifest last. Every store lives in a tmp dir; the data is a tiny generic CSV."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import multiprocessing as mp
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from ragrec import artifacts, cli
from ragrec.artifacts import LOCK, MANIFEST, ArtifactStore, ArtifactWriteError
from ragrec.config import load_config
from ragrec.stages.data import dataset_stage, samples_stage

REPO = Path(__file__).resolve().parents[2]
USERS, ITEMS = 8, 12


# ---- a tiny generic dataset ----------------------------------------------------------------------------------
def _write_data(folder: Path, rating=lambda u, i: (u + i) % 5 + 1) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [f"{u},{i},{rating(u, i)},{1_000_000 + 100 * i + u}" for u in range(USERS) for i in range(ITEMS)]
    (folder / "inter.csv").write_text("\n".join(["user_id,item_id,rating,timestamp", *rows]) + "\n")
    items = [f"{i},Movie {i} (199{i % 10}),Drama" for i in range(ITEMS)]
    (folder / "items.csv").write_text("\n".join(["item_id,title,genres", *items]) + "\n")


def _cfg(folder: Path):
    return load_config(
        None,
        [
            "data.name=generic",
            f"data.path={folder}",
            "data.interactions_file=inter.csv",
            "data.items_file=items.csv",
            "data.min_history=2",
        ],
    )


def _labels(samples_art) -> list[int]:
    return samples_art.read_table("samples").column("label").to_pylist()


def _published(root: Path, stage: str) -> list[str]:
    d = root / stage
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# ---- content-derived keys -----------------------------------------------------------------------------------
def test_an_in_place_edit_of_the_interactions_file_changes_the_keys(tmp_path):
    data, root = tmp_path / "data", tmp_path / "artifacts"
    _write_data(data)
    store = ArtifactStore(root)
    ds = dataset_stage(store, _cfg(data))
    samples = samples_stage(store, _cfg(data), ds)
    before = _labels(samples)
    assert ds.spec["config"]["files"][0][:2] == ["interactions_file", (data / "inter.csv").stat().st_size]

    # every rating r -> 6 - r: the same size, other labels (the issue: the old key returned the old ratings)
    _write_data(data, rating=lambda u, i: 6 - ((u + i) % 5 + 1))
    ds2 = dataset_stage(ArtifactStore(root), _cfg(data))
    samples2 = samples_stage(ArtifactStore(root), _cfg(data), ds2)
    assert ds2.key != ds.key and samples2.key != samples.key
    assert _labels(samples2) != before
    ratings = ds2.read_table("interactions").column("rating").to_numpy()
    assert sorted(set(ratings.tolist())) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert np.array_equal(ratings, 6 - ds.read_table("interactions").column("rating").to_numpy())


def test_input_digests_are_memoised_by_size_and_mtime(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path / "artifacts")
    f = tmp_path / "inter.csv"
    f.write_text("a,b\n1,2\n")
    old = time.time_ns() - 3_600 * 10**9
    os.utime(f, ns=(old, old))  # last changed an hour ago: a memo entry is trusted
    hashed = []
    real = artifacts._sha256
    monkeypatch.setattr(artifacts, "_sha256", lambda p: hashed.append(p) or real(p))

    first = store.file_sha256(f)
    assert store.file_sha256(f) == first and len(hashed) == 1, "an unchanged file is not read again"
    assert str(f.resolve()) in json.loads((tmp_path / "artifacts" / artifacts.MEMO).read_text())

    f.write_text("a,b\n1,3\n")  # same size, new mtime
    second = store.file_sha256(f)
    assert second != first and len(hashed) == 2
    # modified just before it was hashed (a coarse mtime could hide the next edit): hashed again next time
    assert store.file_sha256(f) == second and len(hashed) == 3


# ---- --force STAGE invalidates exactly its descendants -------------------------------------------------------
def _graph(store: ArtifactStore, b_value: int, calls: list[str]) -> dict:
    """a -> b -> c, a -> d, e alone."""

    def node(name, value):
        def compute(art):
            calls.append(name)
            art.write_json({"v": value}, "out")

        return compute

    a = store.run("a", {}, [], node("a", 1))
    b = store.run("b", {}, [a], node("b", b_value))
    c = store.run("c", {}, [b], node("c", 3))
    d = store.run("d", {}, [a], node("d", 4))
    e = store.run("e", {}, [], node("e", 5))
    return {"a": a, "b": b, "c": c, "d": d, "e": e}


def test_force_of_an_upstream_stage_invalidates_exactly_its_descendants(tmp_path):
    root, calls = tmp_path / "artifacts", []
    first = _graph(ArtifactStore(root), 2, calls)
    assert calls == ["a", "b", "c", "d", "e"]

    calls.clear()  # recomputed with the same output: its descendants keep their keys
    same = _graph(ArtifactStore(root, force=["b"]), 2, calls)
    assert calls == ["b"]
    assert {k: v.key for k, v in same.items()} == {k: v.key for k, v in first.items()}

    calls.clear()  # recomputed with another output: exactly its descendant c gets a new key
    other = _graph(ArtifactStore(root, force=["b"]), 7, calls)
    assert calls == ["b", "c"]
    assert [k for k in first if other[k].key != first[k].key] == ["c"]
    assert other["b"].read_json("out") == {"v": 7}
    assert other["c"].manifest()["input_keys"] == [{"stage": "b", "key": first["b"].key}]

    calls.clear()
    _graph(ArtifactStore(root), 7, calls)
    assert calls == [], "a rerun reuses everything"


def test_force_dataset_reaches_the_samples_exactly_when_its_output_changes(tmp_path, monkeypatch, caplog):
    import ragrec.data

    data, root = tmp_path / "data", tmp_path / "artifacts"
    _write_data(data)
    cfg = _cfg(data)
    ds = dataset_stage(ArtifactStore(root), cfg)
    samples = samples_stage(ArtifactStore(root), cfg, ds)
    created = samples.manifest()["created"]

    store = ArtifactStore(root, force=["dataset"])
    with caplog.at_level(logging.INFO, logger="ragrec.artifacts"):
        again = dataset_stage(store, cfg)
        same = samples_stage(store, cfg, again)
    assert any("stage dataset" in r.getMessage() and "running" in r.getMessage() for r in caplog.records)
    assert (again.key, again.content) == (ds.key, ds.content), "the same files give the same bytes"
    assert same.key == samples.key and same.manifest()["created"] == created, "identical output: samples reused"

    real = ragrec.data.load_dataset

    def low_ratings(data_cfg):  # the loader now reads other ratings under the same dataset key
        d = real(data_cfg)
        d.interactions = d.interactions.set_column(
            d.interactions.schema.get_field_index("rating"),
            "rating",
            pa.array(np.ones(d.interactions.num_rows, np.float32)),
        )
        return d

    monkeypatch.setattr(ragrec.data, "load_dataset", low_ratings)
    forced = dataset_stage(ArtifactStore(root, force=["dataset"]), cfg)
    stale_free = samples_stage(ArtifactStore(root), cfg, forced)
    assert forced.key == ds.key and forced.content != ds.content
    assert stale_free.key != samples.key
    assert sum(_labels(samples)) > 0 and sum(_labels(stale_free)) == 0, "the samples follow the new dataset"


# ---- concurrency, truncation, a full disk --------------------------------------------------------------------
def _concurrent_data_run(root: str, data: str, queue) -> None:
    import ragrec.data

    real = ragrec.data.load_dataset

    def slow(data_cfg):
        with open(Path(root).parent / "calls.log", "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.5)  # both writers are in the stage at once
        return real(data_cfg)

    ragrec.data.load_dataset = slow
    try:
        store = ArtifactStore(root)
        ds = dataset_stage(store, _cfg(Path(data)))
        samples = samples_stage(store, _cfg(Path(data)), ds)
        queue.put(("ok", ds.key, ds.content, samples.key, samples.content))
    except BaseException as e:  # reported to the test
        queue.put(("error", repr(e)))


def test_two_processes_on_one_key_both_finish_one_computes_identical_artifacts(tmp_path):
    data, root = tmp_path / "data", tmp_path / "artifacts"
    _write_data(data)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_concurrent_data_run, args=(str(root), str(data), queue)) for _ in range(2)]
    for p in procs:
        p.start()
        time.sleep(0.2)
    results = [queue.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [r[0] for r in results] == ["ok", "ok"], results
    assert results[0][1:] == results[1][1:], "the same keys and contents"
    assert len((tmp_path / "calls.log").read_text().split()) == 1, "one writer computed the dataset"
    ds_key = results[0][1]
    assert _published(root, "dataset") == [ds_key]
    assert artifacts.Artifact(ArtifactStore(root), "dataset", ds_key).verify(full=True) == []


def test_a_truncated_artifact_file_is_recomputed_with_a_warning_naming_it(tmp_path, caplog):
    data, root = tmp_path / "data", tmp_path / "artifacts"
    _write_data(data)
    ds = dataset_stage(ArtifactStore(root), _cfg(data))
    f = ds.path / "interactions.parquet"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="ragrec.artifacts"):
        again = dataset_stage(ArtifactStore(root), _cfg(data))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("interactions.parquet" in w and ds.key in w for w in warnings), warnings
    assert again.key == ds.key and again.verify(full=True) == []
    assert again.read_table("interactions").num_rows == USERS * ITEMS
    assert any(".corrupt-" in n for n in _published(root, "dataset"))


def test_a_full_disk_publishes_nothing_cleans_the_staging_and_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    import ragrec.methods

    data, root = tmp_path / "data", tmp_path / "artifacts"
    _write_data(data)
    real = artifacts.pq.write_table
    writes = []

    def full_disk(table, where, **kw):
        writes.append(Path(where).name)
        if len(writes) == 2:  # the second table: half written, then the disk is full
            Path(where).write_bytes(b"PAR1" + b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device", str(where))
        return real(table, where, **kw)

    monkeypatch.setattr(artifacts.pq, "write_table", full_disk)
    with pytest.raises(ArtifactWriteError) as e:
        dataset_stage(ArtifactStore(root), _cfg(data))
    msg = str(e.value)
    assert "\n" not in msg and e.value.errno == errno.ENOSPC
    assert msg.startswith("stage dataset: no space left on device while writing ") and "items.parquet.tmp" in msg
    assert "nothing was published" in msg and "free space" in msg
    assert _published(root, "dataset") == [], "no artifact and no .partial staging left"

    def fake_run(cfg, force=()):  # the CLI: exit 1, one line, no traceback
        dataset_stage(ArtifactStore(root), cfg)

    monkeypatch.setattr(ragrec.methods, "run", fake_run)
    writes.clear()
    config = tmp_path / "c.yaml"
    config.write_text(
        f"data: {{name: generic, path: {data}, interactions_file: inter.csv, items_file: items.csv, min_history: 2}}\n"
    )
    assert cli.main(["run", str(config)]) == 1
    err = capsys.readouterr().err  # the log lines, then the error in one line
    errors = [ln for ln in err.splitlines() if ln.startswith("ragrec: error:")]
    assert len(errors) == 1 and errors[0].startswith("ragrec: error: stage dataset: no space left on device")
    assert err.rstrip().endswith("and rerun")
    assert "Traceback" not in err and _published(root, "dataset") == []

    monkeypatch.setattr(artifacts.pq, "write_table", real)  # space again: the rerun computes it
    assert dataset_stage(ArtifactStore(root), _cfg(data)).verify(full=True) == []


# ---- ragrec cache ls | verify | gc -----------------------------------------------------------------------------
def _toy_store(root: Path) -> dict:
    store = ArtifactStore(root)
    arts = {}
    arts["base"] = store.run("base", {}, [], lambda a: a.write_table(pa.table({"x": list(range(100))})) and None)
    arts["used"] = store.run("used", {}, [arts["base"]], lambda a: a.write_json({"u": 1}, "out"))
    arts["scores"] = store.run("scores", {}, [], lambda a: a.write_json({"s": 1}, "out"))
    arts["orphan"] = store.run("orphan", {}, [], lambda a: a.write_json({"o": 1}, "out"))
    return arts


def _runs(tmp_path: Path, arts: dict) -> Path:
    runs = tmp_path / "runs"
    (runs / "r1").mkdir(parents=True)
    (runs / "r1" / "run.json").write_text(
        json.dumps({"artifacts": {"used": {"stage": "used", "key": arts["used"].key}}, "config": {}})
    )
    (runs / "r2" / "evaluate").mkdir(parents=True)  # ragrec evaluate: {row: {name: key}}
    (runs / "r2" / "evaluate" / "metrics.json").write_text(
        json.dumps({"rows": [], "artifacts": {"full": {"scores": arts["scores"].key}}})
    )
    return runs


def test_cache_verify_finds_a_flipped_byte_reports_and_moves_it_aside(tmp_path, capsys, monkeypatch):
    root = tmp_path / "artifacts"
    arts = _toy_store(root)
    monkeypatch.setattr(artifacts, "HASH_ON_READ_MAX", 10)  # reuse checks sizes only: verify must hash
    f = arts["base"].path / "data.parquet"
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x01
    f.write_bytes(bytes(b))
    assert arts["base"].done and arts["base"].verify() == []

    assert cli.main(["cache", "verify", "--artifacts", str(root), "--report-only"]) == 1
    out = capsys.readouterr().out
    assert f"CORRUPT base/{arts['base'].key}: data.parquet: content differs from the manifest's sha256" in out
    assert "4 artifacts verified" in out and "3 ok, 1 corrupt" in out
    assert arts["base"].path.exists()

    assert cli.main(["cache", "verify", "--artifacts", str(root)]) == 1
    assert "moved aside" in capsys.readouterr().out
    assert not arts["base"].path.exists() and any(".corrupt-" in n for n in _published(root, "base"))
    assert cli.main(["cache", "verify", "--artifacts", str(root)]) == 0
    assert "3 ok, 0 corrupt" in capsys.readouterr().out


def test_cache_ls_lists_entries_with_the_runs_that_use_them(tmp_path, capsys):
    root = tmp_path / "artifacts"
    arts = _toy_store(root)
    runs = _runs(tmp_path, arts)
    assert cli.main(["cache", "ls", "--artifacts", str(root), "--runs", str(runs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = {ln.split()[1]: ln for ln in lines[1:-1]}
    assert str(runs / "r1" / "run.json") in row[arts["used"].key]
    assert str(runs / "r2" / "evaluate" / "metrics.json") in row[arts["scores"].key]
    assert "(ancestor" in row[arts["base"].key] and row[arts["orphan"].key].rstrip().endswith("-")
    assert all(" ok " in row[a.key] for a in arts.values())
    assert lines[-1].startswith("4 artifacts") and "3 in use by 2 run files" in lines[-1]


def test_cache_gc_dry_run_lists_and_gc_removes_only_unreferenced_entries(tmp_path, capsys):
    root = tmp_path / "artifacts"
    arts = _toy_store(root)
    runs = _runs(tmp_path, arts)
    stale = root / "orphan" / "0123456789abcdef.partial"  # a killed writer's staging
    (stale / "blocks").mkdir(parents=True)
    (stale / "blocks" / "000000.parquet").write_bytes(b"x" * 10)
    live = root / "used" / "fedcba9876543210.partial"  # a writer computing right now
    live.mkdir()
    fd = os.open(live / LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    aside = root / "base" / f"{arts['base'].key}.corrupt-20261201-000000-ab12"
    aside.mkdir()
    try:
        args = ["cache", "gc", "--artifacts", str(root), "--runs", str(runs)]
        assert cli.main([*args, "--dry-run"]) == 0  # everything is recent: the default --min-age leaves it
        assert "would remove 0 entries" in capsys.readouterr().out

        assert cli.main([*args, "--dry-run", "--min-age", "0"]) == 0
        out = capsys.readouterr().out
        listed = {m[1] for m in re.finditer(r"^would remove (\S+/\S+) \(", out, re.M)}
        assert listed == {f"orphan/{arts['orphan'].key}", f"orphan/{stale.name}", f"base/{aside.name}"}
        assert f"kept used/{live.name}: a writer holds its lock" in out
        assert arts["orphan"].path.exists() and stale.exists() and aside.exists(), "a dry run removes nothing"

        assert cli.main([*args, "--min-age", "0"]) == 0
        assert "removed 3 entries" in capsys.readouterr().out
        assert not arts["orphan"].path.exists() and not stale.exists() and not aside.exists()
        for name in ("base", "used", "scores"):  # referenced, or an ancestor of a referenced one
            assert arts[name].verify() == [], name
        assert live.exists() and (live / LOCK).exists()
    finally:
        os.close(fd)

    empty = tmp_path / "no_runs"
    empty.mkdir()
    assert cli.main(["cache", "gc", "--artifacts", str(root), "--runs", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert "found no run.json or metrics.json" in err and "--runs DIR" in err and "\n" not in err
    assert arts["base"].path.exists()


def test_cache_commands_name_a_missing_store(tmp_path, capsys):
    assert cli.main(["cache", "ls", "--artifacts", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err


# ---- remote stores upload the manifest last ---------------------------------------------------------------
class _Recording(pafs.FileSystemHandler):  # noqa: PLW1641 (pyarrow compares handlers, never hashes them)
    """A local folder behind pyarrow's Python filesystem, recording the order of writes; ``fail_on`` raises
    when a path ending so is opened for writing (a connection lost mid-upload)."""

    def __init__(self, base: Path, fail_on: str | None = None):
        self.fs = pafs.SubTreeFileSystem(str(base), pafs.LocalFileSystem())
        self.writes: list[str] = []
        self.fail_on = fail_on

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other

    def get_type_name(self):
        return "recording"

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        self.fs.delete_dir_contents("", accept_root_dir=True)

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.writes.append(dest)
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        if self.fail_on and path.endswith(self.fail_on):
            raise OSError(errno.EIO, "connection reset during upload", path)
        self.writes.append(path)
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        raise NotImplementedError


def _remote_store(tmp_path: Path, handler: _Recording, monkeypatch) -> ArtifactStore:
    monkeypatch.setenv("RAGREC_CACHE", str(tmp_path / "cache"))
    store = ArtifactStore("mock:///bucket/artifacts")
    store.fs = pafs.PyFileSystem(handler)
    return store


def _two_files(art):
    art.write_table(pa.table({"x": list(range(50))}))
    (art.staging / "adapter").mkdir(exist_ok=True)
    (art.staging / "adapter" / "w.bin").write_bytes(os.urandom(1000))
    art.write_json({"k": 1}, "meta")
    return 50


def test_a_remote_store_uploads_the_manifest_after_every_data_file(tmp_path, monkeypatch):
    handler = _Recording(tmp_path / "bucket_root")
    store = _remote_store(tmp_path, handler, monkeypatch)
    art = store.run("s", {}, [], _two_files)
    names = [w.rsplit(f"/{art.key}/", 1)[1] for w in handler.writes if f"/{art.key}/" in w]
    assert sorted(names[:-1]) == ["adapter/w.bin", "data.parquet", "meta.json"] and names[-1] == MANIFEST
    assert art.done and art.verify(full=True) == [] and art.read_table().num_rows == 50

    # a lost connection before the manifest: the remote holds data but no artifact; the next run computes it
    broken = _Recording(tmp_path / "bucket_root2", fail_on=MANIFEST)
    store2 = _remote_store(tmp_path / "second", broken, monkeypatch)
    with pytest.raises(OSError, match="connection reset"):
        store2.run("s", {}, [], _two_files)
    assert not store2.artifact("s", {}).done
    broken.fail_on = None
    calls = []
    again = store2.run("s", {}, [], lambda a: calls.append(1) or _two_files(a))
    assert calls == [1] and again.done and again.read_json("meta") == {"k": 1}


def test_cli_cache_needs_a_local_store(capsys):
    assert cli.main(["cache", "verify", "--artifacts", "s3://bucket/artifacts"]) == 2
    assert "ragrec cache works on a local store" in capsys.readouterr().err


def test_run_json_keys_used_by_gc_are_the_ones_write_run_file_records(tmp_path):
    """gc reads the ``artifacts`` block that ``write_run_file`` writes: {name: {stage, key}}."""
    from ragrec.cache_cli import references
    from ragrec.methods.common import write_run_file

    arts = _toy_store(tmp_path / "artifacts")
    (tmp_path / "runs" / "r").mkdir(parents=True)
    write_run_file(tmp_path / "runs" / "r", SimpleNamespace(method="rallrec", name="r"), {"used": arts["used"]}, {})
    refs, n = references([tmp_path / "runs"])
    assert n == 1 and set(refs) == {arts["used"].key}


# ---- the other content digests a key holds -------------------------------------------------------------------
def test_a_dataset_without_a_file_list_digests_every_file_of_its_folder(tmp_path):
    from ragrec.config import DataConfig
    from ragrec.stages.data import input_files

    folder = tmp_path / "steam"
    (folder / "sub").mkdir(parents=True)
    (folder / "steam_reviews.json.gz").write_bytes(b"r1")
    (folder / "sub" / "steam_games.json.gz").write_bytes(b"g1")
    (folder / ".hidden").write_bytes(b"x")
    cfg = DataConfig(name="steam", path=str(folder))
    assert [label for label, _ in input_files(cfg)] == ["steam_reviews.json.gz", "sub/steam_games.json.gz"]

    inter = tmp_path / "rb" / "ml.inter"  # RecBole: data.path may name the .inter file; its siblings count too
    inter.parent.mkdir()
    for ext in ("inter", "item", "user"):
        inter.with_suffix(f".{ext}").write_text(ext)
    (inter.parent / "other.inter").write_text("no")
    assert [label for label, _ in input_files(DataConfig(name="recbole", path=str(inter)))] == [
        "ml.inter",
        "ml.item",
        "ml.user",
    ]

    store = ArtifactStore(tmp_path / "artifacts")
    store.run = lambda stage, spec, inputs, compute, version="1": store.artifact(stage, spec, inputs, version)
    run_cfg = load_config(None, ["data.name=steam", f"data.path={folder}"])
    before = dataset_stage(store, run_cfg).key
    (folder / "sub" / "steam_games.json.gz").write_bytes(b"g2")
    assert dataset_stage(store, run_cfg).key != before


def test_text_column_digests_follow_the_values_not_the_buffers():
    """Two slices of one column used to share a digest (a slice keeps its parent's Arrow buffers)."""
    from ragrec.stages.base import _digest

    col = pa.array(["a", "bb", "c", None, "dd"])
    assert _digest(col.slice(0, 2)) != _digest(col.slice(2, 2))
    assert _digest(col.slice(1, 2)) == _digest(pa.array(["bb", "c"])) == _digest(pa.chunked_array([["bb"], ["c"]]))
    assert _digest(pa.array(["ab", ""])) != _digest(pa.array(["a", "b"])) != _digest(pa.array(["a", None]))
    assert _digest(pa.array(["bb", "c"], pa.large_string())) == _digest(pa.array(["bb", "c"]))
