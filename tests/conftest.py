"""Shared fixtures: a small generated dataset built by the data stage, and study params that
point every output (work dirs, MLflow store, results) into a temporary folder."""
from __future__ import annotations

import atexit
import copy
import functools
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY_DATA = dict(seed=0, train=16, val=8, height=64, width=64, objects_per_image=[3, 8])


@functools.cache
def empty_mlflow_store() -> Path:
    """An MLflow sqlite store with its tables made, once per test run: a new store spends 1-3 s
    in its migrations, and most tests only need one to log into."""
    from mlflow import MlflowClient

    store = Path(tempfile.mkdtemp(prefix="pixiou-mlflow-")) / "mlflow.db"
    atexit.register(shutil.rmtree, store.parent, True)
    MlflowClient(f"sqlite:///{store}").search_experiments()
    return store


def study_params(tmp_path: Path, data_root: Path, tracking_store: bool = True,
                 **sections) -> Path:
    """The repository's params.yaml with a tiny schedule and every output under tmp_path, its
    MLflow store there and made (`tracking_store`; the stages make one where there is none).

    `sections` update params sections key by key, e.g. sweep=dict(losses=["ce"]).
    """
    if tracking_store and not (tmp_path / "mlflow.db").exists():
        shutil.copy(empty_mlflow_store(), tmp_path / "mlflow.db")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["study"]["datasets"] = ["synthetic_voc"]
    # The sweep's own tests train from scratch; the fine-tuning ones say protocol: finetune
    # (and find the tiny pre-training's model under tmp_path).
    params["study"]["protocol"] = "scratch"
    params["data"]["root"] = str(data_root)
    params["pretrain"].update(iterations=4, val_interval=2, early_iteration=2,
                              output=str(tmp_path / "models" / "pretrain"),
                              work_dir=str(tmp_path / "work_dirs" / "pretrain"))
    params["train"].update(iterations=4, val_interval=2, overlays=2, lr=None)  # the config's
    params["sweep"].update(losses=["ce", "pixiou"], seeds=[0],
                           storage=str(tmp_path / "sweeps"),
                           convergence={"losses": [], "iterations": 4, "val_interval": 2})
    params["tracking"].update(uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                              artifacts=str(tmp_path / "mlartifacts"))
    for section, values in sections.items():
        params[section] = {**copy.deepcopy(params.get(section, {})), **values}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def tiny_study(params: dict) -> None:
    """A project copy's params.yaml cut to seconds: the tiny synthetic_voc, a 4-iteration
    pre-training, CE and Lovász-Softmax fine-tuned 4 iterations and, in the convergence arm,
    trained 4 iterations from the pre-training's iteration 2; seed 0, the one claim they
    test."""
    params["study"]["datasets"] = ["synthetic_voc"]
    params["datasets"]["synthetic_voc"].update(TINY_DATA)
    params["pretrain"].update(iterations=4, val_interval=2, early_iteration=2)
    params["train"].update(iterations=4, val_interval=2, overlays=1)
    params["sweep"].update(losses=["ce", "lovasz"], seeds=[0])
    params["sweep"]["convergence"].update(losses=["ce", "lovasz"], iterations=4, val_interval=2)
    params["report"]["claims"] = [{"better": "lovasz", "worse": "ce", "metric": "mIoU",
                                   "source": "Berman et al. 2018"}]


def build_tiny_data(tmp: Path, **overrides) -> Path:
    """data/synthetic_voc of TINY_DATA (with `overrides`) under tmp, built by the data stage."""
    from pipeline.data.__main__ import run

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["root"] = str(tmp / "data")
    params["datasets"]["synthetic_voc"].update({**TINY_DATA, **overrides})
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    run("synthetic_voc", tmp / "params.yaml")
    return tmp / "data"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """data/synthetic_voc with 16 train and 8 val images of 64x64, built by the data stage."""
    return build_tiny_data(tmp_path_factory.mktemp("tiny_data"))


#: The environment of a stage command, as under `make`: this venv's python and dvc first.
STAGE_ENV = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
GIT = ["git", "-c", "user.name=pixiou-tests", "-c", "user.email=tests@localhost"]


def project_copy(repo: Path, edit_params=None) -> Path:
    """A git repository holding this checkout's files (tracked and untracked, not ignored: no
    data, results, runs or venv), its params.yaml changed by `edit_params(params)`, committed."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    (repo / "dvc.lock").unlink(missing_ok=True)  # the main study's lock: this one starts fresh
    if edit_params is not None:
        params = yaml.safe_load((repo / "params.yaml").read_text())
        edit_params(params)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False,
                                                         allow_unicode=True))
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "project copy"]):
        subprocess.run(GIT + args, cwd=repo, check=True, capture_output=True)
    return repo


def dvc(repo: Path, *args: str, timeout: int = 900, env: dict | None = None,
        check: bool = False) -> subprocess.CompletedProcess:
    done = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=repo,
                          env={**STAGE_ENV, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done


# --- the reduced study: run once, read by many tests ---------------------------------------

SECRET = "s3cr3t-Pa55word-for-the-reliability-suite"
#: Environment secrets a user may have set; none may reach MLflow, results or reports.
SECRET_ENV = {"CITYSCAPES_PASSWORD": SECRET, "HF_TOKEN": SECRET,
              "AWS_SECRET_ACCESS_KEY": SECRET, "MLFLOW_TRACKING_PASSWORD": SECRET}


def reduced_study(iterations: int = 4, pretrain_iterations: int = 6, **sweep):
    """The default study cut to what CI affords: one generated dataset (tiny), a short CE
    pre-training, 2 losses x 2 seeds fine-tuned for a few iterations, no convergence arm
    unless `convergence` says. Everything else, the stages and their code, is the default's."""
    def edit(params):
        params["study"]["datasets"] = ["synthetic_voc"]
        params["datasets"]["synthetic_voc"].update(TINY_DATA)
        params["pretrain"].update(iterations=pretrain_iterations,
                                  val_interval=pretrain_iterations // 2,
                                  early_iteration=pretrain_iterations // 2)
        params["train"].update(iterations=iterations, val_interval=iterations // 2, overlays=1)
        params["sweep"].update({"losses": ["ce", "pixiou"], "seeds": [0, 1],
                                "convergence": {"losses": []}, **sweep})
    return edit


def summaries(repo: Path) -> dict[Path, int]:
    """Each finished trial's summary.json (in its final checkpoint) and its modification time
    (ns)."""
    return {p: p.stat().st_mtime_ns
            for p in (repo / "work_dirs/sweeps").glob("*/*/final/summary.json")}


def results(repo: Path) -> dict:
    return json.loads((repo / "results/synthetic_voc.json").read_text())


@pytest.fixture(scope="session")
def study(tmp_path_factory) -> Path:
    """A project copy whose reduced study `dvc repro` ran to the end, with secrets in the
    environment. Tests that only read it share it; one that changes it puts it back as it was,
    or changes a `copy_of_study`."""
    repo = project_copy(tmp_path_factory.mktemp("study") / "repo", reduced_study())
    dvc(repo, "repro", env=SECRET_ENV, check=True)
    return repo


def copy_of_study(repo: Path, dest: Path) -> Path:
    """A copy of a project whose study ran (git, DVC cache, outputs, MLflow store), whose
    MLflow experiment and runs keep their artifacts in the copy, not in `repo`."""
    shutil.copytree(repo, dest, symlinks=True)
    old, new = repo.resolve().as_uri(), dest.resolve().as_uri()
    with sqlite3.connect(dest / "mlflow.db") as store:
        store.execute("UPDATE experiments SET artifact_location = "
                      "replace(artifact_location, ?, ?)", (old, new))
        store.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old, new))
    store.close()
    return dest


def sweep(params: Path, tmp_path: Path, env: dict | None = None, timeout: int = 600,
          command: bool = False) -> subprocess.CompletedProcess:
    """The sweep stage of synthetic_voc on `params`, its results under tmp_path/results: exit
    status and output. `python -m pipeline.sweep`'s main runs in this process (a test pays no
    second import of torch, mmseg, MLflow and Ray), with `env` set for the driver and through
    its Ray for the trials, then put back. `command`: the command itself, in a process of its
    own (`timeout` applies), for a test of what it prints through Ray Tune, whose reporter
    may keep the stream of an earlier in-process sweep."""
    import contextlib
    import io
    from unittest import mock

    from pipeline.sweep.__main__ import main

    args = ["synthetic_voc", "--params", str(params), "--results-dir", str(tmp_path / "results")]
    if command:
        return subprocess.run([sys.executable, "-m", "pipeline.sweep", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
    stdout, stderr = io.StringIO(), io.StringIO()
    # patch.dict puts back the whole environment, with what the driver itself set in it
    with mock.patch.dict(os.environ, env or {}), contextlib.chdir(ROOT), \
            contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(args)  # the sweep ships the working directory (ROOT) to its Ray's workers
    return subprocess.CompletedProcess(["python", "-m", "pipeline.sweep", *args], code,
                                       stdout.getvalue(), stderr.getvalue())


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Fixtures that train or start a Ray cluster or servers: a test that uses one is slow (and
#: out of `make test-fast`), whether or not it says so itself.
SLOW_FIXTURES = {"pretrained", "stack", "nodes", "study"}
#: Fixtures too costly to make twice (a finished study, a Ray cluster with S3, PostgreSQL and
#: MLflow, a cluster that loses nodes, a pre-training, an S3 that fails), of the longest tests.
#: Under `make test` each one's tests form an xdist group: one worker makes it, once.
SHARED_FIXTURES = ("study", "stack", "nodes", "pretrained", "flaky_s3")


def _shared_fixture(item) -> str | None:
    names = set(getattr(item, "fixturenames", ()))
    return next((name for name in SHARED_FIXTURES if name in names), None)


def _schedule_rank(item) -> int:
    """0: a test marked `longest` or using one of SHARED_FIXTURES; 1: another slow test; 2: a
    unit test. `make test`'s two pytest-xdist workers take the tests (a shared fixture's as
    one group) in this order: the long work is spread over both first, and the quick tests
    even out their ends."""
    if item.get_closest_marker("longest") or _shared_fixture(item):
        return 0
    return 1 if item.get_closest_marker("slow") else 2


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups off the items
def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if shared := _shared_fixture(item):
            item.add_marker(pytest.mark.xdist_group(shared))
    items.sort(key=_schedule_rank)  # stable: each rank keeps the files' order


# --- the reliability suite's count of what it covered (tests/reliability) -----------------------

COVERED: dict[str, list[str]] = {"faults injected": [], "bad inputs tried": [],
                                 "exposure checks": []}


@pytest.fixture
def covered(request):
    """covered(kind, what): count a fault or bad input once the test has verified its outcome.
    It travels with the test's report (from a pytest-xdist worker too) to the summary below."""
    return lambda kind, what: request.node.user_properties.append(("covered", (kind, what)))


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed:
        for name, value in report.user_properties:
            if name == "covered":
                kind, what = value
                COVERED[kind].append(what)


def pytest_terminal_summary(terminalreporter):
    if not any(COVERED.values()):
        return
    terminalreporter.section("reliability suite: what it covered")
    for kind, items in COVERED.items():
        terminalreporter.write_line(f"{kind}: {len(items)}")
        for item in items:
            terminalreporter.write_line(f"  - {item}")
