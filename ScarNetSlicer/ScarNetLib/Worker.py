"""Child process for SubprocessRunner: segment one image file, report through a status file.

Run as ``python Worker.py --input in.nrrd --output labels.nrrd --status status.json ...``.
The status file is replaced atomically, so the parent never reads half a file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def writeStatus(path: Path, **status) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status))
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--status", required=True)
    parser.add_argument("--cancel-file", required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    status, cancelFile = Path(args.status), Path(args.cancel_file)
    writeStatus(status, state="running", done=0, total=0)
    try:
        import SimpleITK as sitk
        from ScarNetCore import outputs
        from ScarNetCore.errors import Cancelled
        from ScarNetCore.inference import Segmenter
        started = outputs.now()
        segmenter = Segmenter(model_path=args.model, device=args.device)
        image = sitk.ReadImage(args.input)

        def progress(done, total):
            writeStatus(status, state="running", done=int(done), total=int(total))

        try:
            result = segmenter.segment(image, progress=progress, cancel=cancelFile.exists,
                                       batch_size=args.batch_size)
        except Cancelled:
            writeStatus(status, state="cancelled")
            return 0
        sitk.WriteImage(result.labels, args.output)
        record = outputs.run_record([], {"batch_size": args.batch_size}, started, segmenter, result)
        record["finished"] = outputs.now()
        writeStatus(status, state="finished", done=image.GetSize()[2] if image.GetDimension() == 3 else 1,
                    total=image.GetSize()[2] if image.GetDimension() == 3 else 1,
                    model_info={k: str(v) for k, v in dict(getattr(segmenter, "model_info", {}) or {}).items()},
                    device=str(getattr(segmenter, "device", args.device)), qc_flags=list(result.qc_flags),
                    run_record=record)
        return 0
    except Exception as exc:  # the parent shows this message to the user
        writeStatus(status, state="failed", error_type=type(exc).__name__, message=str(exc) or type(exc).__name__)
        return 1


if __name__ == "__main__":
    sys.exit(main())
