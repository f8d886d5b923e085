"""Each stage's DVC deps are the code it runs: the import closure of its command's module
(imports inside functions too, and what the mmseg configs load through `custom_imports`),
against `dvc.yaml`. A file the stage runs that no dep covers would not rerun the stage when it
changes; a code dep that the stage never runs would rerun it for nothing."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.code_closure import (
    NOT_IN_THE_KEY,
    ROOT,
    closure,
    config_imports,
    imported,
    module_file,
    training_code,
)

CODE = ("pipeline", "mmseg_configs")  # the deps that are code (data and models are not)
#: params.yaml's train.custom_imports: a user's modules, which every run imports
CUSTOM_IMPORTS = yaml.safe_load((ROOT / "params.yaml").read_text())["train"].get(
    "custom_imports") or []


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
    ran = closure({entry} | (config_imports(CUSTOM_IMPORTS) if runs_configs else set()))
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
    assert Path("pipeline/splits.py") in closure({"pipeline.pretrain"} | config_imports(()))
    # a package's relative imports start at the package
    assert Path("pipeline/sweep/trial.py") in closure({"pipeline.sweep"})


def test_a_runs_key_hashes_the_code_the_run_executes(tmp_path, monkeypatch):
    """training_code (what a trial's and the pre-training's key hash) is the import closure of a
    run: its lazy imports, what its configs import, a user's loss module; not NOT_IN_THE_KEY.
    Every stage that trains lists it in its deps, and an edit to any of it changes the key."""
    from pipeline import code_closure
    from pipeline.train import code_fingerprint

    keyed = training_code()
    for lazy in ("pipeline/train/engine.py", "pipeline/train/hook.py", "pipeline/splits.py",
                 "pipeline/losses/lovasz.py", "pipeline/metrics.py"):
        assert Path(lazy) in keyed, lazy
    assert not set(NOT_IN_THE_KEY) & set(keyed)
    assert Path("pipeline/train/__main__.py") not in keyed  # the CLI is not a run
    for stage in ("pretrain", "sweep"):
        _, deps = stages()[stage]
        unlisted = [str(p) for p in keyed if not covered(p, deps)]
        assert not unlisted, f"dvc.yaml: stage {stage} trains, and its deps miss {unlisted}"

    # a user's loss module (train.custom_imports) is in the key, and so is each edit to it
    monkeypatch.setattr(code_closure, "ROOT", tmp_path)
    for part in CODE:
        (tmp_path / part).symlink_to(ROOT / part)
    (tmp_path / "my_loss.py").write_text("WEIGHT = 1\n")
    assert Path("my_loss.py") in training_code(["my_loss"])
    before = code_fingerprint(["my_loss"])
    (tmp_path / "my_loss.py").write_text("WEIGHT = 2\n")
    assert code_fingerprint(["my_loss"]) != before != code_fingerprint()


def test_a_stages_own_params_rerun_it_and_every_stage_after_it():
    """DVC's graph of dvc.yaml: each stage reads its own params section, and every stage after
    it depends on what it writes, so a change of `pretrain.*` reruns the pre-training, then the
    sweeps and the report (which `dvc repro` does by this graph); a loss weight (`train.*`)
    reruns the sweeps and the report, as test_documented_commands runs it."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        graph = repo.index.graph
        by_name = {stage.addressing: stage for stage in graph}
        after = {name: {s.addressing for s in nx.ancestors(graph, stage)}
                 for name, stage in by_name.items()}  # DVC's edges run from a stage to its deps
        params = {name: {key for dep in stage.deps if hasattr(dep, "params")
                         for key in dep.params} for name, stage in by_name.items()}
    datasets = {name.split("@")[1] for name in by_name if "@" in name}
    for dataset in datasets:
        assert "pretrain" in params[f"pretrain@{dataset}"]
        assert {"train", "sweep"} <= params[f"sweep@{dataset}"]
        assert after[f"data@{dataset}"] >= {f"pretrain@{dataset}", f"sweep@{dataset}", "report"}
        assert after[f"pretrain@{dataset}"] == {f"sweep@{dataset}", "report"}
        assert after[f"sweep@{dataset}"] == {"report"}


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
