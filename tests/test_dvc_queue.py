"""A variant of the study as DVC users run it: `dvc exp run --queue -S ...`, then `dvc queue
start`. Queued experiments run in a temporary copy of the repository; the sweep's storage and
the MLflow store stay the repository's (pipeline.params.in_project), so a variant reuses the
trials it shares with the study and every MLflow run is kept."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.conftest import GIT, copy_of_study, dvc

pytestmark = pytest.mark.slow


def test_a_queued_variant_reuses_shared_trials_and_keeps_every_run(tmp_path, study):
    import mlflow

    repo = copy_of_study(study, tmp_path / "repo")  # CE and Lovász-PixIoU, seeds 0 and 1
    shared = sorted((study / "mlartifacts").rglob("*"))
    subprocess.run(GIT + ["add", "-A"], cwd=repo, check=True)
    subprocess.run(GIT + ["commit", "-qm", "the study"], cwd=repo, check=True)
    dvc(repo, "exp", "run", "--queue", "-S", "sweep.seeds=[0,1,2]", check=True)  # shares 0, 1
    try:
        dvc(repo, "queue", "start", check=True)
        deadline = time.time() + 600
        while time.time() < deadline:
            status = dvc(repo, "queue", "status").stdout
            if "Queued" not in status and "Running" not in status:
                break
            time.sleep(3)
    finally:
        dvc(repo, "queue", "stop", "--kill")
    assert status.count("Success") == 1, status
    names = [line.split()[1] for line in status.splitlines() if "Success" in line]
    for name in names:
        log = dvc(repo, "queue", "logs", name).stdout
        # the variant trains only its new seed: seeds 0 and 1's trials are the study's
        assert "6 trials, 4 already done, 2 to run" in log, log[-3000:]
    trials = sorted(p.name for p in (repo / "work_dirs/sweeps/synthetic_voc").iterdir()
                    if p.name.split("_seed")[0] in ("ce", "pixiou"))
    assert [t.split("_")[1] for t in trials] == ["seed0", "seed1", "seed2"] * 2
    # the runs are in the repository's MLflow store, one child per trial of each sweep
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              max_results=1000)
    sweeps = [r for r in runs if r.info.run_name == "sweep-synthetic_voc"]
    assert len(sweeps) == 2  # the study and the variant
    trained = {r.data.tags["trial"] for r in runs if "trial" in r.data.tags}
    assert trained == set(trials)
    assert all(r.info.status == "FINISHED" for r in runs)
    assert sorted((study / "mlartifacts").rglob("*")) == shared  # the copy's went to the copy
    # the variant came back as a DVC experiment with its seeds and the report's metrics
    shown = json.loads(dvc(repo, "exp", "show", "--json", check=True).stdout)
    experiments = [rev for row in shown for exp in row.get("experiments") or []
                   for rev in exp["revs"]]
    assert sorted(r["data"]["params"]["params.yaml"]["data"]["sweep"]["seeds"]
                  for r in experiments) == [[0, 1, 2]]
    assert all("reports/metrics.json" in r["data"]["metrics"] for r in experiments)
