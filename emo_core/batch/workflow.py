"""The API-format workflow: find where each job field goes, substitute values, check the reference branch.

An API workflow is `{"<node id>": {"class_type": str, "inputs": {name: value | [source id, slot]}}}`.
Fields are bound by node id and input name, found by class_type (exactly one node each) or given
explicitly with `--bind field=NODE_ID.input_name`; nothing depends on the order of the nodes.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import WorkflowError

# field -> (class_types, input name): the one node of any of those types takes the field. The API contract
# of the pack's nodes and of the core loaders. The output is Save Video's, or EMO Save Video (Streaming)'s in
# workflows for long audio.
FIELDS = {
    "portrait": (("LoadImage",), "image"),
    "audio": (("LoadAudio",), "audio"),
    "seed": (("EMO_Sampler",), "seed"),
    "steps": (("EMO_Sampler",), "steps"),
    "speed": (("EMO_SpeedConstant",), "speed"),
    "output": (("SaveVideo", "EMO_SaveVideo"), "filename_prefix"),
}
REQUIRED = ("portrait", "audio", "output")
REFERENCE_CLASS = "EMO_ReferenceEncode"


@dataclass(frozen=True)
class Target:
    """One input of one node."""
    node: str
    input: str

    def __str__(self) -> str:
        return f"{self.node}.{self.input}"


@dataclass(frozen=True)
class Binding:
    """Where each job field goes. Fields that could not be bound keep the reason in `problems`."""
    targets: dict[str, Target]
    problems: dict[str, str]

    def __getitem__(self, field: str) -> Target:
        self.require([field])
        return self.targets[field]

    def get(self, field: str) -> Target | None:
        return self.targets.get(field)

    def require(self, fields) -> None:
        """Raise `WorkflowError` naming every field of `fields` that has no target."""
        missing = [self.problems[f] for f in fields if f not in self.targets]
        if missing:
            raise WorkflowError("; ".join(missing))


def load_workflow(path: str | Path) -> dict:
    """Read an API-format workflow; the UI format (nodes + links) is refused with how to export the API one."""
    path = Path(path)
    if not path.is_file():
        raise WorkflowError(f"workflow {path} does not exist; pass --workflow with an API-format workflow")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise WorkflowError(f"workflow {path} is not valid JSON: {err}") from err
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise WorkflowError(f"{path} is a UI workflow; save it with 'Export (API)' in ComfyUI and pass that file")
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]
    if not isinstance(data, dict) or not data or not all(
            isinstance(n, dict) and "class_type" in n and isinstance(n.get("inputs"), dict) for n in data.values()):
        raise WorkflowError(f"{path} is not an API workflow ({{node id: {{class_type, inputs}}}})")
    return data


def parse_bind(text: str) -> tuple[str, Target]:
    """`"portrait=12.image"` -> `("portrait", Target("12", "image"))`."""
    field, sep, where = text.partition("=")
    node, dot, name = where.strip().rpartition(".")
    field = field.strip()
    if not sep or not dot or not node or not name:
        raise WorkflowError(f"--bind {text!r} must look like field=NODE_ID.input_name, e.g. portrait=12.image")
    if field not in FIELDS:
        raise WorkflowError(f"--bind {text!r}: unknown field {field!r}; fields: {', '.join(FIELDS)}")
    return field, Target(node, name)


def bind(workflow: dict, overrides: dict[str, Target] | None = None) -> Binding:
    """Find the target of every field: the override if given, else the one node of the field's class_type."""
    overrides = overrides or {}
    targets: dict[str, Target] = {}
    problems: dict[str, str] = {}
    for field, (class_types, input_name) in FIELDS.items():
        try:
            if field in overrides:
                targets[field] = _check_override(workflow, field, overrides[field])
            else:
                targets[field] = _find(workflow, field, class_types, input_name)
        except WorkflowError as err:
            problems[field] = str(err)
    return Binding(targets, problems)


def _check_override(workflow: dict, field: str, target: Target) -> Target:
    node = workflow.get(target.node)
    if node is None:
        raise WorkflowError(f"--bind {field}={target}: the workflow has no node {target.node!r}")
    if target.input not in node["inputs"]:
        raise WorkflowError(f"--bind {field}={target}: node {target.node} ({node['class_type']}) has no input "
                            f"{target.input!r}; it has {', '.join(node['inputs']) or 'none'}")
    if is_link(node["inputs"][target.input]):
        raise WorkflowError(f"--bind {field}={target}: that input is connected to another node; bind a widget value")
    return target


def _find(workflow: dict, field: str, class_types: tuple[str, ...], input_name: str) -> Target:
    ids = sorted((i for i, n in workflow.items() if n["class_type"] in class_types), key=_id_order)
    hint = f"--bind {field}=NODE_ID.{input_name}"
    kind = " or ".join(class_types)
    if not ids:
        raise WorkflowError(f"{field}: the workflow has no {kind} node; add one or pass {hint}")
    if len(ids) > 1:
        raise WorkflowError(f"{field}: the workflow has {len(ids)} {kind} nodes (ids {', '.join(ids)}); "
                            f"pass {hint} to choose one")
    return Target(ids[0], input_name)


def _id_order(node_id: str):
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def is_link(value) -> bool:
    """An API input that is a connection `[source node id, output slot]` rather than a widget value."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def substitute(workflow: dict, binding: Binding, values: dict) -> dict:
    """A copy of `workflow` with `values` (field -> value) written to their bound inputs."""
    binding.require(values)
    prompt = copy.deepcopy(workflow)
    for field, value in values.items():
        target = binding.targets[field]
        prompt[target.node]["inputs"][target.input] = value
    return prompt


def upstream(workflow: dict, node_ids) -> set[str]:
    """Every node the given nodes depend on through links, the given nodes included."""
    seen: set[str] = set()
    stack = [i for i in node_ids if i in workflow]
    while stack:
        node_id = stack.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        for value in workflow[node_id]["inputs"].values():
            if is_link(value) and value[0] in workflow:
                stack.append(value[0])
    return seen


@dataclass(frozen=True)
class ReferenceBranchReport:
    """What the ReferenceNet encoding depends on.

    ComfyUI reuses a node's cached output while its inputs and everything upstream stay the same, so the
    reference encoding is computed once per portrait only if nothing per-clip (audio, seed, steps, speed,
    output name) feeds it.
    """
    reference_nodes: tuple[str, ...]
    audio_nodes: tuple[str, ...]
    per_job_nodes: tuple[str, ...]

    @property
    def depends_on_audio(self) -> bool:
        return bool(self.audio_nodes)

    @property
    def ok(self) -> bool:
        return bool(self.reference_nodes) and not self.audio_nodes and not self.per_job_nodes

    def describe(self) -> str:
        if not self.reference_nodes:
            return f"no {REFERENCE_CLASS} node in the workflow"
        parts = []
        if self.audio_nodes:
            parts.append(f"depends on audio node(s) {', '.join(self.audio_nodes)}")
        if self.per_job_nodes:
            parts.append(f"depends on per-job node(s) {', '.join(self.per_job_nodes)}")
        where = f"{REFERENCE_CLASS} {', '.join(self.reference_nodes)}"
        if not parts:
            return f"{where} depends on the portrait only: its encoding is cached while only the audio changes"
        return f"{where} {' and '.join(parts)}: it is recomputed for every job"


def check_reference_branch(workflow: dict, binding: Binding | None = None) -> ReferenceBranchReport:
    """Report whether the nodes upstream of `EMO_ReferenceEncode` depend on any audio or per-job node.

    Audio nodes: the bound audio node and every node whose class_type mentions "Audio". Per-job nodes:
    the nodes bound to seed, steps, speed and output.
    """
    binding = binding or bind(workflow)
    refs = tuple(sorted((i for i, n in workflow.items() if n["class_type"] == REFERENCE_CLASS), key=_id_order))
    branch = upstream(workflow, refs)
    audio = {i for i in branch if "Audio" in workflow[i]["class_type"]}
    if binding.get("audio") and binding.targets["audio"].node in branch:
        audio.add(binding.targets["audio"].node)
    per_job = {t.node for f, t in binding.targets.items() if f in ("seed", "steps", "speed", "output")} & branch
    return ReferenceBranchReport(refs, tuple(sorted(audio, key=_id_order)),
                                 tuple(sorted(per_job - audio, key=_id_order)))
