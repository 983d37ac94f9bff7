"""Augmentation of cached views: the encoder's feature map must move exactly as the image does."""
import json

import numpy as np
import pytest
from scipy import ndimage

from training.augment import AugmentConfig, augment_cached, warp_features
from training.feature_cache import CachedViews

STRIDE = 16


def block_features(image: np.ndarray) -> np.ndarray:
    """A stand-in 'encoder' whose output is known: per 16×16 patch mean, mean square and max."""
    h, w = image.shape
    patches = image.reshape(h // STRIDE, STRIDE, w // STRIDE, STRIDE)
    return np.stack([patches.mean((1, 3)), (patches ** 2).mean((1, 3)), patches.max((1, 3))]).astype(np.float32)


def rotation_map(shape, quarter_turns: int, flip: bool, shift=(0.0, 0.0)) -> np.ndarray:
    """Output → input pixel coordinates, in augment.py's convention (centre (n − 1) / 2)."""
    h, w = shape
    angle = np.pi / 2 * quarter_turns
    matrix = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]).round()
    if flip:
        matrix = matrix @ np.diag([1.0, -1.0])
    yy, xx = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
    coords = np.einsum("ij,jhw->ihw", matrix, np.stack([yy, xx]))
    coords[0] += (h - 1) / 2 + shift[0]
    coords[1] += (w - 1) / 2 + shift[1]
    return coords


def test_features_follow_quarter_turns_and_flips_exactly():
    image = np.random.default_rng(0).random((256, 256)).astype(np.float32)
    features = block_features(image)
    for turns in range(4):
        for flip in (False, True):
            coords = rotation_map(image.shape, turns, flip)
            moved = ndimage.map_coordinates(image, coords, order=1)
            np.testing.assert_allclose(warp_features(features, coords), block_features(moved), atol=1e-5,
                                       err_msg=f"{turns} quarter turns, flip {flip}")


def test_features_follow_whole_cell_shifts():
    image = np.random.default_rng(1).random((256, 256)).astype(np.float32)
    coords = rotation_map(image.shape, 1, False, shift=(2 * STRIDE, -STRIDE))
    moved = ndimage.map_coordinates(image, coords, order=1, mode="constant", cval=0.0)
    warped, expected = warp_features(block_features(image), coords), block_features(moved)
    # cells whose source lies inside the field of view match exactly; the rest repeat the border
    inside = ((coords >= 0) & (coords <= 255)).all(0).reshape(16, STRIDE, 16, STRIDE).all((1, 3))
    assert 150 < inside.sum() < 256
    np.testing.assert_allclose(warped[:, inside], expected[:, inside], atol=1e-5)
    assert not np.allclose(warped, block_features(ndimage.map_coordinates(image, rotation_map(image.shape, 1, False),
                                                                          order=1)), atol=1e-3)


def test_random_geometry_keeps_features_on_the_anatomy():
    yy, xx = np.mgrid[:256, :256]
    blob = np.exp(-((yy - 90) ** 2 + (xx - 160) ** 2) / (2 * 30.0 ** 2)).astype(np.float32)  # off-centre "heart"
    mask = (blob > 0.5).astype(np.uint8) * 2
    cfg = AugmentConfig(p_affine=1.0, p_elastic=1.0, translate_px=0.0)  # keep the blob inside the field of view
    for seed in range(5):
        image, new_mask, features = augment_cached(blob, mask, block_features(blob), np.random.default_rng(seed),
                                                   cfg, intensity=False)
        assert features.shape == (3, 16, 16) and set(np.unique(new_mask)) <= {0, 2}
        truth = block_features(image)[0].ravel()
        r = np.corrcoef(features[0].ravel(), truth)[0, 1]
        assert r > 0.97, (seed, r)
        # the unmoved features no longer fit: the test notices geometry that features fail to follow
        assert np.corrcoef(block_features(blob)[0].ravel(), truth)[0, 1] < r


def write_cache(folder, n: int = 3):
    rng = np.random.default_rng(2)
    view = folder / "view_0"
    view.mkdir(parents=True)
    np.save(view / "images.npy", rng.random((n, 256, 256)).astype(np.float16))
    np.save(view / "masks.npy", rng.integers(0, 5, (n, 256, 256)).astype(np.uint8))
    np.save(view / "features.npy", rng.random((n, 8, 16, 16)).astype(np.float16))
    (view / "done.json").write_text(json.dumps({"cases": [f"Case_{i}" for i in range(n)], "count": n}))


def test_cached_views_augment_per_epoch_and_replay_exactly(tmp_path):
    write_cache(tmp_path)
    plain = CachedViews(tmp_path, seed=3)
    views = CachedViews(tmp_path, seed=3, augment=AugmentConfig(p_affine=1.0))
    again = CachedViews(tmp_path, seed=3, augment=AugmentConfig(p_affine=1.0))
    first = views[1]
    assert first["features"].dtype == plain[1]["features"].dtype
    assert first["image"].shape == (1, 256, 256) and first["features"].shape == (8, 16, 16)
    assert set(first["mask"].unique().tolist()) <= set(range(5))
    assert not np.allclose(first["image"].numpy(), plain[1]["image"].numpy())
    for key in ("image", "mask", "features"):  # same (seed, epoch, index): the same sample, as resume needs
        assert np.array_equal(first[key].numpy(), again[1][key].numpy())
    views.set_epoch(1)
    assert not np.array_equal(views[1]["image"].numpy(), first["image"].numpy())


def test_intensity_augmentation_treats_neighbouring_slices_as_one_acquisition():
    """A slice with its neighbours gets the same gamma, contrast, coil field, blur and resolution as
    each slice alone would with the same draws; a lone slice is augmented as before."""
    from training.augment import augment_intensity
    rng = np.random.default_rng(3)
    stack = ndimage.gaussian_filter(rng.random((3, 64, 64)), (0, 3, 3)).astype(np.float32)
    stack = (stack - stack.min()) / (stack.max() - stack.min())
    cfg = AugmentConfig(p_gamma=1, p_contrast=1, p_bias=1, p_blur=1, p_lowres=1, p_noise=0)
    together = augment_intensity(stack, np.random.default_rng(7), cfg)
    alone = np.stack([augment_intensity(s, np.random.default_rng(7), cfg) for s in stack])
    assert together.shape == stack.shape
    np.testing.assert_allclose(together, alone, atol=1e-5)
    noisy = augment_intensity(stack, np.random.default_rng(7), AugmentConfig(p_noise=1, p_gamma=0, p_contrast=0,
                                                                             p_bias=0, p_blur=0, p_lowres=0))
    assert not np.allclose(noisy[0] - stack[0], noisy[1] - stack[1])  # noise is drawn per pixel, per slice


def test_segment_views_carry_the_neighbouring_slices_through_the_same_crop():
    """Validation views of a 2.5-D stage: channel k is the plain crop of slice i − 1 + k (clamped at
    the ends), the middle one the slice itself; training views have one mask for the three slices."""
    from ScarNetCore.model.cascade import SEGMENT_GEOMETRY
    from training.cascade_data import StageViews
    from training.data import SliceSample
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    ring = ((yy - 128) ** 2 + (xx - 120) ** 2 < 40 ** 2).astype(np.uint8) * 2
    samples = [SliceSample("Case_X", i, ndimage.gaussian_filter(rng.random((256, 256)), 2).astype(np.float32), ring)
               for i in range(4)]
    flat = StageViews(samples, "segment", SEGMENT_GEOMETRY, 1.25, seed=0, train=False)
    deep = StageViews(samples, "segment", SEGMENT_GEOMETRY, 1.25, seed=0, train=False, context=1)
    for i, neighbours in ((0, (0, 0, 1)), (2, (1, 2, 3)), (3, (2, 3, 3))):
        view = deep[i]["image"].numpy()
        assert view.shape == (3, SEGMENT_GEOMETRY.grid_size, SEGMENT_GEOMETRY.grid_size)
        for k, j in enumerate(neighbours):
            np.testing.assert_allclose(view[k], flat[j]["image"][0].numpy(), atol=1e-6)
    train = StageViews(samples, "segment", SEGMENT_GEOMETRY, 1.25, seed=0, context=1)
    for i in range(len(train)):
        view = train[i]
        assert view["image"].shape == (3, SEGMENT_GEOMETRY.grid_size, SEGMENT_GEOMETRY.grid_size)
        assert view["mask"].shape == (SEGMENT_GEOMETRY.grid_size, SEGMENT_GEOMETRY.grid_size)


def test_locate_views_mostly_frame_the_heart_near_the_middle():
    """Stage-1 views: in most the LV lies near the middle of the field of view, as a scanner frames
    it; in some it is anywhere, partly or wholly outside (p_heart_anywhere)."""
    from ScarNetCore.model.cascade import LOCATE_GEOMETRY
    from training.cascade_data import StageViews, ViewConfig
    from training.data import SliceSample
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:256, :256]
    lv = ((yy - 128) ** 2 + (xx - 128) ** 2 < 24 ** 2).astype(np.uint8)
    samples = [SliceSample("Case_X", i, ndimage.gaussian_filter(rng.random((256, 256)), 2).astype(np.float32), lv)
               for i in range(2)]
    views = StageViews(samples, "locate", LOCATE_GEOMETRY, 1.25, seed=0, view_cfg=ViewConfig(p_negative=0))
    near, far = 0, 0
    middle = (LOCATE_GEOMETRY.grid_size - 1) / 2
    for epoch in range(200):
        views.set_epoch(epoch)
        mask = views[epoch % 2]["mask"].numpy()
        offset_mm = np.abs(np.array(ndimage.center_of_mass(mask)) - middle) * LOCATE_GEOMETRY.target_spacing_mm \
            if mask.any() else np.array([np.inf])
        near, far = near + bool(offset_mm.max() <= 90), far + bool(offset_mm.max() > 90)
    assert near >= 0.7 * 200 and far >= 0.05 * 200


def test_locate_views_include_heart_crops_and_small_non_cardiac_images():
    """Stage-1 views for heart-centred inputs and non-hearts: a user's crop (p_heart_crop) shows the
    LV (most of it) in a field of view of at most user_crop_mm, black around it; a non-heart placed as a
    small image (p_negative_window) is black outside a centred window and has an empty target; the
    structured non-hearts (fractal textures, shape scenes) have regions and edges, not pixel noise."""
    from ScarNetCore.model.cascade import LOCATE_GEOMETRY
    from training.cascade_data import StageViews, ViewConfig, fractal_noise, shape_scene, synthetic_negative
    from training.data import SliceSample
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:256, :256]
    lv = ((yy - 128) ** 2 + (xx - 128) ** 2 < 24 ** 2).astype(np.uint8)
    samples = [SliceSample("Case_X", 0, ndimage.gaussian_filter(rng.random((256, 256)), 2).astype(np.float32) + 0.1, lv)]
    g, mm = LOCATE_GEOMETRY.grid_size, LOCATE_GEOMETRY.target_spacing_mm
    crops = StageViews(samples, "locate", LOCATE_GEOMETRY, 1.25, seed=0,
                       view_cfg=ViewConfig(p_negative=0, p_heart_crop=1, user_crop_mm=(80.0, 120.0)))
    negatives = StageViews(samples, "locate", LOCATE_GEOMETRY, 1.25, seed=0,
                           view_cfg=ViewConfig(p_negative=1, p_negative_window=1, structured_negatives=True))
    for epoch in range(20):
        crops.set_epoch(epoch)
        negatives.set_epoch(epoch)
        view = crops[0]
        rows, cols = np.nonzero(view["image"][0].numpy())
        assert (np.ptp(rows) + 1) * mm <= 120 + 2 * mm and (np.ptp(cols) + 1) * mm <= 120 + 2 * mm
        assert view["mask"].sum() * mm ** 2 > 0.4 * np.pi * (24 * 1.25) ** 2   # most of the LV is inside (zoom 0.8-1.25)
        view = negatives[0]
        assert not view["mask"].any()
        image = view["image"][0].numpy()
        assert not image[0].any() and not image[:, 0].any()        # the window leaves the grid's border black
    for seed in range(5):   # structured: neighbouring pixels alike (regions, edges), unlike pixel noise
        for make in (fractal_noise, shape_scene):
            x = make((g, g), np.random.default_rng(seed))
            assert x.std() > 0 and _neighbour_correlation(x) > 0.5
    # the option brings them in: most structured draws are such images, few plain ones (smooth blobs only)
    share = {structured: np.mean([_neighbour_correlation(synthetic_negative((64, 64), np.random.default_rng(seed),
                                                                            structured)) > 0.5 for seed in range(100)])
             for structured in (False, True)}
    assert share[False] < 0.35 and share[True] > 0.55, share


def _neighbour_correlation(x: np.ndarray) -> float:
    return 0.0 if x.std() == 0 else float(np.corrcoef(x[:, :-1].ravel(), x[:, 1:].ravel())[0, 1])


def test_refine_views_carry_stage_2s_probabilities_through_the_same_maps():
    """Refine-stage views: after the slices come stage 2's probabilities (classes 1..4) of each slice,
    resampled through that slice's crop; given one-hot reference masks, they match the view's mask
    wherever the view is inside the image (bilinear against nearest: all but border pixels)."""
    from ScarNetCore.model.cascade import SEGMENT_GEOMETRY
    from training.cascade_data import StageViews
    from training.data import SliceSample
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    masks = []
    for i in range(4):
        disc = (yy - 128) ** 2 + (xx - 120 - 4 * i) ** 2
        masks.append(np.select([disc < 15 ** 2, disc < 25 ** 2, (disc < 30 ** 2) & (xx > 120)], [1, 2, 3], 0).astype(np.uint8))
    samples = [SliceSample("Case_X", i, ndimage.gaussian_filter(rng.random((256, 256)), 2).astype(np.float32), m)
               for i, m in enumerate(masks)]
    one_hot = np.stack([np.eye(5, dtype=np.float16)[m].transpose(2, 0, 1) for m in masks])
    views = StageViews(samples, "refine", SEGMENT_GEOMETRY, 1.25, seed=0, context=1, priors={"Case_X": one_hot[:, 1:]})
    g = SEGMENT_GEOMETRY.grid_size
    for i in range(len(views)):
        view = views[i]
        image, mask = view["image"].numpy(), view["mask"].numpy()
        assert image.shape == (3 + 3 * 4, g, g)
        if not image[:3].any():   # a synthetic non-heart view: stage 2 found nothing
            assert not image[3:].any() and not mask.any()
            continue
        own = image[3 + 4:3 + 8]            # the middle slice's probabilities
        labels = np.where(own.sum(0) > 0.5, own.argmax(0) + 1, 0)
        assert (labels == mask).mean() > 0.97
    with pytest.raises(ValueError, match="priors"):
        StageViews(samples, "refine", SEGMENT_GEOMETRY, 1.25, seed=0)
    for wrong in (one_hot[:3, 1:], one_hot[:, 1:, :128]):   # a slice missing; another grid
        with pytest.raises(ValueError, match="cache them again"):
            StageViews(samples, "refine", SEGMENT_GEOMETRY, 1.25, seed=0, priors={"Case_X": wrong})
