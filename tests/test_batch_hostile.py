"""emo-batch against hostile input: a server that names its own output file, sends too much or never
finishes, and job lists that name non-media files or names Windows cannot hold."""
from __future__ import annotations

import threading
import time

import pytest
from batch_helpers import (audio, fake_servers, load_fixture_workflow, manifest_jobs, portrait, run_cli,
                           servers_args, simple_jobs, write_csv)
from fake_comfy_server import FakeComfy

from emo_core.batch.client import ComfyServer
from emo_core.batch.errors import JobFailed, JobSpecError
from emo_core.batch.jobs import load_jobs
from emo_core.batch.manifest import OUTPUT_EXTS


def _left_in(out):
    return sorted(p.name for p in out.iterdir() if p.name != "emo_batch_manifest.json")


@pytest.mark.parametrize("ext", [".sh", ".exe", ".py", ""])
def test_an_output_the_server_names_as_a_program_is_not_downloaded(tmp_path, ext):
    jobs = simple_jobs(tmp_path, ["job1"])
    with fake_servers({"output_ext": ext}) as (a,):
        code, err = run_cli("--jobs", jobs, "--out", tmp_path / "out", *servers_args(a))
        assert a.views == []  # refused on the name, before any byte is fetched
    assert code == 1
    assert _left_in(tmp_path / "out") == []
    why = manifest_jobs(tmp_path / "out")["job1"]["error"]
    assert f"job1_00001_{ext}" in why and "nothing was saved" in why


@pytest.mark.parametrize("ext", OUTPUT_EXTS)
def test_video_and_image_outputs_are_downloaded(tmp_path, ext):
    jobs = simple_jobs(tmp_path, ["job1"])
    with fake_servers({"output_ext": ext.upper()}) as (a,):
        code, err = run_cli("--jobs", jobs, "--out", tmp_path / "out", *servers_args(a))
    assert code == 0, err
    assert _left_in(tmp_path / "out") == [f"job1{ext}"]


@pytest.mark.parametrize("announce", [True, False], ids=["content-length", "no-length"])
def test_downloads_are_capped(tmp_path, announce):
    jobs = simple_jobs(tmp_path, ["big", "small"])
    cap_mb = 0.01  # 10 KiB; the fake's video is about 200 bytes plus the padding
    with fake_servers({"output_padding": 64 << 10, "announce_length": announce}) as (a,):
        code, err = run_cli("--jobs", jobs, "--out", tmp_path / "out", "--max-download-mb", cap_mb,
                            *servers_args(a))
    assert code == 1
    assert _left_in(tmp_path / "out") == []  # no video, no .partial
    states = manifest_jobs(tmp_path / "out")
    assert all(e["state"] == "failed" and "more than 10485 bytes" in e["error"] for e in states.values())


def test_the_download_cap_keeps_files_under_it(tmp_path):
    jobs = simple_jobs(tmp_path, ["clip"])
    with fake_servers({"output_padding": 4 << 10}) as (a,):
        code, err = run_cli("--jobs", jobs, "--out", tmp_path / "out", "--max-download-mb", 0.01, *servers_args(a))
    assert code == 0, err
    assert (tmp_path / "out" / "clip.mp4").stat().st_size > 4 << 10


def test_wait_gives_up_after_the_job_timeout_however_chatty_the_server(tmp_path):
    # Progress every 10 ms for minutes: the websocket never falls quiet, so only an overall deadline ends it.
    with FakeComfy(clips=100_000, step_delay=0.01) as fake:
        fake.inputs.update({"example.png": b"img", "example.wav": b"wav"})
        server = ComfyServer(fake.url, poll_interval=0.5, job_timeout=2.0)
        server.connect()
        prompt_id = server.queue_prompt(load_fixture_workflow())
        result = {}

        def wait():
            try:
                server.wait(prompt_id)
            except JobFailed as err:
                result["error"] = err

        start = time.monotonic()
        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        thread.join(30)
        took = time.monotonic() - start
        server.close()
        assert not thread.is_alive(), "wait() did not return within 30 s"
        assert "did not finish within 2 s" in str(result.get("error"))
        assert took < 10
        assert fake.deleted == [prompt_id] and fake.interrupts == [{"prompt_id": prompt_id}]


@pytest.mark.parametrize("kind, name", [("portrait", "id_rsa"), ("portrait", "secrets.txt"),
                                        ("audio", "id_rsa"), ("audio", "notes.pdf"), ("portrait", "clip.wav"),
                                        ("audio", "face.png")])
def test_a_job_may_only_name_image_and_audio_files(tmp_path, kind, name):
    (tmp_path / name).write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    row = {"portrait": str(portrait(tmp_path / "p.png", "p")), "audio": str(audio(tmp_path / "a.wav", "a")),
           "name": "job"}
    row[kind] = str(tmp_path / name)
    with pytest.raises(JobSpecError, match=f"{kind} '{name}' is not a {kind} file"):
        load_jobs(write_csv(tmp_path / "jobs.csv", [row]))


def test_a_bad_job_list_uploads_nothing(tmp_path):
    (tmp_path / "id_rsa").write_bytes(b"key")
    jobs = write_csv(tmp_path / "jobs.csv", [{"portrait": "id_rsa", "audio": str(audio(tmp_path / "a.wav", "a"))}])
    with fake_servers({}) as (a,):
        code, err = run_cli("--jobs", jobs, "--out", tmp_path / "out", *servers_args(a))
        assert a.uploads == [] and a.prompts == []
    assert code == 2 and "id_rsa" in err


@pytest.mark.parametrize("name", ["CON", "con", "nul.take1", "COM1", "lpt9", "Com0", "aux ", "take.",
                                  "a:b", "a|b", "a?b", "a*b", 'a"b', "a<b>"])
def test_names_windows_cannot_hold_are_refused(tmp_path, name):
    row = {"portrait": str(portrait(tmp_path / "p.png", "p")), "audio": str(audio(tmp_path / "a.wav", "a")),
           "name": name}
    with pytest.raises(JobSpecError, match="not a usable file name on every system"):
        load_jobs(write_csv(tmp_path / "jobs.csv", [row]))


@pytest.mark.parametrize("name", ["console", "com10", "anna_001", "take.1", "nul_take", "Ünïcode-名前"])
def test_ordinary_names_stay_allowed(tmp_path, name):
    row = {"portrait": str(portrait(tmp_path / "p.png", "p")), "audio": str(audio(tmp_path / "a.wav", "a")),
           "name": name}
    assert load_jobs(write_csv(tmp_path / "jobs.csv", [row]))[0].name == name
