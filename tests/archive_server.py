"""A local stand-in for the dataset servers, and small archives laid out like the real ones.

`ArchiveServer` listens on 127.0.0.1 (an ephemeral port) in a thread:
- GET /files/<name>: the archive, honouring `Range: bytes=N-`; names in `drop_once` are cut
  off after half their bytes on the first request (the connection closes mid-body);
- the Cityscapes site: GET/POST /login (302 on the right credentials, with a cookie),
  /md5-sum/?packageID=N and /file-handling/?packageID=N, both only with the cookie.
Every request is recorded (method, path, Range header) for the tests to inspect.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import scipy.io
from PIL import Image

USERNAME, PASSWORD = "alice@example.org", "s3cret-pw"
COOKIE = "csrftoken=ok; sessionid=alice"


class ArchiveServer:
    def __init__(self, files: dict[str, bytes], cityscapes_packages: dict[int, str] | None = None):
        self.files = dict(files)
        self.packages = cityscapes_packages or {}
        self.drop_once: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _record(self):
                server.requests.append((self.command, self.path, self.headers.get("Range")))

            def _send_file(self, name: str):
                data = server.files[name]
                start = 0
                range_header = self.headers.get("Range")
                if range_header:
                    start = int(range_header.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in server.drop_once:
                    server.drop_once.discard(name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def _logged_in(self) -> bool:
                return "sessionid=alice" in (self.headers.get("Cookie") or "")

            def do_GET(self):
                self._record()
                url = urlparse(self.path)
                if url.path.startswith("/files/") and url.path[7:] in server.files:
                    return self._send_file(url.path[7:])
                if url.path == "/login":
                    return self._reply(200, b"<form>login</form>")
                if url.path in ("/md5-sum/", "/file-handling/"):
                    if not self._logged_in():
                        return self._reply(302, b"")
                    name = server.packages[int(parse_qs(url.query)["packageID"][0])]
                    if url.path == "/md5-sum/":
                        digest = hashlib.md5(server.files[name]).hexdigest()
                        return self._reply(200, f"{digest}  {name}\n".encode())
                    return self._send_file(name)
                return self._reply(404, b"not found")

            def do_HEAD(self):
                self._record()
                self._reply(200 if urlparse(self.path).path[7:] in server.files else 404, b"")

            def do_POST(self):
                self._record()
                length = int(self.headers.get("Content-Length", 0))
                form = parse_qs(self.rfile.read(length).decode())
                if form.get("username") == [USERNAME] and form.get("password") == [PASSWORD]:
                    self.send_response(302)
                    self.send_header("Location", "/")
                    self.send_header("Set-Cookie", "sessionid=alice; Path=/")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._reply(200, b"<form>bad credentials</form>")

            def _reply(self, status: int, body: bytes):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


# --- archives -------------------------------------------------------------------------------

def _png(array: np.ndarray, palette: bool = False) -> bytes:
    """PNG bytes; palette=True writes indices with a colour palette, as VOC's masks are."""
    array = np.ascontiguousarray(array.astype(np.uint8))
    if palette:
        image = Image.frombytes("P", (array.shape[1], array.shape[0]), array.tobytes())
        image.putpalette(np.random.default_rng(0).integers(0, 255, 768).tolist())
    else:
        image = Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpg(rng, height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def _label(rng, height, width, num_classes) -> np.ndarray:
    label = rng.integers(0, num_classes, (height, width))
    label[0, :] = 255
    return label


def _tar(members: dict[str, bytes], compression: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


VOC_TRAIN = ["2007_000032", "2007_000039", "2008_000008", "2008_000015"]
VOC_VAL = ["2007_000033", "2007_000042"]
SBD_TRAIN = ["2008_000015", "2008_000019", "2009_000001"]  # one overlaps VOC train
SBD_VAL = ["2009_000002", "2007_000042"]  # one is VOC val: must not enter train_aug
EXPECTED_TRAIN_AUG = sorted((set(SBD_TRAIN) | set(SBD_VAL) | set(VOC_TRAIN)) - set(VOC_VAL))


def voc_archives(seed: int = 0, size=(20, 24)) -> tuple[bytes, bytes, dict]:
    """(VOCtrainval tar, SBD benchmark.tgz, {image id: expected SegmentationClassAug array})."""
    rng = np.random.default_rng(seed)
    height, width = size
    every = sorted(set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL))
    voc, sbd, expected = {}, {}, {}
    prefix = "VOCdevkit/VOC2012/"
    for image_id in every:
        voc[f"{prefix}JPEGImages/{image_id}.jpg"] = _jpg(rng, height, width)
    for image_id in SBD_TRAIN + SBD_VAL:
        mask = rng.integers(0, 21, (height, width)).astype(np.uint8)
        mat = io.BytesIO()
        scipy.io.savemat(mat, {"GTcls": {"Segmentation": mask, "Boundaries": np.zeros(1),
                                         "CategoriesPresent": np.unique(mask)}})
        sbd[f"benchmark_RELEASE/dataset/cls/{image_id}.mat"] = mat.getvalue()
        expected[image_id] = mask
    for image_id in VOC_TRAIN + VOC_VAL:  # VOC's own masks win over SBD's
        mask = _label(rng, height, width, 21)
        voc[f"{prefix}SegmentationClass/{image_id}.png"] = _png(mask, palette=True)
        expected[image_id] = mask.astype(np.uint8)
    voc[f"{prefix}ImageSets/Segmentation/train.txt"] = "\n".join(VOC_TRAIN).encode()
    voc[f"{prefix}ImageSets/Segmentation/val.txt"] = "\n".join(VOC_VAL).encode()
    voc[f"{prefix}Annotations/{VOC_TRAIN[0]}.xml"] = b"<annotation/>"
    sbd["benchmark_RELEASE/dataset/train.txt"] = "\n".join(SBD_TRAIN).encode()
    sbd["benchmark_RELEASE/dataset/val.txt"] = "\n".join(SBD_VAL).encode()
    return _tar(voc), _tar(sbd, "gz"), expected


CITYSCAPES_SPLITS = {"train": ["aachen_000000_000019", "aachen_000001_000019",
                               "bremen_000000_000019"],
                     "val": ["frankfurt_000000_000294", "lindau_000000_000019"],
                     "test": ["berlin_000000_000019"]}


def cityscapes_archives(seed: int = 0, size=(16, 32)) -> tuple[bytes, bytes, dict]:
    """(gtFine zip, leftImg8bit zip, {stem: labelIds array}) in the official layout."""
    rng = np.random.default_rng(seed)
    height, width = size
    gt, images, label_ids = {}, {}, {}
    for split, stems in CITYSCAPES_SPLITS.items():
        for stem in stems:
            city = stem.split("_")[0]
            ids = rng.integers(0, 34, (height, width)).astype(np.uint8)  # official ids 0..33
            label_ids[stem] = ids
            base = f"gtFine/{split}/{city}/{stem}_gtFine_"
            gt[base + "labelIds.png"] = _png(ids)
            gt[base + "color.png"] = _png(ids)
            gt[base + "instanceIds.png"] = _png(ids)
            gt[base + "polygons.json"] = json.dumps({"objects": []}).encode()
            images[f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png"] = _png(
                rng.integers(0, 255, (height, width, 3)))
    gt["license.txt"] = b"cityscapes license"
    return _zip(gt), _zip(images), label_ids


def evil_tar() -> bytes:
    return _tar({"VOCdevkit/ok.txt": b"fine", "../escaped.txt": b"evil"})


def evil_zip() -> bytes:
    return _zip({"gtFine/ok.txt": b"fine", "/tmp/absolute.txt": b"evil"})
