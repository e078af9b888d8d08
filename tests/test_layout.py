"""The house's layout rules, read from the source: subpackages by idea, imports flowing one way (DESIGN.md, "Layout").

The rooms, lowest first: the shared top modules (config, errors, fileio, paths) ← ``data`` ←
``evaluate`` / ``model`` ← ``train`` / ``infer`` ← ``kaggle`` ← the command line (cli, clibase, dryrun).
``infer`` never imports ``train``; nothing but the command line imports the Kaggle layer.
"""

import ast
from pathlib import Path

import pytest

from landmark_kaggle.kaggle import kernels

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "landmark_kaggle"
PACKAGES = {"landmark_kaggle": SRC, "tfrec_builder": REPO / "tfrec_builder"}
SHARED = {"config", "config_args", "config_migrate", "errors", "fileio", "paths", "__init__"}
COMMAND_LINE = {"cli", "clibase", "dryrun"}
# Which rooms each room may import (its own included).
ALLOWED = {
    "top": {"top"},
    "data": {"top", "data"},
    "evaluate": {"top", "data", "evaluate"},
    "model": {"top", "data", "model"},
    "train": {"top", "data", "evaluate", "model", "train"},
    "infer": {"top", "data", "evaluate", "model", "infer"},
    "kaggle": {"top", "data", "evaluate", "model", "train", "infer", "kaggle"},
    "tfrec_builder": {"top", "data", "evaluate", "model", "infer", "tfrec_builder"},
}


def _module_name(path: Path, pkg: str, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join([pkg, *parts])


def _modules() -> dict[str, Path]:
    return {_module_name(p, pkg, root): p for pkg, root in PACKAGES.items() for p in sorted(root.rglob("*.py"))}


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module an import names: ``a.b.c`` may be the module ``a.b.c`` or the name ``c`` in ``a.b``."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body (lazy imports included)."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.split(".")[0] in PACKAGES]
            deps |= {r for r in map(_resolve, names) if r and r != "landmark_kaggle"}
        graph[module] = deps - {module}
    return graph


GRAPH = _imports()


def room(module: str) -> str:
    pkg, _, rest = module.partition(".")
    if pkg == "tfrec_builder":
        return "command_line" if rest == "cli" else "tfrec_builder"
    first = rest.split(".")[0]
    if first in SHARED or not rest:
        return "top"
    return "command_line" if first in COMMAND_LINE else first


def _reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in GRAPH.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_the_graph_is_read():
    # A broken reader would pass every rule below; these edges are known to exist.
    assert "landmark_kaggle.data.pipeline" in GRAPH["landmark_kaggle.train.loop"]
    assert "landmark_kaggle.model.layers" in GRAPH["landmark_kaggle.model.network"]
    assert "landmark_kaggle.kaggle.build_kernels" in GRAPH["landmark_kaggle.kaggle.kernels"]
    assert room("landmark_kaggle.infer.predict") == "infer" and room("landmark_kaggle.paths") == "top"


def test_every_room_is_a_folder_with_an_entry_page():
    rooms = {room(m) for m in MODULES if m.startswith("landmark_kaggle.")}
    assert rooms == {"top", "data", "evaluate", "model", "train", "infer", "kaggle", "command_line"}
    for name in rooms - {"top", "command_line"}:
        assert ast.get_docstring(ast.parse((SRC / name / "__init__.py").read_text(encoding="utf-8")))


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if room(m) in ALLOWED))
def test_imports_flow_one_way(module):
    wrong = {d for d in GRAPH[module] if room(d) not in ALLOWED[room(module)]}
    assert not wrong, f"{module} ({room(module)}) imports {sorted(wrong)}"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_import_circle(module):
    assert module not in _reachable(module), f"{module} imports itself through {sorted(_reachable(module))}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_says_what_it_is_for_and_keeps_to_one_idea(module):
    text = MODULES[module].read_text(encoding="utf-8")
    assert ast.get_docstring(ast.parse(text)), f"{MODULES[module]} has no module docstring"
    assert text.count("\n") <= 400, f"{MODULES[module]} has {text.count(chr(10))} lines: split it by idea"


def test_the_model_imports_no_training_code():
    assert not {m for m in _reachable("landmark_kaggle.model.network") if room(m) == "train"}


def test_inference_flows_one_way():
    assert "landmark_kaggle.infer.predict" not in _reachable("landmark_kaggle.infer.retrieval")
    assert "landmark_kaggle.infer.predict" not in _reachable("landmark_kaggle.infer.embed_index")
    assert not {room(m) for m in _reachable("landmark_kaggle.infer.predict")} & {"train", "kaggle"}
    assert not {room(m) for m in _reachable("landmark_kaggle.evaluate.metrics")} & {"model", "train"}


def test_only_the_command_line_reaches_the_kaggle_layer():
    users = {m for m, deps in GRAPH.items() if room(m) != "kaggle" and any(room(d) == "kaggle" for d in deps)}
    assert not {m for m in users if room(m) != "command_line"}


def test_library_modules_never_import_the_cli_machinery():
    users = {m for m, deps in GRAPH.items() if "landmark_kaggle.clibase" in deps}
    assert users == {"landmark_kaggle.cli", "tfrec_builder.cli"}


def test_the_library_uses_the_builder_only_from_the_top():
    users = {m for m, deps in GRAPH.items() if m.startswith("landmark_kaggle.")
             and any(d.startswith("tfrec_builder") for d in deps)}
    assert users <= {"landmark_kaggle.cli", "landmark_kaggle.dryrun"}


def test_backends_and_the_mmseg_backend_do_not_import_each_other():
    assert "tfrec_builder.mmseg_backend" not in GRAPH["tfrec_builder.backends"]
    assert "tfrec_builder.keras_backends" not in GRAPH["tfrec_builder.backends"]


@pytest.mark.parametrize("name", sorted(kernels.KERNEL_TEMPLATES))
def test_every_launcher_renders_to_one_self_contained_script(name, tmp_path):
    folder = kernels.render_kernel(name, "alice", tmp_path)
    code = (folder / next(p.name for p in folder.glob("*.py"))).read_text(encoding="utf-8")
    compile(code, name, "exec")
    assert not kernels.PRELUDE_IMPORT.search(code)
    # The prelude is pasted, not copied by hand: its text is in the script exactly once.
    assert code.count((REPO / kernels.PRELUDE).read_text(encoding="utf-8").strip()) == 1


def _third_party(module: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", ["train.loop", "train.callbacks", "train.optim", "model.network", "model.layers",
                                    "train.schedule", "train.memory", "train.kaggle_session", "model.efficientnet_lite",
                                    "model.pth"])
def test_the_trainer_is_backend_neutral(module):
    # TensorFlow-only and JAX-only code lives in train/distribute.py (train/backend.py only looks for a TPU
    # before Keras loads).
    assert not {"tensorflow", "jax"} & _third_party(f"landmark_kaggle.{module}")
