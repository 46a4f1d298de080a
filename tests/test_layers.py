"""The package's layers (docs/architecture.md, "Layout"): imports point down only, and there is no import cycle.

Every module's imports are read from its source with `ast`, function-local imports included (a lazy import is
still a dependency), so the check needs no import to succeed and sees the optional extras' modules too.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "i2vgen"

# (rank, group) by module prefix, the longest prefix winning. A module may import a lower rank, or its own group.
LAYERS = {
    # ground floor: what everything above shares (config and weights files, value checks, noise, images, files)
    "i2vgen.checks": (0, "ground"), "i2vgen.loading": (0, "ground"), "i2vgen.noise": (0, "ground"),
    "i2vgen.preprocess": (0, "ground"), "i2vgen.video": (0, "ground"), "i2vgen.outputs": (0, "ground"),
    "i2vgen.model_hooks": (0, "ground"),
    "i2vgen.evaluation": (0, "ground"),
    # the core: models and samplers know nothing of each other; the pipeline uses both; LoRA adapts the UNet
    "i2vgen.models": (1, "models"), "i2vgen.schedulers": (1, "schedulers"),
    "i2vgen.pipelines": (2, "pipelines"), "i2vgen.lora": (2, "lora"),
    # the diffusers-compatible surface (and i2vgen.utils, diffusers.utils' helpers), and the old import path
    # i2vgen.pipeline that points into it
    "i2vgen.compat": (3, "compat"), "i2vgen.pipeline": (3, "compat"), "i2vgen.utils": (3, "compat"),
    # beside the applications: processes and sharding, and training on them (the same rank/device helpers)
    "i2vgen.distributed": (4, "distributed"), "i2vgen.training": (5, "training"),
    # the applications, and the package's entry points
    "i2vgen.apps": (6, "apps"), "i2vgen.__main__": (7, "entry"), "i2vgen": (7, "entry"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str) -> set[str]:
    """The package modules that `name` imports anywhere in its source (relative imports resolved)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:  # `from i2vgen import lora`: the module i2vgen.lora, if it is one
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {target for target in found if target in MODULES and target != name}


GRAPH = {name: imported_modules(name) for name in MODULES}


def layer(name: str) -> tuple[int, str]:
    prefix = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[prefix]


def test_every_module_has_a_layer():
    assert len(MODULES) > 40  # the walk found the package
    for name in MODULES:
        layer(name)  # raises ValueError (max of nothing) for a module no prefix covers


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
    rank, group = layer(name)
    upward = sorted(target for target in GRAPH[name]
                    if layer(target)[1] != group and layer(target)[0] >= rank)
    assert not upward, f"{name} (layer {rank}, {group}) imports {upward}, which are not below it"


def test_no_import_cycles():
    """Depth-first search; a module met again while it is still on the path closes a cycle."""
    state, path = {}, []  # state: 1 on the current path, 2 done

    def visit(name):
        state[name] = 1
        path.append(name)
        for target in sorted(GRAPH[name]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[name] = 2

    for name in sorted(MODULES):
        if name not in state:
            visit(name)


def test_web_app_and_jobs_do_not_import_the_command_line():
    for name in ("i2vgen.apps.web", "i2vgen.apps.jobs"):
        assert "i2vgen.apps.cli" not in GRAPH[name]
        assert "i2vgen.apps.render" in GRAPH[name]  # the one request type and render path


def test_the_checker_sees_what_it_must():
    """The parser finds function-local and relative imports, and the rules refuse an upward one."""
    assert "i2vgen.lora" in GRAPH["i2vgen.compat.pipeline"]  # imported inside the LoRA methods
    assert "i2vgen.video" in GRAPH["i2vgen.lora"]  # `from .video import ...`
    assert layer("i2vgen.models.unet") == (1, "models") and layer("i2vgen.pipelines.memory")[0] == 2
    assert layer("i2vgen.compat.models")[0] >= layer("i2vgen.models.unet")[0]  # models -> compat would be upward
