"""The project files a module runs: its import closure, read from the source (imports inside
functions too: a lazy import runs as well), plus what the mmseg configs load through
`custom_imports`. One definition for both users of it: a run's key hashes the closure of
`pipeline.train.run` (pipeline/train/spec.py, `training_code`), and tests/test_dvc_deps.py
checks each stage's DVC deps against the closure of its command."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = "mmseg_configs"
#: Code a run executes that cannot change its numbers: the package's warning filter, and the
#: params parser (its checks and messages). Everything else a run imports is in its key.
NOT_IN_THE_KEY = (Path("pipeline/__init__.py"), Path("pipeline/params.py"))


def module_file(name: str) -> Path | None:
    """The file of a module of this project (a package: its __init__.py)."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported(path: Path) -> set[str]:
    """The project modules a file imports, anywhere in it."""
    package = ".".join(path.relative_to(ROOT).parent.parts)  # where its relative imports start
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # a submodule
    return {name for name in found if name.split(".")[0] == "pipeline"}


def closure(modules: set[str]) -> set[Path]:
    """Every file of this project that importing `modules` runs (their packages' too), relative
    to the checkout."""
    seen: set[Path] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # pipeline, pipeline.sweep, pipeline.sweep.trial
            path = module_file(".".join(parts[:i]))
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(imported(path))
    return {p.relative_to(ROOT) for p in seen}


def config_imports(custom_imports: list[str] | tuple[str, ...] = ()) -> set[str]:
    """What the mmseg configs import through `custom_imports`, and `custom_imports` (params.yaml's
    `train.custom_imports`)."""
    found = set(custom_imports)
    for config in (ROOT / CONFIGS).rglob("*.py"):
        for block in re.findall(r"custom_imports\s*=\s*dict\(imports=\[([^\]]*)\]",
                                config.read_text()):
            found.update(re.findall(r"['\"]([\w.]+)['\"]", block))
    return found


def training_code(custom_imports: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """What decides a run's numbers besides its spec and data: every file a run executes
    (`pipeline.train.run` and what the configs import) but NOT_IN_THE_KEY, and the configs."""
    ran = closure({"pipeline.train.run"} | config_imports(custom_imports))
    configs = {p.relative_to(ROOT) for p in (ROOT / CONFIGS).rglob("*.py")}
    return sorted((ran - set(NOT_IN_THE_KEY)) | configs)
