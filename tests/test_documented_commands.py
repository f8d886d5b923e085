"""Every shell command in the fenced `bash` blocks of README.md and docs/*.md is exercised:

- run as written, in order, in a reduced copy of the project (a tiny study; its `.venv` is this
  checkout's, so `make` finds everything installed);
- started and answered, for the servers (`make ui`);
- or, where it needs what CI has not (a GPU, a Ray cluster, an object store, credentials),
  checked up to that point: the installed CLI takes every option it uses, `make -n` shows what it
  would do, DVC's own parser applies the `-S` override. tests/test_cluster_storage.py runs the
  cluster's commands against servers it starts on 127.0.0.1.

A command added to the docs fails the first test until it is placed in one of these lists.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, STAGE_ENV, project_copy, tiny_study
from tests.conftest import summaries as finished_trials
from tests.servers import answers, start, stop, wait_until

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: Run as written, in this order, in the reduced copy.
RUN_IN_COPY = [
    "dvc stage list",
    "dvc repro data@synthetic_voc",
    "dvc repro pretrain@synthetic_voc",
    "make repro",
    "dvc repro",
    "make status",
    "make plan",
    "dvc metrics show",
    "dvc plots show",
    "python -m pipeline.sweep synthetic_voc --fetch",
    "dvc repro --single-item report",
    "dvc exp run -S 'train.losses.lovasz.terms.0.loss_weight=0.5'",
    "dvc exp show",
    "dvc remote add -d storage s3://my-bucket/pixiou/dvc",
    "dvc remote modify storage endpointurl https://s3.example.org",
]
#: Measurements (minutes of training): run in the copy, after the above, shortened to a few
#: iterations (`shortened`), everything else as written.
MEASURED = [
    "python -m pipeline.train mmseg_configs/fcn_r18-tiny-d8_1xb4-160_synthetic-voc-128x128.py "
    "--loss ce --seed 0 --iterations 3000 --val-interval 500 --work-dir work_dirs/ce-curve-voc",
    "python -m pipeline.train mmseg_configs/fcn_r18-tiny-d8_1xb4-160_synthetic-voc-128x128.py "
    "--loss ce --seed 0 --iterations 320 --val-interval 80 --lr 0.001 --init-checkpoint "
    "work_dirs/ce-curve-voc/iter_3000.pth --work-dir work_dirs/ce-continued-voc",
    "OMP_NUM_THREADS=1 python -m pipeline.train "
    "mmseg_configs/fcn_r18-tiny-d8_1xb4-160_synthetic-voc-128x128.py --loss ce --seed 0 "
    "--iterations 160 --val-interval 20 --lr 2e-4 --schedule constant --init-checkpoint "
    "models/pretrain/synthetic_voc/model.pth --work-dir work_dirs/ft-ce-2e-4-s0",
    "OMP_NUM_THREADS=1 python -m pipeline.train "
    "mmseg_configs/fcn_r18-tiny-d8_1xb4-160_synthetic-voc-128x128.py --loss ce --seed 0 "
    "--iterations 100 --val-interval 10 --lr 3e-3 --schedule constant --val-subset 50 "
    "--init-checkpoint models/pretrain/synthetic_voc/early.pth --work-dir work_dirs/conv-ce-s0",
]
#: Servers: started in the copy, answered on their port, stopped.
SERVED = {"make ui": 5000, "make ui UI_PORT=5001": 5001}
#: Run by CI itself.
CI = {"make test"}
#: Run as written by a test of their own (which waits for what they start in the background).
ELSEWHERE = {
    "dvc exp run --queue -S 'sweep.seeds=[0,1,2,3,4,5,6]'": "tests/test_dvc_queue.py",
    "dvc queue start": "tests/test_dvc_queue.py",
}
#: What each needs that CI has not; checked below up to that point.
NEEDS = {
    "make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126": "a GPU machine",
    "dvc exp run -S 'sweep.storage=s3://my-bucket/pixiou/sweeps'": "an object store",
    "dvc exp run -S 'sweep.data.source=dvc'": "a DVC remote holding the data",
    "dvc push": "the DVC remote's credentials",
    "export MLFLOW_TRACKING_URI=http://mlflow-host:5000": "a tracking server",
    "export RAY_ADDRESS=head-node:6379": "a Ray cluster",
    "mlflow server --host 0.0.0.0 --port 5000 --backend-store-uri "
    "postgresql://mlflow@db-host:5432/mlflow --artifacts-destination "
    "s3://my-bucket/pixiou/mlartifacts": "PostgreSQL and S3",
    "ray job submit --address http://head-node:8265 --working-dir . --runtime-env-json "
    "'{\"env_vars\": {\"MLFLOW_TRACKING_URI\": \"http://mlflow-host:5000\"}}' -- python -m "
    "pipeline.sweep synthetic_voc": "a Ray cluster",
    # docs/gpu.md: make gpu-check on a GPU machine with only its own Python and CUDA torch
    "pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "
    "--platform manylinux2014_x86_64 -d gpu-bundle mmengine==0.10.7 mmsegmentation==1.2.2 "
    "addict yapf termcolor rich markdown-it-py mdurl pygments opencv-python-headless ftfy "
    "wcwidth regex prettytable packaging pyyaml scipy matplotlib": "the package index, for "
    "the GPU machine",
    "pip download --no-deps --no-binary=:all: -d gpu-bundle mmcv==2.1.0": "the package index",
    "pip install --no-index --no-deps --target /tmp/site gpu-bundle/*.whl": "a GPU machine",
    "export PYTHONPATH=/tmp/site:$PWD": "a GPU machine",
    "MMCV_WITH_OPS=1 FORCE_CUDA=0 pip install --no-index --no-deps --no-build-isolation "
    "--target /tmp/site gpu-bundle/mmcv-2.1.0.tar.gz": "a GPU machine",
    "python -m bench.gpu_check --out reports/gpu": "a GPU",
}


def documented() -> dict[str, set[str]]:
    """command -> the files that show it (line continuations joined, comments dropped)."""
    found: dict[str, set[str]] = {}
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                command = " ".join(line.split(" #")[0].split()) if not \
                    line.lstrip().startswith("#") else ""
                if command:
                    found.setdefault(command, set()).add(doc.name)
    return found


def test_every_documented_command_is_exercised():
    placed = [*RUN_IN_COPY, *MEASURED, *SERVED, *CI, *ELSEWHERE, *NEEDS]
    assert len(placed) == len(set(placed))
    assert set(documented()) == set(placed), (
        f"documented, not exercised: {sorted(set(documented()) - set(placed))}; "
        f"exercised, no longer documented: {sorted(set(placed) - set(documented()))}")


@pytest.mark.parametrize("command", sorted(ELSEWHERE))
def test_what_another_test_runs_is_run_there_as_written(command):
    words = shlex.split(command)
    test = (ROOT / ELSEWHERE[command]).read_text()
    assert f'"{words[0]}", ' + ", ".join(f'"{w}"' for w in words[1:3]) in test or \
        ", ".join(f'"{w}"' for w in words[1:3]) in test, (command, ELSEWHERE[command])


def test_ci_runs_exactly_make_test():
    lines = [line for line in (ROOT / ".ci/run").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[-1].strip() == "make test"


def shortened(command: str) -> str:
    """A measurement's command with 4 iterations, evaluated every 2 (and its checkpoints'
    names to match)."""
    command = re.sub(r"--iterations \d+", "--iterations 4", command)
    command = re.sub(r"--val-interval \d+", "--val-interval 2", command)
    return re.sub(r"iter_\d+\.pth", "iter_4.pth", command)


def _shell(command: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**STAGE_ENV, "RAY_ADDRESS": ""})


def ran(said: str) -> set[str]:
    """The stages `dvc repro` (or `dvc exp run`) ran, by what it printed."""
    return {line.split("'")[1] for line in said.splitlines() if line.startswith("Running stage '")}


def tiny_fine_tuning(params: dict) -> None:
    """The tiny study's fine-tuning arm (the kill -9 scenario runs both arms under dvc)."""
    tiny_study(params)
    params["sweep"]["convergence"]["losses"] = []


def _in_parallel(*chains: list[str], cwd: Path) -> list[tuple[str, subprocess.CompletedProcess]]:
    """Each chain of commands in order, the chains side by side; (command, outcome) of each."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(chains)) as pool:
        ran_chains = pool.map(lambda chain: [(c, _shell(c, cwd)) for c in chain], chains)
        return [outcome for chain in ran_chains for outcome in chain]


@pytest.mark.slow
@pytest.mark.longest
def test_the_documented_commands_run_as_written(tmp_path):
    """In the tiny study (CE and Lovász-Softmax): each stage runs when its command says, then
    never again for nothing; a loss weight trains only that loss's trial (that a pre-training
    param reruns it and all after it is DVC's graph: tests/test_dvc_deps.py)."""
    repo = project_copy(tmp_path / "project", tiny_fine_tuning)
    (repo / ".venv").symlink_to(ROOT / ".venv")  # installed: `make` finds its stamps there
    said, trials = {}, {}
    for command in RUN_IN_COPY:
        before = finished_trials(repo)
        done = _shell(command, repo)
        assert done.returncode == 0, f"{command}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        said[command] = done.stdout + done.stderr
        trials[command] = (before, finished_trials(repo))
    assert ran(said["dvc repro pretrain@synthetic_voc"]) == {"pretrain@synthetic_voc"}
    assert ran(said["make repro"]) == {"sweep@synthetic_voc", "report"}
    assert "Data and pipelines are up to date" in said["dvc repro"]
    assert "fine-tuned from the CE checkpoint" in (repo / "reports/tables.md").read_text()
    assert (repo / "dvc.lock").is_file()
    # the loss weight: the sweep and the report again, and only the lovasz trial
    variant = "dvc exp run -S 'train.losses.lovasz.terms.0.loss_weight=0.5'"
    assert ran(said[variant]) == {"sweep@synthetic_voc", "report"}, said[variant]
    assert "2 trials, 1 already done, 1 to run" in said[variant]
    before, after = trials[variant]
    assert all(after[p] == stamp for p, stamp in before.items()) and len(after) == 3
    results = json.loads((repo / "results/synthetic_voc.json").read_text())["trials"]
    assert [t["loss_terms"] for t in results if t["loss"] == "lovasz"] == \
        [[{"type": "LovaszSoftmaxLoss", "loss_weight": 0.5}]]
    shown = json.dumps(json.loads(_shell("dvc exp show --json", repo).stdout))
    assert '"loss_weight": 0.5' in shown and "reports/metrics.json" in shown
    # the first two in order (the second continues the first), beside the other two
    for command, done in _in_parallel(list(map(shortened, MEASURED[:2])),
                                      list(map(shortened, MEASURED[2:])), cwd=repo):
        assert done.returncode == 0, f"{command}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    continued = json.loads((repo / "work_dirs/ce-continued-voc/summary.json").read_text())
    assert continued["history"][0]["iteration"] == 0  # it started from the curve's weights
    assert "sweep FINISHED" in said["make status"]
    assert "results fetched" in said["python -m pipeline.sweep synthetic_voc --fetch"]
    assert (repo / "dvc_plots" / "index.html").is_file()
    assert "url = s3://my-bucket/pixiou/dvc" in (repo / ".dvc" / "config").read_text()
    # both UIs at once, on their two ports: started, then waited for
    servers = {port: start(["bash", "-c", command], lambda: True, tmp_path / f"ui-{port}.log",
                           env=STAGE_ENV, cwd=repo) for command, port in SERVED.items()}
    try:
        for port, server in servers.items():
            wait_until(answers(f"http://127.0.0.1:{port}/health"), server,
                       tmp_path / f"ui-{port}.log")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
                assert reply.status == 200
    finally:
        for server in servers.values():
            stop(server)


def _options(command: str) -> list[str]:
    return [word.split("=")[0] for word in shlex.split(command) if word.startswith("--")]


@pytest.mark.parametrize("command", sorted(NEEDS))
def test_what_needs_a_cluster_a_gpu_or_credentials_is_checked_up_to_there(command, tmp_path):
    words = shlex.split(command)
    while "=" in words[0] and not words[0].startswith("-"):  # VAR=value before the command
        words = words[1:]
    if words[0] == "export" and words[1].startswith("PYTHONPATH="):  # Python reads it
        assert "/tmp/site" in words[1]
    elif words[0] == "export":  # the code reads the variable
        name = words[1].split("=")[0]
        assert any(name in path.read_text() for path in (ROOT / "pipeline").rglob("*.py"))
    elif words[0] in ("pip", "python"):  # pip takes the options; the module has them
        cli = [sys.executable, "-m", *(words[:2] if words[0] == "pip" else words[2:3])]
        help_text = subprocess.run([*cli, "--help"], capture_output=True, text=True,
                                   check=True, cwd=ROOT).stdout
        for option in _options(command):
            assert option in help_text, f"{' '.join(cli)} has no {option}"
    elif words[:2] == ["dvc", "exp"]:  # DVC's own parser applies the override
        from dvc.utils.hydra import apply_overrides

        params = tmp_path / "params.yaml"
        shutil.copy(ROOT / "params.yaml", params)
        override = words[words.index("-S") + 1]
        apply_overrides(params, [override])
        key, value = override.split("=", 1)
        assert f"{key.split('.')[-1]}: {value}" in params.read_text()
    elif words[0] == "make":  # what it would do
        venv = tmp_path / "venv"
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "python").symlink_to(sys.executable)
        plan = subprocess.run(["make", "-n", "-C", str(ROOT), *words[1:], f"VENV={venv}"],
                              capture_output=True, text=True, check=True).stdout
        assert ("--force-reinstall --no-deps --index-url https://download.pytorch.org/whl/cu126"
                in plan)  # the CUDA torch replaces whatever torch was there
        # mmcv built for it and for the data-centre GPUs, its wheel cached under both
        assert 'TORCH_CUDA_ARCH_LIST="7.0;8.0;8.6;8.9;9.0+PTX"' in plan
        assert "--cache-dir" in plan and "pip-cu126-sm70_80_86_89_90ptx mmcv==2.1.0" in plan
        assert f"touch {venv}/.stamp-mmcv-cu126-sm70_80_86_89_90ptx" in plan
    else:  # the installed CLI takes every option the command uses
        cli = {"mlflow": ["mlflow", "server"], "ray": ["ray", "job", "submit"],
               "dvc": ["dvc", "push"]}[words[0]]
        help_text = subprocess.run([str(Path(sys.executable).with_name(cli[0])), *cli[1:],
                                    "--help"], capture_output=True, text=True, check=True,
                                   env={**STAGE_ENV, "RAY_ADDRESS": ""}).stdout
        for option in _options(command):
            assert option in help_text, f"{' '.join(cli)} has no {option}"
