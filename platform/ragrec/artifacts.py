"""Content-addressed artifact store.

Every stage output lives at ``<root>/<stage>/<key>/`` where ``key`` hashes the stage's code version,
its config and the *content digests* of its inputs (each input's manifest records the sha256 of every file and a
``content`` digest over them). So recomputing an upstream stage (``--force``, or a corrupt artifact) gives its
descendants new keys exactly when its output changed, and a stage whose inputs are raw files (``dataset``) puts
their sha256 in its spec (:meth:`ArtifactStore.file_sha256`, memoised by size, mtime and inode). A stage
writes into ``<key>.partial/`` and the directory is renamed to ``<key>/`` only when complete, with a
``manifest.json`` (row counts, timings, versions;
``seconds`` = the computing attempt's wall time, and after a resume ``seconds_total`` = all attempts').
So a finished artifact is never half-written, a rerun skips finished stages, and a killed run
resumes at the first unfinished stage. Long stages (LLM generation) also checkpoint *blocks* inside
``<key>.partial/blocks/``; a resumed stage keeps those and computes only the missing blocks.

Concurrency and integrity (a sweep with concurrent trials, two users on one cache):

* One writer per key: :meth:`ArtifactStore.run` holds an exclusive ``fcntl.flock`` on
  ``<key>.partial/.writer.lock`` while it computes into ``<key>.partial/`` (so that folder stays the stable,
  resumable place: blocks, LoRA ``train/`` checkpoints). A second writer of the same key waits and then reuses
  the first one's artifact. Where the filesystem has no ``flock``, each writer stages into its own
  ``<key>.<host>-<pid>-<random>.partial/`` instead (no resume there).
* The manifest lists every file with its size and sha256 and is written last; remote stores upload the data
  before it. Reuse checks every size and re-hashes the files up to :data:`HASH_ON_READ_MAX`; a full check
  (:meth:`Artifact.verify` ``full=True``, ``ragrec cache verify``) hashes them all. Publishing never removes
  another writer's finished artifact: the rename onto an existing ``<key>/`` fails, and the existing one is
  kept (unless it is forced or broken).
* Reuse verifies: a listed file that is missing, of another size or digest makes the artifact unfinished; it
  is moved aside to ``<key>.corrupt-<time>/`` with a warning naming the file and recomputed. Manifests written
  before the file list (no ``files``) are trusted as before; older blake2b ``digest`` entries are still checked.
* A write that runs out of space (ENOSPC, EDQUOT) removes the staging folder and raises
  :class:`ArtifactWriteError`, one line naming the stage and the file: nothing is half-published.

The root can be a local path or any URI pyarrow.fs understands (``s3://bucket/prefix``,
``gs://...``); remote roots stage locally and upload on commit.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import platform as _stdlib_platform
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .config import config_hash

log = logging.getLogger("ragrec.artifacts")

MANIFEST = "manifest.json"
LOCK = ".writer.lock"
"""Inside ``<key>.partial/``: the file a writer holds an exclusive ``flock`` on while it computes the artifact."""
HASH_ON_READ_MAX = 16 * 1024**2
"""On reuse, files up to this size are re-hashed against the manifest's sha256; larger ones are checked by size
(a full check hashes them too: ``Artifact.verify(full=True)``, ``ragrec cache verify``)."""
FULL_DIGEST_MAX = 16 * 1024**2
"""Legacy (blake2b) manifests: files up to this size had a digest of their whole content, larger ones ``ends``."""
_EDGE = 64 * 1024
MEMO = ".digests.json"
"""Under the store's local root: sha256 of input files by (size, mtime_ns, inode), so unchanged ones are not
re-hashed on every run (:meth:`ArtifactStore.file_sha256`)."""
RACY_NS = 2_000_000_000
"""A memo entry is trusted only for a file last modified this long before it was hashed (coarse mtimes)."""
_MEMO_MAX = 100_000
LOCK_POLL_S = 0.5
"""How often a writer waiting for another writer of the same key retries its lock."""

_RECORDERS: list[list[str]] = []


@contextmanager
def recording_stages() -> Iterator[list[str]]:
    """Collect, in first-run order, the names of the stages any :class:`ArtifactStore` of this process is asked
    for (cached or computed) inside the ``with`` block (the CLI's check of ``--force`` names)."""
    seen: list[str] = []
    _RECORDERS.append(seen)
    try:
        yield seen
    finally:
        _RECORDERS.remove(seen)


def unmatched_force_message(force: Iterable[str], stages: Iterable[str]) -> str | None:
    """The error for ``--force`` names that matched none of ``stages`` (None when every name matched)."""
    stages = list(dict.fromkeys(stages))
    unknown = [f for f in dict.fromkeys(force) if f not in stages]
    if not unknown:
        return None
    names = ", ".join(repr(f) for f in unknown)
    return f"--force {names} matched no stage; stages of this run: {', '.join(stages) or '(none)'}"


class ArtifactWriteError(OSError):
    """A stage's output could not be written (disk full, quota): its staging was removed, nothing was published.
    ``str()`` is the one-line message naming the stage, the file and the fix."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_digest(files: dict[str, dict]) -> str:
    """The sha256 of an artifact's file list (names, sizes, sha256s): what the keys of its descendants hold."""
    blob = json.dumps(sorted((rel, m["size"], m["sha256"]) for rel, m in files.items())).encode()
    return hashlib.sha256(blob).hexdigest()


def _digest(path: Path, size: int, mode: str | None = None) -> str:
    """Legacy manifests (before sha256): ``full:<blake2b>`` of the whole file (``mode`` full, or by default
    when ``size`` <= FULL_DIGEST_MAX), else ``ends:<blake2b>`` of its first and last 64 KiB and its size."""
    mode = mode or ("full" if size <= FULL_DIGEST_MAX else "ends")
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        if mode == "full":
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(f.read(_EDGE))
            f.seek(max(size - _EDGE, 0))
            h.update(f.read(_EDGE))
            h.update(str(size).encode())
    return f"{mode}:{h.hexdigest()}"


def _file_list(staging: Path) -> dict[str, dict]:
    """``{relative path: {size, sha256}}`` of every file of a staged artifact but the manifest and lock."""
    out = {}
    for p in sorted(staging.rglob("*")):
        if p.is_file() and p.name not in (MANIFEST, LOCK, ATTEMPTS):
            out[p.relative_to(staging).as_posix()] = {"size": p.stat().st_size, "sha256": _sha256(p)}
    return out


def _check_files(files: dict[str, dict], root: Path, hashes: str) -> list[str]:
    """What is wrong with the local copy under ``root`` of the listed ``files`` ([] = nothing).

    ``hashes``: ``none`` (sizes only), ``small`` (also the sha256 of files up to :data:`HASH_ON_READ_MAX`) or
    ``all`` (every file's sha256)."""
    problems = []
    for rel, meta in files.items():
        p = root / rel
        try:
            size = p.stat().st_size
        except OSError:
            problems.append(f"{rel}: missing")
            continue
        if size != meta.get("size"):
            problems.append(f"{rel}: {size} bytes, the manifest lists {meta.get('size')}")
        elif hashes == "none":
            continue
        elif meta.get("sha256"):
            if (hashes == "all" or size <= HASH_ON_READ_MAX) and _sha256(p) != meta["sha256"]:
                problems.append(f"{rel}: content differs from the manifest's sha256")
        elif meta.get("digest"):  # a legacy blake2b manifest
            mode = meta["digest"].split(":", 1)[0]
            if _digest(p, size, mode) != meta["digest"]:
                problems.append(f"{rel}: content differs from the manifest's checksum")
    return problems


def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


@dataclass
class Artifact:
    """One stage output: a directory of Parquet tables, JSON files and checkpoints."""

    store: ArtifactStore
    stage: str
    key: str
    spec: dict = field(default_factory=dict)
    inputs: list[dict] = field(default_factory=list)
    """``{stage, key}`` of each input artifact (the manifest's ``input_keys``: ``ragrec cache gc`` keeps the
    ancestors of what runs reference)."""
    _content: str | None = field(default=None, init=False, repr=False, compare=False)
    # a private staging folder (writers without a lock); None = the stable, resumable ``<key>.partial/``
    _staging_dir: Path | None = field(default=None, init=False, repr=False, compare=False)
    # a forced recompute: publishing replaces a finished artifact of the key
    _replace: bool = field(default=False, init=False, repr=False, compare=False)

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
        """The manifest exists and every file it lists exists with its size (checksums: :meth:`verify`)."""
        return not self.store._problems(self, "none")

    def verify(self, full: bool = False) -> list[str]:
        """What is wrong with the finished artifact ([] = complete): a missing manifest, or a listed file that
        is missing or differs in size or sha256. The sha256 of files up to :data:`HASH_ON_READ_MAX` is always
        checked, of all files with ``full`` (checksums of a remote artifact: on its local copy)."""
        return self.store._problems(self, "all" if full else "small")

    @property
    def content(self) -> str:
        """The finished artifact's content digest (its manifest's ``content``: sha256 over its files' names,
        sizes and sha256s); what the keys of the stages reading it derive from. Raises ValueError when the
        artifact is not finished."""
        if self._content is None:
            try:
                manifest = self.store._read_manifest(self)
            except (ValueError, OSError):
                manifest = None
            if manifest is None:
                raise ValueError(
                    f"artifact {self.stage}/{self.key} is not finished ({self.uri}): a stage's key derives from "
                    f"its inputs' content, so compute the input first (ArtifactStore.run)"
                )
            content = manifest.get("content")
            if not content:  # written before content digests: hash the files themselves
                files = manifest.get("files")
                if not (isinstance(files, dict) and all("sha256" in m for m in files.values())):
                    files = _file_list(self.path)
                content = content_digest(files)
            self._content = content
        return self._content

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
        """Write the manifest (last, listing every file with its size and checksum) and atomically publish
        the staging directory. When another writer published the key first, its artifact is kept."""
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
        for tmp in staging.rglob("*.tmp"):  # a killed attempt's half-written file
            if tmp.is_file():
                tmp.unlink()
        manifest["files"] = _file_list(staging)
        manifest["content"] = content_digest(manifest["files"])
        manifest["input_keys"] = self.inputs
        tmp = staging / f"{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=2, default=str))
        os.replace(tmp, staging / MANIFEST)
        self.store._publish(self, staging)
        self._content = None  # a concurrent winner's artifact may have been kept: read its manifest
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
        mtimes = [f.stat().st_mtime for f in staging.rglob("*") if f.is_file() and f.name not in (ATTEMPTS, LOCK)]
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
        self.stages_run: list[str] = []
        """The stages :meth:`run` was asked for, in first-run order (cached ones too)."""

    def unused_force(self) -> list[str]:
        """The ``force`` names that matched no stage :meth:`run` was asked for (so far)."""
        return sorted(self.force - set(self.stages_run))

    # ---- keys --------------------------------------------------------------------------------
    def artifact(self, stage: str, config: Any, inputs: Iterable[Artifact | str] = (), version: str = "1") -> Artifact:
        """The artifact for ``stage`` computed from ``config`` and ``inputs`` by code ``version``.

        An input artifact enters the key as ``<stage>@<content digest>`` (it must be finished: ValueError
        otherwise), so the key changes exactly when an input's content does; a string input enters as it is."""
        refs, ids = [], []
        for a in inputs:
            if isinstance(a, Artifact):
                refs.append(f"{a.stage}@{a.content[:32]}")
                ids.append({"stage": a.stage, "key": a.key})
            else:
                refs.append(str(a))
        spec = {"stage": stage, "version": version, "config": config, "inputs": refs}
        art = Artifact(self, stage, config_hash(spec), spec=json.loads(json.dumps(spec, default=str)))
        art.inputs = ids
        return art

    def file_sha256(self, path: str | os.PathLike) -> str:
        """The sha256 of one input file (:meth:`files_sha256`)."""
        return self.files_sha256([path])[0]

    def files_sha256(self, paths: Iterable[str | os.PathLike]) -> list[str]:
        """The sha256 of input files, memoised in ``<root>/.digests.json`` by (size, mtime_ns, inode): an
        unchanged file is not read again; one modified within :data:`RACY_NS` before its hashing (a coarse
        mtime could hide a later edit) is hashed again next time."""
        memo_path = (Path(self.root) if not self.remote else self._cache) / MEMO
        try:
            memo = json.loads(memo_path.read_text())
            if not isinstance(memo, dict):
                memo = {}
        except (OSError, ValueError):
            memo = {}
        out, changed = [], False
        for path in paths:
            p = Path(path).resolve()
            st = p.stat()
            sig = [st.st_size, st.st_mtime_ns, st.st_ino]
            entry = memo.get(str(p))
            if (
                isinstance(entry, dict)
                and entry.get("sig") == sig
                and st.st_mtime_ns < entry.get("hashed_ns", 0) - RACY_NS
            ):
                out.append(entry["sha256"])
                continue
            digest = _sha256(p)
            memo[str(p)] = {"sig": sig, "sha256": digest, "hashed_ns": time.time_ns()}
            out.append(digest)
            changed = True
        if changed:
            if len(memo) > _MEMO_MAX:  # forget the longest-unhashed files
                memo = dict(sorted(memo.items(), key=lambda kv: kv[1].get("hashed_ns", 0))[-_MEMO_MAX:])
            try:  # a lost update (a concurrent run) only costs a re-hash later
                memo_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = memo_path.with_name(f"{MEMO}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
                tmp.write_text(json.dumps(memo))
                os.replace(tmp, memo_path)
            except OSError as e:
                log.debug("could not write the digest memo %s: %s", memo_path, e)
        return out

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
        for seen in [self.stages_run, *_RECORDERS]:
            if stage not in seen:
                seen.append(stage)
        forced = stage in self.force
        if not forced and not art.verify():
            log.info("stage %-14s cached   %s", stage, art.key)
            return art
        before = self._manifest_stamp(art)
        fd, waited = self._lock(art)
        try:
            problems = art.verify()
            if not problems and (not forced or (waited and self._manifest_stamp(art) != before)):
                # finished meanwhile by the writer we waited for (a forced stage too: that is a fresh one)
                log.info("stage %-14s cached   %s (computed by a concurrent writer)", stage, art.key)
                if fd is not None:
                    self._unlock(fd, art, cleanup=True)
                    fd = None
                return art
            if problems and problems != [f"{MANIFEST}: missing"]:
                log.warning(
                    "stage %s: the finished artifact %s is broken (%s); moving it aside and recomputing",
                    stage,
                    art.uri,
                    "; ".join(problems),
                )
                self._move_aside(art, "corrupt")
            art._replace = forced and not problems
            log.info("stage %-14s running  %s", stage, art.key)
            try:
                earlier = _start_attempt(art.staging)
                t0 = time.perf_counter()
                try:
                    out = compute(art)
                except BaseException:
                    if art._staging_dir is not None:  # a private folder nobody resumes from
                        shutil.rmtree(art._staging_dir, ignore_errors=True)
                    raise
                extra = out if isinstance(out, dict) else {"rows": out}
                extra.setdefault("rows", None)
                seconds = time.perf_counter() - t0
                if earlier:  # resumed: the earlier attempts' kept work counts too
                    extra.update(
                        seconds_total=round(seconds + sum(a["end"] - a["start"] for a in earlier), 3),
                        attempts=len(earlier) + 1,
                    )
                (art.staging / ATTEMPTS).unlink(missing_ok=True)
                art.commit(seconds=round(seconds, 3), **extra)
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT) or isinstance(e, ArtifactWriteError):
                    raise  # (a nested stage's full disk is already said)
                raise self._write_failed(art, e) from e
            log.info("stage %-14s done     %s (%.1fs)", stage, art.key, seconds)
            return art
        finally:
            if fd is not None:
                os.close(fd)  # after commit the lock file went with the folder (or stays for a resume)

    def _write_failed(self, art: Artifact, e: OSError) -> ArtifactWriteError:
        """Remove ``art``'s staging after a full disk (its files may be cut short) and say so in one line."""
        staging = self._local_staging(art)
        shutil.rmtree(staging, ignore_errors=True)  # the lock file goes too: a waiting writer looks again
        where = e.filename or staging
        msg = (
            f"stage {art.stage}: {os.strerror(e.errno).lower()} while writing {where}; nothing was published and "
            f"the staging folder {staging} was removed: free space under {self.root} (or point artifacts_dir at "
            f"a larger disk) and rerun"
        )
        return ArtifactWriteError(e.errno, msg)

    # ---- writer lock -------------------------------------------------------------------------------
    def _lock(self, art: Artifact) -> tuple[int | None, bool]:
        """Take the exclusive writer lock of ``art``'s resumable ``<key>.partial/``: ``(fd, waited)``.

        Waits (polling, so Ctrl-C works) while another writer holds it. Whoever publishes or abandons the folder
        removes the lock file, so a lock is valid only while the file at the path is the one locked. Where the
        filesystem has no ``flock``, returns ``(None, waited)`` and gives ``art`` a private staging folder.
        """
        waited = False
        while True:
            staging = self._local_staging(art)
            path = staging / LOCK
            try:
                staging.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # the folder was just published (renamed away): look again
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if not waited:
                    log.info("stage %-14s waiting  %s (another writer is computing it)", art.stage, art.key)
                waited = True
                time.sleep(LOCK_POLL_S)
                continue
            except OSError as e:  # no flock here (some network filesystems): stage privately
                os.close(fd)
                log.warning(
                    "stage %s: no file lock in %s (%s); staging privately, without resume", art.stage, staging, e
                )
                tag = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
                art._staging_dir = staging.parent / f"{art.key}.{tag}.partial"
                return None, waited
            try:
                st = os.stat(path)
                fst = os.fstat(fd)
                same = (st.st_ino, st.st_dev) == (fst.st_ino, fst.st_dev)
            except FileNotFoundError:
                same = False
            if same:
                return fd, waited
            os.close(fd)  # we locked a file its holder had removed (it published): look again

    def _unlock(self, fd: int, art: Artifact, cleanup: bool) -> None:
        """Release the lock; ``cleanup``: remove the lock file and the folder when nothing else is in it."""
        if cleanup:
            staging = self._local_staging(art)
            (staging / LOCK).unlink(missing_ok=True)
            try:
                staging.rmdir()
            except OSError:
                pass
        os.close(fd)

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
            try:
                os.replace(tmp, local)
            except OSError:  # a concurrent download got there first
                if not (local / MANIFEST).exists():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        return local

    def _local_staging(self, art: Artifact) -> Path:
        if art._staging_dir is not None:
            return art._staging_dir
        base = Path(self.root) if not self.remote else self._cache
        return base / art.stage / f"{art.key}.partial"

    def _read_manifest(self, art: Artifact) -> dict | None:
        """The finished artifact's manifest (None: there is none); raises ValueError when unreadable."""
        if not self.remote:
            try:
                return json.loads((Path(self.root) / art.stage / art.key / MANIFEST).read_text())
            except FileNotFoundError:
                return None
        path = self._fs_path(f"{art.uri}/{MANIFEST}")
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read())

    def _manifest_stamp(self, art: Artifact) -> Any:
        info = self.fs.get_file_info(self._fs_path(f"{art.uri}/{MANIFEST}"))
        return (info.type, info.mtime_ns, info.size)

    def _problems(self, art: Artifact, hashes: str) -> list[str]:
        """What keeps ``art`` from being a complete finished artifact ([] = nothing)."""
        try:
            manifest = self._read_manifest(art)
        except (ValueError, OSError) as e:
            return [f"{MANIFEST}: unreadable ({e})"]
        if manifest is None:
            return [f"{MANIFEST}: missing"]
        files = manifest.get("files")
        if not isinstance(files, dict):  # written before manifests listed their files: trusted as before
            return []
        if not self.remote:
            return _check_files(files, Path(self.root) / art.stage / art.key, hashes)
        infos = self.fs.get_file_info([self._fs_path(f"{art.uri}/{rel}") for rel in files])
        problems = []
        for (rel, meta), info in zip(files.items(), infos):
            if info.type != pafs.FileType.File:
                problems.append(f"{rel}: missing")
            elif info.size != meta.get("size"):
                problems.append(f"{rel}: {info.size} bytes, the manifest lists {meta.get('size')}")
        local = self._cache / art.stage / art.key
        if not problems and hashes != "none" and (local / MANIFEST).exists():
            stale = _check_files(files, local, hashes) or json.loads((local / MANIFEST).read_text()) != manifest
            if stale:  # a broken or outdated download: fetch it again when read
                log.warning("stage %s: the local copy %s differs from %s; downloading again", art.stage, local, art.uri)
                shutil.rmtree(local, ignore_errors=True)
        return problems

    def quarantine(self, art: Artifact) -> Path | None:
        """Move a corrupt finished artifact aside to ``<key>.corrupt-<time>/`` (remote: delete it); the next run
        recomputes it. Returns where it went (None: remote, or nothing was there)."""
        return self._move_aside(art, "corrupt")

    def _move_aside(self, art: Artifact, why: str) -> Path | None:
        """Move the finished ``<key>/`` out of the way to ``<key>.<why>-<time>`` (remote: delete it)."""
        if self.remote:
            self.fs.delete_file(self._fs_path(f"{art.uri}/{MANIFEST}"))  # unfinished first, then gone
            self.fs.delete_dir(self._fs_path(art.uri))
            shutil.rmtree(self._cache / art.stage / art.key, ignore_errors=True)
            return None
        final = Path(self.root) / art.stage / art.key
        aside = final.with_name(f"{art.key}.{why}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}")
        try:
            os.rename(final, aside)
        except FileNotFoundError:
            return None
        return aside

    def _publish(self, art: Artifact, staging: Path) -> None:
        """Publish the staged folder (manifest included) as the finished artifact; data before manifest.

        The rename onto an existing ``<key>/`` fails, so a concurrent winner's artifact is never removed: it is
        kept and ours discarded, unless ours is a forced recompute or the existing one is broken.
        """
        if not self.remote:
            final = Path(self.root) / art.stage / art.key
            while True:
                try:
                    os.rename(staging, final)
                    break
                except OSError as e:
                    if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                problems = self._problems(art, "small")
                if not problems and not art._replace:
                    log.info("stage %s: %s was published by another writer; keeping it", art.stage, art.key)
                    shutil.rmtree(staging, ignore_errors=True)
                    return
                aside = self._move_aside(art, "corrupt" if problems else "replaced")
                if aside is not None and not problems:
                    shutil.rmtree(aside, ignore_errors=True)
                art._replace = False
            (final / LOCK).unlink(missing_ok=True)  # it came along; a waiter holding it sees it gone
            return
        if not art._replace and not self._problems(art, "none"):
            log.info("stage %s: %s was published by another writer; keeping it", art.stage, art.key)
        else:
            if self._read_manifest(art) is not None:
                self._move_aside(art, "replaced")
            dest = self._fs_path(art.uri)
            local = pafs.LocalFileSystem()
            files = [p for p in sorted(staging.rglob("*")) if p.is_file() and p.name not in (MANIFEST, LOCK)]
            for p in [*files, staging / MANIFEST]:  # the manifest last: a reader sees all data or no artifact
                target = f"{dest}/{p.relative_to(staging).as_posix()}"
                self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
                pafs.copy_files(str(p), target, source_filesystem=local, destination_filesystem=self.fs)
        shutil.rmtree(staging, ignore_errors=True)

    def _remove(self, art: Artifact) -> None:
        if self.remote:
            self.fs.delete_dir(self._fs_path(art.uri))
        else:
            shutil.rmtree(Path(self.root) / art.stage / art.key, ignore_errors=True)
