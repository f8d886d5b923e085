"""A study loss is a display name and a list of mmseg loss configs: per-image mode is an option of
a term, any loss of mmseg's MODELS (or a user's, through train.custom_imports) can be a term."""
from __future__ import annotations

import sys

import pytest
import torch

from pipeline.params import ParamsError, parse_section
from pipeline.study_losses import StudyLoss, canonical, check_registered, scaled_terms


def two_images() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [2, 3, 16, 16] and labels: image 0 holds a 2x2 object of class 1, image 1 a
    12x12 one (and a class-2 strip), so per image and over the batch weigh them differently."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, generator=generator)
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[0, 7:9, 7:9] = 1
    labels[1, 2:14, 2:14] = 1
    labels[1, 15, :] = 2
    return logits, labels


@pytest.mark.parametrize("loss_type", ["LovaszSoftmaxLoss", "LovaszPixIoULoss"])
def test_per_image_and_batch_modes_differ_in_their_gradients(loss_type):
    from mmseg.registry import MODELS

    import pipeline.losses  # noqa: F401  (registers our losses)

    logits, labels = two_images()
    gradients, values = {}, {}
    for per_image in (False, True):
        x = logits.clone().requires_grad_(True)
        loss = MODELS.build(dict(type=loss_type, per_image=per_image))(x, labels)
        loss.backward()
        gradients[per_image], values[per_image] = x.grad, float(loss)
    difference = (gradients[True] - gradients[False]).norm() / gradients[False].norm()
    assert difference > 0.05
    # per image: the mean of each image's own (batch-mode) loss
    alone = [float(MODELS.build(dict(type=loss_type))(logits[i:i + 1], labels[i:i + 1]))
             for i in range(2)]
    assert values[True] == pytest.approx(sum(alone) / 2, rel=1e-5)
    assert values[False] != pytest.approx(values[True], rel=1e-3)


def test_the_small_object_weighs_more_per_image():
    """Per image, the 4-pixel object's image counts as much as the 144-pixel one's: its pixels'
    gradients grow against batch mode."""
    from pipeline.losses import lovasz_softmax

    logits, labels = two_images()
    grads = {}
    for per_image in (False, True):
        x = logits.clone().requires_grad_(True)
        lovasz_softmax(x.softmax(1), labels, per_image=per_image).backward()
        grads[per_image] = x.grad[0, :, 7:9, 7:9].abs().sum()
    assert grads[True] > 1.5 * grads[False]


def test_a_study_loss_needs_a_name_and_typed_terms():
    good = parse_section(StudyLoss, {"name": "Dice", "terms": [{"type": "DiceLoss"}]}, "x")
    assert good.terms == [{"type": "DiceLoss"}]
    cases = [({"name": "A", "terms": []}, "x.terms is empty"),
             ({"name": "A", "terms": [{"per_image": True}]}, "x.terms[0] has no 'type'"),
             ({"name": "A", "terms": [{"type": "CrossEntropyLoss", "loss_weight": 0}]},
              "x.terms[0].loss_weight must be a number > 0"),
             ({"name": "A", "terms": [{"type": "CrossEntropyLoss", "loss_name": "ce"}]},
              "x.terms[0].loss_name must start with 'loss_'"),
             ({"name": " ", "terms": [{"type": "CrossEntropyLoss"}]}, "x.name is empty"),
             ({"terms": [{"type": "CrossEntropyLoss"}]}, "missing key 'x.name'")]
    for value, message in cases:
        with pytest.raises(ParamsError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_section(StudyLoss, value, "x")


def test_unknown_types_and_options_are_caught_before_training():
    loss = StudyLoss("Typo", [{"type": "CrossEntropyLoss"}, {"type": "LovaszSoftmaxLos"}])
    with pytest.raises(ParamsError, match=r"train.losses.typo.terms\[1\]: 'LovaszSoftmaxLos' "
                                          "is not a loss in mmseg's MODELS"):
        check_registered({"typo": loss}, [])
    option = StudyLoss("Option", [{"type": "LovaszSoftmaxLoss", "per_imag": True}])
    with pytest.raises(ParamsError, match=r"LovaszSoftmaxLoss does not accept this config"):
        check_registered({"option": option}, [])
    with pytest.raises(ParamsError, match="cannot import 'no_such_module'"):
        check_registered({}, ["no_such_module"])


def test_a_users_loss_enters_through_custom_imports(tmp_path, monkeypatch):
    (tmp_path / "my_losses.py").write_text(
        "import torch.nn as nn\n"
        "from mmseg.registry import MODELS\n\n"
        "@MODELS.register_module(force=True)\n"
        "class MyStudyLoss(nn.Module):\n"
        "    def __init__(self, loss_weight=1.0, loss_name='loss_mine'):\n"
        "        super().__init__()\n"
        "        self.loss_weight, self.loss_name = loss_weight, loss_name\n"
        "    def forward(self, logits, label, **kwargs):\n"
        "        return self.loss_weight * logits.mean() * 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mine = StudyLoss("Mine", [{"type": "MyStudyLoss", "loss_weight": 2.0}])
    check_registered({"mine": mine}, ["my_losses"])  # no error: registered by the import
    sys.modules.pop("my_losses", None)


def test_weights_are_explicit_and_canonical_ignores_names_and_order():
    terms = [{"type": "CrossEntropyLoss"}, {"type": "LovaszSoftmaxLoss", "loss_weight": 0.5}]
    assert [t["loss_weight"] for t in scaled_terms(terms, 0.4)] == [0.4, 0.2]
    assert terms[0] == {"type": "CrossEntropyLoss"}  # the params are not changed
    assert canonical([{"type": "CrossEntropyLoss", "loss_name": "loss_x"}]) == \
        canonical([{"loss_weight": 1, "type": "CrossEntropyLoss"}])
    assert canonical(terms) != canonical(terms[:1])
