"""What a run is: the params section it is read from (`train`), the run's spec, placement and
summary, the names of the files it leaves, and the code its key hashes."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import code_closure
from ..determinism import check_mode
from ..measures import METRICS
from ..params import ParamsError, load_params, lookup, parse_section
from ..precision import check_amp
from ..schedules import SCHEDULES
from ..study_losses import StudyLoss, check_registered, scaled_terms

SUMMARY = "summary.json"
HISTORY = "eval_history.jsonl"
#: What a finished run leaves for the study (besides its last checkpoint), written by rank 0.
RESULT_FILES = (SUMMARY, HISTORY, "config.py", "confusion_matrix.png", "confusion_matrix.json",
                "overlays", "logs")
#: mmengine's text logs of the run (one per attempt), kept in the work dir under this folder.
LOGS = "logs"
#: Iterations between two questions to the reporter whether the node is being preempted.
PREEMPTION_POLL = 10
#: Auxiliary heads keep mmseg's relative weight (0.4 in the model zoo) for the study's loss.
DEFAULT_AUX_WEIGHT = 0.4
@dataclass
class TrainParams:
    """params.yaml: train. One run; the sweep varies the loss, the seed and, if searched, lr."""

    configs: dict[str, str]
    losses: dict[str, StudyLoss]
    # modules that register more losses in mmseg's MODELS (imported by every run, like the
    # configs' custom_imports): a user's loss enters the study as a term of train.losses
    custom_imports: list[str] = field(default_factory=list)
    iterations: int | None = None
    val_interval: int | None = None
    # a full resume checkpoint every this many iterations (a multiple of val_interval; null:
    # at every evaluation). On GPU each is ~0.5 GB uploaded: evaluate often, checkpoint less
    checkpoint_interval: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    # constant: the lr after a warmup of `warmup` iterations, to the end (fine-tuning, so the
    # plateau test can see whether a curve has settled); config: the config's own schedule
    schedule: str = "config"
    warmup: int = 10
    val_subset: int | None = None  # evaluations while training score this many val images
    # true: seeded (on CPU also deterministic kernels: bit-identical runs); strict: the
    # deterministic kernels on GPU too, without cuDNN benchmarking (pipeline/determinism.py)
    deterministic: bool | str = True
    amp: str | None = None  # mixed precision: null, fp16 or bf16 (pipeline/precision.py)
    overlays: int = 4
    # train.schedules.<dataset>: what each dataset changes of the values above (applied by
    # pipeline.params.for_dataset where a stage reads one dataset's section)
    schedules: dict[str, dict] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        if not self.losses:
            raise ParamsError(f"params.yaml: {where}.losses is empty")
        if self.schedule not in SCHEDULES:
            raise ParamsError(f"params.yaml: {where}.schedule must be one of "
                              f"{', '.join(SCHEDULES)}, got '{self.schedule}'")
        if self.warmup < 0:
            raise ParamsError(f"params.yaml: {where}.warmup must be >= 0, got {self.warmup}")
        for key in ("iterations", "val_interval", "checkpoint_interval", "batch_size", "lr",
                    "val_subset"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ParamsError(f"params.yaml: {where}.{key} must be > 0 or null, got {value}")
        if self.overlays < 0:
            raise ParamsError(f"params.yaml: {where}.overlays must be >= 0, got {self.overlays}")
        if self.checkpoint_interval is not None and self.val_interval is not None \
                and self.checkpoint_interval % self.val_interval:
            raise ParamsError(f"params.yaml: {where}.checkpoint_interval "
                              f"({self.checkpoint_interval}) must be a multiple of "
                              f"{where}.val_interval ({self.val_interval}): a checkpoint is the "
                              "state an evaluation saw")
        for check, key in ((check_mode, "deterministic"), (check_amp, "amp")):
            try:
                check(getattr(self, key), f"{where}.{key}")
            except ValueError as error:
                raise ParamsError(str(error)) from None

    def config_for(self, dataset: str) -> str:
        if dataset not in self.configs:
            raise ParamsError(f"params.yaml: train.configs has no config for dataset "
                              f"'{dataset}' (it has: {', '.join(self.configs)})")
        path = self.configs[dataset]
        if not Path(path).is_file():
            raise ParamsError(f"params.yaml: train.configs.{dataset}: {path} does not exist")
        return path

    def terms_of(self, loss: str, where: str) -> list[dict]:
        """The mmseg loss configs of study loss `loss`."""
        if loss not in self.losses:
            raise ParamsError(f"{where}: unknown loss '{loss}' (train.losses defines: "
                              f"{', '.join(self.losses)})")
        return scaled_terms(self.losses[loss].terms)

    def check_losses(self, keys: list[str]) -> None:
        """The study losses `keys` build in mmseg (types registered, options accepted)."""
        check_registered({k: self.losses[k] for k in keys}, self.custom_imports)


def load_train_params(params_file: Path | str = "params.yaml") -> TrainParams:
    return parse_section(TrainParams, lookup(load_params(params_file), "train"), "train")


#: The settings of params.yaml's train section that every run of the sweep takes as they are
#: (a run's schedule, lr and iterations come from its arm, the CLI or the pretrain section).
RUN_SETTINGS = ("batch_size", "deterministic", "amp", "overlays", "warmup", "val_subset",
                "custom_imports")


@dataclass(frozen=True)
class RunSpec:
    """What a run is: everything its numbers depend on besides the code and the data. The
    sweep and the pre-training hash it (plus code and data) into the run's key; where the run
    runs is its `Placement`."""

    config: str
    loss: str
    terms: list[dict]  # mmseg loss configs (pipeline.study_losses)
    seed: int
    lr: float | None = None
    iterations: int | None = None
    val_interval: int | None = None
    checkpoint_interval: int | None = None  # None: at every evaluation
    batch_size: int | None = None
    deterministic: bool | str = True  # pipeline/determinism.py
    amp: str | None = None  # pipeline/precision.py
    overlays: int = 4
    threads: int | None = None  # torch intra-op threads; None leaves torch's default
    # k > 0 (the lr search): train without every k-th training image and evaluate on those
    # while training (what ASHA and the lr choice read); score the validation set at the end.
    holdout: int = 0
    custom_imports: tuple[str, ...] = ()  # modules that register the terms' types
    schedule: str = "config"  # pipeline.schedules.SCHEDULES
    warmup: int = 0  # iterations of the constant schedule's warmup
    val_subset: int | None = None  # evaluations while training score this many val images

    @classmethod
    def from_params(cls, train: TrainParams, **run) -> RunSpec:
        """A run of `train`'s RUN_SETTINGS, and `run` for the rest (or to override them)."""
        settings = {name: getattr(train, name) for name in RUN_SETTINGS}
        settings["custom_imports"] = tuple(settings["custom_imports"])
        return cls(**{**settings, **run})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Placement:
    """Where a run runs, on this node: none of it is in the run's key."""

    work_dir: str
    data_root: str | None = None  # re-roots the config's 'data/...' dataset paths
    # Fine-tuning: the weights a fresh run starts from (a checkpoint file on this node). The
    # run evaluates them before its first step; resumed, it continues from its own checkpoint.
    init_checkpoint: str | None = None


@dataclass(frozen=True)
class RunSummary:
    """What a finished run leaves (`summary.json`, written last: its presence means finished).

    `metrics` holds the final value of each of METRICS (pipeline/measures.py); the JSON file
    holds them at its top level, as results/<dataset>.json and MLflow name them.
    """

    iterations: int
    world_size: int
    wall_time_s: float
    metrics: dict[str, float]
    per_class: dict[str, float]
    history: list[dict]  # every evaluation while training, without its per-class values
    resumed_from: int = 0
    spec: dict | None = None
    config_name: str | None = None
    # the lr search: the held-out split's last evaluation (what chose the lr)
    selection: dict | None = None

    def to_dict(self) -> dict:
        return {"spec": self.spec, "config_name": self.config_name,
                "iterations": self.iterations, "resumed_from": self.resumed_from,
                "world_size": self.world_size, "wall_time_s": self.wall_time_s,
                **self.metrics, "per_class": self.per_class, "history": self.history,
                **({"selection": self.selection} if self.selection else {})}

    @classmethod
    def from_dict(cls, values: dict) -> RunSummary:
        """From summary.json, or a finished trial's record in results/<dataset>.json."""
        return cls(iterations=values["iterations"], world_size=values["world_size"],
                   wall_time_s=values["wall_time_s"],
                   metrics={m: values[m] for m in METRICS if m in values},
                   per_class=values["per_class"],
                   history=values["history"], resumed_from=values.get("resumed_from", 0),
                   spec=values.get("spec"), config_name=values.get("config_name"),
                   selection=values.get("selection"))


def code_fingerprint(custom_imports: list[str] | tuple[str, ...] = ()) -> str:
    """sha256 over the path and content of every file of `code_closure.training_code`: the
    import closure of a run, with the modules `custom_imports` names, and the configs."""
    digest = hashlib.sha256()
    for path in code_closure.training_code(custom_imports):
        digest.update(str(path).encode())
        digest.update((code_closure.ROOT / path).read_bytes())
    return digest.hexdigest()
