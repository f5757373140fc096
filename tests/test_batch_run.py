"""The batch command end to end against fake ComfyUI servers (tests/fake_comfy_server.py)."""
from __future__ import annotations

import _thread
import json
import threading
import time

from batch_helpers import (audio, fake_servers, load_fixture_workflow, manifest_jobs, portrait, run_cli,
                           servers_args, simple_jobs, video_info, write_csv)


def test_two_servers_render_every_job_with_its_own_values(tmp_path):
    jobs = write_csv(tmp_path / "jobs.csv", [
        {"portrait": str(portrait(tmp_path / f"p{i}.png", f"p{i}")),
         "audio": str(audio(tmp_path / f"a{i}.wav", f"a{i}")),
         "seed": str(10 + i), "steps": str(2 + i), "speed": f"{0.5 * i}", "name": f"clip{i}"} for i in range(4)])
    with fake_servers({"step_delay": 0.01}, {"step_delay": 0.01}) as (a, b):
        code, err = run_cli("--jobs", jobs, "--out", tmp_path / "out", *servers_args(a, b))
        assert code == 0, err
        assert a.prompts and b.prompts, "both servers take jobs"
        assert len(a.prompts) + len(b.prompts) == 4
        for fake in (a, b):
            for body in fake.prompts:
                assert body["client_id"] and isinstance(body["prompt"], dict)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["clip0.mp4", "clip1.mp4", "clip2.mp4", "clip3.mp4",
                                                    "emo_batch_manifest.json"]
    for i in range(4):
        info = video_info(out / f"clip{i}.mp4")
        assert info["image"].startswith(f"emo_batch/p{i}-") and info["audio"].startswith(f"emo_batch/a{i}-")
        assert (info["seed"], info["steps"], info["speed"]) == (10 + i, 2 + i, 0.5 * i)
    states = manifest_jobs(out)
    assert {n: (e["state"], e["output"], e["attempts"]) for n, e in states.items()} == {
        f"clip{i}": ("done", f"clip{i}.mp4", 1) for i in range(4)}
    assert {e["server"] for e in states.values()} == {a.url, b.url}
    assert "job 1/4 clip0: done" in err or "clip0: done" in err


def test_outputs_are_named_per_job_on_the_server_too(tmp_path):
    jobs = simple_jobs(tmp_path, ["anna"])
    with fake_servers({}) as (a,):
        code, err = run_cli("--jobs", jobs, "--out", tmp_path / "out", *servers_args(a))
        assert code == 0, err
        assert a.prompts[0]["prompt"]["12"]["inputs"]["filename_prefix"] == "emo_batch/anna"
        assert list(a.outputs) == [("emo_batch", "anna_00001_.mp4")]
        assert a.views == [{"filename": "anna_00001_.mp4", "subfolder": "emo_batch", "type": "output"}]


def test_a_failing_job_is_recorded_with_comfyuis_message_and_the_batch_goes_on(tmp_path):
    jobs = simple_jobs(tmp_path, ["a", "b", "c"], no_face=("b",))
    with fake_servers({}) as (server,):
        code, err = run_cli("--jobs", jobs, "--out", tmp_path / "out", *servers_args(server))
    assert code == 1
    states = manifest_jobs(tmp_path / "out")
    assert [states[n]["state"] for n in "abc"] == ["done", "failed", "done"]
    assert states["b"]["error"] == ("no face found in the reference image (64x64); draw a face mask and connect it "
                                    "to 'face_mask' (EMO_FaceLocator node 7)")
    assert "failed b: no face found" in err
    assert not (tmp_path / "out" / "b.mp4").exists()


def test_rerun_skips_done_jobs_redoes_unfinished_and_overwrites_nothing(tmp_path):
    jobs = simple_jobs(tmp_path, ["a", "b", "c"], no_face=("b",))
    out = tmp_path / "out"
    with fake_servers({}) as (server,):
        assert run_cli("--jobs", jobs, "--out", out, *servers_args(server))[0] == 1
        (out / "a.mp4").write_bytes(b"edited by hand")
        manifest = json.loads((out / "emo_batch_manifest.json").read_text())
        manifest["jobs"]["c"]["state"] = "running"  # as if the last run stopped while c was rendering
        (out / "c.mp4").unlink()
        (out / "emo_batch_manifest.json").write_text(json.dumps(manifest))
        portrait(tmp_path / "portraits" / "b.png", "b")  # the user fixed b's portrait
        code, err = run_cli("--jobs", jobs, "--out", out, *servers_args(server))
        assert code == 0, err
        rendered = [p["prompt"]["12"]["inputs"]["filename_prefix"] for p in server.prompts]
    assert rendered == ["emo_batch/a", "emo_batch/b", "emo_batch/c", "emo_batch/b", "emo_batch/c"]
    assert (out / "a.mp4").read_bytes() == b"edited by hand"
    assert {n: e["state"] for n, e in manifest_jobs(out).items()} == {"a": "done", "b": "done", "c": "done"}
    assert "3 jobs: 2 to render, 1 already done" in err
    assert not list(out.glob("*.partial"))


def test_overwrite_renders_again_and_replaces(tmp_path):
    jobs = simple_jobs(tmp_path, ["a"])
    out = tmp_path / "out"
    with fake_servers({}) as (server,):
        assert run_cli("--jobs", jobs, "--out", out, *servers_args(server))[0] == 0
        (out / "a.mp4").write_bytes(b"old")
        assert run_cli("--jobs", jobs, "--out", out, *servers_args(server))[0] == 0
        assert len(server.prompts) == 1 and (out / "a.mp4").read_bytes() == b"old"
        assert run_cli("--jobs", jobs, "--out", out, "--overwrite", *servers_args(server))[0] == 0
        assert len(server.prompts) == 2
    assert video_info(out / "a.mp4")["audio"].startswith("emo_batch/a-")


def test_output_from_other_inputs_is_kept_and_the_job_refused(tmp_path):
    jobs = simple_jobs(tmp_path, ["a"])
    out = tmp_path / "out"
    with fake_servers({}) as (server,):
        assert run_cli("--jobs", jobs, "--out", out, *servers_args(server))[0] == 0
        before = (out / "a.mp4").read_bytes()
        audio(tmp_path / "audio" / "a.wav", "new script")
        code, err = run_cli("--jobs", jobs, "--out", out, *servers_args(server))
        assert code == 1 and len(server.prompts) == 1
    assert (out / "a.mp4").read_bytes() == before
    assert "rendered from other inputs" in manifest_jobs(out)["a"]["error"]
    assert "pass --overwrite" in err


def test_a_server_that_dies_has_its_job_retried_on_another(tmp_path):
    jobs = simple_jobs(tmp_path, ["a", "b"])
    with fake_servers({"die_on_prompt": 1, "step_delay": 0.05}, {"step_delay": 0.05}) as (dying, healthy):
        code, err = run_cli("--jobs", jobs, "--out", tmp_path / "out", *servers_args(dying, healthy))
        assert code == 0, err
        assert dying.dead and len(dying.prompts) == 1 and len(healthy.prompts) == 2
        lost = dying.prompts[0]["prompt"]["12"]["inputs"]["filename_prefix"].split("/")[1]
    entry = manifest_jobs(tmp_path / "out")[lost]
    assert (entry["state"], entry["server"], entry["attempts"]) == ("done", healthy.url, 2)
    assert f"leaving {dying.url} out of this batch" in err


def test_with_every_server_gone_the_jobs_fail_with_the_reason(tmp_path):
    jobs = simple_jobs(tmp_path, ["a", "b"])
    with fake_servers({"die_on_prompt": 1}) as (dying,):
        code, err = run_cli("--jobs", jobs, "--out", tmp_path / "out", *servers_args(dying))
    assert code == 1
    errors = {n: e["error"] for n, e in manifest_jobs(tmp_path / "out").items()}
    assert all(e.startswith("no ComfyUI server left to run it") for e in errors.values()), errors
    with fake_servers({"die_on_prompt": 1}) as (dying,):
        run_cli("--jobs", jobs, "--out", tmp_path / "out2", "--attempts", "1", *servers_args(dying))
    assert manifest_jobs(tmp_path / "out2")["a"]["error"].startswith("gave up after 1 attempts")


def test_unreachable_server_is_left_out(tmp_path):
    jobs = simple_jobs(tmp_path, ["a"])
    with fake_servers({}, {}) as (gone, live):
        gone.stop()
        code, err = run_cli("--jobs", jobs, "--out", tmp_path / "out", *servers_args(gone, live))
    assert code == 0, err
    assert f"leaving {gone.url} out of this batch" in err


def test_a_portrait_is_uploaded_once_per_server_and_its_encoding_stays_cached(tmp_path):
    # anna, ben, anna, ben: the server prefers the portrait it just used, so the order becomes
    # anna, anna, ben, ben and the ReferenceNet encoding (node 4) runs once per portrait.
    rows = []
    for i, who in enumerate(["anna", "ben", "anna", "ben"]):
        rows.append({"portrait": str(portrait(tmp_path / f"{who}.png", who)),
                     "audio": str(audio(tmp_path / f"line{i}.wav", f"line{i}")), "name": f"{who}{i}"})
    jobs = write_csv(tmp_path / "jobs.csv", rows)
    with fake_servers({}) as (server,):
        assert run_cli("--jobs", jobs, "--out", tmp_path / "out", *servers_args(server))[0] == 0
        portrait_uploads = [u["name"] for u in server.uploads if u["name"].endswith(".png")]
        assert sorted(portrait_uploads) == sorted({*portrait_uploads}) and len(portrait_uploads) == 2
        order = [p["prompt"]["12"]["inputs"]["filename_prefix"] for p in server.prompts]
        encoded = [pid for pid, nodes in server.executed.items() if "4" in nodes]
    assert order == ["emo_batch/anna0", "emo_batch/anna2", "emo_batch/ben1", "emo_batch/ben3"]
    assert len(encoded) == 2


def test_same_portrait_on_two_servers_is_uploaded_once_to_each(tmp_path):
    jobs = simple_jobs(tmp_path, ["a", "b", "c", "d"], same_portrait=True)
    with fake_servers({"step_delay": 0.02}, {"step_delay": 0.02}) as (a, b):
        assert run_cli("--jobs", jobs, "--out", tmp_path / "out", *servers_args(a, b))[0] == 0
        for server in (a, b):
            assert server.prompts
            assert [u["name"].split("-")[0] for u in server.uploads if u["name"].endswith(".png")] == ["shared"]


def test_missing_bindings_and_bad_options_exit_2_before_any_upload(tmp_path):
    rows = [{"portrait": str(portrait(tmp_path / "p.png", "p")), "audio": str(audio(tmp_path / "a.wav", "a")),
             "speed": "1.5"}]
    jobs = write_csv(tmp_path / "jobs.csv", rows)
    wf = load_fixture_workflow()
    del wf["8"]
    (tmp_path / "wf.json").write_text(json.dumps(wf))
    with fake_servers({}) as (server,):
        code, err = run_cli("--jobs", jobs, "--out", tmp_path / "out", "--workflow", tmp_path / "wf.json",
                            *servers_args(server))
        assert code == 2 and "no EMO_SpeedConstant node" in err
        code, err = run_cli("--jobs", jobs, "--out", tmp_path / "out", "--bind", "speed=9.nope", *servers_args(server))
        assert code == 2 and "has no input 'nope'" in err
        assert server.uploads == [] and server.prompts == []


def test_dry_run_shows_the_plan_and_renders_nothing(tmp_path):
    jobs = simple_jobs(tmp_path, ["a", "b"])
    with fake_servers({}) as (server,):
        code, err = run_cli("--jobs", jobs, "--out", tmp_path / "out", "--dry-run", *servers_args(server))
        assert code == 0 and server.uploads == [] and server.prompts == []
    assert "would render a:" in err and "would render b:" in err


def test_folder_pairs_from_the_command_line(tmp_path):
    for who in ("anna", "ben"):
        portrait(tmp_path / "img" / f"{who}.png", who)
        audio(tmp_path / "snd" / f"{who}.wav", who)
    with fake_servers({}) as (server,):
        code, err = run_cli("--portraits", tmp_path / "img", "--audio", tmp_path / "snd", "--out", tmp_path / "out",
                            *servers_args(server))
    assert code == 0, err
    assert video_info(tmp_path / "out" / "ben.mp4")["image"].startswith("emo_batch/ben-")


def test_ctrl_c_cancels_the_running_prompt_and_exits_130(tmp_path):
    jobs = simple_jobs(tmp_path, ["a", "b"])
    with fake_servers({"step_delay": 0.2}) as (server,):
        def press_ctrl_c():
            deadline = time.monotonic() + 10
            while not server.running and time.monotonic() < deadline:
                time.sleep(0.01)
            _thread.interrupt_main()

        threading.Thread(target=press_ctrl_c, daemon=True).start()
        code, err = run_cli("--jobs", jobs, "--out", tmp_path / "out", *servers_args(server))
        assert code == 130 and "rerun the same command to resume" in err
        entry = manifest_jobs(tmp_path / "out")["a"]
        assert entry["state"] == "running" and len(server.prompts) == 1
        assert server.deleted == [entry["prompt_id"]] and server.interrupts == [{"prompt_id": entry["prompt_id"]}]
    assert not (tmp_path / "out" / "a.mp4").exists()
