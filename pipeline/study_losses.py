"""params.yaml `train.losses`: each study loss is a display name and a list of mmseg loss configs
(its terms, summed by mmseg's decode head), so any loss in mmseg's `MODELS` registry can enter the
study beside ours: per-image Lovász-Softmax is an option of a term, mmseg's own `DiceLoss` or
`FocalLoss` a term of its own, and a user's loss comes in through `train.custom_imports`::

    losses:
      lovasz_img: {name: Lovász-Softmax (per image),
                   terms: [{type: LovaszSoftmaxLoss, per_image: true}]}
      ce_pixiou: {name: CE + Lovász-PixIoU,
                  terms: [{type: CrossEntropyLoss}, {type: LovaszPixIoULoss, loss_weight: 1.0}]}

`dvc exp run -S 'train.losses.ce_pixiou.terms.1.loss_weight=0.5'` changes one weight.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field

from .params import ParamsError

#: What the study imports into every config (our losses and metric); train.custom_imports adds.
STUDY_IMPORTS = ("pipeline.losses", "pipeline.metrics")


@dataclass
class StudyLoss:
    """params.yaml: train.losses.<key>."""

    name: str  # how the report's tables, figures and claims name it
    terms: list[dict] = field(default_factory=list)  # mmseg loss configs, summed

    def validate(self, where: str) -> None:
        if not self.name.strip():
            raise ParamsError(f"params.yaml: {where}.name is empty")
        if not self.terms:
            raise ParamsError(f"params.yaml: {where}.terms is empty: a loss needs at least one "
                              "mmseg loss config, e.g. [{type: CrossEntropyLoss}]")
        for i, term in enumerate(self.terms):
            at = f"{where}.terms[{i}]"
            if not isinstance(term, dict):
                raise ParamsError(f"params.yaml: {at}: expected an mmseg loss config (a mapping "
                                  f"with 'type'), got {term!r}")
            if not isinstance(term.get("type"), str):
                raise ParamsError(f"params.yaml: {at} has no 'type' (the name of a loss in "
                                  f"mmseg's MODELS registry, e.g. LovaszSoftmaxLoss)")
            weight = term.get("loss_weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or \
                    not weight > 0:
                raise ParamsError(f"params.yaml: {at}.loss_weight must be a number > 0, "
                                  f"got {weight!r}")
            loss_name = term.get("loss_name", "loss_")
            if not isinstance(loss_name, str) or not loss_name.startswith("loss_"):
                raise ParamsError(f"params.yaml: {at}.loss_name must start with 'loss_' (mmseg "
                                  f"back-propagates only those), got {loss_name!r}")


def scaled_terms(terms: list[dict], scale: float = 1.0) -> list[dict]:
    """The terms as mmseg loss configs with each weight (default 1) multiplied by `scale`."""
    return [dict(copy.deepcopy(term), loss_weight=float(term.get("loss_weight", 1.0)) * scale)
            for term in terms]


def canonical(terms: list[dict]) -> str:
    """One string per distinct loss: the terms with their weights made explicit, key order and
    loss names aside (two configs that train the same way compare equal)."""
    return json.dumps([{k: v for k, v in term.items() if k != "loss_name"}
                       for term in scaled_terms(terms)], sort_keys=True)


def check_registered(losses: dict[str, StudyLoss], custom_imports: list[str],
                     where: str = "train.losses") -> None:
    """Build every term once, as mmseg would: an unknown type or option is a ParamsError naming
    the loss and the term, before anything trains. Imports the study's and the user's modules."""
    import importlib

    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    for module in (*STUDY_IMPORTS, *custom_imports):
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ParamsError(f"params.yaml: train.custom_imports: cannot import {module!r} "
                              f"({error})") from None
    for key, loss in losses.items():
        for i, term in enumerate(loss.terms):
            at = f"{where}.{key}.terms[{i}]"
            if MODELS.get(term["type"]) is None:
                raise ParamsError(f"params.yaml: {at}: {term['type']!r} is not a loss in mmseg's "
                                  f"MODELS registry (a typo, or a module missing from "
                                  f"train.custom_imports)")
            try:
                MODELS.build(copy.deepcopy(term))
            except (TypeError, ValueError, KeyError, AssertionError) as error:
                raise ParamsError(f"params.yaml: {at}: {term['type']} does not accept this "
                                  f"config: {error}") from None
