"""The code each ``dvc.yaml`` stage runs, computed from the imports of its module.

A stage ``S`` runs ``pipelines/stages/S.py``; its code dependencies are that file and every project file
it imports, directly or through other project modules, at module level or inside functions (parsed with
:mod:`ast`, nothing is executed). Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` too,
so those count. Third-party packages are not listed (they are pinned by ``constraints.txt``), and neither is
``pipelines/cli.py``, which only parses arguments and calls the stage module.

``latentflow deps --check`` fails when ``dvc.yaml`` lists other code than this; ``latentflow deps --write``
rewrites the code entries of each stage's ``deps:`` and keeps its data entries, the comments and the order.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("components", "pipelines")
STAGES_PACKAGE = "pipelines.stages"


def _module_file(module: str, root: Path) -> Path | None:
    """The file of a project module (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``), or None."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _lazy_package(path: Path) -> bool:
    """Whether a package ``__init__.py`` resolves names on first use (a module-level ``__getattr__``, PEP 562)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return any(isinstance(node, ast.FunctionDef) and node.name == "__getattr__" for node in tree.body)


def _submodules(package_init: Path, package: str) -> list[str]:
    return [f"{package}.{p.stem}" for p in sorted(package_init.parent.glob("*.py")) if p.name != "__init__.py"]


def _imported_modules(path: Path, module: str) -> set[str]:
    """Every module named by an import statement in ``path`` (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join([*base, node.module] if node.module else base)
            else:
                stem = node.module or ""
            found.add(stem)
            # `from pkg import name` imports pkg.name when it is a submodule
            found.update(f"{stem}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def import_closure(module: str, root: Path = ROOT) -> list[str]:
    """Project files (relative POSIX paths, sorted) that importing ``module`` executes."""
    seen: set[str] = set()
    files: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name.split(".")[0] not in PACKAGES:
            continue
        parent = name.rpartition(".")[0]
        parent_init = _module_file(parent, root) if parent else None
        if _module_file(name, root) is None and parent_init is not None and parent_init.name == "__init__.py" \
                and _lazy_package(parent_init):
            # `from pkg import name` where pkg's __getattr__ loads `name` from some submodule on first use: the
            # submodule is not named in the source, so count them all (import the submodule directly for a precise list)
            todo.extend(m for m in _submodules(parent_init, parent) if m not in seen)
        for mod in _with_parents(name):
            if mod in seen:
                continue
            seen.add(mod)
            path = _module_file(mod, root)
            if path is None:
                continue
            files.add(path)
            todo.extend(_imported_modules(path, mod))
    return sorted(p.relative_to(root).as_posix() for p in files)


def stage_code(stage: str, root: Path = ROOT) -> list[str]:
    """The code deps of ``stage``: its module ``pipelines/stages/<stage>.py`` and all it imports."""
    if _module_file(f"{STAGES_PACKAGE}.{stage}", root) is None:
        raise ValueError(f"stage {stage!r} has no module pipelines/stages/{stage}.py")
    return import_closure(f"{STAGES_PACKAGE}.{stage}", root)


def is_code(dep: str) -> bool:
    """Whether a ``deps:`` entry is project code (under components/ or pipelines/)."""
    return dep.split("/")[0] in PACKAGES


def _dep_path(dep) -> str:
    return dep if isinstance(dep, str) else next(iter(dep))


def stale_stages(dvc_yaml: Path = ROOT / "dvc.yaml", root: Path = ROOT) -> dict[str, tuple[list[str], list[str]]]:
    """Stages whose code deps in ``dvc_yaml`` differ from :func:`stage_code`: name -> (missing, extra)."""
    import yaml

    stages = (yaml.safe_load(Path(dvc_yaml).read_text()) or {}).get("stages", {})
    out = {}
    for name, stage in stages.items():
        listed = {_dep_path(d) for d in stage.get("deps") or [] if is_code(_dep_path(d))}
        wanted = set(stage_code(name, root))
        if listed != wanted:
            out[name] = (sorted(wanted - listed), sorted(listed - wanted))
    return out


def write_code_deps(dvc_yaml: Path = ROOT / "dvc.yaml", root: Path = ROOT, stages: Iterable[str] | None = None) -> list[str]:
    """Rewrite the code entries of each stage's ``deps:`` in place (data entries first, in their order, then
    the code, sorted); comments and layout elsewhere are kept. Returns the stages that changed."""
    from ruamel.yaml import YAML

    yml = YAML()
    yml.preserve_quotes = True
    yml.width = 4096
    yml.indent(mapping=2, sequence=4, offset=2)
    doc = yml.load(Path(dvc_yaml).read_text())
    changed = []
    for name, stage in doc["stages"].items():
        if stages is not None and name not in stages:
            continue
        old = list(stage.get("deps") or [])
        data = [d for d in old if not is_code(_dep_path(d))]
        new = data + stage_code(name, root)
        if [_dep_path(d) for d in old] != [_dep_path(d) for d in new]:
            changed.append(name)
        if "deps" in stage:
            stage["deps"].clear()
            stage["deps"].extend(new)
        else:  # keep `deps:` right after `cmd:`
            stage.insert(list(stage).index("cmd") + 1, "deps", new)
    if changed:
        import io

        buf = io.StringIO()
        yml.dump(doc, buf)
        from components.io import atomic_write_bytes

        atomic_write_bytes(dvc_yaml, buf.getvalue().encode())
    return changed
