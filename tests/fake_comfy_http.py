"""HTTP side of the fake ComfyUI server (tests/fake_comfy_server.py): routes and multipart parsing."""
from __future__ import annotations

import email.parser
import email.policy
import json
import mimetypes
import urllib.parse
from http.server import BaseHTTPRequestHandler


def handler_class(fake):
    """A request handler class bound to one FakeComfy."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _reply(self, status: int, body=None, content_type: str = "application/json", headers=None,
                   length: bool = True) -> None:
            raw = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            if length:
                self.send_header("Content-Length", str(len(raw)))
            else:  # the body ends when the connection closes
                self.close_connection = True
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(raw)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
            if url.path == "/queue":
                return self._reply(200, fake.queue_info())
            if url.path.startswith("/history/"):
                prompt_id = urllib.parse.unquote(url.path[len("/history/"):])
                entry = fake.history_entry(prompt_id)
                return self._reply(200, {prompt_id: entry} if entry else {})
            if url.path == "/view":
                fake.views.append(query)
                data = fake.outputs.get((query.get("subfolder", ""), query.get("filename", "")))
                if query.get("type", "output") != "output" or data is None:
                    return self._reply(404, b"", "text/plain")
                ctype = mimetypes.guess_type(query["filename"])[0] or "application/octet-stream"
                return self._reply(200, data, ctype, {"Content-Disposition": f'filename="{query["filename"]}"'},
                                   length=fake.announce_length)
            return self._reply(404, b"", "text/plain")

        def do_POST(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            if path == "/prompt":
                status, answer = fake.post_prompt(json.loads(self._body()))
                return self._reply(status, answer)
            if path == "/upload/image":
                fields, files = parse_multipart(self.headers.get("Content-Type", ""), self._body())
                status, answer = fake.upload(fields, files)
                return self._reply(status, answer if answer is not None else b"")
            if path == "/interrupt":
                fake.interrupts.append(json.loads(self._body() or b"{}"))
                return self._reply(200, b"", "text/plain")
            if path == "/queue":
                for prompt_id in json.loads(self._body()).get("delete", []):
                    fake.delete(prompt_id)
                return self._reply(200, b"", "text/plain")
            return self._reply(404, b"", "text/plain")

    return Handler


def parse_multipart(content_type: str, body: bytes) -> tuple[dict, dict]:
    """(text fields, {name: (filename, bytes)}) of a multipart/form-data body."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    fields, files = {}, {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True) or b""
        if part.get_filename() is not None:
            files[name] = (part.get_filename(), data)
        else:
            fields[name] = data.decode()
    return fields, files
