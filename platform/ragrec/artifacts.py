"""Content-addressed artifact store.

Every stage output lives at ``<root>/<stage>/<key>/`` where ``key`` hashes the stage's code version,
its config and the keys of its inputs. A stage writes into ``<key>.partial/`` and the directory is
renamed to ``<key>/`` only when complete, with a ``manifest.json`` (row counts, timings, versions;
``seconds`` = the computing attempt's wall time, and after a resume ``seconds_total`` = all attempts').
So a finished artifact is never half-written, a rerun skips finished stages, and a killed run
resumes at the first unfinished stage. Long stages (LLM generation) also checkpoint *blocks* inside
``<key>.partial/blocks/``; a resumed stage keeps those and computes only the missing blocks.

The root can be a local path or any URI pyarrow.fs understands (``s3://bucket/prefix``,
``gs://...``); remote roots stage locally and upload on commit.
"""

from __future__ import annotations

import json
import logging
import os
import platform as _stdlib_platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .config import config_hash

log = logging.getLogger("ragrec.artifacts")

MANIFEST = "manifest.json"


def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


@dataclass
class Artifact:
    """One stage output: a directory of Parquet tables, JSON files and checkpoints."""

    store: ArtifactStore
    stage: str
    key: str
    spec: dict = field(default_factory=dict)

    # ---- locations -------------------------------------------------------------------------
    @property
    def uri(self) -> str:
        return f"{self.store.root}/{self.stage}/{self.key}"

    @property
    def path(self) -> Path:
        """Local directory holding the finished artifact (downloaded first for remote stores)."""
        return self.store._local_final(self)

    @property
    def staging(self) -> Path:
        """Local directory a running stage writes into; renamed/uploaded by :meth:`commit`."""
        p = self.store._local_staging(self)
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def done(self) -> bool:
        return self.store._exists(f"{self.uri}/{MANIFEST}")

    # ---- reading ---------------------------------------------------------------------------
    def manifest(self) -> dict:
        return json.loads((self.path / MANIFEST).read_text())

    def read_table(self, name: str = "data") -> pa.Table:
        return pq.read_table(self.path / f"{name}.parquet")

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / f"{name}.json").read_text())

    def file(self, name: str) -> Path:
        return self.path / name

    # ---- writing (into staging) -------------------------------------------------------------
    def write_table(self, table: pa.Table, name: str = "data") -> Path:
        out = self.staging / f"{name}.parquet"
        tmp = out.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, out)
        return out

    def write_json(self, obj: Any, name: str) -> Path:
        out = self.staging / f"{name}.json"
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(obj, indent=2, default=str))
        os.replace(tmp, out)
        return out

    # ---- per-block checkpoints (generation stages) -------------------------------------------
    def block_path(self, index: int) -> Path:
        d = self.staging / "blocks"
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{index:06d}.parquet"

    def finished_blocks(self) -> set[int]:
        d = self.store._local_staging(self) / "blocks"
        if not d.is_dir():
            return set()
        return {int(p.stem) for p in d.glob("*.parquet")}

    def write_block(self, index: int, table: pa.Table) -> None:
        out = self.block_path(index)
        tmp = out.with_suffix(".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, out)  # atomic: a killed writer leaves no readable half block

    def read_blocks(self) -> pa.Table:
        d = self.staging / "blocks"
        files = sorted(d.glob("*.parquet"))
        return pa.concat_tables([pq.read_table(f) for f in files]) if files else None

    def commit(self, rows: int | None = None, **extra: Any) -> Artifact:
        """Write the manifest and atomically publish the staging directory."""
        manifest = {
            "stage": self.stage,
            "key": self.key,
            "spec": self.spec,
            "rows": rows,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "python": _stdlib_platform.python_version(),
            **extra,
        }
        staging = self.staging
        blocks = staging / "blocks"
        if blocks.is_dir():
            shutil.rmtree(blocks)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        self.store._publish(self, staging)
        return self


ATTEMPTS = "attempts.json"
"""Inside ``<key>.partial/``: the start time of every attempt at computing the artifact (resume timing)."""


def _start_attempt(staging: Path) -> list[dict]:
    """Record a new attempt in ``staging/attempts.json``; return the earlier (interrupted) ones.

    An interrupted attempt counts from its start to the last file it left in ``staging`` (a block, a
    training checkpoint): the work a resumed run keeps. So ``seconds_total`` in the manifest of a resumed
    stage is about what the stage would have taken uninterrupted (plus each restart's start-up).
    """
    path = staging / ATTEMPTS
    try:
        attempts = json.loads(path.read_text()) if path.exists() else []
    except ValueError:
        attempts = []
    if attempts and "end" not in attempts[-1]:
        start = attempts[-1]["start"]
        mtimes = [f.stat().st_mtime for f in staging.rglob("*") if f.is_file() and f.name != ATTEMPTS]
        attempts[-1]["end"] = max([start] + [t for t in mtimes if t >= start])
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(attempts + [{"start": time.time()}]))
    os.replace(tmp, path)
    return attempts


def spec_fields(model, include: Iterable[str] | None = None, *, late: Iterable[str] = ()) -> dict:
    """The cache spec of a config section: ``model.model_dump(mode="json")`` (only ``include`` when given),
    where each field named in ``late`` enters only when set away from its default.

    This is how a stage gains a config field without invalidating its existing artifacts: the new field is
    ``late`` and defaults to the old behaviour, so every key computed before it existed stays the same. A
    change of a stage's *output* for the same spec is a ``version`` bump instead (``docs/architecture.md`` §3).
    """
    dump = model.model_dump(mode="json", include=set(include) if include is not None else None)
    for name in late:
        if name in dump and getattr(model, name) == type(model).model_fields[name].default:
            dump.pop(name)
    return dump


class ArtifactStore:
    """Content-addressed store rooted at a local directory or a pyarrow.fs URI."""

    def __init__(self, root: str | os.PathLike, force: Iterable[str] = ()):
        root = str(root)
        self.remote = _is_remote(root)
        if self.remote:
            self.fs, self._base = pafs.FileSystem.from_uri(root)
            self.root = root.rstrip("/")
            self._cache = Path(os.environ.get("RAGREC_CACHE", tempfile.gettempdir())) / "ragrec-remote-cache"
        else:
            root = root[len("file://") :] if root.startswith("file://") else root
            self.fs = pafs.LocalFileSystem()
            self.root = str(Path(root).resolve())
            Path(self.root).mkdir(parents=True, exist_ok=True)
        self.force = set(force)

    # ---- keys --------------------------------------------------------------------------------
    def artifact(self, stage: str, config: Any, inputs: Iterable[Artifact | str] = (), version: str = "1") -> Artifact:
        """The artifact for ``stage`` computed from ``config`` and ``inputs`` by code ``version``."""
        input_keys = [a.key if isinstance(a, Artifact) else str(a) for a in inputs]
        spec = {"stage": stage, "version": version, "config": config, "inputs": input_keys}
        return Artifact(self, stage, config_hash(spec), spec=json.loads(json.dumps(spec, default=str)))

    def run(
        self,
        stage: str,
        config: Any,
        inputs: Iterable[Artifact | str],
        compute: Callable[[Artifact], int | dict | None],
        version: str = "1",
    ) -> Artifact:
        """Return the finished artifact, computing it with ``compute(artifact)`` if needed.

        ``compute`` writes into ``artifact.staging`` and returns the row count (or a dict of extra
        manifest fields). The artifact is committed only if ``compute`` returns normally.
        """
        art = self.artifact(stage, config, list(inputs), version)
        if art.done and stage not in self.force:
            log.info("stage %-14s cached   %s", stage, art.key)
            return art
        if art.done:
            self._remove(art)
        log.info("stage %-14s running  %s", stage, art.key)
        earlier = _start_attempt(art.staging)
        t0 = time.perf_counter()
        out = compute(art)
        extra = out if isinstance(out, dict) else {"rows": out}
        extra.setdefault("rows", None)
        seconds = time.perf_counter() - t0
        if earlier:  # resumed: the earlier attempts' kept work counts too
            extra.update(
                seconds_total=round(seconds + sum(a["end"] - a["start"] for a in earlier), 3), attempts=len(earlier) + 1
            )
        (art.staging / ATTEMPTS).unlink(missing_ok=True)
        art.commit(seconds=round(seconds, 3), **extra)
        log.info("stage %-14s done     %s (%.1fs)", stage, art.key, seconds)
        return art

    # ---- filesystem plumbing -------------------------------------------------------------------
    def _exists(self, uri: str) -> bool:
        path = self._fs_path(uri)
        return self.fs.get_file_info(path).type == pafs.FileType.File

    def _fs_path(self, uri: str) -> str:
        if self.remote:
            return pafs.FileSystem.from_uri(uri)[1]
        return uri

    def _local_final(self, art: Artifact) -> Path:
        if not self.remote:
            return Path(self.root) / art.stage / art.key
        local = self._cache / art.stage / art.key
        if not (local / MANIFEST).exists():
            tmp = Path(tempfile.mkdtemp(dir=self._cache))
            pafs.copy_files(
                self._fs_path(art.uri),
                str(tmp),
                destination_filesystem=pafs.LocalFileSystem(),
                source_filesystem=self.fs,
            )
            local.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, local)
        return local

    def _local_staging(self, art: Artifact) -> Path:
        base = Path(self.root) if not self.remote else self._cache
        return base / art.stage / f"{art.key}.partial"

    def _publish(self, art: Artifact, staging: Path) -> None:
        if not self.remote:
            final = Path(self.root) / art.stage / art.key
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
            return
        dest = self._fs_path(art.uri)
        pafs.copy_files(str(staging), dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)
        shutil.rmtree(staging, ignore_errors=True)

    def _remove(self, art: Artifact) -> None:
        if self.remote:
            self.fs.delete_dir(self._fs_path(art.uri))
        else:
            shutil.rmtree(Path(self.root) / art.stage / art.key, ignore_errors=True)
