"""ScarNet network: static parameters, deterministic eval, batch-size-1 training, staged encoder freezing."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ScarNetCore.model import ScarNet, ScarNetConfig


@pytest.fixture(scope="module")
def fresh_model():
    torch.manual_seed(0)
    return ScarNet(ScarNetConfig(), pretrained_encoder=False)  # weights irrelevant here; skips the weight file


@pytest.mark.parametrize("network", ["v1 with the TinyViT encoder", "v2 locate", "v2 segment"])
def test_forward_creates_no_parameters_and_is_deterministic(network, fresh_model, model_and_path):
    cascade, _ = model_and_path
    model = {"v1 with the TinyViT encoder": fresh_model, "v2 locate": cascade.locate, "v2 segment": cascade.segment}[network]
    model.eval()
    grid = model.config.grid_size
    before = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    count = sum(p.numel() for p in model.parameters())
    x = torch.rand(1, 1, grid, grid, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        first, second = model(x), model(x)
    assert first.shape == (1, model.config.num_classes, grid, grid)
    assert torch.equal(first, second)
    assert {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()} == before
    assert sum(p.numel() for p in model.parameters()) == count


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


def test_remote_contrast_is_each_slice_in_sds_from_the_healthy_myocardium():
    """The refine stage's remote-contrast channels: (intensity − mean) / SD of the pixels stage 2 calls
    healthy myocardium in any of the slices, over 8, clipped; the same for any intensity scale; zero
    when too little healthy myocardium is found; only with stage 2's probabilities."""
    from ScarNetCore.model.scarnet import MIN_REMOTE_PIXELS, remote_contrast
    config = ScarNetConfig(encoder="none", base_channels=4, grid_size=32, in_channels=3, prior=True,
                           remote_contrast=True)
    image = torch.zeros(1, config.input_channels, 32, 32)
    image[0, 0, :10, :10] = torch.tensor([0.2, 0.4]).repeat(50).view(10, 10)   # remote: mean 0.3, SD 0.1
    image[0, 3 + 1, :10, :10] = 0.9                       # slice 0's healthy-myocardium probability
    image[0, 3 + 4 * 2 + 1, 20:, 20:] = 0.4               # slice 2's: under 0.5, not counted
    image[0, 1, 15, 15], image[0, 2, 16, 16] = 0.7, 5.0   # bright pixels on the other slices
    contrast = remote_contrast(image, config)
    assert contrast.shape == (1, 3, 32, 32)
    assert contrast[0, 1, 15, 15].item() == pytest.approx((0.7 - 0.3) / 0.1 / 8, rel=1e-4)
    assert contrast[0, 2, 16, 16].item() == pytest.approx(16 / 8)          # clipped
    assert contrast[0, 0, 20, 20].item() == pytest.approx(-3 / 8, rel=1e-4)  # dark: 3 SD below
    scaled = image.clone()
    scaled[:, :3] *= 40.0                                 # another scanner's intensity scale
    torch.testing.assert_close(remote_contrast(scaled, config), contrast)
    few = image.clone()
    few[0, 3 + 1] = 0
    few[0, 3 + 1, 0, :MIN_REMOTE_PIXELS - 1] = 1.0
    assert not remote_contrast(few, config).any()
    net = ScarNet(config, pretrained_encoder=False)
    assert net.down[0].body[0].weight.shape[1] == config.input_channels + 3 == 18
    assert net(image).shape == (1, config.num_classes, 32, 32)
    with pytest.raises(ValueError, match="remote_contrast"):
        ScarNet(ScarNetConfig(encoder="none", base_channels=4, grid_size=32, remote_contrast=True))
