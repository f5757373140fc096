"""The web/ extension: its JavaScript unit tests (tests/js, run with Node.js's own test runner) and static
checks of what ComfyUI's frontend will load from WEB_DIRECTORY (every .js file under web/)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"
JS_TESTS = ROOT / "tests" / "js"
# The frontend's public modules. Newer frontends (1.58) print "an internal module, not part of the public API"
# for every other scripts/*.js an extension imports (widgets.js, domWidget.js, ...).
COMFY_MODULES = {"../../scripts/app.js", "../../scripts/api.js"}

_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_LINE_COMMENT = re.compile(r"^\s*//.*$", re.M)
_STATIC_IMPORT = re.compile(r"""\b(?:import|export)\b[^;"'`]*?\bfrom\s*["']([^"']+)["']|\bimport\s*["']([^"']+)["']""")
_DYNAMIC_IMPORT = re.compile(r"\bimport\s*\(")
_REGISTER = re.compile(r"\bregisterExtension\s*\(")
_REGISTER_NAME = re.compile(r"""\bregisterExtension\s*\(\s*\{\s*name\s*:\s*["']([^"']+)["']""")


def _web_js_files() -> list[Path]:
    return sorted(WEB.rglob("*.js"))


def _code(path: Path) -> str:
    """The file's text without comments, so that prose about imports is not read as an import."""
    return _LINE_COMMENT.sub("", _BLOCK_COMMENT.sub("", path.read_text(encoding="utf-8")))


def _imports(path: Path) -> list[str]:
    return [a or b for a, b in _STATIC_IMPORT.findall(_code(path))]


def _node_version(node: str) -> tuple[int, int]:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    major, minor = (int(part) for part in out.lstrip("v").split(".")[:2])
    return major, minor


def _has_module_register(major: int, minor: int) -> bool:
    """node:module register (loads web/*.js as ES modules with ComfyUI stubbed): 18.19+, 20.6+, 21+."""
    return (major, minor) >= (18, 19) and major != 19 and (major, minor) not in {(20, m) for m in range(6)}


def test_web_js_unit_tests_pass():
    node = shutil.which("node")
    if node is None:
        pytest.skip("needs Node.js (node) on PATH to run the web/ unit tests")
    major, minor = _node_version(node)
    if not _has_module_register(major, minor):
        pytest.fail(f"Node.js {major}.{minor} is too old for the web/ unit tests; install 18.19+, 20.6+ or 21+")
    files = sorted(str(p.relative_to(ROOT)) for p in JS_TESTS.glob("*.test.mjs"))
    assert files, f"no *.test.mjs files in {JS_TESTS}"
    hooks = (JS_TESTS / "register_web_hooks.mjs").as_uri()
    cmd = [node, "--import", hooks, "--test", "--test-reporter=spec", *files]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (f"{' '.join(cmd)} exited with {proc.returncode}\n"
                                  f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")


def test_web_has_extension_files():
    names = {p.name for p in _web_js_files()}
    assert {"emo_format.js", "emo_hooks.js", "emo_audio_info.js", "emo_face_preview.js",
            "emo_sampler_progress.js", "emo_model_info.js"} <= names


@pytest.mark.parametrize("path", _web_js_files(), ids=lambda p: p.relative_to(WEB).as_posix())
def test_web_js_imports_only_comfyui_and_local_files(path):
    assert not _DYNAMIC_IMPORT.search(_code(path)), f"{path.name}: dynamic import()"
    for spec in _imports(path):
        if spec in COMFY_MODULES:
            continue
        assert not spec.startswith("../../scripts/"), f"{path.name}: {spec!r} is not a public frontend module"
        assert spec.startswith(("./", "../")), f"{path.name}: bare import {spec!r} (no npm packages in web/)"
        target = (path.parent / spec).resolve()
        assert target.is_relative_to(WEB.resolve()), f"{path.name}: {spec!r} points outside web/"
        assert target.is_file(), f"{path.name}: {spec!r} does not exist"


@pytest.mark.parametrize("path", _web_js_files(), ids=lambda p: p.relative_to(WEB).as_posix())
def test_web_js_extension_names_are_namespaced(path):
    code = _code(path)
    calls = len(_REGISTER.findall(code))
    names = _REGISTER_NAME.findall(code)
    assert len(names) == calls, f"{path.name}: each registerExtension({{ name: ... }}) needs a literal name first"
    for name in names:
        assert name.startswith("EMO.") and len(name) > 4, f"{path.name}: extension name {name!r} must be EMO.<Feature>"
    if not calls:
        # ComfyUI imports helper modules as extensions too: they stay free of ComfyUI imports and side effects.
        assert not COMFY_MODULES & set(_imports(path)), f"{path.name}: a helper module imports ComfyUI"


def test_web_extension_names_are_unique():
    names = [n for p in _web_js_files() for n in _REGISTER_NAME.findall(_code(p))]
    assert names and len(names) == len(set(names)), names
