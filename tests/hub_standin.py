"""A stand-in for the Hugging Face hub on 127.0.0.1: serves local folders in the hub's URL layout.

Enough of the hub's API for `huggingface_hub.snapshot_download`: the revision info with its file
list, and `resolve/` with the metadata headers, ETags and byte ranges. It can cut a file's downloads
short, to test that fetching resumes it.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _git_blob_sha1(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class HubStandIn:
    """Serve `repos` ({"owner/name": folder}) on a loopback port until `close()`."""

    def __init__(self, repos: dict[str, Path]):
        self.repos = {repo: Path(folder) for repo, folder in repos.items()}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        # file name -> (offset in the file where the connection drops, how many GETs to cut that way)
        self.cut_after: dict[str, tuple[int, int]] = {}
        self.tokens_seen: list[str | None] = []
        # file name -> offset where a GET stops sending and hangs until `release` is set (a stalled link)
        self.stall_at: dict[str, int] = {}
        self.release = threading.Event()
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                standin._handle(self, body=False)

            def do_GET(self):
                standin._handle(self, body=True)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def _files(self, repo: str) -> list[Path]:
        root = self.repos[repo]
        return sorted(p for p in root.rglob("*") if p.is_file())

    def _handle(self, h: http.server.BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(h.path).path)
        self.requests.append((h.command, path, h.headers.get("Range")))
        self.tokens_seen.append(h.headers.get("Authorization"))
        for repo, root in self.repos.items():
            if path == f"/api/models/{repo}" or path.startswith(f"/api/models/{repo}/revision/"):
                siblings = []
                for p in self._files(repo):
                    entry = {"rfilename": p.relative_to(root).as_posix(), "size": p.stat().st_size,
                             "blobId": _git_blob_sha1(p)}
                    if p.suffix == ".safetensors":
                        entry["lfs"] = {"sha256": _sha256(p), "size": p.stat().st_size, "pointerSize": 130}
                    siblings.append(entry)
                return self._send(h, 200, json.dumps({"id": repo, "modelId": repo, "sha": COMMIT,
                                                      "siblings": siblings}).encode(), body,
                                  {"Content-Type": "application/json"})
            if path.startswith(f"/api/models/{repo}/tree/"):
                entries = []
                for p in self._files(repo):
                    data = p.read_bytes()
                    entry = {"type": "file", "path": p.relative_to(root).as_posix(), "size": len(data),
                             "oid": hashlib.sha1(data).hexdigest()}
                    if p.suffix == ".safetensors":
                        entry["lfs"] = {"oid": _sha256(p), "size": len(data), "pointerSize": 130}
                    entries.append(entry)
                return self._send(h, 200, json.dumps(entries).encode(), body, {"Content-Type": "application/json"})
            prefix = f"/{repo}/resolve/"
            if path.startswith(prefix):
                _revision, _, name = path[len(prefix):].partition("/")
                file = root / name
                if not file.is_file():
                    return self._send(h, 404, b"", body, {"X-Error-Code": "EntryNotFound"})
                return self._send_file(h, file, name, body)
        self._send(h, 404, b"", body, {"X-Error-Code": "RepoNotFound"})

    def _send(self, h, status: int, data: bytes, body: bool, headers: dict[str, str]) -> None:
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    def _send_file(self, h, file: Path, name: str, body: bool) -> None:
        data = file.read_bytes()
        etag = _sha256(file) if file.suffix == ".safetensors" else hashlib.sha1(data).hexdigest()
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if file.suffix == ".safetensors":
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(len(data))
        start = 0
        byte_range = h.headers.get("Range")
        if body and byte_range and byte_range.startswith("bytes="):
            start = int(byte_range[len("bytes="):].split("-")[0])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        status = 206 if start else 200
        chunk = data[start:]
        if body and name in self.stall_at:
            h.send_response(status)
            for key, value in headers.items():
                h.send_header(key, value)
            h.send_header("Content-Length", str(len(chunk)))
            h.end_headers()
            h.wfile.write(chunk[: max(0, self.stall_at.pop(name) - start)])
            h.wfile.flush()
            self.release.wait(60)
            h.close_connection = True
            return
        if body and self.cut_after.get(name, (0, 0))[1] > 0:
            # Promise the whole file, send part of it, and drop the connection.
            sent, times = self.cut_after[name]
            self.cut_after[name] = (sent, times - 1)
            h.send_response(status)
            for key, value in headers.items():
                h.send_header(key, value)
            h.send_header("Content-Length", str(len(chunk)))
            h.end_headers()
            h.wfile.write(chunk[: max(0, sent - start)])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return
        self._send(h, status, chunk, body, headers)
