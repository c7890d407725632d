"""The artifact cache under concurrency and corruption: one writer per key, verified reuse, atomic publish,
resume after a kill, and ``--force`` names that match no stage."""

import hashlib
import json
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ragrec import artifacts
from ragrec.artifacts import MANIFEST, ArtifactStore

REPO = Path(__file__).resolve().parents[2]


def _table(n, start=0):
    return pa.table({"x": pa.array(range(start, start + n), pa.int64())})


def _log_call(root, tag="calls"):
    with open(Path(root).parent / f"{tag}.log", "a") as f:
        f.write(f"{os.getpid()}\n")


def _calls(root, tag="calls"):
    p = Path(root).parent / f"{tag}.log"
    return p.read_text().split() if p.exists() else []


def _slow_compute(art):
    """Writes two files with a pause between them (the window in which a second writer used to collide)."""
    _log_call(art.store.root)
    art.write_table(_table(1000))
    time.sleep(1.5)
    art.write_json({"pid": os.getpid()}, "extra")
    return 1000


def _run_slow(root, queue):
    try:
        art = ArtifactStore(root).run("s", {"p": 1}, [], _slow_compute)
        queue.put(("ok", art.key))
    except BaseException as e:  # reported to the test
        queue.put(("error", repr(e)))


def _published(root, stage="s"):
    d = Path(root) / stage
    return sorted(p.name for p in d.iterdir() if not p.name.endswith(".partial")) if d.exists() else []


def test_two_processes_computing_one_key_end_with_one_valid_artifact(tmp_path):
    root = tmp_path / "artifacts"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_run_slow, args=(str(root), queue)) for _ in range(2)]
    for p in procs:
        p.start()
        time.sleep(0.3)  # the second starts while the first is computing
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [r[0] for r in results] == ["ok", "ok"], results
    art = ArtifactStore(root).artifact("s", {"p": 1})
    assert results[0][1] == results[1][1] == art.key
    assert len(_calls(root)) == 1, "the second writer waits for the first and reuses its artifact"
    assert art.verify() == [] and art.done
    assert set(art.manifest()["files"]) == {"data.parquet", "extra.json"}
    assert art.read_table().num_rows == 1000
    assert _published(root) == [art.key]
    assert not (root / "s" / f"{art.key}.partial").exists()


def test_writers_without_file_locks_stage_privately_and_keep_the_winner(tmp_path, monkeypatch):
    """Where ``flock`` is unsupported, concurrent writers compute into private folders; the first commit wins
    and the later one is discarded without touching it."""

    def no_flock(fd, op):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(artifacts.fcntl, "flock", no_flock)
    root = tmp_path / "artifacts"
    store = ArtifactStore(root)
    barrier = threading.Barrier(2)
    errors, staged = [], []

    def compute(art):
        staged.append(art.staging)
        art.write_table(_table(10))
        barrier.wait(timeout=30)  # both are computing at once
        time.sleep(0.1 * len(staged))
        art.write_json({"t": threading.get_ident()}, "extra")
        return 10

    def worker():
        try:
            store.run("s", {}, [], compute)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(set(staged)) == 2, "each writer has its own staging folder"
    art = store.artifact("s", {})
    assert art.verify() == [] and art.read_table().num_rows == 10
    assert _published(root) == [art.key]
    assert not any(p.exists() for p in staged), "private folders are published or discarded"


def _compute_counting(art):
    _log_call(art.store.root)
    art.write_table(_table(500))
    art.write_json({"k": 1}, "meta")
    return 500


def test_a_truncated_data_file_is_detected_on_reuse_and_recomputed(tmp_path, caplog):
    root = tmp_path / "artifacts"
    art = ArtifactStore(root).run("s", {}, [], _compute_counting)
    data = art.path / "data.parquet"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    assert not art.done

    with caplog.at_level(logging.WARNING, logger="ragrec.artifacts"):
        again = ArtifactStore(root).run("s", {}, [], _compute_counting)
    assert len(_calls(root)) == 2
    assert any("data.parquet" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert again.read_table().num_rows == 500 and again.verify() == []
    corrupt = [p for p in (root / "s").iterdir() if ".corrupt-" in p.name]
    assert len(corrupt) == 1 and corrupt[0].name.startswith(art.key)


def test_same_size_corruption_is_caught_by_the_checksum(tmp_path, caplog):
    root = tmp_path / "artifacts"
    art = ArtifactStore(root).run("s", {}, [], _compute_counting)
    meta = art.path / "meta.json"
    meta.write_text(meta.read_text().replace("1", "2"))
    assert art.done  # sizes match: the cheap check passes
    assert any("meta.json" in p for p in art.verify())
    with caplog.at_level(logging.WARNING, logger="ragrec.artifacts"):
        again = ArtifactStore(root).run("s", {}, [], _compute_counting)
    assert len(_calls(root)) == 2 and again.read_json("meta") == {"k": 1}
    assert any("meta.json" in r.getMessage() for r in caplog.records)


def test_a_manifest_listing_a_missing_file_is_not_done(tmp_path):
    root = tmp_path / "artifacts"
    art = ArtifactStore(root).run("s", {}, [], _compute_counting)
    (art.path / "meta.json").unlink()
    assert not art.done
    assert art.verify() == ["meta.json: missing"]
    again = ArtifactStore(root).run("s", {}, [], _compute_counting)
    assert len(_calls(root)) == 2 and again.done and again.read_json("meta") == {"k": 1}


def test_manifest_lists_every_file_with_size_and_checksum(tmp_path):
    def compute(art):
        art.write_table(_table(3))
        (art.staging / "adapter").mkdir()
        (art.staging / "adapter" / "weights.bin").write_bytes(os.urandom(200_000))
        return 3

    art = ArtifactStore(tmp_path / "a").run("s", {}, [], compute)
    files = art.manifest()["files"]
    assert set(files) == {"data.parquet", "adapter/weights.bin"}
    assert files["adapter/weights.bin"]["size"] == 200_000
    assert (
        files["adapter/weights.bin"]["sha256"]
        == hashlib.sha256((art.path / "adapter/weights.bin").read_bytes()).hexdigest()
    )
    assert art.manifest()["content"] == artifacts.content_digest(files)
    assert not (art.path / artifacts.LOCK).exists()


def test_large_files_are_hashed_by_a_full_verify_only(tmp_path, monkeypatch):
    """Reuse re-hashes files up to HASH_ON_READ_MAX; a larger one is checked by size, and by sha256 on demand."""
    monkeypatch.setattr(artifacts, "HASH_ON_READ_MAX", 1000)

    def compute(art):
        (art.staging / "big.bin").write_bytes(os.urandom(300_000))
        art.write_json({"k": 1}, "small")

    art = ArtifactStore(tmp_path / "a").run("s", {}, [], compute)
    big = art.path / "big.bin"
    b = bytearray(big.read_bytes())
    b[-1] ^= 0xFF
    big.write_bytes(bytes(b))
    assert art.verify() == []
    assert art.verify(full=True) == ["big.bin: content differs from the manifest's sha256"]


def test_a_legacy_blake2b_manifest_is_still_checked(tmp_path):
    art = ArtifactStore(tmp_path / "a").artifact("s", {})
    art.path.mkdir(parents=True)
    (art.path / "x.bin").write_bytes(b"abc")
    files = {"x.bin": {"size": 3, "digest": artifacts._digest(art.path / "x.bin", 3)}}
    (art.path / MANIFEST).write_text(json.dumps({"stage": "s", "key": art.key, "files": files}))
    assert art.verify() == []
    assert art.content == artifacts.content_digest({"x.bin": {"size": 3, "sha256": hashlib.sha256(b"abc").hexdigest()}})
    (art.path / "x.bin").write_bytes(b"abd")
    assert art.verify() == ["x.bin: content differs from the manifest's checksum"]


def test_an_old_style_manifest_without_a_file_list_is_still_reused(tmp_path):
    root = tmp_path / "artifacts"
    store = ArtifactStore(root)
    art = store.artifact("s", {"p": 1})
    art.path.mkdir(parents=True)
    pq.write_table(_table(4), art.path / "data.parquet")
    (art.path / MANIFEST).write_text(json.dumps({"stage": "s", "key": art.key, "rows": 4}))
    assert art.done and art.verify() == []
    calls = []
    out = store.run("s", {"p": 1}, [], lambda a: calls.append(1))
    assert calls == [] and out.read_table().num_rows == 4


def _killed_after_two_blocks(root):
    def compute(art):
        for i in range(4):
            if i in art.finished_blocks():
                continue
            art.write_block(i, _table(2, 2 * i))
            if i == 1:
                os.kill(os.getpid(), signal.SIGKILL)
        return 8

    ArtifactStore(root).run("gen", {"n": 4}, [], compute)


def test_block_stage_resumes_after_a_kill_computing_only_the_missing_blocks(tmp_path):
    root = tmp_path / "artifacts"
    proc = mp.get_context("spawn").Process(target=_killed_after_two_blocks, args=(str(root),))
    proc.start()
    proc.join(timeout=120)
    assert proc.exitcode == -signal.SIGKILL
    store = ArtifactStore(root)
    art = store.artifact("gen", {"n": 4})
    partial = root / "gen" / f"{art.key}.partial"
    assert sorted(p.name for p in (partial / "blocks").glob("*.parquet")) == ["000000.parquet", "000001.parquet"]
    assert not art.done and _published(root, "gen") == []

    computed = []

    def compute(a):
        done = a.finished_blocks()
        for i in range(4):
            if i not in done:
                computed.append(i)
                a.write_block(i, _table(2, 2 * i))
        a.write_table(a.read_blocks())
        return {"rows": 8, "blocks_reused": sorted(done)}

    out = store.run("gen", {"n": 4}, [], compute)  # the dead writer's lock went with its process
    assert computed == [2, 3]
    m = out.manifest()
    assert m["blocks_reused"] == [0, 1] and m["attempts"] == 2
    assert out.read_table().column("x").to_pylist() == list(range(8))
    assert out.verify() == [] and not partial.exists()


def test_a_failed_writer_leaves_its_partial_for_the_next_one(tmp_path):
    store = ArtifactStore(tmp_path / "a")

    def boom(art):
        art.write_block(0, _table(1))
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.run("gen", {}, [], boom)
    seen = []

    def compute(art):
        seen.append(art.finished_blocks())
        art.write_table(art.read_blocks())
        return 1

    assert store.run("gen", {}, [], compute).read_table().num_rows == 1
    assert seen == [{0}]


def test_force_replaces_a_finished_artifact(tmp_path):
    root = tmp_path / "a"
    n = []

    def compute(art):
        n.append(1)
        art.write_json({"n": len(n)}, "out")

    ArtifactStore(root).run("s", {}, [], compute)
    art = ArtifactStore(root, force=["s"]).run("s", {}, [], compute)
    assert art.read_json("out") == {"n": 2} and art.verify() == []
    assert _published(root) == [art.key]


def test_remote_store_publishes_and_verifies(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGREC_CACHE", str(tmp_path / "cache"))
    store = ArtifactStore("mock:///bucket/artifacts")
    art = store.run("s", {}, [], _compute_counting_remote)
    assert art.done and art.verify() == []
    assert art.read_table().num_rows == 5
    calls = []
    assert store.run("s", {}, [], lambda a: calls.append(1)).key == art.key and calls == []
    store.fs.delete_file(store._fs_path(f"{art.uri}/meta.json"))
    assert not art.done


def _compute_counting_remote(art):
    art.write_table(_table(5))
    art.write_json({"k": 1}, "meta")
    return 5


def test_store_reports_force_names_that_matched_no_stage(tmp_path):
    store = ArtifactStore(tmp_path / "a", force=["s", "lightgnc"])
    with artifacts.recording_stages() as seen:
        store.run("dataset", {}, [], lambda a: None)
        store.run("s", {}, [], lambda a: None)
    assert store.unused_force() == ["lightgnc"]
    assert seen == ["dataset", "s"]
    msg = artifacts.unmatched_force_message(["s", "lightgnc"], seen)
    assert msg == "--force 'lightgnc' matched no stage; stages of this run: dataset, s"
    assert artifacts.unmatched_force_message(["s"], seen) is None


@pytest.mark.parametrize("command", ["run", "evaluate"])
def test_cli_force_with_an_unknown_stage_exits_2(tmp_path, monkeypatch, capsys, command):
    import ragrec.methods
    from ragrec import cli

    def fake(cfg, force=()):
        store = ArtifactStore(tmp_path / "a", force=force)
        store.run("dataset", {}, [], lambda a: None)
        store.run("samples", {}, [], lambda a: None)
        return SimpleNamespace(metrics={"rows": [{"auc": 0.5}], "table": "table"}, run_dir=tmp_path)

    monkeypatch.setattr(ragrec.methods, command, fake)
    config = str(REPO / "configs" / "demo.yaml")
    assert cli.main([command, config, "--force", "samples", "--force", "lightgnc"]) == 2
    err = capsys.readouterr().err
    assert "--force 'lightgnc' matched no stage; stages of this run: dataset, samples" in err
    assert cli.main([command, config, "--force", "samples"]) == 0
