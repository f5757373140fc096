"""One ComfyUI server seen through its HTTP API and websocket (urllib + websockets' sync client).

Endpoints (ComfyUI server.py): GET /queue, POST /upload/image (multipart image, type, subfolder),
POST /prompt, GET /history/<prompt_id>, GET /view, POST /interrupt, POST /queue, GET /ws?clientId=.
Connection failures raise `ServerUnavailable` (the caller retries the job elsewhere); answers that
reject the job raise `JobFailed` with ComfyUI's message.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import logging
import mimetypes
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Callable

from ..errors import MissingDependencyError
from .errors import BatchError, JobFailed, ServerUnavailable
from .outcome import rejection_message

log = logging.getLogger(__name__)

UNAVAILABLE_STATUS = frozenset({502, 503, 504})
DEFAULT_MAX_DOWNLOAD = 4 << 30  # bytes; a 512 px H.264 clip of an hour is well under 1 GiB
DEFAULT_JOB_TIMEOUT = 6 * 3600.0  # seconds from queueing to the end of a prompt
FINISH_EVENTS = frozenset({"execution_success", "execution_error", "execution_interrupted"})


def require_websockets() -> None:
    """Raise `MissingDependencyError` naming the package when `websockets` is not installed."""
    try:
        import websockets.sync.client  # noqa: F401
    except ImportError as err:
        raise MissingDependencyError("the batch client needs the 'websockets' package: "
                                     "pip install 'comfyui-emo[batch]' (or pip install websockets)") from err


def normalize_url(url: str) -> str:
    """`host:port` -> `http://host:port`; no trailing slash."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"server URL {url!r} must look like http://host:port")
    return url


class ComfyServer:
    """HTTP + websocket client of one ComfyUI server, used by one thread at a time."""

    def __init__(self, url: str, *, timeout: float = 30.0, upload_timeout: float = 300.0,
                 poll_interval: float = 5.0, history_timeout: float = 30.0,
                 job_timeout: float = DEFAULT_JOB_TIMEOUT, max_download: int = DEFAULT_MAX_DOWNLOAD):
        self.url = normalize_url(url)
        scheme, rest = self.url.split("://", 1)
        self.ws_url = f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws"
        self.client_id = uuid.uuid4().hex
        self.timeout, self.upload_timeout = timeout, upload_timeout
        self.poll_interval, self.history_timeout = poll_interval, history_timeout
        self.job_timeout, self.max_download = job_timeout, max_download
        self.uploaded: dict[str, str] = {}  # content sha256 -> name in the server's input folder
        self.current_prompt: str | None = None
        self._ws = None

    def __repr__(self) -> str:
        return f"ComfyServer({self.url!r})"

    # ---- HTTP ----------------------------------------------------------------------------------

    def _open(self, method: str, path: str, *, query: dict | None = None, body: bytes | None = None,
              headers: dict | None = None, timeout: float | None = None):
        url = self.url + path + (("?" + urllib.parse.urlencode(query)) if query else "")
        req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
        try:
            return urllib.request.urlopen(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as err:
            if err.code in UNAVAILABLE_STATUS:
                raise ServerUnavailable(f"{self.url} answered HTTP {err.code} to {method} {path}") from err
            raise
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", err)
            raise ServerUnavailable(f"{self.url} is unreachable ({method} {path}: {reason})") from err

    def _json(self, method: str, path: str, **kwargs):
        try:
            with self._open(method, path, **kwargs) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:300].decode("utf-8", "replace")
            raise BatchError(f"{self.url} answered HTTP {err.code} to {method} {path}: {detail}") from err
        except ServerUnavailable:
            raise
        except (OSError, http.client.HTTPException) as err:
            raise ServerUnavailable(f"{self.url} dropped the answer to {method} {path}: {err}") from err
        try:
            return json.loads(raw) if raw else None
        except json.JSONDecodeError as err:
            raise BatchError(f"{self.url} answered {method} {path} with non-JSON {raw[:100]!r}") from err

    def queue(self) -> dict:
        """GET /queue: `{"queue_running": [[number, prompt_id, ...]], "queue_pending": [...]}`."""
        return self._json("GET", "/queue")

    def upload(self, path: Path, name: str, subfolder: str = "") -> str:
        """Upload a file to the input folder; return the value a LoadImage/LoadAudio input takes.

        /upload/image stores any file. A file of the same name and content is kept as it is; a different
        one gets a new name, so the returned name, not `name`, is what the workflow must use.
        """
        boundary = uuid.uuid4().hex
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        fields = [("type", "input"), ("subfolder", subfolder)]
        body = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields)
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                 f"Content-Type: {ctype}\r\n\r\n").encode() + Path(path).read_bytes()
        body += f"\r\n--{boundary}--\r\n".encode()
        answer = self._json("POST", "/upload/image", body=body, timeout=self.upload_timeout,
                            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if not isinstance(answer, dict) or "name" not in answer:
            raise BatchError(f"{self.url} answered the upload of {path} with {answer!r}")
        sub = answer.get("subfolder") or ""
        return f"{sub}/{answer['name']}" if sub else answer["name"]

    def queue_prompt(self, prompt: dict) -> str:
        """POST /prompt; return the prompt id. A rejected prompt raises `JobFailed` with ComfyUI's reasons."""
        body = json.dumps({"prompt": prompt, "client_id": self.client_id}).encode()
        try:
            with self._open("POST", "/prompt", body=body, headers={"Content-Type": "application/json"}) as resp:
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                detail = json.loads(raw)
            except json.JSONDecodeError:
                detail = raw[:300].decode("utf-8", "replace")
            raise JobFailed(rejection_message(detail)) from err
        except ServerUnavailable:
            raise
        except (OSError, http.client.HTTPException) as err:
            raise ServerUnavailable(f"{self.url} dropped the answer to POST /prompt: {err}") from err
        if not isinstance(answer, dict) or "prompt_id" not in answer:
            raise BatchError(f"{self.url} answered POST /prompt with {answer!r}")
        return answer["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        """GET /history/<id>: the entry, or None while the prompt has not finished."""
        answer = self._json("GET", f"/history/{urllib.parse.quote(prompt_id)}")
        return (answer or {}).get(prompt_id)

    def download(self, ref: dict, dest: Path) -> None:
        """GET /view of a saved file into `dest`, through `dest.partial` so no half file remains.

        The server is untrusted: more than `max_download` bytes (announced or received) stops the download.
        """
        query = {"filename": ref["filename"], "subfolder": ref.get("subfolder", ""), "type": ref.get("type", "output")}
        partial = dest.with_name(dest.name + ".partial")
        try:
            resp = self._open("GET", "/view", query=query, timeout=self.upload_timeout)
        except urllib.error.HTTPError as err:
            raise BatchError(f"{self.url} answered HTTP {err.code} to GET /view of {ref['filename']}") from err
        try:
            with resp:
                self._check_size(resp.headers.get("Content-Length"), ref["filename"])
                with open(partial, "wb") as f:
                    size = 0
                    while chunk := self._read_chunk(resp, ref["filename"]):
                        size += len(chunk)
                        self._check_size(size, ref["filename"])
                        f.write(chunk)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, dest)

    def _read_chunk(self, resp, filename: str) -> bytes:
        try:
            return resp.read(1 << 20)
        except (OSError, http.client.HTTPException) as err:
            raise ServerUnavailable(f"download of {filename} from {self.url} broke off: {err}") from err

    def _check_size(self, size, filename: str) -> None:
        try:
            size = int(size)
        except (TypeError, ValueError):
            return  # no Content-Length: the running count decides
        if size > self.max_download:
            raise BatchError(f"{self.url} sends more than {self.max_download} bytes for {filename} "
                             f"({size}); nothing was kept (raise --max-download-mb if that is a real video)")

    def cancel(self, prompt_id: str) -> None:
        """Drop the prompt from the queue and interrupt it if it runs (best effort, for Ctrl-C)."""
        for path, payload in (("/queue", {"delete": [prompt_id]}), ("/interrupt", {"prompt_id": prompt_id})):
            try:
                with self._open("POST", path, body=json.dumps(payload).encode(), timeout=5,
                                headers={"Content-Type": "application/json"}):
                    pass
            except (BatchError, urllib.error.HTTPError) as err:
                log.debug("cancel of %s on %s: %s", prompt_id, self.url, err)

    # ---- websocket -----------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the websocket (ComfyUI sends a prompt's events to the client id that queued it)."""
        require_websockets()
        from websockets.sync.client import connect
        self.close()
        try:
            conn = connect(f"{self.ws_url}?clientId={self.client_id}", open_timeout=self.timeout, max_size=None)
        except Exception as err:  # OSError, TimeoutError or a websockets handshake error
            raise ServerUnavailable(f"websocket {self.ws_url} cannot be opened: {err}") from err
        # Held across jobs, so entered through an ExitStack (websockets >= 17.1 wants a context manager).
        self._ws_stack = contextlib.ExitStack()
        self._ws = self._ws_stack.enter_context(conn)

    def ensure_connected(self) -> None:
        if self._ws is None:
            self.connect()

    def close(self) -> None:
        if self._ws is not None:
            try:
                self._ws_stack.close()
            except Exception as err:  # closing a broken socket; nothing left to do with it
                log.debug("closing websocket of %s: %s", self.url, err)
            self._ws = None

    def wait(self, prompt_id: str, on_message: Callable[[dict], None] = lambda m: None) -> dict:
        """Follow the prompt over the websocket until it ends; return its history entry.

        With no message for `poll_interval` seconds the queue and history are checked, so a missed
        event or a server that lost the prompt (restart) never leaves the job waiting forever. After
        `job_timeout` seconds in all (however chatty the server is) the prompt is cancelled and the job
        fails.
        """
        from websockets.exceptions import ConnectionClosed
        reconnects = 0
        deadline = time.monotonic() + self.job_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.cancel(prompt_id)
                raise JobFailed(f"prompt {prompt_id} on {self.url} did not finish within {self.job_timeout:.0f} s; "
                                "it was cancelled (raise --job-timeout for longer renders)")
            self.ensure_connected()
            try:
                raw = self._ws.recv(timeout=min(self.poll_interval, left))
            except TimeoutError:
                entry = self._finished_entry(prompt_id)
                if entry is not None:
                    return entry
                continue
            except ConnectionClosed as err:
                self.close()
                reconnects += 1
                if reconnects > 3:
                    raise ServerUnavailable(f"websocket of {self.url} keeps closing: {err}") from err
                log.debug("websocket of %s closed (%s); reconnecting", self.url, err)
                continue
            message = _json_message(raw)
            if message is None:
                continue
            on_message(message)
            data = message.get("data") if isinstance(message.get("data"), dict) else {}
            if data.get("prompt_id") != prompt_id:
                continue
            kind = message.get("type")
            if kind in FINISH_EVENTS or (kind == "executing" and data.get("node") is None):
                return self._await_history(prompt_id)

    def _finished_entry(self, prompt_id: str) -> dict | None:
        # The queue is read before the history: ComfyUI moves a prompt from one to the other under one
        # lock, so "in neither" cannot be a race and means the server lost it.
        q = self.queue() or {}
        ids = {item[1] for key in ("queue_running", "queue_pending") for item in q.get(key, [])
               if isinstance(item, list) and len(item) > 1}
        if prompt_id in ids:
            return None
        entry = self.history(prompt_id)
        if entry is None:
            raise ServerUnavailable(f"prompt {prompt_id} is neither queued nor in the history of {self.url}; "
                                    "the server was probably restarted")
        return entry

    def _await_history(self, prompt_id: str) -> dict:
        # execution_success is sent before the history entry is written; `executing` with node None after.
        deadline, pause = time.monotonic() + self.history_timeout, 0.02
        while True:
            entry = self.history(prompt_id)
            if entry is not None:
                return entry
            if time.monotonic() > deadline:
                raise BatchError(f"prompt {prompt_id} ended but {self.url} has no history entry for it "
                                 f"after {self.history_timeout:.0f} s")
            time.sleep(pause)
            pause = min(pause * 2, 0.5)


def _json_message(raw) -> dict | None:
    """A websocket text message as a dict; None for previews (binary), non-JSON and non-object messages."""
    if isinstance(raw, bytes):  # preview images: 4-byte event type + image
        return None
    try:
        message = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return message if isinstance(message, dict) else None
