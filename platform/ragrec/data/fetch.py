"""Explicit download + verification of the official dataset files (``ragrec data fetch NAME``).

Nothing here runs implicitly: loaders never download. :func:`fetch` downloads each official file of a dataset
with ``urllib``, checks its published md5 where one exists (where none is published the file's size and sha256
are logged instead, so that they can be recorded, and only the extracted files are checked), unpacks archives
(zip, tar.gz, and a tar inside it) into a temporary folder next to the destination and renames that folder into
place, so ``<dest_dir>/<name>/`` is either complete or absent. ``amazon-2018`` keeps several categories in one
folder: there each downloaded file is renamed into place on its own, so a file is complete or absent.
:func:`verify` checks an existing folder (required files present, known md5 sums match). docs/datasets.md lists
the URLs and which checksums are published.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError

BASE_URL = "https://files.grouplens.org/datasets/movielens/"
TIMEOUT_S = 15.0
AMAZON_2018_URL = "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_v2/"  # (formerly jmcauley.ucsd.edu/data)
log = logging.getLogger("ragrec.data.fetch")


@dataclass(frozen=True)
class Archive:
    """One official download of a dataset.

    Attributes:
        zip_md5: the publisher's md5 of the download; None where none is published (then the download's size and
            sha256 are logged, and only the files it holds are checked).
        required: what the dataset folder must hold afterwards (a name ending in ``/``: a non-empty folder); for a
            ``file`` download, ``required[0]`` is the name it is saved under.
        file_md5: published md5 sums of files in the folder.
        url: the official URL (None: ``BASE_URL<name>.zip``, the GroupLens layout).
        kind: ``zip``, ``tar.gz`` or ``file`` (kept as downloaded, e.g. a ``.json.gz``).
        inner: the archive's folder that holds the files (None: ``<name>`` when the archive has it, else its root).
        nested: tar files inside that folder to unpack in place and then delete (Netflix's ``training_set.tar``).
        note: said in the offline error (e.g. other places the file is distributed).
    """

    zip_md5: str | None
    required: tuple[str, ...]
    file_md5: dict[str, str] = field(default_factory=dict)
    url: str | None = None
    kind: str = "zip"
    inner: str | None = None
    nested: tuple[str, ...] = ()
    note: str = ""

    def source(self, name: str) -> str:
        return self.url or f"{BASE_URL}{name}.zip"

    @property
    def filename(self) -> str:
        return (self.url or "").rsplit("/", 1)[-1] or ""


ARCHIVES: dict[str, Archive | tuple[Archive, ...]] = {
    "ml-100k": Archive(
        zip_md5="0e33842e24a9c977be4e0107933c0723",
        required=("u.data", "u.item", "u.user", "u.genre"),
        file_md5={
            "u.data": "6e47046882bad158b0efbb84cd5cb987",
            "u.item": "c9e7f390115d79079537301d5204f3f7",
            "u.user": "1b53539edc13caad0282c8500608a319",
        },
    ),
    "ml-1m": Archive(
        zip_md5="c4d9eecfca2ab87c1945afe126590906",
        required=("ratings.dat", "movies.dat", "users.dat"),
    ),
    # md5 published next to the zip (ml-10m.zip.md5); the zip holds the folder ml-10M100K/
    "ml-10m": Archive(
        zip_md5="ce571fd55effeba0271552578f2648bd",
        required=("ratings.dat", "movies.dat"),
        url=f"{BASE_URL}ml-10m.zip",
        inner="ml-10M100K",
    ),
    # no checksum was ever published; the host went offline around 2021
    "bookcrossing": Archive(
        zip_md5=None,
        required=("BX-Book-Ratings.csv", "BX-Books.csv", "BX-Users.csv"),
        url="http://www2.informatik.uni-freiburg.de/~cziegler/BX/BX-CSV-Dump.zip",
        note="the original host has been offline since about 2021; copies of BX-CSV-Dump.zip are distributed "
        "elsewhere (e.g. Kaggle): unzip one into the folder",
    ),
    # Netflix no longer distributes the prize data: the Internet Archive's copy of nf_prize_dataset.tar.gz (no
    # published checksum); Kaggle's netflix-inc/netflix-prize-data (login needed) is the same data, also readable
    "netflix": Archive(
        zip_md5=None,
        required=("movie_titles.txt", "training_set/"),
        url="https://archive.org/download/nf_prize_dataset.tar/nf_prize_dataset.tar.gz",
        kind="tar.gz",
        inner="download",
        nested=("training_set.tar",),
        note="Kaggle's netflix-inc/netflix-prize-data (combined_data_*.txt + movie_titles.csv, login needed) is "
        "read as well: unzip it into the folder",
    ),
    # Kang & McAuley's files (no published checksum)
    "steam": (
        Archive(
            zip_md5=None,
            required=("steam_reviews.json.gz",),
            url="https://cseweb.ucsd.edu/~wckang/steam_reviews.json.gz",
            kind="file",
        ),
        Archive(
            zip_md5=None,
            required=("steam_games.json.gz",),
            url="https://cseweb.ucsd.edu/~wckang/steam_games.json.gz",
            kind="file",
        ),
    ),
}
SHARED_FOLDER = ("amazon-2018",)  # several fetches (one per category) fill one folder


def archives(name: str, category: str | None = None) -> tuple[Archive, ...]:
    """The official downloads of dataset ``name`` (``amazon-2018``: of its ``category``)."""
    if name == "amazon-2018":
        from ..config import AMAZON_2018_CATEGORIES, amazon_category_hint

        if category is None:
            raise DataError(
                "amazon-2018 is fetched one category at a time",
                field="category",
                fix="add --category, e.g. `ragrec data fetch amazon-2018 --category Movies_and_TV`",
            )
        if category not in AMAZON_2018_CATEGORIES:
            raise DataError(
                f"{category!r} is not an Amazon 2018 category{amazon_category_hint(category)}",
                field="category",
                fix=f"use one of {', '.join(AMAZON_2018_CATEGORIES)}",
            )
        note = "the same files were served from jmcauley.ucsd.edu/data/amazon_v2/ before"
        return (
            Archive(
                None,
                (f"{category}_5.json.gz",),
                url=f"{AMAZON_2018_URL}categoryFilesSmall/{category}_5.json.gz",
                kind="file",
                note=note,
            ),
            Archive(
                None,
                (f"meta_{category}.json.gz",),
                url=f"{AMAZON_2018_URL}metaFiles2/meta_{category}.json.gz",
                kind="file",
                note=note,
            ),
        )
    if name not in ARCHIVES:
        known = [*ARCHIVES, "amazon-2018"]
        raise DataError(f"no download known for dataset '{name}'", field="name", fix=f"use one of {', '.join(known)}")
    spec = ARCHIVES[name]
    return spec if isinstance(spec, tuple) else (spec,)


def _archive(name: str) -> Archive:
    return archives(name)[0]


def file_digest(path: Path, algorithm: str, chunk: int = 1 << 20) -> str:
    """Hex digest of a file with the :mod:`hashlib` ``algorithm`` (``"md5"``, ``"sha256"``), read in ``chunk``-byte
    blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fetch_cmd(name: str, category: str | None) -> str:
    return f"ragrec data fetch {name}" + (f" --category {category}" if category else "")


def verify(name: str, path: str | Path, *, category: str | None = None) -> Path:
    """Check that ``path`` holds dataset ``name``: required files present, known md5 sums match.

    Args:
        name: the dataset.
        path: its folder.
        category: ``amazon-2018`` only: the category whose files to check.

    Returns:
        ``path`` as a Path.

    Raises:
        DataError: naming the missing or altered file (with expected and actual md5).
    """
    path = Path(path)
    for spec in archives(name, category):
        for fname in spec.required:
            p = path / fname.rstrip("/")
            ok = (p.is_dir() and any(p.iterdir())) if fname.endswith("/") else p.is_file()
            if not ok:
                got = spec.filename or f"{name}.zip"
                raise DataError(
                    f"{name} {'folder' if fname.endswith('/') else 'file'} missing",
                    file=p,
                    fix=f"run `{_fetch_cmd(name, category)}` or put the files of the official {got} into {path}",
                )
        for fname, expected in spec.file_md5.items():
            got = file_digest(path / fname, "md5")
            if got != expected:
                raise DataError(
                    f"md5 {got} does not match the official {expected}; the file is altered or truncated",
                    file=path / fname,
                    fix=f"delete {path} and run `{_fetch_cmd(name, category)}`",
                )
    return path


def _offline_error(name: str, spec: Archive, url: str, dest_dir: Path, reason: object) -> DataError:
    official = spec.source(name)
    check = f"md5 {spec.zip_md5}" if spec.zip_md5 else "no checksum is published"
    target = dest_dir / name / spec.required[0].rstrip("/")
    inner = f" and the {' and '.join(spec.nested)} inside it" if spec.nested else ""
    place = f"save it as {target}" if spec.kind == "file" else f"unpack it{inner} so that {target} exists"
    return DataError(
        f"cannot download {url}: the machine appears to be offline, or the host is unreachable ({reason})",
        file=name,
        fix=f"on a machine with internet download {official} ({check}), {place}, then set RAGREC_DATA_DIR={dest_dir}"
        + (f"; {spec.note}" if spec.note else ""),
    )


def _download(url: str, dest: Path, name: str, spec: Archive, dest_dir: Path, timeout: float) -> None:
    """Stream ``url`` into ``dest``; offline / HTTP failures become DataError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:
            shutil.copyfileobj(resp, out, 1 << 20)
    except urllib.error.HTTPError as e:
        raise DataError(
            f"download of {url} failed with HTTP {e.code} {e.reason}",
            file=name,
            fix="check the URL (base_url) or download the file by hand" + (f"; {spec.note}" if spec.note else ""),
        ) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise _offline_error(name, spec, url, dest_dir, reason) from None


def _checked_download(
    name: str, spec: Archive, tmp: Path, base_url: str | None, dest_dir: Path, timeout: float
) -> Path:
    """Download ``spec`` into ``tmp`` and check its published md5 (or log size + sha256 where none exists)."""
    official = spec.source(name)
    filename = official.rsplit("/", 1)[-1]
    url = official if base_url is None else base_url.rstrip("/") + f"/{filename}"
    target = tmp / filename
    _download(url, target, name, spec, dest_dir, timeout)
    if spec.zip_md5 is not None:
        got = file_digest(target, "md5")
        if got != spec.zip_md5:
            raise DataError(
                f"md5 of the downloaded archive is {got}, expected {spec.zip_md5}; "
                "the download is corrupt or not the official file",
                file=url,
                fix=f"retry `ragrec data fetch {name}`, or download {official} by hand and check its md5",
            )
    else:
        log.warning(
            "%s: no checksum is published; downloaded %d bytes, sha256 %s (only the files it holds are checked)",
            url,
            target.stat().st_size,
            file_digest(target, "sha256"),
        )
    return target


def _inside(root: Path, member: str) -> bool:
    return (root / member).resolve().is_relative_to(root.resolve())


def _untar(path: Path, into: Path, name: str) -> None:
    """Unpack a tar (gzip or plain) into ``into``, refusing members that escape it or are links / devices."""
    try:
        with tarfile.open(path) as tf:
            members = tf.getmembers()
            for m in members:
                if not _inside(into, m.name) or not (m.isfile() or m.isdir()):
                    raise DataError(
                        f"archive member {m.name!r} escapes the target folder or is not a plain file",
                        file=path,
                        fix=f"delete it and fetch {name} again",
                    )
            if hasattr(tarfile, "data_filter"):
                tf.extractall(into, members=members, filter="data")
            else:  # pragma: no cover - Python without the extraction filters (checked above instead)
                tf.extractall(into, members=members)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"not a valid tar archive ({e})", file=path, fix=f"delete it and fetch {name} again") from None


def _extract(archive_path: Path, name: str, tmp: Path, spec: Archive | None = None) -> Path:
    """Unpack ``archive_path`` (zip or tar.gz) into ``tmp`` and return the folder holding the dataset's files."""
    spec = spec or _archive(name)
    tmp.mkdir(parents=True, exist_ok=True)
    if spec.kind == "tar.gz":
        _untar(archive_path, tmp, name)
    else:
        try:
            with zipfile.ZipFile(archive_path) as zf:
                for member in zf.namelist():  # refuse paths escaping the folder
                    if not _inside(tmp, member):
                        raise DataError(f"archive member {member!r} escapes the target folder", file=archive_path)
                zf.extractall(tmp)
        except zipfile.BadZipFile as e:
            raise DataError(
                f"not a valid zip file ({e})", file=archive_path, fix=f"delete it and fetch {name} again"
            ) from None
    inner = tmp / (spec.inner or name)
    folder = inner if inner.is_dir() else tmp
    for nested in spec.nested:
        if (folder / nested).is_file():
            _untar(folder / nested, folder, name)
            (folder / nested).unlink()
    return folder


def fetch(
    name: str,
    dest_dir: str | Path,
    *,
    base_url: str | None = None,
    timeout: float = TIMEOUT_S,
    force: bool = False,
    category: str | None = None,
) -> Path:
    """Download, verify and unpack the official files of ``name`` into ``<dest_dir>/<name>/``.

    Args:
        name: a dataset of :data:`ARCHIVES` or ``amazon-2018``.
        dest_dir: the data root (what RAGREC_DATA_DIR points at).
        base_url: a mirror holding the files under their official names (``file://`` works too); None: the
            official URLs.
        timeout: seconds before a silent connection counts as offline.
        force: replace an existing folder (``amazon-2018``: the category's files) even when it verifies.
        category: ``amazon-2018`` only: the category to fetch (e.g. ``Movies_and_TV``).

    Returns:
        The dataset folder ``<dest_dir>/<name>``.

    Raises:
        DataError: offline, HTTP error, md5 mismatch of a download or of an extracted file, files missing from an
            archive, or an existing folder that fails verification (without ``force``).
    """
    specs = archives(name, category)
    dest_dir = Path(dest_dir)
    final = dest_dir / name
    if name in SHARED_FOLDER:
        if not force and all((final / s.required[0]).is_file() for s in specs):
            return verify(name, final, category=category)
        final.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=final) as tmp_s:
            got = [_checked_download(name, s, Path(tmp_s), base_url, dest_dir, timeout) for s in specs]
            for spec, path in zip(specs, got):  # every download checked before any is placed
                os.replace(path, final / spec.required[0])
        return final
    if final.exists() and not force:
        return verify(name, final, category=category)
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=dest_dir) as tmp_s:
        tmp = Path(tmp_s)
        if len(specs) == 1 and specs[0].kind != "file":
            extracted = _extract(
                _checked_download(name, specs[0], tmp, base_url, dest_dir, timeout), name, tmp / "x", specs[0]
            )
        else:
            extracted = tmp / "x"
            extracted.mkdir()
            for spec in specs:
                path = _checked_download(name, spec, tmp, base_url, dest_dir, timeout)
                os.replace(path, extracted / spec.required[0])
        verify(name, extracted, category=category)
        if final.exists():
            os.replace(final, tmp / "old")
        os.replace(extracted, final)
    return final
