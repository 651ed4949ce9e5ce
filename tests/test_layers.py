"""The import rules of docs/architecture.md: layers go one way, bottom to top; siblings in a layer
do not import each other; no private name crosses a package; no import of the project's own code
hides inside a function; only the slow or single-command packages in LAZY are imported lazily."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Bottom to top. A module may import its own unit and any layer below its own.
LAYERS = [
    ["pipeline.errors"],
    ["pipeline.atomic", "pipeline.machine"],
    ["pipeline.data"],
    ["pipeline.model"],
    ["pipeline.lowrank"],
    ["pipeline.task"],
    ["pipeline.lm_task"],
    ["pipeline.train"],
    ["export"],
    ["pipeline.latency"],
    ["pipeline.bench", "pipeline.search"],
    ["pipeline.report"],
    ["pipeline.finetune"],
    ["pipeline.compress"],
    ["pipeline.asr_task"],
    ["pipeline.cli"],
    ["pipeline.__main__"],
]
# Imported inside functions on purpose: plotting (matplotlib) and Ray are slow to import and used by
# one stage each; onnxruntime's quantiser only by `export --int8`; rdata only when building a corpus.
LAZY = {"matplotlib", "matplotlib.pyplot", "ray", "ray.util", "onnxruntime.quantization", "rdata"}


def unit(module):
    """(layer index, unit) of a project module, or None for a module outside the project."""
    for i, layer in enumerate(LAYERS):
        for u in layer:
            if module == u or module.startswith(u + "."):
                return i, u
    return None


def modules(root):
    """(module name, path) of every Python file of pipeline/ and export/ under `root`."""
    for path in sorted([*root.glob("pipeline/**/*.py"), *root.glob("export/*.py")]):
        parts = path.relative_to(root).with_suffix("").parts
        yield ".".join(p for p in parts if p != "__init__"), path


def imports(root, path, module):
    """(line, imported module, names taken from it, at top level) of every import in a file."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top = {id(n) for n in tree.body}
    is_module = lambda m: (root / m.replace(".", "/")).with_suffix(".py").exists() or (root / m.replace(".", "/")).is_dir()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, [], id(node) in top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:  # `from pipeline.lowrank import factorize` imports a module, not a name
                sub = f"{base}.{a.name}"
                yield (node.lineno, sub, [], id(node) in top) if is_module(sub) else \
                      (node.lineno, base, [a.name], id(node) in top)


def violations(root):
    bad = []
    for module, path in modules(root):
        own = unit(module)
        for line, target, names, top in imports(root, path, module):
            where = f"{path.relative_to(root)}:{line} imports {target}"
            dest = unit(target)
            if not top and target not in LAZY:
                bad.append(where + " inside a function")
            if own is None or dest is None:
                continue
            if dest[0] > own[0] or (dest[0] == own[0] and dest[1] != own[1]):
                bad.append(where + ": a layer above, or a sibling")
            if dest[1] != own[1] and any(n.startswith("_") for n in names):
                bad.append(where + f": private names {names}")
    return bad


def test_every_module_has_a_layer():
    assert [m for m, _ in modules(ROOT) if unit(m) is None and m != "pipeline"] == []


def test_imports_follow_the_layers():
    assert violations(ROOT) == []


# Stages that work on any model (docs/your-model.md): they may not import the recogniser, its
# checkpoint or its task; the recogniser reaches them as a Task.
MODEL_AGNOSTIC = ("pipeline.task", "pipeline.search", "pipeline.compress", "export.generic")
RECOGNISER = ("pipeline.model", "pipeline.lowrank.checkpoint", "pipeline.asr_task", "pipeline.data")


def recogniser_imports(root):
    return [f"{path.relative_to(root)}:{line} imports {target}" for module, path in modules(root)
            if module.startswith(MODEL_AGNOSTIC)
            for line, target, _, _ in imports(root, path, module) if target.startswith(RECOGNISER)]


def test_search_compress_and_the_generic_exporter_know_no_recogniser():
    assert recogniser_imports(ROOT) == []


def test_the_check_catches_upward_private_and_hidden_imports(tmp_path):
    for mod in ("pipeline/model", "pipeline/search", "pipeline/data"):
        (tmp_path / mod).mkdir(parents=True)
        (tmp_path / mod / "__init__.py").write_text("")
    (tmp_path / "pipeline/search/run.py").write_text("")
    (tmp_path / "pipeline/data/audio.py").write_text("_x = 1\n")
    (tmp_path / "pipeline/model/m.py").write_text(
        "from pipeline.search.run import search\nfrom pipeline.data.audio import _x\n"
        "def f():\n    import json\n")
    assert violations(tmp_path) == [
        "pipeline/model/m.py:1 imports pipeline.search.run: a layer above, or a sibling",
        "pipeline/model/m.py:2 imports pipeline.data.audio: private names ['_x']",
        "pipeline/model/m.py:4 imports json inside a function"]
