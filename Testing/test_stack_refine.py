"""The refine stage's 3-D view of the stack (model.stack_mixing): the network, its training views and
how inference feeds it the whole stack."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ScarNetCore.model.cascade import LOCATE_GEOMETRY, SEGMENT_GEOMETRY, CascadeParams, ScarNetCascade
from ScarNetCore.model.checkpoint import load_checkpoint, save_cascade, save_checkpoint
from ScarNetCore.model import ScarNet, ScarNetConfig
from training.cascade_data import CaseSlices, collate_stacks, segment_view, stack_view
from training.data import SliceSample

GRID = SEGMENT_GEOMETRY.grid_size


def _refine(stack_mixing: bool, seed: int = 1) -> ScarNet:
    torch.manual_seed(seed)
    return ScarNet(ScarNetConfig(encoder="none", base_channels=4, grid_size=GRID, in_channels=3, prior=True,
                                 stack_mixing=stack_mixing)).eval()


def _stir(net: ScarNet) -> ScarNet:
    """Non-zero mixing weights, as training leaves them."""
    torch.manual_seed(5)
    with torch.no_grad():
        for layer in net.mixing.values():
            layer.conv.weight.normal_(0, 2.0)
    return net


def test_mixing_starts_at_zero_and_keeps_the_stacks_of_a_batch_apart():
    plain, mixing = _refine(False), _refine(True)
    mixing.load_state_dict({**mixing.state_dict(), **plain.state_dict()})
    x = torch.rand(6, 15, GRID, GRID)
    with torch.no_grad():
        torch.testing.assert_close(mixing(x), plain(x))   # a new mixing layer changes nothing yet
        _stir(mixing)
        alone = mixing(x)
        together = mixing(torch.cat([x, torch.rand(2, 15, GRID, GRID)]), stacks=[6, 2])
        torch.testing.assert_close(together[:6], alone)   # another stack in the batch is not seen
        changed = x.clone()
        changed[5] = torch.rand(15, GRID, GRID)
        reach = (mixing(changed) - alone).abs().amax((1, 2, 3))
    # three mixing levels: a slice sees up to three slices either side, and no further
    assert reach[1] == 0 and reach[2] > 1e-6 and reach[4] > 1e-6
    assert set(mixing.mixing) == {"4", "8", "16"} and not plain.mixing


def _case(count: int = 5, seed: int = 0) -> tuple[CaseSlices, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:256, :256]
    ring = (np.hypot(yy - 130, xx - 120) < 30).astype(np.uint8) + (np.hypot(yy - 130, xx - 120) < 18)
    samples = [SliceSample("Case_T", i, rng.random((256, 256)).astype(np.float32), ring * (1 + (i % 2)))
               for i in range(count)]
    priors = rng.random((count, 4, 256, 256)).astype(np.float32)
    return CaseSlices(samples, 1.25, priors), priors


def test_validation_stack_views_are_the_per_slice_views_of_every_slice():
    """Unaugmented, the stack view of a case is exactly what the per-slice refine view gives each
    slice: the slice between its neighbours, then each one's stage-2 probabilities."""
    case, _ = _case()
    images, masks = stack_view(case, SEGMENT_GEOMETRY, np.random.default_rng(0), None, None, context=1)
    assert images.shape == (5, 15, GRID, GRID) and masks.shape == (5, GRID, GRID)
    for i in range(5):
        image, mask = segment_view(case, i, SEGMENT_GEOMETRY, np.random.default_rng(0), None, None, context=1)
        np.testing.assert_allclose(images[i], image, atol=1e-6)
        np.testing.assert_array_equal(masks[i], mask)


def test_training_stack_views_share_one_pose_and_batch_with_their_sizes():
    from training.augment import AugmentConfig
    from training.cascade_data import ViewConfig
    case, _ = _case()
    cfg = ViewConfig(p_user_crop=0.0, neighbour_shift_mm=0.0, p_reverse=0.0)
    images, masks = stack_view(case, SEGMENT_GEOMETRY, np.random.default_rng(3), cfg, AugmentConfig(), context=1)
    # the mask rings of every slice lie in the same place: one pose and one crop centre for the stack
    assert all(np.array_equal(masks[i] > 0, masks[0] > 0) for i in range(5)) and (masks[0] > 0).any()
    assert set(np.unique(masks[1])) == {0, 2, 4} and set(np.unique(masks[0])) == {0, 1, 2}
    # neighbours are the next slices' own channels (one acquisition, one intensity augmentation)
    np.testing.assert_array_equal(images[1, 2], images[2, 1])
    batch = collate_stacks([{"image": torch.from_numpy(images), "mask": torch.from_numpy(masks), "case": "a"},
                            {"image": torch.from_numpy(images[:2]), "mask": torch.from_numpy(masks[:2]), "case": "b"}])
    assert batch["stacks"] == [5, 2] and batch["image"].shape[0] == 7 and batch["case"] == ["a"] * 5 + ["b"] * 2


def _cascade(refine: ScarNet) -> ScarNetCascade:
    torch.manual_seed(0)
    locate = ScarNet(ScarNetConfig(encoder="none", base_channels=4, num_classes=2, grid_size=LOCATE_GEOMETRY.grid_size))
    segment = ScarNet(ScarNetConfig(encoder="none", base_channels=4, grid_size=GRID))
    return ScarNetCascade(locate, segment, params=CascadeParams(lv_threshold=0.3, min_stack_lv_mm2=0), refine=refine).eval()


def test_inference_gives_a_stack_refine_stage_the_whole_stack(tmp_path, positive_image):
    """Whatever the batch size, the refine stage sees every slice of the stack at once (its answer
    does not depend on how the slices are batched), and the file round-trips; a stage 2 that mixes
    the stack is refused (it runs on batches)."""
    from ScarNetCore.pipeline.segmenter import Segmenter
    volume = positive_image[:, :, 1:7]
    path = save_cascade(tmp_path / "stack.safetensors", _cascade(_stir(_refine(True))), name="t")
    loaded, _ = load_checkpoint(path)
    assert loaded.refine.config.stack_mixing
    segmenter = Segmenter(path, device="cpu", precision="fp32")
    seen = []
    segmenter.model.refine.register_forward_hook(lambda module, args, output: seen.append(len(args[0])))
    one, eight = (segmenter.segment(volume, batch_size=b, return_probabilities=True) for b in (1, 8))
    p1, p8 = (sitk.GetArrayFromImage(r.probabilities) for r in (one, eight))
    np.testing.assert_allclose(p1, p8, atol=1e-6)
    # every view of every run: all six slices, whichever of them stage 1 gave stage 2
    assert seen and set(seen) == {volume.GetSize()[2]}
    # slice by slice (the same weights without the mixing) gives another answer: the stack is used
    plain = _refine(False)
    plain.load_state_dict({k: v for k, v in loaded.refine.state_dict().items() if not k.startswith("mixing.")})
    alone = Segmenter(save_cascade(tmp_path / "plain.safetensors", _cascade(plain), name="t"), device="cpu",
                      precision="fp32").segment(volume, return_probabilities=True)
    assert np.abs(sitk.GetArrayFromImage(alone.probabilities) - p8).max() > 1e-4
    with pytest.raises(ValueError, match="only the refine stage"):
        ScarNetCascade(loaded.locate, ScarNet(ScarNetConfig(encoder="none", base_channels=4, grid_size=GRID,
                                                           stack_mixing=True)))


def test_a_stack_refine_stage_trains_from_a_refine_network_and_starts_as_it(tmp_path):
    """model.stack_mixing on a refine run: whole cases per item; initialised from a refine network
    without mixing, with lr 0 it answers as that network; other stages refuse it."""
    from training.config import TrainConfig
    from training.train import run
    import json
    from conftest import DATA_ROOT
    slices = DATA_ROOT / "slices"
    if not slices.is_dir():
        pytest.skip(f"EMIDEC slices not found at {slices}")
    cases = ["Case_P043", "Case_P044"]
    priors = tmp_path / "priors"
    priors.mkdir()
    rng = np.random.default_rng(0)
    for case in cases:
        count = len(list((slices / "images").glob(f"{case}_slice*.png")))
        p = rng.random((count, 5, 256, 256)).astype(np.float16)
        np.save(priors / f"{case}.npy", p / p.sum(1, keepdims=True))
    start = save_checkpoint(tmp_path / "refine.safetensors", _refine(False), SEGMENT_GEOMETRY)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": cases[:1], "validation": cases[1:], "test": []}))
    config = {"output_dir": str(tmp_path / "run"),
              "data": {"root": str(slices), "layout": "slices", "split_file": str(split), "stage": "refine",
                       "prior_dir": str(priors)},
              "model": {"encoder": "none", "base_channels": 4, "in_channels": 3, "stack_mixing": True,
                        "init_checkpoint": str(start)},
              "optim": {"batch_size": 1, "epochs": 1, "lr": 0.0, "amp": "fp32", "cache_features": False, "seed": 7}}
    trained, meta = load_checkpoint(run(TrainConfig.from_dict(config)))
    assert trained.config.stack_mixing and meta.header["training_config"]["model"]["stack_mixing"]
    x = torch.rand(4, 15, GRID, GRID)
    with torch.no_grad():
        torch.testing.assert_close(trained(x), _refine(False)(x))
    config["data"].update(stage="segment", prior_dir=None)
    with pytest.raises(ValueError, match="stack_mixing"):
        run(TrainConfig.from_dict(config))
