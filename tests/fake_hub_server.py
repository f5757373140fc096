"""A local stand-in for the few Hugging Face hub endpoints huggingface_hub's hf_hub_download uses, and for a
PyPI simple index, so `emo-models fetch` is tested without the internet (point HF_ENDPOINT at `url`).

Hub, as huggingface.co answers (huggingface_hub.file_download.get_hf_file_metadata / http_get):
- HEAD|GET /<repo_id>/resolve/<revision>/<path>: a small file answers 200 with `ETag` = its git blob hash; an
  LFS file answers 302 to /cdn/<sha256> with `X-Linked-Etag` (its SHA-256) and `X-Linked-Size`. Both carry
  `X-Repo-Commit`. An unknown file is 404 with `X-Error-Code: EntryNotFound`.
- GET /cdn/<sha256> (on a second port, `cdn_url`): the bytes; a `Range: bytes=N-` request gets 206 with the rest.
Faults: `cut_once[filename] = n` sends the full Content-Length but only n bytes on the next GET, then closes the
connection; `tamper[filename] = data` serves `data` while the headers keep the real digest.
PyPI: GET /simple/<project>/ lists the wheels added with `add_wheel`, with `#sha256=` fragments; GET
/files/<name> serves them.
"""
from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

LFS_THRESHOLD = 1024  # files this large or larger are served as LFS files (the hub's rule is about 10 MB)


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


class FakeHub:
    def __init__(self):
        self.files: dict[tuple[str, str], bytes] = {}
        self.wheels: dict[str, bytes] = {}
        self.cut_once: dict[str, int] = {}
        self.tamper: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._lock = threading.Lock()
        # The hub and its "CDN" on two ports (two origins), as LFS files redirect off the hub's host.
        self.servers = [ThreadingHTTPServer(("127.0.0.1", 0), self._handler()) for _ in range(2)]
        self.url, self.cdn_url = (f"http://127.0.0.1:{s.server_address[1]}" for s in self.servers)
        self.threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
                        for s in self.servers]

    def add(self, repo_id: str, filename: str, data: bytes) -> None:
        self.files[(repo_id, filename)] = data

    def add_wheel(self, name: str, data: bytes) -> None:
        self.wheels[name] = data

    def commit(self, repo_id: str) -> str:
        return hashlib.sha1(repo_id.encode()).hexdigest()

    def gets(self, suffix: str = "") -> list[tuple[str, str, str | None]]:
        """The GET requests whose path ends with `suffix`."""
        with self._lock:
            return [r for r in self.requests if r[0] == "GET" and r[1].endswith(suffix)]

    def __enter__(self) -> FakeHub:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()

    def _lookup(self, path: str):
        """(repo_id, filename) of a resolve URL, or None."""
        parts = unquote(path).lstrip("/").split("/")
        if "resolve" not in parts:
            return None
        i = parts.index("resolve")
        return "/".join(parts[:i]), "/".join(parts[i + 2:])

    def _by_sha(self, sha: str):
        for (repo_id, filename), data in self.files.items():
            if hashlib.sha256(data).hexdigest() == sha:
                return repo_id, filename, data
        return None

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                with hub._lock:
                    hub.requests.append((self.command, self.path, self.headers.get("Range")))
                if self.path.startswith("/simple/") or self.path.startswith("/files/"):
                    return self._pypi(body)
                if self.path.startswith("/cdn/"):
                    found = hub._by_sha(self.path.rsplit("/", 1)[-1])
                    if found is None:
                        return self._empty(404)
                    return self._bytes(found[1], found[2], body)
                key = hub._lookup(self.path)
                if key is None or key not in hub.files:
                    return self._empty(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": hub.commit(
                        key[0] if key else "")})
                data = hub.files[key]
                headers = {"X-Repo-Commit": hub.commit(key[0])}
                if len(data) >= LFS_THRESHOLD:
                    sha = hashlib.sha256(data).hexdigest()
                    headers.update({"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                                    "ETag": f'"{sha}"', "Location": f"{hub.cdn_url}/cdn/{sha}"})
                    return self._empty(302, headers)
                headers["ETag"] = f'"{git_blob_sha1(data)}"'
                return self._bytes(key[1], data, body, headers)

            def _bytes(self, filename: str, data: bytes, body: bool, headers: dict | None = None):
                served = hub.tamper.get(filename, data)
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[len("bytes="):].split("-")[0])
                self.send_response(206 if start else 200)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(served) - 1}/{len(served)}")
                self.send_header("Content-Length", str(len(served) - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if not body:
                    return
                cut = hub.cut_once.pop(filename, None) if self.command == "GET" else None
                if cut is not None:
                    self.wfile.write(served[start:start + cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(served[start:])

            def _pypi(self, body: bool):
                if self.path.startswith("/files/"):
                    name = unquote(self.path[len("/files/"):])
                    if name not in hub.wheels:
                        return self._empty(404)
                    return self._bytes(name, hub.wheels[name], body)
                project = self.path[len("/simple/"):].strip("/")
                links = "".join(f'<a href="{hub.url}/files/{n}#sha256={hashlib.sha256(d).hexdigest()}">{n}</a>\n'
                                for n, d in hub.wheels.items() if n.split("-")[0].lower() == project.lower())
                page = f"<!DOCTYPE html><html><body>\n{links}</body></html>".encode()
                self.send_response(200 if links else 404)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                if body:
                    self.wfile.write(page)

            def _empty(self, status: int, headers: dict | None = None):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler
