"""Binding job fields to the API workflow by node id and input name, and the reference-branch check."""
from __future__ import annotations

import copy
import json
import random

import pytest
from batch_helpers import load_fixture_workflow

from emo_core.batch.errors import WorkflowError
from emo_core.batch.workflow import (Target, bind, check_reference_branch, is_link, load_workflow, parse_bind,
                                     substitute)

VALUES = {"portrait": "emo_batch/anna-0123.png", "audio": "emo_batch/anna-4567.wav", "output": "emo_batch/anna",
          "seed": 9, "steps": 5, "speed": 1.5}
EXPECTED = {("LoadImage", "image"): VALUES["portrait"], ("LoadAudio", "audio"): VALUES["audio"],
            ("SaveVideo", "filename_prefix"): VALUES["output"], ("EMO_Sampler", "seed"): 9,
            ("EMO_Sampler", "steps"): 5, ("EMO_SpeedConstant", "speed"): 1.5}


def renumbered(workflow: dict, seed: int) -> tuple[dict, dict]:
    """The same graph with new random node ids, in shuffled order; returns it and old id -> new id."""
    rng = random.Random(seed)
    ids = list(workflow)
    new_ids = [str(n) for n in rng.sample(range(100, 999), len(ids))]
    mapping = dict(zip(ids, new_ids))
    out = {}
    for old in rng.sample(ids, len(ids)):
        node = copy.deepcopy(workflow[old])
        node["inputs"] = {k: [mapping[v[0]], v[1]] if is_link(v) else v for k, v in node["inputs"].items()}
        out[mapping[old]] = node
    return out, mapping


def test_binding_finds_each_field_by_class_type():
    binding = bind(load_fixture_workflow())
    assert {f: str(t) for f, t in binding.targets.items()} == {
        "portrait": "2.image", "audio": "5.audio", "seed": "9.seed", "steps": "9.steps", "speed": "8.speed",
        "output": "12.filename_prefix"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_substitution_goes_by_node_id_not_position(seed):
    original = load_fixture_workflow()
    shuffled, mapping = renumbered(original, seed)
    assert list(shuffled) != list(original)
    prompt = substitute(shuffled, bind(shuffled), VALUES)
    for node_id, node in prompt.items():
        for name, value in node["inputs"].items():
            want = EXPECTED.get((node["class_type"], name))
            assert value == want if want is not None else value == shuffled[node_id]["inputs"][name]
    assert shuffled == renumbered(original, seed)[0], "substitute must not modify the template"
    # The same graph: substituting in the original and renaming gives the same prompt.
    assert renumbered(substitute(original, bind(original), VALUES), seed)[0] == prompt


def test_explicit_bind_overrides_the_class_type_search():
    wf = load_fixture_workflow()
    wf["13"] = {"class_type": "LoadImage", "inputs": {"image": "second.png", "upload": "image"}}
    binding = bind(wf)
    with pytest.raises(WorkflowError, match=r"2 LoadImage nodes \(ids 2, 13\); pass --bind portrait=NODE_ID.image"):
        binding.require(["portrait"])
    binding = bind(wf, dict([parse_bind("portrait=13.image")]))
    prompt = substitute(wf, binding, {"portrait": "p.png"})
    assert prompt["13"]["inputs"]["image"] == "p.png" and prompt["2"]["inputs"]["image"] == "example.png"


@pytest.mark.parametrize("text, match", [
    ("portrait", "must look like field=NODE_ID.input_name"),
    ("colour=2.image", "unknown field 'colour'"),
    ("portrait=2", "must look like"),
])
def test_bad_bind_options(text, match):
    with pytest.raises(WorkflowError, match=match):
        parse_bind(text)


@pytest.mark.parametrize("target, match", [
    (Target("99", "image"), "has no node '99'"),
    (Target("2", "picture"), r"no input 'picture'; it has image, upload"),
    (Target("4", "image"), "connected to another node"),
])
def test_bind_to_a_missing_or_connected_input_is_refused(target, match):
    binding = bind(load_fixture_workflow(), {"portrait": target})
    with pytest.raises(WorkflowError, match=match):
        binding.require(["portrait"])


def test_speed_without_a_speed_node_is_a_clear_error_only_when_used():
    wf = load_fixture_workflow()
    del wf["8"]
    wf["9"]["inputs"]["speed"] = 1.0
    binding = bind(wf)
    substitute(wf, binding, {"portrait": "p.png", "audio": "a.wav", "output": "o"})
    with pytest.raises(WorkflowError, match="speed: the workflow has no EMO_SpeedConstant node"):
        substitute(wf, binding, {"speed": 1.2})


def test_load_workflow_refuses_the_ui_format(tmp_path):
    (tmp_path / "ui.json").write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    with pytest.raises(WorkflowError, match="Export \\(API\\)"):
        load_workflow(tmp_path / "ui.json")
    (tmp_path / "bad.json").write_text(json.dumps({"1": {"inputs": {}}}))
    with pytest.raises(WorkflowError, match="not an API workflow"):
        load_workflow(tmp_path / "bad.json")


def test_fixture_reference_branch_depends_on_the_portrait_only():
    report = check_reference_branch(load_fixture_workflow())
    assert report.reference_nodes == ("4",)
    assert not report.depends_on_audio and report.ok
    assert "portrait only" in report.describe()


def test_reference_branch_fed_by_audio_is_reported():
    wf = load_fixture_workflow()
    wf["4"]["inputs"]["audio_features"] = ["6", 0]  # the reference encode now waits on the audio
    report = check_reference_branch(wf)
    assert report.depends_on_audio and report.audio_nodes == ("5", "6") and not report.ok
    assert "depends on audio node(s) 5, 6" in report.describe()


def test_reference_branch_fed_by_a_per_job_value_or_absent():
    wf = load_fixture_workflow()
    wf["4"]["inputs"]["speed"] = ["8", 0]
    report = check_reference_branch(wf)
    assert not report.depends_on_audio and report.per_job_nodes == ("8",) and not report.ok
    del wf["4"]
    assert check_reference_branch(wf).describe() == "no EMO_ReferenceEncode node in the workflow"


def test_the_packs_api_workflow_binds_every_field_and_keeps_the_reference_branch_portrait_only():
    from emo_core.batch.__main__ import DEFAULT_WORKFLOW
    from emo_core.batch.workflow import FIELDS
    workflow = load_workflow(DEFAULT_WORKFLOW)
    binding = bind(workflow)
    binding.require(FIELDS)
    report = check_reference_branch(workflow, binding)
    assert report.ok, report.describe()


def test_the_output_is_save_videos_or_the_streaming_savers():
    wf = load_fixture_workflow()
    (save_id,) = [i for i, n in wf.items() if n["class_type"] == "SaveVideo"]
    wf[save_id]["class_type"] = "EMO_SaveVideo"
    assert bind(wf)["output"] == Target(save_id, "filename_prefix")
    wf["999"] = {"class_type": "SaveVideo", "inputs": {"filename_prefix": "x"}}
    with pytest.raises(WorkflowError, match=f"2 SaveVideo or EMO_SaveVideo nodes \\(ids {save_id}, 999\\).*--bind output="):
        bind(wf)["output"]
    del wf["999"], wf[save_id]
    with pytest.raises(WorkflowError, match="no SaveVideo or EMO_SaveVideo node"):
        bind(wf)["output"]
