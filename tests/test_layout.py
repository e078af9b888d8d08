"""The house's import rules, read from the source: imports flow one way (DESIGN.md, "Layout")."""

import ast
from pathlib import Path

import pytest

from landmark_kaggle import kernels

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"landmark_kaggle": REPO / "src" / "landmark_kaggle", "tfrec_builder": REPO / "tfrec_builder"}


def _imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body (lazy imports included)."""
    graph: dict[str, set[str]] = {}
    for pkg, folder in PACKAGES.items():
        for path in folder.glob("*.py"):
            deps: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module in PACKAGES:
                    deps |= {f"{node.module}.{a.name}" for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                    deps.add(node.module)
                elif isinstance(node, ast.Import):
                    deps |= {a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
            graph[f"{pkg}.{path.stem}"] = {d for d in deps if d != f"{pkg}.__version__"}
    return graph


GRAPH = _imports()


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
    assert "landmark_kaggle.pipeline" in GRAPH["landmark_kaggle.train"]
    assert "landmark_kaggle.layers" in GRAPH["landmark_kaggle.model"]


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_import_circle(module):
    assert module not in _reachable(module), f"{module} imports itself through {sorted(_reachable(module))}"


def test_the_model_module_imports_no_training_code():
    training = {"optim", "schedule", "train", "partial_fc", "distribute", "train_embeddings"}
    assert not {m for m in _reachable("landmark_kaggle.model") if m.split(".")[-1] in training}


def test_inference_flows_one_way():
    assert "landmark_kaggle.predict" not in _reachable("landmark_kaggle.retrieval")
    assert "landmark_kaggle.predict" not in _reachable("landmark_kaggle.embed_index")
    assert not {"landmark_kaggle.train", "landmark_kaggle.optim"} & _reachable("landmark_kaggle.predict")
    assert not {"landmark_kaggle.model", "landmark_kaggle.train"} & _reachable("landmark_kaggle.metrics")


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
    path = PACKAGES["landmark_kaggle"] / f"{module}.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", ["train", "optim", "model", "layers", "schedule", "memory", "kaggletrain",
                                    "efficientnet_lite", "pth"])
def test_the_trainer_is_backend_neutral(module):
    # TensorFlow-only and JAX-only code lives in distribute.py (backend.py only looks for a TPU before Keras loads).
    assert not {"tensorflow", "jax"} & _third_party(module)
