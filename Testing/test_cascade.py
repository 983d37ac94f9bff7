"""Model v2 mechanics (ScarNetCore/model/cascade.py, pipeline/predictor.py) with small seeded networks: off-centre crops and their
inverse, LV finding, the one-file checkpoint, QC flags. The trained model is tested in test_default_model.py."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ScarNetCore.errors import CheckpointError
from ScarNetCore.model import ScarNet, ScarNetConfig
from ScarNetCore.model.cascade import LOCATE_GEOMETRY, SEGMENT_GEOMETRY, CascadeParams, ScarNetCascade
from ScarNetCore.model.checkpoint import METADATA_KEY, load_checkpoint, read_metadata, save_cascade
from ScarNetCore.pipeline.lv import find_lv, whole_image_location
from ScarNetCore.pipeline.predictor import CascadePredictor
from ScarNetCore.pipeline.preprocessing import GridMapping, PreprocessConfig, normalize_in_window
from ScarNetCore.pipeline.stack import Stack


def _stack(slices: np.ndarray, spacing=(1.5, 1.5), slice_mm: float | None = None) -> Stack:
    """A stack of raw [N, h, w] slices without an image behind it (what the predictor's stages read)."""
    return Stack(slices, spacing, slice_mm, 0, None)


@pytest.mark.parametrize("centre", [(10.0, 20.0), (60.0, 75.0), (95.0, 3.0), (-30.0, 50.0)])
def test_off_centre_window_inverts_exactly(centre):
    """At 1:1 spacing the window is a pure copy: to_grid then from_grid returns the slice inside the
    window and background outside, whatever the centre (also near or beyond the border)."""
    config = PreprocessConfig(grid_size=32, target_spacing_mm=1.0)
    mapping = GridMapping.for_slice((100, 80), (1.0, 1.0), config, centre_native=centre)
    x = torch.rand(1, 1, 100, 80)
    grid = mapping.to_grid(x)
    top, left = (int(round(c - 15.5)) for c in centre)
    r0, r1, c0, c1 = max(top, 0), min(top + 32, 100), max(left, 0), min(left + 32, 80)
    if r1 > r0 and c1 > c0:
        assert torch.equal(grid[0, 0, r0 - top:r1 - top, c0 - left:c1 - left], x[0, 0, r0:r1, c0:c1])
    probs = torch.cat([1 - grid, grid], 1)
    back = mapping.from_grid(probs)
    inside = torch.zeros(100, 80, dtype=torch.bool)
    inside[max(r0, 0):max(r1, 0), max(c0, 0):max(c1, 0)] = True
    assert torch.equal(back[0, 1][inside], x[0, 0][inside])
    assert torch.all(back[0, 1][~inside] == 0) and torch.all(back[0, 0][~inside] == 1)


def test_centred_mapping_unchanged_by_centre_option():
    config = PreprocessConfig(grid_size=64, target_spacing_mm=1.25)
    plain = GridMapping.for_slice((90, 70), (1.4, 1.1), config)
    assert plain.centre is None
    x = torch.rand(2, 1, 90, 70)
    assert plain.from_grid(plain.to_grid(x).expand(-1, 2, -1, -1)).shape == (2, 2, 90, 70)


def test_normalize_in_window_ignores_padding():
    image = np.zeros((10, 10), np.float32)
    image[:5] = np.linspace(100, 200, 50).reshape(5, 10)
    valid = np.zeros((10, 10), bool)
    valid[:5] = True
    out = normalize_in_window(image, valid, (0, 100))
    assert out[:5].min() == 0 and out[:5].max() == 1 and np.all(out[5:] == 0)


def test_find_lv_takes_the_stack_component_and_its_slices():
    prob = np.zeros((6, 60, 60), np.float32)
    prob[1:5, 20:36, 30:46] = 0.9          # the LV through four slices
    prob[0, 2:6, 2:6] = 0.95               # a small spurious blob on another slice
    prob[4] = 0
    prob[4, 20:23, 30:33] = 0.9            # a slice with little LV (below the per-slice minimum)
    loc = find_lv(prob, (1.0, 1.0), CascadeParams(min_lv_area_mm2=20, min_stack_lv_mm2=100))
    assert loc.found and not loc.at_edge
    assert loc.slices.tolist() == [False, True, True, True, False, False]
    assert abs(loc.centre[0] - 27.5) < 0.5 and abs(loc.centre[1] - 37.5) < 0.5


def test_find_lv_reports_none_and_edges():
    params = CascadeParams(min_stack_lv_mm2=100)
    assert not find_lv(np.zeros((3, 40, 40), np.float32), (1.0, 1.0), params).found
    tiny = np.zeros((3, 40, 40), np.float32)
    tiny[1, 10:14, 10:14] = 0.9            # 16 mm²: too small to be a ventricle
    assert not find_lv(tiny, (1.0, 1.0), params).found
    edge = np.zeros((3, 40, 40), np.float32)
    edge[:, 0:15, 10:25] = 0.9
    assert find_lv(edge, (1.0, 1.0), params).at_edge


def _small_cascade(**params) -> ScarNetCascade:
    torch.manual_seed(0)
    locate = ScarNet(ScarNetConfig(encoder="none", base_channels=4, num_classes=2, grid_size=LOCATE_GEOMETRY.grid_size))
    segment = ScarNet(ScarNetConfig(encoder="none", base_channels=4, grid_size=SEGMENT_GEOMETRY.grid_size))
    return ScarNetCascade(locate, segment, params=CascadeParams(**params)).eval()


def _sure_lv(cascade: ScarNetCascade) -> ScarNetCascade:
    """The same cascade with a stage 2 that calls every pixel of its crop blood pool, confidently."""
    with torch.no_grad():
        cascade.segment.head.bias[1] += 100.0
    return cascade


def test_cascade_checkpoint_round_trip(tmp_path):
    cascade = _small_cascade(min_scar_ml=1.5)
    path = save_cascade(tmp_path / "v2.safetensors", cascade, name="test-cascade")
    loaded, meta = load_checkpoint(path)
    assert isinstance(loaded, ScarNetCascade) and meta.architecture == "ScarNetCascade" and meta.is_cascade
    assert loaded.params.min_scar_ml == 1.5 and loaded.geometry == cascade.geometry
    assert meta.cascade == cascade.params and meta.preprocessing == SEGMENT_GEOMETRY
    assert {name: stage.geometry for name, stage in meta.stages.items()} == cascade.geometry
    for name in ("locate", "segment"):
        ours, theirs = getattr(cascade, name).state_dict(), getattr(loaded, name).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def _with_header(source, target, edit):
    """A copy of a checkpoint with its ScarNet metadata edited, as an older or foreign writer made it."""
    import json
    from safetensors.torch import load_file, save_file
    header = read_metadata(source)
    edit(header)
    save_file(load_file(str(source)), str(target), metadata={METADATA_KEY: json.dumps(header)})
    return target


def test_files_with_the_old_re_centring_names_are_read_with_the_new_ones(tmp_path):
    """Files written before v0.2 call re-centring refine_passes / refine_stop_mm ("refine" now names the
    third stage): they are read as recentre_passes / recentre_stop_mm, and new files use the new names.
    The bundled model is such a file; a misspelt setting is still refused."""
    from ScarNetCore.model.metadata import ModelMetadata
    from ScarNetCore.resources import default_model_path
    bundled = read_metadata(default_model_path())["cascade"]
    assert {"refine_passes", "refine_stop_mm"} <= set(bundled) and "recentre_passes" not in bundled
    params = ModelMetadata.from_header(read_metadata(default_model_path())).cascade
    assert (params.recentre_passes, params.recentre_stop_mm) == (bundled["refine_passes"], bundled["refine_stop_mm"]) == (3, 2.0)

    path = save_cascade(tmp_path / "v2.safetensors", _small_cascade(recentre_passes=5, recentre_stop_mm=0.5), name="t")
    assert {"recentre_passes", "recentre_stop_mm"} <= set(read_metadata(path)["cascade"])

    def old_names(header):   # values other than the defaults, so that reading them is seen
        cascade = header["cascade"]
        cascade["refine_passes"], cascade["refine_stop_mm"] = cascade.pop("recentre_passes"), cascade.pop("recentre_stop_mm")
    loaded, meta = load_checkpoint(_with_header(path, tmp_path / "old.safetensors", old_names))
    assert (loaded.params.recentre_passes, loaded.params.recentre_stop_mm) == (5, 0.5) and meta.cascade == loaded.params
    with pytest.raises(CheckpointError, match="refine_pases"):
        load_checkpoint(_with_header(path, tmp_path / "typo.safetensors",
                                     lambda header: header["cascade"].update(refine_pases=2)))


def test_cascade_checkpoint_with_a_missing_stage_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open
    path = save_cascade(tmp_path / "v2.safetensors", _small_cascade(), name="t")
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
    state = {k: v for k, v in load_file(str(path)).items() if not k.startswith("locate.")}
    save_file(state, str(tmp_path / "broken.safetensors"), metadata=header)
    with pytest.raises(CheckpointError, match="missing key"):
        load_checkpoint(tmp_path / "broken.safetensors")


def test_cascade_segments_on_the_input_grid_and_flags(tmp_path, positive_slab):
    """Seeded small networks with a permissive LV threshold: labels lie on the input grid; the QC
    flags are a list of known names; an image without LV comes back empty and flagged no_lv_found."""
    from ScarNetCore.pipeline.segmenter import QC_MESSAGES, Segmenter
    path = save_cascade(tmp_path / "v2.safetensors", _small_cascade(lv_threshold=0.3, min_stack_lv_mm2=0), name="t")
    segmenter = Segmenter(path, device="cpu", precision="fp32")
    result = segmenter.segment(positive_slab, return_probabilities=True)
    assert result.labels.GetSize() == positive_slab.GetSize()
    assert result.labels.GetSpacing() == positive_slab.GetSpacing()
    assert set(result.qc_flags) <= set(QC_MESSAGES)
    probs = sitk.GetArrayFromImage(result.probabilities)
    assert np.allclose(probs.sum(-1), 1, atol=1e-4)

    strict = save_cascade(tmp_path / "strict.safetensors", _small_cascade(lv_threshold=0.999), name="t")
    noise = sitk.GetImageFromArray(np.random.default_rng(0).random(sitk.GetArrayFromImage(positive_slab).shape,
                                                                      np.float32))
    noise.CopyInformation(positive_slab)
    result = Segmenter(strict, device="cpu", precision="fp32").segment(noise)
    assert result.qc_flags == ["no_lv_found"]
    assert sitk.GetArrayFromImage(result.labels).max() == 0


def test_ensemble_stage_averages_its_members_and_round_trips(tmp_path, capsys):
    """An ensemble stage 2 gives the mean of its members' probabilities (through the softmax every
    caller applies), keeps each member's width through the checkpoint, and training/export.py builds
    it from stage checkpoints, reusing the locate stage of an existing v2 file."""
    from ScarNetCore.model.cascade import SegmentEnsemble
    from ScarNetCore.model.checkpoint import save_checkpoint
    from ScarNetCore.cli import main
    from training.export import main as export_main

    torch.manual_seed(1)
    members = [ScarNet(ScarNetConfig(encoder="none", base_channels=c, grid_size=SEGMENT_GEOMETRY.grid_size)).eval()
               for c in (4, 8)]
    ensemble = SegmentEnsemble(members).eval()
    x = torch.rand(2, 1, SEGMENT_GEOMETRY.grid_size, SEGMENT_GEOMETRY.grid_size)
    with torch.no_grad():
        mean = (torch.softmax(members[0](x), 1) + torch.softmax(members[1](x), 1)) / 2
        assert torch.allclose(torch.softmax(ensemble(x), 1), mean, atol=1e-6)

    v2 = save_cascade(tmp_path / "v2.safetensors", _small_cascade(min_scar_ml=2.0, low_confidence=0.9), name="t")
    stages = []
    cases = [{"train": ["A", "B"], "validation": ["V"], "test": ["T"]},      # selected on V
             {"train": ["A", "B", "V"], "validation": ["V"], "test": ["T"]}]  # a refit: V trained on
    for i, net in enumerate(members):
        stages.append(save_checkpoint(tmp_path / f"member{i}.safetensors", net, SEGMENT_GEOMETRY,
                                      training_config={"member": i},
                                      training_data={"root": "r", "layout": "slices", "cases": cases[i]}))
    target = tmp_path / "ensemble.safetensors"
    assert export_main([*map(str, stages), str(target), "--name", "ens", "--licence", "test", "--locate", str(v2),
                        "--cascade", "min_scar_ml=0.5"]) == 0
    loaded, meta = load_checkpoint(target)
    assert isinstance(loaded.segment, SegmentEnsemble) and len(loaded.segment.members) == 2
    assert [m["base_channels"] for m in meta.header["stages"]["segment"]["members"]] == [4, 8]
    assert [c.base_channels for c in meta.stages["segment"].configs] == [4, 8] and meta.stages["segment"].ensemble
    assert meta.header["member_training_configs"] == [{"member": 0}, {"member": 1}] and loaded.params.min_scar_ml == 0.5
    assert meta.header["training_data"]["cases"] == {"train": ["A", "B", "V"], "validation": ["V"], "test": ["T"]}
    assert loaded.params.low_confidence == 0.9 and "validation" not in meta.header["metrics"]  # v2 file's, --cascade on top
    source_v2, _ = load_checkpoint(v2)
    ours, theirs = source_v2.locate.state_dict(), loaded.locate.state_dict()
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-2, rtol=1e-2) for k in ours)  # fp16 shipping copy
    with torch.no_grad():  # fp16 weights: close to the float32 ensemble, not bit-equal
        assert torch.allclose(torch.softmax(loaded.segment(x), 1), mean, atol=2e-2)
    assert main(["info", "--model", str(target)]) == 0
    assert "ensemble of 2 networks" in capsys.readouterr().out


def test_ensemble_of_a_2d_and_a_2_5d_network_gives_each_its_own_slices(tmp_path):
    """A 1-channel member sees the middle slice, a 3-channel member the slice with its neighbours; the
    ensemble asks for three slices and keeps each member's input through its checkpoint."""
    from ScarNetCore.model.cascade import SegmentEnsemble
    torch.manual_seed(2)
    flat, deep = (ScarNet(ScarNetConfig(encoder="none", base_channels=4, grid_size=32, in_channels=c)).eval()
                  for c in (1, 3))
    ensemble = SegmentEnsemble([flat, deep]).eval()
    assert ensemble.config.in_channels == 3 and flat.config.in_channels == 1
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        mean = (torch.softmax(flat(x[:, 1:2]), 1) + torch.softmax(deep(x), 1)) / 2
        assert torch.allclose(torch.softmax(ensemble(x), 1), mean, atol=1e-6)
    locate = ScarNet(ScarNetConfig(encoder="none", base_channels=4, num_classes=2, grid_size=LOCATE_GEOMETRY.grid_size))
    segment = SegmentEnsemble([ScarNet(ScarNetConfig(encoder="none", base_channels=4, in_channels=c,
                                                     grid_size=SEGMENT_GEOMETRY.grid_size)) for c in (1, 3)])
    loaded, _ = load_checkpoint(save_cascade(tmp_path / "mixed.safetensors", ScarNetCascade(locate, segment), name="t"))
    assert [m.config.in_channels for m in loaded.segment.members] == [1, 3]


def test_test_time_views_flips_and_the_dihedral_group():
    """flip_tta averages the identity and two flips; with rot90_tta all eight rotations/mirror images,
    so the result turns with the input (equivariance under a quarter turn); no TTA is one plain pass.
    Stage 2 takes the views its CascadeParams ask for (and the plain view when asked for no TTA)."""
    from ScarNetCore.pipeline.predictor import DIHEDRAL_VIEWS, FLIP_VIEWS, PLAIN_VIEW, average_views
    torch.manual_seed(0)
    net = ScarNet(ScarNetConfig(encoder="none", base_channels=4, grid_size=32)).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        plain = torch.softmax(net(x), 1)
        flips = (plain + torch.softmax(net(x.flip(-1)), 1).flip(-1) + torch.softmax(net(x.flip(-2)), 1).flip(-2)) / 3
        assert torch.allclose(average_views(net, x), plain) and torch.allclose(average_views(net, x, PLAIN_VIEW), plain)
        assert torch.allclose(average_views(net, x, FLIP_VIEWS), flips, atol=1e-6)
        eight = average_views(net, x, DIHEDRAL_VIEWS)
        turned = average_views(net, torch.rot90(x, 1, (-2, -1)), DIHEDRAL_VIEWS)
        assert torch.allclose(turned, torch.rot90(eight, 1, (-2, -1)), atol=1e-5)
        assert not torch.allclose(eight, flips, atol=1e-3)   # more views than the flips alone
        assert torch.allclose(eight.sum(1), torch.ones(2, 32, 32), atol=1e-5)

    stack = _stack(np.random.default_rng(0).random((3, 96, 96)).astype(np.float32))
    index, centre = np.array([0, 2]), (48.0, 48.0)
    for params, views in ((dict(flip_tta=False), PLAIN_VIEW), (dict(), FLIP_VIEWS), (dict(rot90_tta=True), DIHEDRAL_VIEWS),
                          (dict(flip_tta=False, rot90_tta=True), PLAIN_VIEW)):
        predictor = CascadePredictor(_small_cascade(**params), "cpu", "fp32")
        with torch.no_grad():
            crops, _ = predictor.crops(stack, index[:, None], centre)
            probs, _ = predictor.segment_grid(stack, index, centre)
            assert torch.allclose(probs, average_views(predictor.model.segment, crops, views), atol=1e-6), params
            probs, _ = predictor.segment_grid(stack, index, centre, tta=False)
            assert torch.allclose(probs, average_views(predictor.model.segment, crops), atol=1e-6), params


def test_a_2_5d_stage_2_sees_the_neighbouring_slices_and_nothing_further():
    """in_channels 3: a slice's result depends on the slices next to it (and on no others); the end
    slices take themselves as their missing neighbour; in a thin-slice stack the neighbours are the
    slices about as far away as in training. A 1-channel stage 2 sees its slice alone."""
    from ScarNetCore.pipeline.stack import neighbour_indices
    assert neighbour_indices(np.array([0, 2, 4]), 5, 1).tolist() == [[0, 0, 1], [1, 2, 3], [3, 4, 4]]
    # neighbours as far apart as in training (10 mm): a thin-slice stack skips slices in between
    slices = np.zeros((9, 8, 8), np.float32)
    assert [_stack(slices, slice_mm=mm).neighbour_step(CascadeParams().neighbour_mm)
            for mm in (10.0, 13.0, 8.0, 2.0, None)] == [1, 1, 1, 5, 1]
    assert neighbour_indices(np.array([2]), 9, 1, step=5).tolist() == [[2, 2, 7]]
    with pytest.raises(ValueError, match="odd"):
        ScarNet(ScarNetConfig(encoder="none", in_channels=2))
    stack = np.random.default_rng(0).random((5, 96, 96)).astype(np.float32)

    def middle(cascade, slices):
        with torch.no_grad():
            return CascadePredictor(cascade, "cpu", "fp32").segment(_stack(slices), np.array([2]), (48.0, 48.0))

    for channels, reaches_neighbour in ((3, True), (1, False)):
        torch.manual_seed(0)
        segment = ScarNet(ScarNetConfig(encoder="none", base_channels=4, grid_size=SEGMENT_GEOMETRY.grid_size,
                                        in_channels=channels))
        cascade = ScarNetCascade(_small_cascade().locate, segment).eval()
        base = middle(cascade, stack)
        near, far = stack.copy(), stack.copy()
        near[3] = 1 - near[3]
        far[0] = 1 - far[0]
        assert torch.allclose(middle(cascade, far), base)
        assert torch.allclose(middle(cascade, near), base) is not reaches_neighbour


def test_a_lone_2_5d_network_is_refused_as_a_whole_slice_model(tmp_path):
    from ScarNetCore.model.checkpoint import save_checkpoint
    from ScarNetCore.pipeline.segmenter import Segmenter
    net = ScarNet(ScarNetConfig(encoder="none", base_channels=4, grid_size=SEGMENT_GEOMETRY.grid_size, in_channels=3))
    path = save_checkpoint(tmp_path / "stage2.safetensors", net, SEGMENT_GEOMETRY)
    with pytest.raises(CheckpointError, match="--locate"):
        Segmenter(path, device="cpu")


def test_recentring_stops_once_the_centre_settles(tmp_path, positive_image, monkeypatch):
    """The bundled model started 50 mm off the LV: re-centring walks back to it and stops once a pass
    moves the centre less than recentre_stop_mm; with 0 it runs every pass."""
    from dataclasses import replace
    from ScarNetCore.pipeline.segmenter import Segmenter
    from ScarNetCore.resources import default_model_path
    cascade, meta = load_checkpoint(default_model_path())
    true_locate = CascadePredictor.locate
    centres = []

    def off_centre_locate(*args, **kwargs):   # the real stage 1, its centre moved 50 mm along the rows
        location = true_locate(*args, **kwargs)
        location.centre = (location.centre[0] + 50 / positive_image.GetSpacing()[1], location.centre[1])
        centres.append(location.centre)
        return location

    def recording_refine(*args, **kwargs):
        centres.append(true_refine(*args, **kwargs))
        return centres[-1]

    true_refine = CascadePredictor.recentre
    monkeypatch.setattr(CascadePredictor, "locate", off_centre_locate)
    monkeypatch.setattr(CascadePredictor, "recentre", recording_refine)
    moves = []
    for stop_mm in (2.0, 0.0):
        cascade.params = replace(cascade.params, recentre_passes=5, recentre_stop_mm=stop_mm, rot90_tta=False)
        path = save_cascade(tmp_path / f"stop{stop_mm}.safetensors", cascade, name="t")
        centres.clear()
        Segmenter(path, device="cpu", precision="fp32").segment(positive_image[:, :, 2:5])
        spacing = np.array(positive_image.GetSpacing()[1::-1])
        moves.append([float(np.hypot(*((np.subtract(b, a)) * spacing))) for a, b in zip(centres, centres[1:])])
    settled, every = moves
    assert settled[0] > 25 and settled[-1] < 2.0 and len(settled) < 5    # it walked back, then stopped
    assert len(every) == 5 and every[:len(settled)] == pytest.approx(settled)


def test_recentring_may_ask_only_the_first_ensemble_member(positive_image):
    """recentre_first_member: the re-centring pass is the ensemble's first member's alone (the bundled
    model's four real networks, 20 mm off the LV); without it, the whole ensemble's."""
    from dataclasses import replace
    from ScarNetCore.resources import default_model_path
    cascade, _ = load_checkpoint(default_model_path())
    stack = Stack.from_image(positive_image[:, :, 2:5])
    centre = (120.0, 110.0)
    first = ScarNetCascade(cascade.locate, cascade.segment.members[0], cascade.geometry["locate"],
                           cascade.geometry["segment"], cascade.params)

    def recentred(model, **params):
        model.params = replace(model.params, **params)
        with torch.no_grad():
            return CascadePredictor(model, "cpu", "fp32", 8).recentre(stack, np.arange(3), centre)

    alone = recentred(first)
    assert recentred(cascade, recentre_first_member=True) == alone
    assert recentred(cascade, recentre_first_member=False) != alone


def test_a_crop_within_stage_2s_window_is_judged_by_stage_2(tmp_path, positive_slab, monkeypatch):
    """Stage 1 seeing an LV too small to trust (under min_stack_lv_mm2, at least min_lv_area_mm2 on
    some slice) in an image that fits in the 160 mm crop: stage 2 sees all of it; what it finds is
    kept when it is confident, else the result is empty and says no LV. Stage 1 seeing less than
    min_lv_area_mm2, an image larger than the crop, or one smaller than the smallest LV
    cross-section, still stops at stage 1."""
    import ScarNetCore.pipeline.predictor as predictor
    from ScarNetCore.pipeline.segmenter import Segmenter
    small = positive_slab[60:160, 60:160, :]        # 141 mm wide
    least = CascadeParams().min_lv_area_mm2
    crop, at_least_600 = SEGMENT_GEOMETRY, CascadeParams(min_stack_lv_mm2=600.0)
    assert whole_image_location((100, 100), (1.41, 1.41), CascadeParams(), crop, 2, least).centre == (49.5, 49.5)
    assert whole_image_location((100, 100), (1.41, 1.41), CascadeParams(), crop, 2, least - 1) is None  # nothing to confirm
    assert whole_image_location((100, 120), (1.41, 1.41), CascadeParams(), crop, 2, 500.0) is None   # 169 mm: too wide
    assert whole_image_location((20, 20), (1.0, 1.0), at_least_600, crop, 2, 300.0) is None  # 400 mm²
    assert whole_image_location((20, 30), (1.0, 1.0), at_least_600, crop, 2, 300.0) is not None

    # a stage 1 that sees part of the small image as LV (its more LV-like half), but less than the
    # stack minimum, which is set just under the image's area so that the image itself may hold an LV
    stack = Stack.from_image(small)
    spacing = stack.spacing     # (row, column)
    area = stack.slices[0].size * spacing[0] * spacing[1]
    with torch.no_grad():
        lv = CascadePredictor(_small_cascade(), "cpu", "fp32", 8).lv_probability(stack)
    half = dict(lv_threshold=float(np.median(lv)), min_stack_lv_mm2=area - 1)
    assert least <= find_lv(lv, spacing, CascadeParams(**half)).largest_mm2 < area - 1
    calls, rule = [], predictor.whole_image_location

    def whole_image(*args):   # the real rule, recorded: what it answered each time stage 1 found no LV
        calls.append(rule(*args))
        return calls[-1]
    monkeypatch.setattr(predictor, "whole_image_location", whole_image)

    # stage 2 calls the whole image LV: as large as min_stack_lv_mm2, which the result must reach too
    kept = Segmenter(save_cascade(tmp_path / "kept.safetensors", _sure_lv(_small_cascade(low_confidence=0.0, **half)),
                                  name="t"), device="cpu", precision="fp32")
    result = kept.segment(small)
    assert len(calls) == 1 and calls[0] is not None     # stage 1 found no LV; stage 2 judged the image
    assert "no_lv_found" not in result.qc_flags and sitk.GetArrayFromImage(result.labels).any()
    blind = Segmenter(save_cascade(tmp_path / "blind.safetensors", _small_cascade(lv_threshold=0.999, low_confidence=0.0),
                                   name="t"), device="cpu", precision="fp32")
    assert blind.segment(small).qc_flags == ["no_lv_found"] and calls[1] is None
    doubtful = Segmenter(save_cascade(tmp_path / "doubt.safetensors", _small_cascade(low_confidence=1.0, **half),
                                      name="t"), device="cpu", precision="fp32")
    result = doubtful.segment(small, return_probabilities=True)
    assert calls[2] is not None and result.qc_flags == ["no_lv_found"] and not sitk.GetArrayFromImage(result.labels).any()
    assert np.all(sitk.GetArrayFromImage(result.probabilities)[..., 0] == 1)


@pytest.mark.parametrize("least_mm2, found", [(20_000.0, True), (30_000.0, False)])
def test_a_result_smaller_than_the_smallest_lv_is_no_lv(tmp_path, positive_slab, least_mm2, found):
    """Stage 1 calls the whole 350 mm image LV (above either minimum); stage 2 then calls its whole
    160 mm crop LV, 25,600 mm² at most: kept when that reaches min_stack_lv_mm2, otherwise the result
    is empty and says no LV, as when stage 1 finds none."""
    from ScarNetCore.pipeline.segmenter import Segmenter
    cascade = _sure_lv(_small_cascade(lv_threshold=1e-6, min_stack_lv_mm2=least_mm2, low_confidence=0.0))
    segmenter = Segmenter(save_cascade(tmp_path / "v2.safetensors", cascade, name="t"), device="cpu", precision="fp32")
    result = segmenter.segment(positive_slab, return_probabilities=True)
    labels = sitk.GetArrayFromImage(result.labels)
    assert ("no_lv_found" not in result.qc_flags) == found and labels.any() == found
    if found:
        pixel_mm2 = np.prod(positive_slab.GetSpacing()[:2])
        assert least_mm2 <= (labels > 0).sum(axis=(1, 2)).max() * pixel_mm2 <= 160.0 ** 2
    else:
        assert np.all(sitk.GetArrayFromImage(result.probabilities)[..., 0] == 1)


def _refine_net(channels: int = 3) -> ScarNet:
    torch.manual_seed(1)
    return ScarNet(ScarNetConfig(encoder="none", base_channels=4, grid_size=SEGMENT_GEOMETRY.grid_size,
                                 in_channels=channels, prior=True))


def test_a_refine_stage_round_trips_and_segments_on_the_input_grid(tmp_path, positive_slab, capsys):
    """A refine stage rides in the one v2 file with stage 2's geometry; the Segmenter runs it after
    stage 2 on every slice and still answers on the input grid; alone, or without stage 2's
    probabilities as input, it is refused."""
    from ScarNetCore.model.checkpoint import save_checkpoint
    from ScarNetCore.cli import main as cli
    from ScarNetCore.pipeline.segmenter import Segmenter
    base = _small_cascade(lv_threshold=0.3, min_stack_lv_mm2=0)
    assert base.refine is None and base.stage_names == ("locate", "segment")
    cascade = ScarNetCascade(base.locate, base.segment, params=base.params, refine=_refine_net()).eval()
    assert cascade.refine.config.input_channels == 3 * 5
    path = save_cascade(tmp_path / "v2.safetensors", cascade, name="t")
    loaded, meta = load_checkpoint(path)
    assert loaded.stage_names == ("locate", "segment", "refine") and tuple(meta.stages) == loaded.stage_names
    assert meta.stages["refine"].geometry == meta.stages["segment"].geometry == SEGMENT_GEOMETRY
    ours, theirs = cascade.refine.state_dict(), loaded.refine.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    result = Segmenter(path, device="cpu", precision="fp32").segment(positive_slab, return_probabilities=True)
    assert result.labels.GetSize() == positive_slab.GetSize()
    assert np.allclose(sitk.GetArrayFromImage(result.probabilities).sum(-1), 1, atol=1e-4)
    # the refine stage is used: the same file without it gives other probabilities
    plain = Segmenter(save_cascade(tmp_path / "plain.safetensors", base, name="t"), device="cpu", precision="fp32")
    assert not np.allclose(sitk.GetArrayFromImage(plain.segment(positive_slab, return_probabilities=True).probabilities),
                           sitk.GetArrayFromImage(result.probabilities), atol=1e-3)
    assert cli(["info", "--model", str(path)]) == 0
    assert "refine: 128×128 at 1.25 mm/pixel" in capsys.readouterr().out
    with pytest.raises(ValueError, match="stage 2's probabilities"):
        ScarNetCascade(base.locate, base.segment, refine=base.segment)
    alone = save_checkpoint(tmp_path / "refine.safetensors", _refine_net(), SEGMENT_GEOMETRY)
    with pytest.raises(CheckpointError, match="--refine"):
        Segmenter(alone, device="cpu")


def test_the_refine_stage_sees_stage_2s_result_for_its_slice_and_neighbours():
    """CascadePredictor.refine: a slice's result depends on stage 2's probabilities of the slice and its
    two neighbours (not of slices further away); a neighbour stage 2 did not see counts as background."""
    base = _small_cascade()
    cascade = ScarNetCascade(base.locate, base.segment, refine=_refine_net()).eval()
    stack = _stack(np.random.default_rng(0).random((5, 96, 96)).astype(np.float32))
    g = SEGMENT_GEOMETRY.grid_size
    stage_2 = {p: torch.softmax(torch.randn(5, g, g, generator=torch.Generator().manual_seed(p)), 0) for p in range(5)}

    def middle(results):
        with torch.no_grad():
            return CascadePredictor(cascade, "cpu", "fp32").refine(stack, np.array([2]), (48.0, 48.0), results)

    base_result = middle(stage_2)
    assert torch.allclose(middle({**stage_2, 0: torch.rand(5, g, g)}), base_result)
    assert not torch.allclose(middle({**stage_2, 3: torch.rand(5, g, g)}), base_result, atol=1e-4)
    background = torch.zeros(5, g, g)
    background[0] = 1
    unseen = {p: v for p, v in stage_2.items() if p != 1}
    assert torch.allclose(middle(unseen), middle({**stage_2, 1: background}))


def test_a_refine_ensemble_averages_members_that_see_all_of_stage_2s_probabilities(tmp_path, positive_slab, capsys):
    """Refine members take the whole input (slices and stage 2's probabilities, laid out per slice),
    so an ensemble of them must agree on the slices they see; training/export.py builds one from
    several --refine checkpoints, and the Segmenter runs it."""
    from ScarNetCore.model.cascade import SegmentEnsemble
    from ScarNetCore.model.checkpoint import save_checkpoint
    from ScarNetCore.cli import main as cli
    from ScarNetCore.pipeline.segmenter import Segmenter
    from training.export import main as export_main

    first, second = _refine_net().eval(), _refine_net().eval()
    torch.manual_seed(3)
    for p in second.parameters():
        p.data += 0.05 * torch.randn_like(p)
    ensemble = SegmentEnsemble([first, second]).eval()
    g = SEGMENT_GEOMETRY.grid_size
    x = torch.rand(2, first.config.input_channels, g, g)
    with torch.no_grad():
        mean = (torch.softmax(first(x), 1) + torch.softmax(second(x), 1)) / 2
        assert torch.allclose(torch.softmax(ensemble(x), 1), mean, atol=1e-6)
    with pytest.raises(ValueError, match="same slices"):
        SegmentEnsemble([first, _refine_net(channels=1)])

    v2 = save_cascade(tmp_path / "v2.safetensors", _small_cascade(lv_threshold=0.3, min_stack_lv_mm2=0), name="t")
    stage_2 = save_checkpoint(tmp_path / "segment.safetensors", load_checkpoint(v2)[0].segment,
                              SEGMENT_GEOMETRY)
    refiners = [save_checkpoint(tmp_path / f"refine{i}.safetensors", net, SEGMENT_GEOMETRY,
                                training_config={"refine": i}) for i, net in enumerate((first, second))]
    target = tmp_path / "refined.safetensors"
    assert export_main([str(stage_2), str(target), "--name", "r", "--licence", "test", "--locate", str(v2),
                        "--refine", *map(str, refiners)]) == 0
    loaded, meta = load_checkpoint(target)
    assert isinstance(loaded.refine, SegmentEnsemble) and len(loaded.refine.members) == 2
    assert meta.header["refine_training_config"] == [{"refine": 0}, {"refine": 1}]
    with torch.no_grad():  # fp16 shipping weights: close to the float32 ensemble
        assert torch.allclose(torch.softmax(loaded.refine(x), 1), mean, atol=2e-2)
    result = Segmenter(target, device="cpu", precision="fp32").segment(positive_slab, return_probabilities=True)
    assert result.labels.GetSize() == positive_slab.GetSize()
    assert np.allclose(sitk.GetArrayFromImage(result.probabilities).sum(-1), 1, atol=1e-4)
    assert cli(["info", "--model", str(target)]) == 0
    assert "ensemble of 2 networks" in capsys.readouterr().out
    from dataclasses import replace
    elsewhere = save_checkpoint(tmp_path / "finer.safetensors", second,
                                replace(SEGMENT_GEOMETRY, target_spacing_mm=1.0))
    with pytest.raises(ValueError, match="stage 2's crop"):
        export_main([str(stage_2), str(tmp_path / "no.safetensors"), "--name", "r", "--licence", "test",
                     "--locate", str(v2), "--refine", str(refiners[0]), str(elsewhere)])


def test_channels_last_on_cpu_gives_the_labels_of_the_plain_layout(positive_slab):
    """The Segmenter runs its networks on channels-last tensors on CPU (faster convolutions): the
    bundled model's result is that of the plain layout, up to float rounding."""
    from ScarNetCore.pipeline.segmenter import Segmenter
    segmenter = Segmenter(device="cpu", precision="fp32")
    assert segmenter.model.refine.down[0].body[0].weight.is_contiguous(memory_format=torch.channels_last)
    fast = segmenter.segment(positive_slab, return_probabilities=True)
    segmenter.model.to(memory_format=torch.contiguous_format)
    plain = segmenter.segment(positive_slab, return_probabilities=True)
    assert np.mean(sitk.GetArrayFromImage(fast.labels) != sitk.GetArrayFromImage(plain.labels)) < 1e-4
    assert np.allclose(sitk.GetArrayFromImage(fast.probabilities), sitk.GetArrayFromImage(plain.probabilities),
                       atol=1e-3)


@pytest.mark.parametrize("generation", ["v1", "v2"])
def test_both_predictors_fill_slice_results_through_one_interface(generation, positive_slab):
    """SlicePredictor (v1: each whole slice) and CascadePredictor (v2) are used alike: predictor_for
    picks one by the model, predict(stack, results, progress, cancel) fills SliceResults for every
    slice on the native grid, reports progress up to the stack's length and returns a list of QC
    flags; a cancel callback that says yes stops either with Cancelled."""
    from ScarNetCore.errors import Cancelled
    from ScarNetCore.pipeline.predictor import SlicePredictor, SliceResults, predictor_for
    if generation == "v1":
        torch.manual_seed(0)
        model = ScarNet(ScarNetConfig(encoder="none", base_channels=4, grid_size=64)).eval()
        predictor = predictor_for(model, "cpu", "fp32", 1, PreprocessConfig(grid_size=64, target_spacing_mm=5.0))
        assert isinstance(predictor, SlicePredictor)
    else:
        model = _sure_lv(_small_cascade(lv_threshold=1e-6, min_stack_lv_mm2=0, low_confidence=0.0))
        predictor = predictor_for(model, "cpu", "fp32", 1)
        assert isinstance(predictor, CascadePredictor)
    stack = Stack.from_image(positive_slab)
    results = SliceResults(stack.slices.shape, predictor.num_classes, keep_probabilities=True)
    calls = []
    flags = predictor.predict(stack, results, lambda done, total: calls.append((done, total)), lambda: False)
    assert isinstance(flags, list) and all(isinstance(flag, str) for flag in flags)
    assert predictor.num_classes == 5 and results.labels.shape == stack.slices.shape
    assert results.probabilities.shape == (len(stack), 5, *stack.slices.shape[1:])
    np.testing.assert_allclose(results.probabilities.sum(1), 1, atol=1e-4)
    np.testing.assert_array_equal(results.labels, results.probabilities.argmax(1))
    assert results.labels.any() and 0 < results.lv_confidence <= 1
    assert calls[-1] == (len(stack), len(stack)) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    with pytest.raises(Cancelled):
        predictor.predict(stack, SliceResults(stack.slices.shape, 5, False), None, lambda: True)


def test_cancel_is_heard_between_stage_1_batches(positive_slab):
    """Stage 1 runs the whole stack before anything is reported: a cancel that arrives during it stops the
    run at the next batch, not only once stage 2 starts."""
    from ScarNetCore.errors import Cancelled
    from ScarNetCore.pipeline.predictor import SliceResults
    model = _sure_lv(_small_cascade(lv_threshold=1e-6, min_stack_lv_mm2=0, low_confidence=0.0))
    predictor = CascadePredictor(model, "cpu", "fp32", batch_size=1)
    stack = Stack.from_image(positive_slab)
    assert len(stack) == 2
    located = []
    model.locate.register_forward_hook(lambda *_: located.append(1))
    with pytest.raises(Cancelled):
        predictor.predict(stack, SliceResults(stack.slices.shape, 5, False), None, lambda: len(located) >= 1)
    assert len(located) == 1   # the second slice's batch was never run
