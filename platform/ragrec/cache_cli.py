"""``ragrec cache ls|verify|gc``: look after a local artifact store (``docs/architecture.md`` §3).

* ``ls``: every entry of the store (finished artifacts, ``.partial`` staging folders, artifacts moved aside as
  corrupt or replaced) with its size, date, state and the run files (``run.json``, ``metrics.json``) under the
  runs folders that reference it.
* ``verify``: re-hashes every file of every finished artifact against its manifest's sha256; a corrupt
  artifact is reported and moved aside to ``<key>.corrupt-<time>/`` (the next run recomputes it). Exit 1 when
  any is corrupt.
* ``gc``: removes the finished artifacts that no run references (directly, or as an ancestor through the
  manifests' ``input_keys``), the staging folders no live writer holds the lock of, and what was moved aside;
  entries changed within ``--min-age`` hours are left (a run in progress may still need them), ``--dry-run``
  only lists.

Standard library only at import time (``ragrec --help`` stays fast).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

KEY = re.compile(r"[0-9a-f]{16}")
_ASIDE = re.compile(r"^(?P<key>[0-9a-f]+)\.(?P<why>corrupt|replaced)-")
RUN_FILES = ("run.json", "metrics.json")


class CacheCommandError(ValueError):
    """Bad arguments to a ``ragrec cache`` command (the CLI prints the one-line message and exits 2)."""


@dataclass
class Entry:
    """One folder under ``<root>/<stage>/``."""

    stage: str
    key: str
    path: Path
    kind: str  # "artifact" (finished), "partial" (staging), "aside" (moved aside: corrupt or replaced)
    size: int
    mtime: float  # the newest file's (or the folder's)
    manifest: dict | None = None

    @property
    def name(self) -> str:
        return f"{self.stage}/{self.path.name}"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``cache`` subcommand and its ``ls``, ``verify``, ``gc``."""
    c = sub.add_parser("cache", help="the artifact cache: list, verify, garbage-collect")
    csub = c.add_subparsers(dest="cache_command", required=True)
    store = dict(
        default="artifacts", metavar="DIR", help="the artifact store (a config's artifacts_dir; default %(default)s)"
    )
    runs = dict(
        action="append",
        default=None,
        metavar="DIR",
        help="a folder of runs (a config's output_dir) whose run.json / metrics.json reference artifacts; "
        "repeatable (default: runs)",
    )
    ls = csub.add_parser("ls", help="list stages, keys, sizes, dates and the runs that reference them")
    ls.add_argument("--artifacts", **store)
    ls.add_argument("--runs", **runs)
    v = csub.add_parser("verify", help="re-hash every artifact; move corrupt ones aside (exit 1 when any)")
    v.add_argument("--artifacts", **store)
    v.add_argument("--report-only", action="store_true", help="report corrupt artifacts without moving them aside")
    g = csub.add_parser("gc", help="remove artifacts no run references, stale staging folders, moved-aside copies")
    g.add_argument("--artifacts", **store)
    g.add_argument("--runs", **runs)
    g.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    g.add_argument(
        "--min-age",
        type=float,
        default=1.0,
        metavar="HOURS",
        help="leave entries changed within the last HOURS (default %(default)s: a run in progress may use them)",
    )


def main(args: argparse.Namespace) -> int:
    root = _root(args.artifacts)
    if args.cache_command == "verify":
        return verify(root, quarantine=not args.report_only)
    runs = [Path(r) for r in (args.runs or ["runs"])]
    if args.cache_command == "ls":
        return ls(root, runs)
    if args.min_age < 0:
        raise CacheCommandError(f"--min-age must be >= 0 hours, got {args.min_age}")
    return gc(root, runs, dry_run=args.dry_run, min_age_hours=args.min_age)


# ---- reading the store and the runs ------------------------------------------------------------------
def _root(path: str) -> Path:
    if "://" in path and not path.startswith("file://"):
        raise CacheCommandError(
            f"--artifacts {path}: ragrec cache works on a local store; run it where the store is mounted"
        )
    root = Path(path[len("file://") :] if path.startswith("file://") else path)
    if not root.is_dir():
        raise CacheCommandError(f"--artifacts {root}: no such folder; pass the artifacts_dir of your config")
    return root


def _tree(path: Path) -> tuple[int, float]:
    size, newest = 0, path.stat().st_mtime
    for p in path.rglob("*"):
        try:
            st = p.lstat()
        except FileNotFoundError:  # removed meanwhile (a writer publishing)
            continue
        if p.is_file():
            size += st.st_size
        newest = max(newest, st.st_mtime)
    return size, newest


def scan(root: Path) -> list[Entry]:
    """Every entry of the store at ``root``, by stage and folder name."""
    from .artifacts import MANIFEST

    out = []
    for stage_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for d in sorted(p for p in stage_dir.iterdir() if p.is_dir()):
            aside = _ASIDE.match(d.name)
            if d.name.endswith(".partial"):
                kind, key = "partial", d.name.split(".", 1)[0]
            elif aside:
                kind, key = "aside", aside["key"]
            else:
                kind, key = "artifact", d.name
            try:
                size, mtime = _tree(d)
            except FileNotFoundError:
                continue
            manifest = None
            if kind == "artifact":
                try:
                    manifest = json.loads((d / MANIFEST).read_text())
                except (OSError, ValueError):
                    manifest = None
            out.append(Entry(stage_dir.name, key, d, kind, size, mtime, manifest))
    return out


def _keys_in(obj) -> Iterator[str]:
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _keys_in(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _keys_in(v)
    elif isinstance(obj, str) and KEY.fullmatch(obj):
        yield obj


def references(runs: Iterable[Path]) -> tuple[dict[str, list[str]], int]:
    """``({key: [run files referencing it]}, number of run files read)``: the ``artifacts`` block of every
    ``run.json`` (``ragrec run``) and ``metrics.json`` (``ragrec evaluate``) under the ``runs`` folders."""
    refs: dict[str, list[str]] = {}
    n = 0
    for runs_dir in runs:
        if not runs_dir.is_dir():
            continue
        for f in sorted(p for name in RUN_FILES for p in runs_dir.rglob(name)):
            try:
                payload = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(payload, dict) or "artifacts" not in payload:
                continue
            n += 1
            for key in dict.fromkeys(_keys_in(payload["artifacts"])):
                refs.setdefault(key, []).append(str(f))
    return refs, n


def kept(entries: list[Entry], refs: Iterable[str]) -> set[str]:
    """The keys of the finished artifacts that runs reference, and of their ancestors (the manifests'
    ``input_keys``; a manifest written before them named its inputs by key in ``spec.inputs``)."""
    by_key = {e.key: e for e in entries if e.kind == "artifact"}
    keep: set[str] = set()
    todo = [k for k in refs if k in by_key]
    while todo:
        key = todo.pop()
        if key in keep or key not in by_key:
            continue
        keep.add(key)
        manifest = by_key[key].manifest or {}
        todo += [i.get("key") for i in manifest.get("input_keys") or [] if isinstance(i, dict)]
        todo += [r for r in (manifest.get("spec") or {}).get("inputs") or [] if isinstance(r, str) and KEY.fullmatch(r)]
    return keep


def _try_lock(partial: Path) -> tuple[bool, int | None]:
    """``(free, fd)``: whether no live writer holds ``partial``'s lock; ``fd`` holds it for us (None: no lock file)."""
    from .artifacts import LOCK

    try:
        fd = os.open(partial / LOCK, os.O_RDWR)
    except FileNotFoundError:
        return True, None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False, None
    except OSError:  # no flock on this filesystem: age alone decides
        return True, fd
    return True, fd


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


# ---- the commands ---------------------------------------------------------------------------------------
def ls(root: Path, runs: list[Path]) -> int:
    from .artifacts import Artifact, ArtifactStore

    store = ArtifactStore(root)
    entries = scan(root)
    refs, n_files = references(runs)
    keep = kept(entries, refs)
    rows = [("STAGE", "KEY", "SIZE", "DATE", "STATE", "USED BY")]
    for e in entries:
        if e.kind == "artifact":
            state = "ok" if Artifact(store, e.stage, e.key).done else "incomplete (run `ragrec cache verify`)"
            used = ", ".join(refs.get(e.key, [])) or ("(ancestor of a referenced artifact)" if e.key in keep else "-")
        elif e.kind == "partial":
            free, fd = _try_lock(e.path)
            if fd is not None:
                os.close(fd)
            state, used = ("staging" if free else "staging (a writer is running)"), "-"
        else:
            state, used = f"moved aside ({_ASIDE.match(e.path.name)['why']})", "-"
        rows.append((e.stage, e.path.name, _size(e.size), _when(e.mtime), state, used))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5])
    done = [e for e in entries if e.kind == "artifact"]
    print(
        f"{len(done)} artifacts ({_size(sum(e.size for e in done))}), {len(entries) - len(done)} other entries "
        f"({_size(sum(e.size for e in entries) - sum(e.size for e in done))}) in {root}; "
        f"{len(keep)} in use by {n_files} run files under {', '.join(map(str, runs))}"
    )
    return 0


def verify(root: Path, quarantine: bool = True) -> int:
    """Re-hash every finished artifact; report (and move aside) the corrupt ones. 1 when any is corrupt."""
    from .artifacts import Artifact, ArtifactStore

    store = ArtifactStore(root)
    n = bad = unchecked = 0
    for e in scan(root):
        if e.kind != "artifact":
            continue
        n += 1
        art = Artifact(store, e.stage, e.key)
        problems = art.verify(full=True)
        if not problems and not isinstance((e.manifest or {}).get("files"), dict):
            unchecked += 1
            print(f"unchecked {e.name}: its manifest predates file lists (rerun with --force {e.stage} to renew it)")
        if problems:
            bad += 1
            where = ""
            if quarantine:
                aside = store.quarantine(art)
                where = f"; moved aside to {aside} (the next run recomputes it)" if aside else ""
            print(f"CORRUPT {e.name}: {'; '.join(problems)}{where}")
    print(f"{n} artifacts verified in {root}: {n - bad - unchecked} ok, {bad} corrupt, {unchecked} unchecked")
    return 1 if bad else 0


def gc(root: Path, runs: list[Path], dry_run: bool = False, min_age_hours: float = 1.0) -> int:
    refs, n_files = references(runs)
    if n_files == 0:
        raise CacheCommandError(
            f"found no run.json or metrics.json under {', '.join(map(str, runs))}: gc would remove every "
            f"artifact; pass --runs DIR (the output_dir of your runs, repeatable)"
        )
    entries = scan(root)
    keep = kept(entries, refs)
    cutoff = time.time() - min_age_hours * 3600
    busy = set()  # keys a live writer is computing (a forced recompute replaces the finished one)
    for e in entries:
        if e.kind == "partial":
            free, fd = _try_lock(e.path)
            if fd is not None:
                os.close(fd)
            if not free:
                busy.add(e.key)
    verb = "would remove" if dry_run else "removed"
    freed = removed = recent = 0
    for e in entries:
        if e.kind == "artifact" and e.key in keep:
            continue
        if e.mtime > cutoff:
            recent += 1
            continue
        if e.key in busy and e.kind != "aside":
            print(f"kept {e.name}: a writer holds its lock")
            continue
        why = {"artifact": "no run references it", "partial": "unfinished staging", "aside": "moved aside"}[e.kind]
        fd = None
        if e.kind == "partial":
            free, fd = _try_lock(e.path)
            if not free:  # a writer started meanwhile
                print(f"kept {e.name}: a writer holds its lock")
                continue
        try:
            if not dry_run:
                shutil.rmtree(e.path, ignore_errors=True)
        finally:
            if fd is not None:
                os.close(fd)
        print(f"{verb} {e.name} ({_size(e.size)}; {why})")
        freed += e.size
        removed += 1
    if not dry_run:
        for stage_dir in {e.path.parent for e in entries}:
            try:
                stage_dir.rmdir()  # only when empty
            except OSError:
                pass
    print(
        f"{verb} {removed} entries ({_size(freed)}); kept {len(keep)} artifacts in use by {n_files} run files"
        + (f" and {recent} entries changed within {min_age_hours:g} h (--min-age)" if recent else "")
    )
    return 0
