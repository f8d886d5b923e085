"""`dvc exp run -S`: changing one loss weight reruns only what depends on it."""
from __future__ import annotations

import json

import pytest

from tests.conftest import dvc, project_copy

from .conftest import reduced_study, results, summaries

pytestmark = pytest.mark.slow


def test_changing_one_loss_weight_trains_only_that_loss(tmp_path):
    repo = project_copy(tmp_path / "repo", reduced_study())
    dvc(repo, "repro", check=True)
    before = summaries(repo)
    ce_trials = {t["key"] for t in results(repo)["trials"] if t["loss"] == "ce"}

    done = dvc(repo, "exp", "run", "-S", "train.losses.pixiou.terms.0.loss_weight=0.5", check=True)
    assert "Stage 'data@synthetic_voc' didn't change" in done.stdout
    assert "4 trials, 2 already done, 2 to run" in done.stdout  # the ce trials stand
    after = summaries(repo)
    assert all(after[p] == stamp for p, stamp in before.items())
    assert len(after) == len(before) + 2
    trials = results(repo)["trials"]
    assert {t["key"] for t in trials if t["loss"] == "ce"} == ce_trials
    assert [t["loss_terms"] for t in trials if t["loss"] == "pixiou"] == \
        [[{"type": "LovaszPixIoULoss", "loss_weight": 0.5}]] * 2

    # The experiment is recorded with its params and the report's metrics.
    shown = json.loads(dvc(repo, "exp", "show", "--json", check=True).stdout)
    text = json.dumps(shown)
    assert '"loss_weight": 0.5' in text and "reports/metrics.json" in text
