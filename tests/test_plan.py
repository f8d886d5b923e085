"""The study's plan before it starts (`python -m pipeline.plan`, `make plan`), the budget guard,
and the per-dataset schedules that the plan and the sweep read alike."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT, study_params


def real_study(tmp_path, edit=None):
    """The repository's params.yaml with the real datasets, as docs/real-data.md says."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["study"]["datasets"] = ["voc", "cityscapes"]
    params["sweep"]["storage"] = str(tmp_path / "sweeps")
    params["tracking"]["uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    if edit:
        edit(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    return path, params


def plan_json(params_file) -> dict:
    done = subprocess.run([sys.executable, "-m", "pipeline.plan", "--params", str(params_file),
                           "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_plan_of_the_real_study_by_hand(tmp_path):
    path, params = real_study(tmp_path)
    plan = plan_json(path)
    voc = plan["datasets"]["voc"]
    schedule = params["train"]["schedules"]["voc"]
    cost = params["plan"]["cost"]["voc"]
    sweep = params["sweep"]
    seeds = len(sweep["seeds"])
    finetune = len(sweep["losses"]) * seeds
    convergence = len(sweep["convergence"]["losses"]) * seeds
    assert voc["trials"] == finetune + convergence
    assert voc["iterations_per_trial"] == schedule["iterations"] == 2000
    assert voc["evaluations_per_trial"] == schedule["iterations"] // schedule["val_interval"]
    assert voc["checkpoints_per_trial"] == 2000 // schedule["checkpoint_interval"]
    assert voc["gpus_per_trial"] == 4
    # by hand: 4 GPUs x 4 images per iteration (the config's 4xb4), the figures per image
    images = 4 * 4
    train_h = 2000 * images * cost["train_s_per_image"] / 3600
    val = params["datasets"]["voc"]["expected"]["val"]
    subset = schedule["val_subset"]
    evaluated = (8 + 1) * subset + val  # the starting weights, 8 passes, the whole set at the end
    eval_h = evaluated * cost["eval_s_per_image"] / 3600
    ckpt_h = 2 * cost["checkpoint_gb"] / params["plan"]["upload_gb_per_s"] * 4 / 3600
    arm = voc["arms"][0]
    assert arm["arm"] == "finetune" and arm["trials"] == finetune
    assert arm["images_evaluated_per_trial"] == evaluated
    assert arm["gpu_hours"]["training"] == pytest.approx(finetune * train_h)
    assert arm["gpu_hours"]["evaluation"] == pytest.approx(finetune * eval_h)
    assert arm["gpu_hours"]["checkpointing"] == pytest.approx(finetune * ckpt_h)
    assert voc["gpu_hours"] == pytest.approx(sum(a["gpu_hours"]["total"] for a in voc["arms"]))
    assert plan["gpu_hours"] == pytest.approx(voc["gpu_hours"] +
                                              plan["datasets"]["cityscapes"]["gpu_hours"])
    # the chosen schedules keep evaluation and checkpointing under 15% of a trial
    assert plan["warnings"] == []


def test_a_40_iteration_evaluation_interval_is_flagged(tmp_path):
    def every_40(params):
        params["train"]["schedules"]["voc"].update(val_interval=40, checkpoint_interval=40)

    plan = plan_json(real_study(tmp_path, every_40)[0])
    warnings = " ".join(plan["warnings"])
    assert "voc (finetune): evaluation takes" in warnings
    assert "voc (finetune): checkpointing takes" in warnings
    assert "cityscapes" not in warnings


def test_the_plan_starts_nothing_and_reaches_no_network(tmp_path):
    """Sockets refused, no data folder: the plan still prints, and never imports Ray."""
    path, _ = real_study(tmp_path, lambda p: p["data"].update(root=str(tmp_path / "none")))
    code = ("import socket, sys\n"
            "def refuse(*a, **k): raise OSError('network used')\n"
            "socket.socket.connect = refuse; socket.create_connection = refuse\n"
            "from pipeline.plan import main\n"
            f"assert main(['--params', {str(path)!r}]) == 0\n"
            "assert 'ray' not in sys.modules, 'Ray imported'\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Total:" in done.stdout and "voc:" in done.stdout
    assert not (tmp_path / "none").exists() and not (tmp_path / "sweeps").exists()


def test_the_budget_guard_refuses_before_anything_runs(tmp_path):
    path, _ = real_study(tmp_path, lambda p: p["sweep"].update(max_gpu_hours=5))
    done = subprocess.run([sys.executable, "-m", "pipeline.sweep", "voc", "--params", str(path),
                           "--results-dir", str(tmp_path / "results")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "over the cap sweep.max_gpu_hours = 5" in done.stderr
    assert "GPU-hours" in done.stderr and "Nothing was started" in done.stderr
    for made in ("sweeps", "mlflow.db", "results"):
        assert not (tmp_path / made).exists(), made


def test_the_budget_guard_lets_a_study_under_the_cap_through(tmp_path, tiny_data):
    from pipeline.plan import check_budget, load_plan

    path, _ = real_study(tmp_path, lambda p: p["sweep"].update(max_gpu_hours=1000))
    check_budget("voc", path)  # 40.5 GPU-hours planned: through
    # a CPU study has no GPU-hours to cap
    cpu = study_params(tmp_path, tiny_data, sweep={"max_gpu_hours": 0.001})
    check_budget("synthetic_voc", cpu)
    assert load_plan(cpu).gpu_hours() == 0


def test_fine_tuning_a_published_model_for_null_iterations_says_what_to_set(tmp_path):
    from pipeline.params import ParamsError, for_dataset, load_params
    from pipeline.sweep.plan import check_length
    from pipeline.train import TrainParams

    path, _ = real_study(tmp_path, lambda p: p["train"]["schedules"]["voc"].update(
        iterations=None))
    params = for_dataset(load_params(path), "voc")
    from pipeline.params import parse_section

    train = parse_section(TrainParams, params["train"], "train")
    with pytest.raises(ParamsError, match="set train.schedules.voc.iterations|"
                                          "Set train.schedules.voc.iterations"):
        check_length("voc", train, params)


def test_a_dataset_schedule_reaches_its_config_and_only_its_own(tmp_path):
    """voc's schedule builds into voc's config; cityscapes' values stay its own."""
    from pipeline.params import for_dataset, load_params, parse_section
    from pipeline.sweep_params import SweepParams
    from pipeline.train import Placement, RunSpec, TrainParams, build_config

    path, _ = real_study(tmp_path)
    params = load_params(path)
    voc = for_dataset(params, "voc")
    train = parse_section(TrainParams, voc["train"], "train")
    sweep = parse_section(SweepParams, voc["sweep"], "sweep")
    assert (train.iterations, train.val_interval, train.checkpoint_interval,
            train.val_subset) == (2000, 250, 1000, 300)
    assert sweep.gpus_per_trial == 4 and sweep.convergence.start == "scratch"
    cfg = build_config(RunSpec(config=train.config_for("voc"), loss="ce", terms=[], seed=0,
                               iterations=train.iterations, val_interval=train.val_interval,
                               checkpoint_interval=train.checkpoint_interval,
                               val_subset=train.val_subset), Placement(str(tmp_path / "w")))
    assert cfg.train_cfg.max_iters == 2000 and cfg.train_cfg.val_interval == 250
    assert cfg.default_hooks.checkpoint.interval == 1000
    assert cfg.val_dataloader.dataset.indices == 300
    cityscapes = parse_section(TrainParams, for_dataset(params, "cityscapes")["train"], "train")
    assert (cityscapes.iterations, cityscapes.val_interval) == (4000, 500)
    # the generated datasets keep the CPU defaults
    synthetic = parse_section(TrainParams, for_dataset(params, "synthetic_voc")["train"],
                              "train")
    assert synthetic.iterations == params["train"]["iterations"]


def test_changing_one_datasets_schedule_keeps_the_others_trial_keys(tmp_path, tiny_data):
    from pipeline.sweep.plan import load_study, plan_trials

    def keys(schedules):
        params = study_params(tmp_path, tiny_data,
                              study={"datasets": ["synthetic_voc", "voc"],
                                     "protocol": "scratch"},
                              train={"schedules": schedules})
        return [t.key for t in plan_trials(load_study("synthetic_voc", params))]

    before = keys({"voc": {"iterations": 2000, "val_interval": 250}})
    assert keys({"voc": {"iterations": 3000, "val_interval": 500}}) == before
    changed = keys({"synthetic_voc": {"iterations": 6}, "voc": {"iterations": 3000}})
    assert set(changed).isdisjoint(before)


@pytest.mark.parametrize("schedule, message", [
    ({"epochs": 3}, "unknown key 'train.schedules.synthetic_voc.epochs'"),
    ({"val_interval": 2, "checkpoint_interval": 3},
     "train.checkpoint_interval (3) must be a multiple of train.val_interval (2)"),
    ({"gpus_per_trial": 1.5}, "sweep.gpus_per_trial must be 0 (CPU trials), a fraction"),
], ids=["unknown", "checkpoint", "gpus"])
def test_bad_dataset_schedules_fail_naming_the_key(tmp_path, tiny_data, schedule, message):
    from pipeline.params import ParamsError
    from pipeline.sweep.plan import load_study

    params = study_params(tmp_path, tiny_data, train={"schedules": {"synthetic_voc": schedule}})
    with pytest.raises(ParamsError) as raised:
        load_study("synthetic_voc", params)
    assert message in str(raised.value)


def test_trials_small_enough_share_a_gpu():
    """gpus_per_trial: 0.5 is one worker on half a GPU: two such trials fit one GPU."""
    from pipeline.sweep.trial import scaling_config
    from pipeline.sweep_params import SweepParams

    half = SweepParams(losses=["ce"], seeds=[0], gpus_per_trial=0.5)
    half.validate("sweep")
    assert half.use_gpu and half.workers == 1 and half.gpus_per_worker == 0.5
    assert half.resources_per_trial() == {"CPU": 1, "GPU": 0.5}
    scaling = scaling_config(half.workers, half.use_gpu, half.cpus_per_worker,
                             half.gpus_per_worker)
    assert scaling.use_gpu and scaling.num_workers == 1
    assert scaling.resources_per_worker == {"CPU": 1, "GPU": 0.5}
    four = SweepParams(losses=["ce"], seeds=[0], gpus_per_trial=4)
    assert four.workers == 4 and four.gpus_per_worker == 1


def test_the_plan_in_the_docs_is_todays(tmp_path):
    """docs/real-data.md shows `make plan` of the real study: regenerated, never stale."""
    from pipeline.plan import load_plan, render

    path, _ = real_study(tmp_path)
    shown = render(load_plan(path))
    assert shown in (ROOT / "docs" / "real-data.md").read_text(), (
        "docs/real-data.md's plan is stale: paste `python -m pipeline.plan` of params.yaml with "
        "study.datasets: [voc, cityscapes] into its ```text block")
