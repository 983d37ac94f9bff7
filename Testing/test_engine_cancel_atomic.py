"""Cancelling writes nothing; an interrupted or failed write leaves no partial file and keeps earlier results."""
from __future__ import annotations

import pytest
import SimpleITK as sitk

from ScarNetCore.cli import segment_one
from ScarNetCore.errors import Cancelled
from ScarNetCore.io.files import atomic_path, write_image_atomic


def cancel_after_first_batch(progress: list):
    """A cancel callback that says yes once `progress` (the (done, total) calls) shows a slice done: the
    model polls it before each step (finding the LV, each re-centring pass, each batch), so the polls
    before the first batch let it run and the one before the second cancels."""
    return lambda: any(done > 0 for done, _ in progress)


def test_cancel_after_first_batch_raises(segmenter, positive_slab):
    progress = []
    with pytest.raises(Cancelled):
        segmenter.segment(positive_slab, progress=lambda done, total: progress.append((done, total)),
                          cancel=cancel_after_first_batch(progress), batch_size=1)
    assert progress == [(0, 2), (1, 2)]  # exactly one batch ran


class CancellingSegmenter:
    """The real Segmenter, driven as the Slicer module drives it: with a cancel callback."""

    def __init__(self, inner):
        self.inner = inner

    def segment(self, image, progress=None, **kwargs):
        seen = []

        def report(done, total):
            seen.append((done, total))
            if progress:
                progress(done, total)
        return self.inner.segment(image, progress=report, cancel=cancel_after_first_batch(seen), **kwargs)


def test_cancel_through_cli_writes_nothing(tmp_path, segmenter, positive_slab, write_volume):
    source = write_volume("case.nii.gz", positive_slab)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(Cancelled):
        segment_one(CancellingSegmenter(segmenter), str(source), out, batch_size=1, overwrite=False)
    assert list(out.iterdir()) == []  # no label volume, no tables, no temporary files


def test_atomic_path_leaves_nothing_when_block_raises(tmp_path):
    target = tmp_path / "result.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a file")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_earlier_result(tmp_path):
    target = tmp_path / "case_seg.nii.gz"
    earlier = sitk.Image([4, 4, 2], sitk.sitkUInt8) + 2
    write_image_atomic(earlier, target)
    before = target.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt  # Ctrl-C mid-write
    assert target.read_bytes() == before
    with pytest.raises(RuntimeError):
        write_image_atomic(sitk.Image([4, 4, 2], sitk.sitkUInt8), tmp_path / "no_such_dir" / "x.unknownformat")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_seg.nii.gz", "no_such_dir"]
    assert list((tmp_path / "no_such_dir").iterdir()) == []


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old\n")
    with atomic_path(target) as tmp:
        assert tmp.name.endswith(".csv") and tmp.parent == tmp_path
        tmp.write_text("new\n")
    assert target.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]
