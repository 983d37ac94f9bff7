"""Segment one image file in a child process, reporting through a status file (the Slicer module's runner).

    python -m ScarNetCore.worker --input in.nrrd --output labels.nrrd --status status.json --cancel-file cancel

The status file is JSON, replaced atomically so the parent never reads half a file:
    {"state": "running", "done": d, "total": n}        while segmenting (n slices)
    {"state": "finished", "done": n, "total": n, "model_info": {...}, "device": ..., "qc_flags": [...],
     "run_record": {...}}                               labels written to --output
    {"state": "cancelled"}                              the cancel file appeared; nothing written
    {"state": "failed", "error_type": ..., "message": ...}
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def write_status(path: Path, **status) -> None:
    # standard library only, so even a failed import below is reported through this file
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status))
    os.replace(tmp, path)


def slice_count(image) -> int:
    """Slices the Segmenter cuts `image` into: along the acquisition axis (pipeline.stack.cut_axis), which need
    not be k; a single-slice volume (a length-1 axis) or a 2-D image is one slice."""
    from .pipeline.stack import cut_axis
    axis = cut_axis(image)
    return 1 if axis is None else int(image.GetSize()[::-1][axis])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ScarNetCore.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--status", required=True)
    parser.add_argument("--cancel-file", required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    status, cancel_file = Path(args.status), Path(args.cancel_file)
    write_status(status, state="running", done=0, total=0)
    try:
        import SimpleITK as sitk

        from .errors import Cancelled
        from .io import outputs
        from .io.reading import read_image
        from .pipeline.segmenter import Segmenter

        started = outputs.now()
        segmenter = Segmenter(model_path=args.model, device=args.device)
        image = read_image(args.input)

        def progress(done, total):
            write_status(status, state="running", done=int(done), total=int(total))

        try:
            result = segmenter.segment(image, progress=progress, cancel=cancel_file.exists, batch_size=args.batch_size)
        except Cancelled:
            write_status(status, state="cancelled")
            return 0
        sitk.WriteImage(result.labels, args.output)
        # the worker sees a temporary copy of the voxels: the caller adds the input's own files
        record = outputs.run_record([], {"batch_size": args.batch_size}, started, segmenter, result,
                                    finished=outputs.now())
        n = slice_count(image)
        write_status(status, state="finished", done=n, total=n,
                     model_info={k: str(v) for k, v in segmenter.model_info.items()},
                     device=str(segmenter.device), qc_flags=list(result.qc_flags), run_record=record)
        return 0
    except Exception as exc:  # the parent shows this message to the user
        write_status(status, state="failed", error_type=type(exc).__name__, message=str(exc) or type(exc).__name__)
        return 1


if __name__ == "__main__":
    sys.exit(main())
