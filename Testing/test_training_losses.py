"""ScarNetLoss on tiny hand-computed cases (λ1·Focal-Tversky + λ2·Dice + λ3·CE, smooth 1)."""
import math

import pytest
import torch
from torch.nn import functional as F

from training.losses import LossConfig, ScarNetLoss, dice_per_class, tversky_per_class


def one_hot_logits(labels: torch.Tensor, margin: float) -> torch.Tensor:
    """[1, H, W] labels → [1, 5, H, W] logits with `margin` on the labelled class."""
    return margin * F.one_hot(labels, 5).permute(0, 3, 1, 2).float()


def test_uniform_logits_match_hand_computation():
    # 1×5×2×2 logits all 0 → softmax p = 0.2 for every class at all 4 pixels.
    # Target [[0, 1], [2, 3]]: classes 1, 2, 3 have one pixel each, class 4 none.
    #   class 1–3: TP = 0.2, FP = 3·0.2 = 0.6, FN = 0.8;   class 4: TP = 0, FP = 0.8, FN = 0
    #   Dice (smooth 1): (2·0.2 + 1)/(0.4 + 0.6 + 0.8 + 1) = 1.4/2.8 = 0.5;   class 4: 1/1.8 = 0.5556
    #   Tversky α=.7 β=.3: 1.2/(0.2 + 0.56 + 0.18 + 1) = 1.2/1.94 = 0.6186;   class 4: 1/(0.24 + 1) = 0.8065
    #   with equal weights the foreground terms are averaged (¼ each):
    #   Dice loss = 1 − (3·0.5 + 0.5556)/4 = 0.48611
    #   focal Tversky = (3·(1 − 0.6186)^0.75 + (1 − 0.8065)^0.75)/4 = (3·0.48537 + 0.29182)/4 = 0.43698
    #   CE = ln 5 = 1.60944 (uniform prediction)
    #   total = 0.5·0.43698 + 0.4·0.48611 + 0.1·1.60944 = 0.57388
    logits = torch.zeros(1, 5, 2, 2)
    target = torch.tensor([[[0, 1], [2, 3]]])
    dice_fg = [1.4 / 2.8] * 3 + [1 / 1.8]
    tversky_fg = [1.2 / 1.94] * 3 + [1 / 1.24]
    expected_dice = 1 - sum(dice_fg) / 4
    expected_ft = sum((1 - t) ** 0.75 for t in tversky_fg) / 4
    expected_ce = math.log(5)
    out = ScarNetLoss(LossConfig())(logits, target)
    assert float(out["dice"]) == pytest.approx(expected_dice, abs=1e-6) and expected_dice == pytest.approx(0.48611, abs=1e-5)
    assert float(out["focal_tversky"]) == pytest.approx(expected_ft, abs=1e-6) and expected_ft == pytest.approx(0.43698, abs=1e-5)
    assert float(out["ce"]) == pytest.approx(expected_ce, abs=1e-6)
    assert float(out["loss"]) == pytest.approx(0.5 * expected_ft + 0.4 * expected_dice + 0.1 * expected_ce, abs=1e-6)
    assert float(out["loss"]) == pytest.approx(0.57388, abs=1e-4)
    # the per-class helpers give the same numbers (background: TP 0.2, FP 0.6, FN 0.8 too)
    assert dice_per_class(logits, target).tolist() == pytest.approx([0.5, 0.5, 0.5, 0.5, 1 / 1.8], abs=1e-6)
    assert tversky_per_class(logits, target).tolist() == pytest.approx([1.2 / 1.94] * 4 + [1 / 1.24], abs=1e-6)


def test_class_weights_weight_the_foreground_average():
    # weights [1, 1, 1, 2, 2]: overlap terms use the foreground weights normalised to sum 1 → [1, 1, 2, 2]/6.
    # Dice loss = 1 − (0.5 + 0.5 + 2·0.5 + 2·0.5556)/6 = 0.48148. CE of a uniform prediction stays ln 5
    # (a weighted mean of equal per-pixel losses).
    logits = torch.zeros(1, 5, 2, 2)
    target = torch.tensor([[[0, 1], [2, 3]]])
    out = ScarNetLoss(LossConfig(class_weights=(1, 1, 1, 2, 2)))(logits, target)
    assert float(out["dice"]) == pytest.approx(1 - (0.5 + 0.5 + 1.0 + 2 / 1.8) / 6, abs=1e-6)
    assert float(out["ce"]) == pytest.approx(math.log(5), abs=1e-6)
    with pytest.raises(ValueError, match="class_weights"):
        ScarNetLoss(LossConfig(class_weights=(1, 1, 1)))


def test_perfect_prediction_tends_to_zero():
    target = torch.tensor([[[0, 1, 1, 2], [2, 2, 3, 3], [3, 4, 4, 0], [0, 0, 1, 2]]])
    criterion = ScarNetLoss(LossConfig(class_weights=(1, 1, 1, 2, 2)))
    losses = [float(criterion(one_hot_logits(target, m), target)["loss"]) for m in (1, 2, 4, 8, 30)]
    assert all(a > b for a, b in zip(losses, losses[1:])), losses   # more confident → lower loss
    assert losses[-1] < 1e-6                                         # the limit is 0
    assert losses[0] > 0.1


def test_missing_scar_costs_more_than_false_scar():
    # Same TP (2 scar pixels) and the same number of errors (2), once as FN, once as FP:
    #   A (missed scar): reference scar 4 px, prediction marks 2 of them, 2 left as background
    #   B (false scar):  reference scar 2 px, prediction marks them plus 2 background pixels
    # Dice is symmetric: (2·2 + 1)/(4 + 2 + 1) = 5/7 for both. CE is equal (2 wrong pixels, same margin).
    # Tversky (α = 0.7 on FN, β = 0.3 on FP): A 3/(2 + 1.4 + 1) = 0.682, B 3/(2 + 0.6 + 1) = 0.833 → A costs more.
    ref_a = torch.zeros(1, 4, 4, dtype=torch.long)
    ref_a[0, 0, :4] = 3
    pred_a = ref_a.clone()
    pred_a[0, 0, 2:] = 0
    ref_b = torch.zeros(1, 4, 4, dtype=torch.long)
    ref_b[0, 0, :2] = 3
    pred_b = ref_b.clone()
    pred_b[0, 0, 2:4] = 3
    margin = 30.0  # residual probabilities e^-30: absent classes add nothing measurable
    criterion = ScarNetLoss(LossConfig())
    a = criterion(one_hot_logits(pred_a, margin), ref_a)
    b = criterion(one_hot_logits(pred_b, margin), ref_b)
    assert float(a["dice"]) == pytest.approx(float(b["dice"]), abs=1e-4)
    assert float(a["dice"]) == pytest.approx((1 - 5 / 7) / 4, abs=1e-3)  # scar is 1 of 4 foreground classes
    assert float(a["ce"]) == pytest.approx(float(b["ce"]), rel=1e-4)
    assert float(a["focal_tversky"]) == pytest.approx((1 - 3 / 4.4) ** 0.75 / 4, rel=1e-4)
    assert float(b["focal_tversky"]) == pytest.approx((1 - 3 / 3.6) ** 0.75 / 4, rel=1e-4)
    assert float(a["loss"]) > float(b["loss"]) + 0.01
    # with α = β the two errors cost the same: the asymmetry comes from α > β alone
    symmetric = ScarNetLoss(LossConfig(alpha=0.5, beta=0.5))
    assert float(symmetric(one_hot_logits(pred_a, margin), ref_a)["loss"]) == pytest.approx(
        float(symmetric(one_hot_logits(pred_b, margin), ref_b)["loss"]), rel=1e-4)


def test_gradient_flows_and_points_towards_target():
    target = torch.tensor([[[0, 1], [2, 3]]])
    logits = torch.zeros(1, 5, 2, 2, requires_grad=True)
    ScarNetLoss(LossConfig())(logits, target)["loss"].backward()
    grad = logits.grad[0]
    # descending the gradient raises the logit of each pixel's true class
    for (y, x), cls in zip([(0, 0), (0, 1), (1, 0), (1, 1)], [0, 1, 2, 3]):
        assert grad[cls, y, x] < 0


def test_per_class_tversky_weights():
    """α/β per class: the same as the scalar where they agree, and a class given α = β weighs its
    missed and false pixels alike while the others keep α > β."""
    torch.manual_seed(0)
    logits, target = torch.randn(2, 5, 8, 8), torch.randint(0, 5, (2, 8, 8))
    scalar = ScarNetLoss(LossConfig(alpha=0.7, beta=0.3))(logits, target)["loss"]
    listed = ScarNetLoss(LossConfig(alpha=(0.7,) * 5, beta=(0.3,) * 5))(logits, target)["loss"]
    assert float(listed) == pytest.approx(float(scalar), rel=1e-6)
    # blood pool (1) symmetric: a missed and a false blood-pool pixel cost the same; scar (3) keeps α > β
    mixed = ScarNetLoss(LossConfig(alpha=(0.5, 0.5, 0.5, 0.7, 0.7), beta=(0.5, 0.5, 0.5, 0.3, 0.3)))
    margin = 30.0
    ref_a = torch.zeros(1, 4, 4, dtype=torch.long)
    ref_a[0, 0] = 1
    missed = ref_a.clone()   # 2 of 4 blood-pool pixels missed
    missed[0, 0, 2:] = 0
    ref_b = torch.zeros(1, 4, 4, dtype=torch.long)
    ref_b[0, 0, :2] = 1
    false = ref_a.clone()    # 4 blood-pool pixels called where ref_b has 2
    for criterion, equal in ((mixed, True), (ScarNetLoss(LossConfig()), False)):
        a = float(criterion(one_hot_logits(missed, margin), ref_a)["focal_tversky"])
        b = float(criterion(one_hot_logits(false, margin), ref_b)["focal_tversky"])
        assert (a == pytest.approx(b, rel=1e-4)) == equal
    assert a > b + 0.01   # the default α > β: missing costs more than calling too much
    with pytest.raises(ValueError, match="alpha has 3 entries for 5 classes"):
        ScarNetLoss(LossConfig(alpha=(0.5, 0.5, 0.5)))
