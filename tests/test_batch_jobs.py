"""Job lists: CSV, JSON and folder pairs give the same validated jobs; bad lists say what is wrong."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from batch_helpers import audio, portrait, write_csv
from conftest import ROOT

from emo_core.batch.errors import JobSpecError
from emo_core.batch.jobs import Job, fingerprint, load_jobs, pair_folders


@pytest.fixture
def media(tmp_path):
    portrait(tmp_path / "img" / "anna.png", "anna")
    portrait(tmp_path / "img" / "ben.jpg", "ben")
    audio(tmp_path / "snd" / "anna.wav", "anna")
    audio(tmp_path / "snd" / "ben.mp3", "ben")
    return tmp_path


def test_csv_with_relative_paths_optional_cells_and_output_alias(media):
    path = write_csv(media / "jobs.csv", [
        {"portrait": "img/anna.png", "audio": "snd/anna.wav", "seed": "7", "speed": "1.25", "steps": "20",
         "output": "anna_take1"},
        {"portrait": str(media / "img" / "ben.jpg"), "audio": "snd/ben.mp3", "seed": "", "speed": "", "steps": "",
         "output": ""},
    ])
    jobs = load_jobs(path)
    assert jobs == [
        Job("anna_take1", media / "img/anna.png", media / "snd/anna.wav", seed=7, speed=1.25, steps=20),
        Job("ben", media / "img/ben.jpg", media / "snd/ben.mp3"),
    ]
    assert jobs[0].overrides() == {"seed": 7, "speed": 1.25, "steps": 20}
    assert jobs[1].overrides() == {}


def test_json_list_and_jobs_object_give_the_same_jobs(media):
    rows = [{"portrait": "img/anna.png", "audio": "snd/anna.wav", "seed": 3, "name": "a"},
            {"portrait": "img/ben.jpg", "audio": "snd/ben.mp3", "steps": 12, "speed": 0.5}]
    (media / "l.json").write_text(json.dumps(rows))
    (media / "o.json").write_text(json.dumps({"jobs": rows}))
    assert load_jobs(media / "l.json") == load_jobs(media / "o.json")
    assert [j.name for j in load_jobs(media / "l.json")] == ["a", "ben"]
    assert load_jobs(media / "l.json")[1].overrides() == {"steps": 12, "speed": 0.5}


def test_folders_pair_by_file_name(media):
    portrait(media / "img" / "extra.png", "no audio for this one")
    jobs = pair_folders(media / "img", media / "snd")
    assert [(j.name, j.portrait.name, j.audio.name) for j in jobs] == [("anna", "anna.png", "anna.wav"),
                                                                      ("ben", "ben.jpg", "ben.mp3")]


def test_one_portrait_file_speaks_every_audio_file(media):
    jobs = pair_folders(media / "img" / "anna.png", media / "snd")
    assert {j.portrait.name for j in jobs} == {"anna.png"} and [j.name for j in jobs] == ["anna", "ben"]


def test_audio_without_portrait_is_named(media):
    audio(media / "snd" / "carl.wav", "carl")
    with pytest.raises(JobSpecError, match="carl.wav"):
        pair_folders(media / "img", media / "snd")


@pytest.mark.parametrize("row, match", [
    ({"portrait": "img/anna.png", "audio": "snd/anna.wav", "colour": "red"}, "unknown column 'colour'"),
    ({"portrait": "img/anna.png"}, "no 'audio'"),
    ({"portrait": "img/nobody.png", "audio": "snd/anna.wav"}, "portrait file .*nobody.png does not exist"),
    ({"portrait": "img/anna.png", "audio": "snd/anna.wav", "seed": "4.5"}, "seed must be a whole number"),
    ({"portrait": "img/anna.png", "audio": "snd/anna.wav", "seed": "-1"}, "seed=-1 is outside"),
    ({"portrait": "img/anna.png", "audio": "snd/anna.wav", "steps": "0"}, "steps=0 is outside"),
    ({"portrait": "img/anna.png", "audio": "snd/anna.wav", "speed": "fast"}, "speed must be a number"),
    ({"portrait": "img/anna.png", "audio": "snd/anna.wav", "speed": "nan"}, "speed must be a finite number"),
    ({"portrait": "img/anna.png", "audio": "snd/anna.wav", "name": "../x"}, "not a usable file name"),
])
def test_bad_rows_say_what_is_wrong(media, row, match):
    path = write_csv(media / "jobs.csv", [row])
    with pytest.raises(JobSpecError, match=match):
        load_jobs(path)


def test_duplicate_names_are_refused(media):
    path = write_csv(media / "jobs.csv", [{"portrait": "img/anna.png", "audio": "snd/anna.wav"},
                                          {"portrait": "img/ben.jpg", "audio": "snd/anna.wav"}])
    with pytest.raises(JobSpecError, match="jobs 1 and 2 both have the name 'anna'"):
        load_jobs(path)


def test_empty_and_unknown_formats(media):
    (media / "empty.json").write_text("[]")
    with pytest.raises(JobSpecError, match="empty"):
        load_jobs(media / "empty.json")
    (media / "jobs.txt").write_text("x")
    with pytest.raises(JobSpecError, match="use .csv or .json"):
        load_jobs(media / "jobs.txt")


def test_fingerprint_follows_contents_and_values_not_names(media):
    job = Job("a", media / "img/anna.png", media / "snd/anna.wav", seed=1)
    assert fingerprint(job) == fingerprint(Job("other", job.portrait, job.audio, seed=1))
    assert fingerprint(job) != fingerprint(Job("a", job.portrait, job.audio, seed=2))
    audio(job.audio, "new words")
    assert fingerprint(job) != fingerprint(Job("a", job.portrait, media / "snd/ben.mp3", seed=1))


BLOCKER = r'''
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "comfy", "comfy_api", "folder_paths", "server", "nodes", "execution"}:
            raise ImportError(f"blocked in this test: {name}")
sys.meta_path.insert(0, Block())
import emo_core.batch, emo_core.batch.__main__, emo_core.batch.scheduler
assert "websockets" not in sys.modules
print("ok")
'''


def test_the_batch_client_imports_without_torch_or_comfyui():
    out = subprocess.run([sys.executable, "-c", BLOCKER], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_without_websockets_the_command_says_what_to_install(tmp_path):
    code = BLOCKER.split("import emo_core.batch,")[0].replace('"torch", ', '"torch", "websockets", ') + (
        "from emo_core.batch.__main__ import main\n"
        f"sys.exit(main(['--jobs', 'jobs.csv', '--out', {str(tmp_path / 'out')!r}]))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "pip install 'comfyui-emo[batch]' (or pip install websockets)" in out.stderr
