"""A small stand-in for a ComfyUI server, for the batch client's tests.

It speaks the endpoints the client uses on ONE port, like ComfyUI: GET /queue, POST /upload/image,
POST /prompt, GET /history/<id>, GET /view, POST /interrupt, POST /queue and the websocket /ws?clientId=.
A front thread accepts connections and hands `GET /ws` to a websockets sync server and everything else to
an http.server ThreadingHTTPServer (routes in fake_comfy_http.py). Prompts run one at a time on an
executor thread that sends the events ComfyUI sends, in its order, to the client id that queued the prompt.

Shapes are those of ComfyUI a125cd84 (server.py, execution.py, main.py, comfy_extras/nodes_video.py,
comfy_api/latest/_ui.py). `RECORDED` (tests/fixtures/comfyui_recorded.json) holds answers and websocket
event orders captured from a real CPU run of that commit; the tests check the fake against them. Per
prompt: execution_start, execution_cached, per node progress_state + executing (+ progress, emo.progress
and a binary preview in the sampler, executed from SaveVideo) + progress_state, then execution_success or
execution_error; after the history entry is written, status and executing with node None.

What it records, for the tests to inspect: `prompts` (every POST /prompt body), `uploads` (every
/upload/image request with its form fields and whether the file was written), `views` (GET /view
queries), `executed` / `cached` (node ids per prompt id: a node is cached, like in ComfyUI's classic
cache, when its input signature equals one from the previous prompt), `interrupts` and `deleted`.
"""
from __future__ import annotations

import hashlib
import json
import queue
import socket
import struct
import threading
import time
import urllib.parse
import uuid
from http.server import ThreadingHTTPServer
from pathlib import Path

from fake_comfy_http import handler_class
from websockets.sync.server import serve

NO_FACE = b"NOFACE"  # a portrait whose bytes contain this fails in the face locator, like a photo with no face
NO_FACE_MESSAGE = "no face found in the reference image (64x64); draw a face mask and connect it to 'face_mask'"

# Answers and event orders recorded from a real ComfyUI; ids, numbers and paths differ per run.
RECORDED = json.loads((Path(__file__).resolve().parent / "fixtures" / "comfyui_recorded.json").read_text())


def _topological(prompt: dict) -> list[str]:
    order: list[str] = []
    seen: set[str] = set()

    def visit(node_id: str) -> None:
        if node_id in seen:
            return
        seen.add(node_id)
        for v in prompt[node_id]["inputs"].values():
            if isinstance(v, list) and len(v) == 2 and v[0] in prompt:
                visit(v[0])
        order.append(node_id)

    for node_id in prompt:
        visit(node_id)
    return order


class FakeComfy:
    """Start with `start()` (or as a context manager); `url` is http://127.0.0.1:<port>."""

    def __init__(self, *, clips: int = 2, step_delay: float = 0.0, emo_progress: bool = True,
                 die_on_prompt: int | None = None, history_delay: float = 0.03, lose_prompts: bool = False,
                 output_ext: str = ".mp4", output_padding: int = 0, announce_length: bool = True):
        self.clips, self.step_delay, self.emo_progress = clips, step_delay, emo_progress
        self.die_on_prompt, self.history_delay = die_on_prompt, history_delay
        self.lose_prompts = lose_prompts  # drop queued prompts silently, like a server restarted in between
        # A hostile server: names its output file itself, sends more bytes, may not announce the length.
        self.output_ext, self.output_padding, self.announce_length = output_ext, output_padding, announce_length
        self.inputs: dict[str, bytes] = {}  # "subfolder/name" (or "name") -> bytes: the input folder
        self.outputs: dict[tuple[str, str], bytes] = {}  # (subfolder, filename) -> bytes
        self.prompts: list[dict] = []
        self.uploads: list[dict] = []
        self.views: list[dict] = []
        self.executed: dict[str, list[str]] = {}
        self.cached: dict[str, list[str]] = {}
        self.interrupts: list[dict] = []
        self.deleted: list[str] = []
        self.history: dict[str, dict] = {}
        self.running: list[list] = []
        self.pending: list[list] = []
        self.dead = False
        self._signatures: set[str] = set()
        self._ui_cache: dict[str, dict] = {}
        self._counter = 0
        self._lock = threading.RLock()
        self._sockets: dict[str, object] = {}
        self._work: queue.Queue = queue.Queue()

    # ---- life cycle --------------------------------------------------------------------------

    def start(self) -> "FakeComfy":
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), handler_class(self), bind_and_activate=False)
        self._ws = serve(self._ws_session, "127.0.0.1", 0)
        for target in (self._accept_loop, self._execute_loop):
            threading.Thread(target=target, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def die(self) -> None:
        """Go away like a crashed server: refuse connections and drop every websocket."""
        with self._lock:
            if self.dead:
                return
            self.dead = True
            conns = list(self._sockets.values())
        try:  # on Linux only shutdown() wakes a thread blocked in accept(); close() alone keeps accepting
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for conn in conns:
            conn.close()
        self._work.put(None)

    def stop(self) -> None:
        self.die()
        # The websockets server never ran serve_forever(); close its listening socket and wake-up pair here.
        for sock in (self._ws.socket, getattr(self._ws, "shutdown_watcher", None),
                     getattr(self._ws, "shutdown_notifier", None)):
            if sock is not None:
                sock.close()
        self._http.server_close()

    def __enter__(self) -> "FakeComfy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, addr = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._dispatch, args=(sock, addr), daemon=True).start()

    def _dispatch(self, sock: socket.socket, addr) -> None:
        if self.dead:
            sock.close()
            return
        sock.settimeout(5)
        head, deadline = b"", time.monotonic() + 5
        try:
            while len(head) < 8 and time.monotonic() < deadline:
                head = sock.recv(8, socket.MSG_PEEK)
                if len(head) < 8:
                    time.sleep(0.001)
        except OSError:
            sock.close()
            return
        sock.settimeout(None)
        if head.startswith(b"GET /ws"):
            self._ws.handler(sock, addr)
        else:
            self._http.process_request(sock, addr)

    # ---- websocket ---------------------------------------------------------------------------

    def _ws_session(self, conn) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(conn.request.path).query)
        sid = query.get("clientId", [""])[0] or uuid.uuid4().hex
        with self._lock:
            if self.dead:
                return
            self._sockets[sid] = conn
        try:
            conn.send(json.dumps({"type": "status", "data": {"status": self._queue_info(), "sid": sid}}))
            for _ in conn:  # ComfyUI ignores what clients send, apart from feature flags
                pass
        finally:
            with self._lock:
                if self._sockets.get(sid) is conn:
                    del self._sockets[sid]

    def send(self, event: str, data, sid: str | None) -> None:
        """Like PromptServer.send_sync: JSON `{"type", "data"}` (bytes go out as a binary frame)."""
        with self._lock:
            targets = list(self._sockets.values()) if sid is None else [self._sockets.get(sid)]
        for conn in filter(None, targets):
            try:
                conn.send(data if isinstance(data, bytes) else json.dumps({"type": event, "data": data}))
            except Exception:  # a client that went away, as in ComfyUI's send_socket_catch_exception
                pass

    def _queue_info(self) -> dict:
        return {"exec_info": {"queue_remaining": len(self.running) + len(self.pending)}}

    # ---- HTTP --------------------------------------------------------------------------------

    def post_prompt(self, body: dict) -> tuple[int, dict]:
        if "prompt" not in body:
            return 400, {"error": {"type": "no_prompt", "message": "No prompt provided",
                                   "details": "No prompt provided", "extra_info": {}}, "node_errors": {}}
        prompt = body["prompt"]
        node_errors = self._validate(prompt)
        if node_errors:
            return 400, {"error": RECORDED["rejection"]["error"], "node_errors": node_errors}
        with self._lock:
            self.prompts.append(body)
            number, self._counter = self._counter, self._counter + 1
            prompt_id = str(uuid.uuid4())
            outputs = [i for i, n in prompt.items() if n["class_type"] == "SaveVideo"]
            item = [number, prompt_id, prompt, {"client_id": body.get("client_id")}, outputs]
            self.pending.append(item)
        # The queue's status goes out before the executor may start (ComfyUI's order, as recorded); the
        # other way round the executor thread races it under load.
        self.send("status", {"status": self._queue_info()}, None)
        self._work.put(item)
        return 200, {"prompt_id": prompt_id, "number": number, "node_errors": {}}

    def _validate(self, prompt: dict) -> dict:
        # The loaders' VALIDATE_INPUTS: the named file must exist in the input folder.
        errors = {}
        outputs = [i for i, n in prompt.items() if n["class_type"] == "SaveVideo"]
        for node_id, node in prompt.items():
            kind = {"LoadImage": "image", "LoadAudio": "audio"}.get(node["class_type"])
            if kind and node["inputs"].get(kind) not in self.inputs:
                reason = {"type": "custom_validation_failed", "message": "Custom validation failed for node",
                          "details": f"{kind} - Invalid {kind} file: {node['inputs'].get(kind)}",
                          "extra_info": {"input_name": kind}}
                errors[node_id] = {"errors": [reason], "dependent_outputs": outputs, "class_type": node["class_type"]}
        return errors

    def upload(self, fields: dict, files: dict) -> tuple[int, dict | None]:
        if "image" not in files or not files["image"][0]:
            return 400, None
        filename, data = files["image"]
        subfolder = fields.get("subfolder", "")
        kind = fields.get("type") or "input"
        overwrite = fields.get("overwrite") in ("true", "1")
        key = lambda name: f"{subfolder}/{name}" if subfolder else name  # noqa: E731
        stem, dot, ext = filename.rpartition(".")
        stem, ext = (stem, dot + ext) if dot else (filename, "")
        written = True
        with self._lock:
            i = 1
            while not overwrite and key(filename) in self.inputs:
                if self.inputs[key(filename)] == data:  # same name and content: kept, not written again
                    written = False
                    break
                filename = f"{stem} ({i}){ext}"
                i += 1
            if written:
                self.inputs[key(filename)] = data
            self.uploads.append({"name": filename, "subfolder": subfolder, "type": kind,
                                 "overwrite": fields.get("overwrite"), "size": len(data), "written": written})
        return 200, {"name": filename, "subfolder": subfolder, "type": kind}

    def queue_info(self) -> dict:
        with self._lock:
            return {"queue_running": [list(x) for x in self.running], "queue_pending": [list(x) for x in self.pending]}

    def history_entry(self, prompt_id: str) -> dict | None:
        with self._lock:
            entry = self.history.get(prompt_id)
            return json.loads(json.dumps(entry)) if entry else None

    def delete(self, prompt_id: str) -> None:
        with self._lock:
            self.deleted.append(prompt_id)
            self.pending[:] = [x for x in self.pending if x[1] != prompt_id]

    # ---- execution ---------------------------------------------------------------------------

    def _execute_loop(self) -> None:
        while (item := self._work.get()) is not None:
            with self._lock:
                if self.dead:
                    return
                if item not in self.pending:  # deleted from the queue
                    continue
                self.pending.remove(item)
                if self.lose_prompts:
                    continue
                self.running.append(item)
            self._execute(item)

    def _execute(self, item: list) -> None:
        number, prompt_id, prompt, extra, _ = item
        sid = extra.get("client_id")
        messages: list = []

        def message(event: str, data: dict) -> None:
            data = {**data, "timestamp": int(time.time() * 1000)}
            messages.append([event, data])
            self.send(event, data, sid)

        message("execution_start", {"prompt_id": prompt_id})
        order = _topological(prompt)
        signatures = self._signatures_of(prompt, order)
        cached = [i for i in order if signatures[i] in self._signatures]
        message("execution_cached", {"nodes": cached, "prompt_id": prompt_id})
        outputs, executed, error = {}, [], None
        for node_id in order:
            if node_id in cached:  # ComfyUI replays a cached output node's ui into the history
                if signatures[node_id] in self._ui_cache:
                    outputs[node_id] = self._ui_cache[signatures[node_id]]
                    self.send("executed", {"node": node_id, "display_node": node_id, "output": outputs[node_id],
                                           "prompt_id": prompt_id}, sid)
                continue
            node = prompt[node_id]
            self._node_state(prompt_id, node_id, sid, "running")
            self.send("executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}, sid)
            error = self._run_node(prompt, node_id, prompt_id, sid, outputs)
            if self.dead:
                return
            if error:
                message("execution_error", {"prompt_id": prompt_id, "node_id": node_id, "node_type": node["class_type"],
                                            "executed": list(executed), "exception_message": error,
                                            "exception_type": "emo_core.errors.InvalidInputError",
                                            "traceback": ["Traceback (most recent call last):\n", "...\n"],
                                            "current_inputs": {}, "current_outputs": list(executed)})
                break
            executed.append(node_id)
            self._node_state(prompt_id, node_id, sid, "finished")
        else:
            message("execution_success", {"prompt_id": prompt_id})
        with self._lock:
            self.executed[prompt_id], self.cached[prompt_id] = executed, cached
            self._signatures = {signatures[i] for i in executed + cached}
            self._ui_cache = {signatures[i]: ui for i, ui in outputs.items()}
        time.sleep(self.history_delay)  # ComfyUI writes the history after execution_success
        with self._lock:
            self.running.remove(item)
            self.history[prompt_id] = {
                "prompt": item, "outputs": outputs,
                "status": {"status_str": "error" if error else "success", "completed": not error, "messages": messages},
                "meta": {i: {"node_id": i, "display_node": i, "parent_node": None, "real_node_id": i} for i in outputs}}
        self.send("status", {"status": self._queue_info()}, None)
        self.send("executing", {"node": None, "prompt_id": prompt_id}, sid)

    def _node_state(self, prompt_id: str, node_id: str, sid, state: str) -> None:
        done = 1.0 if state == "finished" else 0.0
        self.send("progress_state", {"prompt_id": prompt_id, "nodes": {node_id: {
            "value": done, "max": 1.0, "state": state, "node_id": node_id, "prompt_id": prompt_id,
            "display_node_id": node_id, "parent_node_id": None, "real_node_id": node_id}}}, sid)

    def _signatures_of(self, prompt: dict, order: list[str]) -> dict[str, str]:
        sig: dict[str, str] = {}
        for node_id in order:
            node = prompt[node_id]
            parts = [node["class_type"]]
            for name, v in sorted(node["inputs"].items()):
                if isinstance(v, list) and len(v) == 2 and v[0] in prompt:
                    parts.append(f"{name}<-{sig[v[0]]}:{v[1]}")
                elif node["class_type"] in ("LoadImage", "LoadAudio"):  # IS_CHANGED hashes the file
                    parts.append(f"{name}={hashlib.sha256(self.inputs.get(v, b'')).hexdigest()}")
                else:
                    parts.append(f"{name}={json.dumps(v)}")
            sig[node_id] = hashlib.sha256("|".join(parts).encode()).hexdigest()
        return sig

    def _run_node(self, prompt: dict, node_id: str, prompt_id: str, sid, outputs: dict) -> str | None:
        node = prompt[node_id]
        kind = node["class_type"]
        if kind == "EMO_FaceLocator" and any(NO_FACE in self.inputs.get(n["inputs"].get("image"), b"")
                                             for n in prompt.values() if n["class_type"] == "LoadImage"):
            return NO_FACE_MESSAGE
        if kind == "EMO_Sampler":
            self._sample(node_id, node, prompt_id, sid)
        if kind == "SaveVideo":
            ui = self._save_video(prompt, node, prompt_id)
            outputs[node_id] = ui
            self.send("executed", {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": prompt_id}, sid)
        return None

    def _sample(self, node_id: str, node: dict, prompt_id: str, sid) -> None:
        steps = int(node["inputs"].get("steps", 1))
        total = self.clips * steps
        for value in range(1, total + 1):
            if self.die_on_prompt is not None and len(self.prompts) >= self.die_on_prompt and value == 2:
                self.die()
                return
            clip, step = (value - 1) // steps + 1, (value - 1) % steps + 1
            self.send("progress", {"value": value, "max": total, "prompt_id": prompt_id, "node": node_id}, sid)
            if self.emo_progress:
                self.send("emo.progress", {"prompt_id": prompt_id, "node": node_id, "clip": clip,
                                           "clips": self.clips, "step": step, "steps": steps}, sid)
            self.send("progress_state", {"prompt_id": prompt_id, "nodes": {node_id: {
                "value": value, "max": total, "state": "running", "node_id": node_id, "prompt_id": prompt_id,
                "display_node_id": node_id, "parent_node_id": None, "real_node_id": node_id}}}, sid)
            if value == 1:
                self.send("b_preview", struct.pack(">I", 1) + struct.pack(">I", 1) + b"\xff\xd8fake-jpeg", sid)
            time.sleep(self.step_delay)

    def _save_video(self, prompt: dict, node: dict, prompt_id: str) -> dict:
        prefix = node["inputs"]["filename_prefix"]
        subfolder, _, base = prefix.rpartition("/")
        loaded = {n["class_type"]: n["inputs"] for n in prompt.values()}
        sampler = loaded.get("EMO_Sampler", {})
        content = b"\x00\x00\x00\x18ftypmp42FAKE" + json.dumps({
            "image": loaded.get("LoadImage", {}).get("image"), "audio": loaded.get("LoadAudio", {}).get("audio"),
            "seed": sampler.get("seed"), "steps": sampler.get("steps"),
            "speed": loaded.get("EMO_SpeedConstant", {}).get("speed"), "prompt_id": prompt_id}).encode()
        with self._lock:
            counter = 1 + sum(1 for s, f in self.outputs if s == subfolder and f.startswith(base + "_"))
            filename = f"{base}_{counter:05}_{self.output_ext}"
            self.outputs[(subfolder, filename)] = content + b"\0" * self.output_padding
        return {"images": [{"filename": filename, "subfolder": subfolder, "type": "output"}], "animated": [True]}
