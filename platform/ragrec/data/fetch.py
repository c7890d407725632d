"""Explicit download + verification of the official MovieLens archives (``ragrec data fetch NAME``).

Nothing here runs implicitly: loaders never download. :func:`fetch` downloads the GroupLens zip
with ``urllib``, checks its md5, extracts it into a temporary folder next to the destination and
renames that folder into place, so ``<dest_dir>/<name>/`` is either complete or absent.
:func:`verify` checks an existing folder (required files present, known md5 sums match).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError

BASE_URL = "https://files.grouplens.org/datasets/movielens/"
TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Archive:
    """An official dataset archive: zip md5, the files a loader needs, and md5s of known files."""

    zip_md5: str
    required: tuple[str, ...]
    file_md5: dict[str, str] = field(default_factory=dict)


ARCHIVES: dict[str, Archive] = {
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
}


def _archive(name: str) -> Archive:
    if name not in ARCHIVES:
        raise DataError(
            f"no download known for dataset '{name}'", field="name", fix=f"use one of {', '.join(ARCHIVES)}"
        )
    return ARCHIVES[name]


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    """Hex md5 of a file, read in ``chunk``-byte blocks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(name: str, path: str | Path) -> Path:
    """Check that ``path`` holds dataset ``name``: required files present, known md5 sums match.

    Returns:
        ``path`` as a Path.

    Raises:
        DataError: naming the missing or altered file (with expected and actual md5).
    """
    spec = _archive(name)
    path = Path(path)
    for fname in spec.required:
        if not (path / fname).is_file():
            raise DataError(
                f"{name} file missing",
                file=path / fname,
                fix=f"run `ragrec data fetch {name}` or unzip the official {name}.zip into {path.parent}",
            )
    for fname, expected in spec.file_md5.items():
        got = md5sum(path / fname)
        if got != expected:
            raise DataError(
                f"md5 {got} does not match the official {expected}; the file is altered or truncated",
                file=path / fname,
                fix=f"delete {path} and run `ragrec data fetch {name}`",
            )
    return path


def _offline_error(name: str, url: str, dest_dir: Path, reason: object) -> DataError:
    return DataError(
        f"cannot download {url}: the machine appears to be offline ({reason})",
        file=name,
        fix=(
            f"on a machine with internet download {BASE_URL}{name}.zip (md5 {_archive(name).zip_md5}), "
            f"unzip it so that "
            f"{dest_dir / name / _archive(name).required[0]} exists, then set RAGREC_DATA_DIR={dest_dir}"
        ),
    )


def _download(url: str, dest: Path, name: str, dest_dir: Path, timeout: float) -> None:
    """Stream ``url`` into ``dest``; offline / HTTP failures become DataError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:
            shutil.copyfileobj(resp, out, 1 << 20)
    except urllib.error.HTTPError as e:
        raise DataError(
            f"download of {url} failed with HTTP {e.code} {e.reason}",
            file=name,
            fix="check the URL (base_url) or download the archive by hand",
        ) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise _offline_error(name, url, dest_dir, reason) from None


def _extract(zip_path: Path, name: str, tmp: Path) -> Path:
    """Extract ``zip_path`` into ``tmp`` and return the folder holding the dataset's files."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for member in zf.namelist():  # refuse paths escaping the folder
                if not (tmp / member).resolve().is_relative_to(tmp.resolve()):
                    raise DataError(f"archive member {member!r} escapes the target folder", file=zip_path)
            zf.extractall(tmp)
    except zipfile.BadZipFile as e:
        raise DataError(f"not a valid zip file ({e})", file=zip_path, fix=f"delete it and fetch {name} again") from None
    inner = tmp / name
    return inner if inner.is_dir() else tmp


def fetch(
    name: str,
    dest_dir: str | Path,
    *,
    base_url: str = BASE_URL,
    timeout: float = TIMEOUT_S,
    force: bool = False,
) -> Path:
    """Download, verify and extract the official archive of ``name`` into ``<dest_dir>/<name>/``.

    Args:
        name: ``"ml-100k"`` or ``"ml-1m"``.
        dest_dir: the data root (what RAGREC_DATA_DIR points at).
        base_url: where ``<name>.zip`` lives (default: files.grouplens.org; ``file://`` works too).
        timeout: seconds before a silent connection counts as offline.
        force: replace an existing folder even when it verifies.

    Returns:
        The dataset folder ``<dest_dir>/<name>``.

    Raises:
        DataError: offline, HTTP error, md5 mismatch of the zip or of an extracted file, or an
            existing folder that fails verification (without ``force``).
    """
    spec = _archive(name)
    dest_dir = Path(dest_dir)
    final = dest_dir / name
    if final.exists() and not force:
        return verify(name, final)
    dest_dir.mkdir(parents=True, exist_ok=True)
    url = base_url.rstrip("/") + f"/{name}.zip"
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=dest_dir) as tmp_s:
        tmp = Path(tmp_s)
        zip_path = tmp / f"{name}.zip"
        _download(url, zip_path, name, dest_dir, timeout)
        got = md5sum(zip_path)
        if got != spec.zip_md5:
            raise DataError(
                f"md5 of the downloaded archive is {got}, expected {spec.zip_md5}; "
                "the download is corrupt or not the official file",
                file=url,
                fix=f"retry `ragrec data fetch {name}`, or download {BASE_URL}{name}.zip by hand and check its md5",
            )
        extracted = verify(name, _extract(zip_path, name, tmp / "x"))
        if final.exists():
            old = tmp / "old"
            os.replace(final, old)
        os.replace(extracted, final)
    return final
