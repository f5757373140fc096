"""The server client, ComfyUI's JSON shapes and the progress display, against the fake server."""
from __future__ import annotations

import io
import json

import pytest
from batch_helpers import audio, load_fixture_workflow, portrait
from batch_helpers import FIXTURE_WORKFLOW
from fake_comfy_server import RECORDED, FakeComfy

from emo_core.batch.client import ComfyServer, normalize_url
from emo_core.batch.errors import JobFailed, ServerUnavailable
from emo_core.batch.jobs import Job
from emo_core.batch.outcome import JobProgress, ProgressTracker, history_outcome, rejection_message
from emo_core.batch.progress import BatchDisplay
from emo_core.batch.render import RenderSettings, render_job
from emo_core.batch.workflow import bind


@pytest.fixture
def fake():
    with FakeComfy() as server:
        yield server


def test_urls():
    assert normalize_url("127.0.0.1:8188/") == "http://127.0.0.1:8188"
    assert ComfyServer("https://gpu.example/comfy").ws_url == "wss://gpu.example/comfy/ws"
    with pytest.raises(ValueError, match="http://host:port"):
        normalize_url("ftp://x")


def test_upload_keeps_same_content_and_renames_other_content(fake, tmp_path):
    server = ComfyServer(fake.url)
    p = portrait(tmp_path / "p.png", "one")
    assert server.upload(p, "p.png", "emo_batch") == "emo_batch/p.png"
    assert server.upload(p, "p.png", "emo_batch") == "emo_batch/p.png"
    portrait(p, "two")
    assert server.upload(p, "p.png", "emo_batch") == "emo_batch/p (1).png"
    assert server.upload(p, "top.png") == "top.png"
    assert [u["written"] for u in fake.uploads] == [True, False, True, True]
    assert set(fake.uploads[0]) >= {"name", "subfolder", "type"} and fake.uploads[0]["type"] == "input"


def test_a_rejected_prompt_carries_comfyuis_reasons(fake):
    prompt = load_fixture_workflow()
    prompt["2"]["inputs"]["image"] = "emo_batch/nope.png"
    with pytest.raises(JobFailed) as err:
        ComfyServer(fake.url).queue_prompt(prompt)
    assert str(err.value).startswith("Prompt outputs failed validation; LoadImage (node 2): Custom validation failed "
                                     "for node: image - Invalid image file: emo_batch/nope.png")


def _keys(value):
    """The shape of a JSON value: dict keys (recursively), list item shapes, else the type name."""
    if isinstance(value, dict):
        return {k: _keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_keys(v) for v in value[:1]]
    return type(value).__name__


def _events(messages: list) -> list[str]:
    kinds = [m.get("type", "binary") if isinstance(m, dict) else "binary" for m in messages]
    return [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1] or k not in ("status", "progress_state")]


def _run(server: ComfyServer, prompt: dict) -> tuple[dict, list]:
    seen = []
    server.connect()
    seen.append(json.loads(server._ws.recv(timeout=5)))  # the status sent on connect
    prompt_id = server.queue_prompt(prompt)
    entry = server.wait(prompt_id, seen.append)  # returns on execution_success/error; read the rest too
    while not (seen[-1].get("type") == "executing" and seen[-1]["data"] == {"node": None, "prompt_id": prompt_id}):
        raw = server._ws.recv(timeout=5)
        seen.append(json.loads(raw) if isinstance(raw, str) else {"type": "binary"})
    server.close()
    return entry, seen


def test_the_fake_answers_like_the_recorded_comfyui(fake):
    core = json.loads(FIXTURE_WORKFLOW.with_name("core_video.api.json").read_text())
    fake.inputs.update({"example.png": b"img", "one.wav": b"1", "two.wav": b"2"})
    server = ComfyServer(fake.url)
    runs = []
    for wav in ("one.wav", "two.wav"):
        core["13"]["inputs"]["audio"] = wav
        runs.append(_run(server, core))
    (first, seen_first), (second, seen_second) = runs
    assert _keys(first) == _keys({**RECORDED["history_success"], "prompt": first["prompt"]})
    assert _events(seen_first) == RECORDED["ws_events_success"]
    assert _events(seen_second) == RECORDED["ws_events_cached_success"]
    assert _keys(seen_first[0]) == _keys(RECORDED["ws_connect"])
    assert _keys(fake.queue_info()) == _keys(RECORDED["queue"])
    assert _keys(fake.upload({"subfolder": "s"}, {"image": ("x.png", b"x")})[1]) == _keys(RECORDED["upload_answer"])
    assert _keys(fake.post_prompt({"prompt": core})[1]) == _keys(RECORDED["prompt_answer"])
    core["10"]["inputs"]["image"] = "emo_batch/missing.png"
    status, answer = fake.post_prompt({"prompt": core})
    assert (status, answer) == (RECORDED["rejection_status"], RECORDED["rejection"])


def test_a_failing_node_is_reported_like_the_recorded_comfyui(fake):
    fake.inputs.update({"emo_batch/noface.png": b"NOFACE", "example.wav": b"wav"})
    prompt = load_fixture_workflow()
    prompt["2"]["inputs"]["image"] = "emo_batch/noface.png"
    entry, seen = _run(ComfyServer(fake.url), prompt)
    assert _events(seen)[-3:] == RECORDED["ws_events_error"][-3:]
    event, data = entry["status"]["messages"][-1]
    assert event == "execution_error" and set(data) == set(RECORDED["execution_error"])
    assert {k: v for k, v in entry["status"].items() if k != "messages"} == RECORDED["history_error_status"]


def test_recorded_real_answers_read_as_expected():
    assert rejection_message(RECORDED["rejection"]) == (
        "Prompt outputs failed validation; LoadImage (node 10): Custom validation failed for node: image - "
        "Invalid image file: emo_batch/missing.png")
    entry = {"outputs": {}, "status": {"status_str": "error", "completed": False,
                                       "messages": [["execution_error", RECORDED["execution_error"]]]}}
    assert history_outcome(entry, "15").error == ("[Errno 1094995529] Invalid data found when processing input: "
                                                  "'/tmp/cf-io/in/emo_batch/broken-rec.wav' (LoadAudio node 13)")
    ok = history_outcome(RECORDED["history_success"], "15")
    assert ok.error is None and ok.files[0]["filename"] == "rec1_00001_.mp4"


def test_a_lost_prompt_means_the_server_is_unavailable(tmp_path):
    with FakeComfy(lose_prompts=True) as fake:
        fake.inputs.update({"example.png": b"img", "example.wav": b"wav"})
        server = ComfyServer(fake.url, poll_interval=0.1)
        server.connect()
        prompt_id = server.queue_prompt(load_fixture_workflow())
        with pytest.raises(ServerUnavailable, match="neither queued nor in the history"):
            server.wait(prompt_id)
        server.close()


def test_cancel_deletes_and_interrupts_the_prompt(fake):
    ComfyServer(fake.url).cancel("abc")
    assert fake.deleted == ["abc"] and fake.interrupts == [{"prompt_id": "abc"}]


def test_unreachable_server(fake):
    url = fake.url
    fake.stop()
    with pytest.raises(ServerUnavailable, match="unreachable"):
        ComfyServer(url, timeout=2).queue()
    with pytest.raises(ServerUnavailable, match="cannot be opened"):
        ComfyServer(url, timeout=2).connect()


@pytest.mark.parametrize("emo_progress", [True, False])
def test_render_reports_clip_and_step(tmp_path, emo_progress):
    job = Job("j", portrait(tmp_path / "p.png", "p"), audio(tmp_path / "a.wav", "a"), steps=3)
    wf = load_fixture_workflow()
    seen: list[JobProgress] = []
    with FakeComfy(clips=2, emo_progress=emo_progress) as fake:
        server = ComfyServer(fake.url)
        path = render_job(server, job, RenderSettings(wf, bind(wf), tmp_path / "out"), on_progress=seen.append)
        server.close()
    assert path == tmp_path / "out" / "j.mp4" and path.is_file()
    texts = [p.text() for p in seen if p.node == "9"]
    sampler = [t for i, t in enumerate(texts) if i == 0 or t != texts[i - 1]]  # progress + emo.progress per step
    assert sampler == [f"clip {c}/2 step {s}/3" for c in (1, 2) for s in (1, 2, 3)]


def test_progress_tracker_fallbacks():
    t = ProgressTracker("p", sampler_node="9", steps=None)
    assert t.update({"type": "progress", "data": {"value": 4, "max": 10, "prompt_id": "p", "node": "9"}}).text() == \
        "step 4/10"
    assert t.update({"type": "progress", "data": {"value": 1, "max": 2, "prompt_id": "p", "node": "6"}}).text() == \
        "node 6 1/2"
    assert t.update({"type": "progress", "data": {"value": 1, "max": 2, "prompt_id": "other", "node": "9"}}) is None
    assert t.update({"type": "executing", "data": {"node": "9", "prompt_id": "p"}}) is None
    t = ProgressTracker("p", sampler_node="9", steps=4)
    assert t.update({"type": "progress", "data": {"value": 8, "max": 12, "prompt_id": "p", "node": "9"}}).text() == \
        "clip 2/3 step 4/4"
    emo = {"type": "emo.progress",
           "data": {"prompt_id": "p", "node": "9", "clip": 3, "clips": 3, "step": 1, "steps": 4}}
    assert t.update(emo).text() == "clip 3/3 step 1/4"
    assert t.update({"type": "progress", "data": {"value": 9, "max": 12, "prompt_id": "p", "node": "9"}}) is None


def test_history_outcomes():
    ok = RECORDED["history_success"]
    assert history_outcome(ok, "15").files == tuple(ok["outputs"]["15"]["images"])
    assert "saved no file (nodes with outputs: 15)" in history_outcome(ok, "13").error
    failed = {"outputs": {}, "status": {"status_str": "error", "completed": False, "messages": [
        ["execution_start", {"prompt_id": "p"}],
        ["execution_error", {"node_id": "7", "node_type": "EMO_FaceLocator", "exception_message": "no face\n"}]]}}
    assert history_outcome(failed, "12").error == "no face (EMO_FaceLocator node 7)"
    stopped = {"outputs": {}, "status": {"status_str": "error", "completed": False, "messages": [
        ["execution_interrupted", {"node_id": "9", "node_type": "EMO_Sampler"}]]}}
    assert history_outcome(stopped, "12").error == "interrupted on the server (EMO_Sampler node 9)"
    assert rejection_message({"error": {"type": "no_prompt", "message": "No prompt provided", "details": "x"},
                              "node_errors": {}}) == "No prompt provided; x"


def test_display_redraws_one_line_on_a_terminal():
    out = io.StringIO()
    d = BatchDisplay(["a", "b"], stream=out, tty=True)
    d.job_started("b", "http://s")
    d.job_progress("b", JobProgress(1, 6, "9", 1, 2, 1, 3))
    d.job_finished("b", "done", "out/b.mp4")
    d.close()
    text = out.getvalue()
    assert "\n" not in text[:-1] and text.endswith("\n")
    assert "[----------" in text and "job 2/2 b: starting on http://s" in text
    assert "[##########----------] 1/2 done" in text


def test_display_writes_one_line_per_job_elsewhere():
    out = io.StringIO()
    d = BatchDisplay(["a", "b"], stream=out, tty=False)
    d.job_started("a", "http://s")
    d.job_progress("a", JobProgress(1, 6, "9", 1, 2, 1, 3))
    d.job_finished("a", "failed", "no face")
    d.close()
    assert out.getvalue() == "job 1/2 a: failed: no face (0/2 done, 1 failed)\n"
