"""Each stage's DVC deps are the code it runs: the import closure of its command's module
(imports inside functions too, and what the mmseg configs load through `custom_imports`),
against `dvc.yaml`. A file the stage runs that no dep covers would not rerun the stage when it
changes; a code dep that the stage never runs would rerun it for nothing."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CODE = ("pipeline", "mmseg_configs")  # the deps that are code (data and models are not)


def module_file(name: str) -> Path | None:
    """The file of a module of this project (a package: its __init__.py)."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported(path: Path) -> set[str]:
    """The project modules a file imports, anywhere in it (a lazy import runs too)."""
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
    """Every file of this project that importing `modules` runs (their packages' too)."""
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


def config_imports() -> set[str]:
    """What the mmseg configs import through `custom_imports`, and params.yaml's
    `train.custom_imports`."""
    found = set(yaml.safe_load((ROOT / "params.yaml").read_text())["train"].get(
        "custom_imports") or [])
    for config in (ROOT / "mmseg_configs").rglob("*.py"):
        for block in re.findall(r"custom_imports\s*=\s*dict\(imports=\[([^\]]*)\]",
                                config.read_text()):
            found.update(re.findall(r"['\"]([\w.]+)['\"]", block))
    return found


def stages() -> dict[str, tuple[str, list[str]]]:
    """dvc.yaml's stages: name -> (the module its command runs, its code deps)."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    found = {}
    for name, stage in dvc["stages"].items():
        stage = stage.get("do", stage)
        (module,) = re.findall(r"python -m ([\w.]+)", stage["cmd"])
        deps = [d.split("#")[0].strip() for d in stage["deps"]]
        found[name] = (module, [d for d in deps if d.split("/")[0] in CODE])
    return found


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == Path(d) or Path(d) in path.parents for d in deps)


@pytest.mark.parametrize("stage", sorted(stages()))
def test_a_stages_code_deps_are_the_code_it_runs(stage):
    module, deps = stages()[stage]
    runs_configs = "mmseg_configs" in deps
    entry = f"{module}.__main__" if module_file(f"{module}.__main__") else module
    ran = closure({entry} | (config_imports() if runs_configs else set()))
    missing = sorted(str(p) for p in ran if not covered(p, deps))
    assert not missing, f"dvc.yaml: stage {stage} runs these files, which its deps miss"
    unused = [d for d in deps if d != "mmseg_configs" and not any(
        covered(p, [d]) for p in ran)]
    assert not unused, f"dvc.yaml: stage {stage} lists deps it never runs: {unused}"


def test_the_closure_follows_lazy_imports_and_config_imports():
    """The check itself: a function-level import is followed, and so are the configs'
    custom_imports (pipeline.splits is reached through them only)."""
    assert Path("pipeline/tracking.py") in closure({"pipeline.report.__main__"})
    assert Path("pipeline/splits.py") not in closure({"pipeline.pretrain"})
    assert Path("pipeline/splits.py") in closure({"pipeline.pretrain"} | config_imports())
    # a package's relative imports start at the package
    assert Path("pipeline/sweep/trial.py") in closure({"pipeline.sweep"})


#: Code a run executes that cannot change its numbers: the package's warning filter, and the
#: params parser (its checks and messages). Everything else a run imports is in its key.
NOT_IN_THE_KEY = {Path("pipeline/__init__.py"), Path("pipeline/params.py")}


def test_a_runs_key_hashes_the_code_the_run_executes():
    """TRAINING_CODE (what a trial's and the pre-training's key hash) covers the import closure
    of a run, with what its configs import, but for NOT_IN_THE_KEY; and every stage that trains
    lists it in its deps."""
    from pipeline.train import TRAINING_CODE

    ran = closure({"pipeline.train.run", "pipeline.train.__main__"} | config_imports())
    unkeyed = sorted(str(p) for p in ran - NOT_IN_THE_KEY if not covered(p, list(TRAINING_CODE)))
    assert not unkeyed, f"a run executes these, which its key does not hash: {unkeyed}"
    for stage in ("pretrain", "sweep"):
        _, deps = stages()[stage]
        assert all(covered(Path(code), deps) for code in TRAINING_CODE), stage


def test_output_paths_are_declared_once_in_params():
    """dvc.yaml names no data, model, results or report path of its own: each comes from the
    params.yaml key that the stages' code reads (report.results_dir, report.output, ...)."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for name, stage in dvc["stages"].items():
        stage = stage.get("do", stage)
        paths = [next(iter(o)) if isinstance(o, dict) else o
                 for key in ("deps", "outs", "metrics") for o in stage.get(key, [])]
        literal = [p for p in paths if p.split("/")[0] not in CODE and not p.startswith("${")]
        assert not literal, f"dvc.yaml: stage {name} hard-codes {literal}"


def test_the_sweep_writes_its_results_where_params_say(tmp_path):
    """`python -m pipeline.sweep <dataset>` without --results-dir: report.results_dir."""
    from pipeline.sweep.__main__ import main
    from pipeline.sweep.storage import Storage

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["sweep"]["storage"] = str(tmp_path / "sweeps")
    params["report"]["results_dir"] = str(tmp_path / "elsewhere")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    Storage.parse(str(tmp_path / "sweeps")).write_json({"trials": []}, "synthetic_voc",
                                                       "results.json")
    assert main(["synthetic_voc", "--params", str(tmp_path / "params.yaml"), "--fetch"]) == 0
    assert (tmp_path / "elsewhere" / "synthetic_voc.json").is_file()


#: Each stage's own modules. The data stage's library parts (layouts, validation, downloads)
#: are shared; its command is not.
STAGE_MODULES = {"data": ("pipeline.data.__main__",), "pretrain": ("pipeline.pretrain",),
                 "sweep": ("pipeline.sweep",), "report": ("pipeline.report",)}


def test_no_stage_imports_another_stage():
    """Stages talk through the layer under them (pipeline/contracts.py, the params schemas),
    never by importing each other's modules."""
    def owner(module: str) -> str | None:
        return next((stage for stage, roots in STAGE_MODULES.items()
                     if any(module == r or module.startswith(r + ".") for r in roots)), None)

    reaching = []
    for path in (ROOT / "pipeline").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        stage = owner(name)
        for module in imported(path):
            other = owner(module)
            if other is not None and other != stage and module_file(module) is not None:
                reaching.append(f"{path.relative_to(ROOT)} imports {module} ({other})")
    assert not reaching, reaching
