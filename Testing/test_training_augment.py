"""Augmentation of cached views: the encoder's feature map must move exactly as the image does."""
import json

import numpy as np
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
