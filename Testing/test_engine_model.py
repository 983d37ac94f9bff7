"""ScarNet network: static parameters, deterministic eval, batch-size-1 training, staged encoder freezing."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ScarNetCore.model import ScarNet, ScarNetConfig


def test_forward_creates_no_parameters_and_is_deterministic(model_and_path):
    model, _ = model_and_path
    before = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    count = sum(p.numel() for p in model.parameters())
    x = torch.rand(1, 1, 256, 256, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        first, second = model(x), model(x)
    assert first.shape == (1, 5, 256, 256)
    assert torch.equal(first, second)
    assert {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()} == before
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.fixture(scope="module")
def fresh_model():
    torch.manual_seed(0)
    return ScarNet(ScarNetConfig(), pretrained_encoder=False)  # weights irrelevant here; skips the weight file


def test_batch_size_one_training_step_frozen_encoder(fresh_model):
    model = fresh_model
    outside_encoder = [m for name, m in model.named_modules() if not name.startswith("encoder")]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in outside_encoder)  # GroupNorm only
    model.encoder.set_trainable_stages(0)
    model.train()
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head_before = model.head.weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = torch.rand(1, 1, 256, 256)
    target = torch.randint(0, 5, (1, 256, 256))
    loss = nn.functional.cross_entropy(model(x), target)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert not torch.equal(model.head.weight, head_before)
    assert all(p.grad is None for p in model.encoder.parameters())
    # a frozen encoder stays exactly pretrained: weights and BatchNorm running statistics alike
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key
    model.eval()


def test_set_trainable_stages(fresh_model):
    encoder = fresh_model.encoder
    stages = encoder._stages
    all_params = list(encoder.parameters())
    assert sum(len(s) for s in stages) == len(all_params)  # every encoder parameter is in one stage
    encoder.set_trainable_stages(0)
    assert not any(p.requires_grad for p in all_params)
    encoder.set_trainable_stages(-1)
    assert all(p.requires_grad for p in all_params)
    encoder.set_trainable_stages(2)
    for index, params in enumerate(stages):
        assert all(p.requires_grad == (index >= len(stages) - 2) for p in params), index
    assert all(p.requires_grad for p in fresh_model.head.parameters())  # the decoder is never frozen
    encoder.set_trainable_stages(0)
