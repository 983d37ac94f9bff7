"""ScarNet loss: λ1·Focal-Tversky + λ2·Dice + λ3·cross-entropy, per class.

Soft Dice and Tversky terms are computed per foreground class over the whole batch (sums of
TP/FP/FN across all pixels of all slices), so a slice without scar does not produce a 0/0 term.
Tversky index TI_c = TP / (TP + α·FN + β·FP); α > β penalises missed scar more than false scar.
Focal-Tversky term (Abraham & Khan 2019): (1 − TI_c)^γ, with γ < 1 sharpening the gradient on
classes that are already fairly good but still short of perfect.
Defaults follow the reference: λ = 0.5 / 0.4 / 0.1, α = 0.7, β = 0.3, γ = 0.75. α and β may also be
given per class (one value for each of the classes, background included), e.g. symmetric for blood pool
and myocardium, whose volumes are reported, and recall-weighted for scar and MVO.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ScarNetCore.settings import settings_from_dict


@dataclass(frozen=True)
class LossConfig:
    lambda_focal_tversky: float = 0.5
    lambda_dice: float = 0.4
    lambda_ce: float = 0.1
    alpha: float | tuple[float, ...] = 0.7   # one value, or one per class
    beta: float | tuple[float, ...] = 0.3
    gamma: float = 0.75
    smooth: float = 1.0
    class_weights: tuple[float, ...] | None = None   # per class, for CE and the averaged overlap terms

    @classmethod
    def from_dict(cls, data: dict | None) -> "LossConfig":
        return settings_from_dict(cls, data, "loss")


def _overlap_sums(logits: torch.Tensor, target: torch.Tensor):
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    dims = (0, 2, 3)
    tp = (probs * onehot).sum(dims)
    fp = (probs * (1 - onehot)).sum(dims)
    fn = ((1 - probs) * onehot).sum(dims)
    return tp, fp, fn


def dice_per_class(logits, target, smooth=1.0):
    tp, fp, fn = _overlap_sums(logits, target)
    return (2 * tp + smooth) / (2 * tp + fp + fn + smooth)


def tversky_per_class(logits, target, alpha=0.7, beta=0.3, smooth=1.0):
    tp, fp, fn = _overlap_sums(logits, target)
    return (tp + smooth) / (tp + alpha * fn + beta * fp + smooth)


class ScarNetLoss(nn.Module):
    def __init__(self, config: LossConfig = LossConfig(), num_classes: int = 5):
        super().__init__()
        self.config = config
        weights = torch.tensor(config.class_weights if config.class_weights else [1.0] * num_classes)
        if len(weights) != num_classes:
            raise ValueError(f"class_weights has {len(weights)} entries for {num_classes} classes")
        self.register_buffer("weights", weights.float())
        self.register_buffer("alpha", self._per_class(config.alpha, "alpha", num_classes))
        self.register_buffer("beta", self._per_class(config.beta, "beta", num_classes))

    @staticmethod
    def _per_class(value, name: str, num_classes: int) -> torch.Tensor:
        values = torch.tensor(value, dtype=torch.float32).flatten()
        if values.numel() == 1:
            return values.expand(num_classes).clone()
        if values.numel() != num_classes:
            raise ValueError(f"loss {name} has {values.numel()} entries for {num_classes} classes; "
                             "give one value or one per class")
        return values

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.config
        fg = self.weights[1:] / self.weights[1:].sum()  # overlap terms: foreground classes only
        dice = 1 - (dice_per_class(logits, target, c.smooth)[1:] * fg).sum()
        tversky = tversky_per_class(logits, target, self.alpha, self.beta, c.smooth)[1:]
        focal_tversky = ((1 - tversky).clamp_min(0) ** c.gamma * fg).sum()
        ce = F.cross_entropy(logits.float(), target, weight=self.weights)
        total = c.lambda_focal_tversky * focal_tversky + c.lambda_dice * dice + c.lambda_ce * ce
        return {"loss": total, "focal_tversky": focal_tversky.detach(), "dice": dice.detach(), "ce": ce.detach()}
