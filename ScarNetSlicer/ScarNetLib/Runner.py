"""Process runners: where the (slow) ScarNetCore Segmenter runs.

All runners share one small interface - ``start(image, modelPath, device, batchSize)``, ``poll()``
returning a RunState, ``cancel()`` - so the logic and its tests do not care where inference runs:

* InProcessRunner - synchronous, in the calling thread (headless scripts, self-test).
* ThreadRunner    - a Python thread in this process; the model is loaded once and cached.
* SubprocessRunner - a child Python process running the engine's worker entry point
  (``python -m ScarNetCore.worker``); the GUI default: the Slicer GUI never waits on it, Cancel
  always works (cooperative first, then the whole process tree is killed: PythonSlicer is a
  launcher whose child is the real Python), and a crash in the inference stack (e.g. a GPU
  driver fault) cannot take Slicer down.

Nothing here touches the MRML scene; results are applied by the logic on the main thread.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import SimpleITK as sitk

from . import Dependencies

RUNNING, FINISHED, FAILED, CANCELLED = "running", "finished", "failed", "cancelled"

SegmenterFactory = Callable[[Optional[str], str], object]  # (modelPath or None, device) -> Segmenter


@dataclasses.dataclass
class RunState:
    status: str = "idle"
    done: int = 0
    total: int = 0
    labels: Optional[sitk.Image] = None
    modelInfo: dict = dataclasses.field(default_factory=dict)
    device: str = ""
    qcFlags: list = dataclasses.field(default_factory=list)   # Segmenter QC flags, e.g. no_lv_found
    runRecord: dict = dataclasses.field(default_factory=dict)  # ScarNetCore.io.outputs.run_record of the run
    errorType: str = ""
    message: str = ""

    @property
    def isDone(self) -> bool:
        return self.status in (FINISHED, FAILED, CANCELLED)

    def raiseIfUnsuccessful(self) -> None:
        """Raise what a cancelled or failed run reported, as the engine's own error class where it has one."""
        if self.status == FINISHED:
            return
        from ScarNetCore import errors
        if self.status == CANCELLED:
            raise errors.Cancelled(self.message or "Cancelled")
        errorClass = getattr(errors, self.errorType, None)
        if isinstance(errorClass, type) and issubclass(errorClass, errors.ScarNetError):
            raise errorClass(self.message)
        raise RuntimeError(f"{self.errorType}: {self.message}" if self.errorType else self.message)


def defaultSegmenterFactory(modelPath: Optional[str], device: str):
    from ScarNetCore.pipeline.segmenter import Segmenter
    return Segmenter(model_path=modelPath, device=device)


_segmenterCache: dict = {}
_segmenterCacheLock = threading.Lock()


def cachedSegmenter(modelPath: Optional[str], device: str, factory: Optional[SegmenterFactory] = None):
    """Load a model once per (file, modification time, device); a changed file is reloaded."""
    factory = factory or defaultSegmenterFactory
    stamp = os.path.getmtime(modelPath) if modelPath and os.path.exists(modelPath) else None
    key = (factory, modelPath, stamp, device)
    with _segmenterCacheLock:
        if key not in _segmenterCache:
            _segmenterCache.clear()  # keep one model in (GPU) memory, not one per choice ever made
            _segmenterCache[key] = factory(modelPath, device)
        return _segmenterCache[key]


def _errorState(exc: BaseException) -> RunState:
    from ScarNetCore.errors import Cancelled
    if isinstance(exc, Cancelled):
        return RunState(CANCELLED, message="Cancelled; nothing was changed.")
    return RunState(FAILED, errorType=type(exc).__name__, message=str(exc) or type(exc).__name__)


class InProcessRunner:
    """Runs synchronously inside start(); poll() then returns the final state."""

    def __init__(self, segmenterFactory: Optional[SegmenterFactory] = None, progress=None):
        self.segmenterFactory = segmenterFactory
        self.progressCallback = progress
        self._cancel = threading.Event()
        self._state = RunState()

    def _progress(self, done: int, total: int) -> None:
        self._state.done, self._state.total = done, total
        if self.progressCallback:
            self.progressCallback(done, total)

    def _run(self, image, modelPath, device, batchSize) -> RunState:
        try:
            from ScarNetCore.io import outputs
            started = outputs.now()
            segmenter = cachedSegmenter(modelPath, device, self.segmenterFactory)
            result = segmenter.segment(image, progress=self._progress, cancel=self._cancel.is_set,
                                       batch_size=batchSize)
            # the runner sees voxels, not files: the logic adds the input volume's files
            record = outputs.run_record([], {"batch_size": batchSize}, started, segmenter, result,
                                        finished=outputs.now())
            return RunState(FINISHED, self._state.done, self._state.total, labels=result.labels,
                            modelInfo=dict(getattr(segmenter, "model_info", {}) or {}),
                            device=str(getattr(segmenter, "device", device)),
                            qcFlags=list(getattr(result, "qc_flags", []) or []), runRecord=record)
        except Exception as exc:  # reported to the user as a message, never raised into Qt
            return _errorState(exc)

    def start(self, image: sitk.Image, modelPath: Optional[str], device: str, batchSize: int) -> None:
        self._state = RunState(RUNNING)
        self._state = self._run(image, modelPath, device, batchSize)

    def poll(self) -> RunState:
        return self._state

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self, timeout: Optional[float] = None) -> RunState:
        return self._state


class ThreadRunner(InProcessRunner):
    """Runs in a daemon thread (PyTorch releases the GIL while it computes)."""

    def __init__(self, segmenterFactory: Optional[SegmenterFactory] = None):
        super().__init__(segmenterFactory)
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    def _progress(self, done: int, total: int) -> None:
        with self._lock:
            self._state = dataclasses.replace(self._state, done=done, total=total)

    def start(self, image, modelPath, device, batchSize) -> None:
        self._state = RunState(RUNNING)

        def target():
            final = self._run(image, modelPath, device, batchSize)
            with self._lock:
                self._state = final

        self._thread = threading.Thread(target=target, name="ScarNetInference", daemon=True)
        self._thread.start()

    def poll(self) -> RunState:
        with self._lock:
            return dataclasses.replace(self._state)

    def wait(self, timeout: Optional[float] = None) -> RunState:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.poll()


def _pythonPathForWorker() -> str:
    """The folder holding ScarNetCore, so the child imports the same engine as this process."""
    import ScarNetCore
    existing = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join([str(Path(ScarNetCore.__file__).resolve().parents[1])] + ([existing] if existing else []))




def _startOptions() -> dict:
    """Popen options that put the worker and everything it starts into one group cancel can kill."""
    if os.name == "nt":  # no console flashing up; taskkill /T finds the tree from the launcher
        return {"creationflags": subprocess.CREATE_NO_WINDOW | subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}  # its own process group, whose id is the launcher's pid


def _killTree(process: subprocess.Popen) -> None:
    """Kill the launcher and every process it started (a kill of the launcher alone orphans the worker)."""
    if os.name == "nt":
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)], capture_output=True,
                       creationflags=subprocess.CREATE_NO_WINDOW)
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # all gone already
        pass


def _treeRunning(process: subprocess.Popen) -> bool:
    """Whether any process of the run still runs (zombies waiting to be reaped by init do not count)."""
    if process.poll() is None:
        return True
    if os.name == "nt":
        return False  # taskkill /T /F has returned: the tree is gone
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True  # cannot tell a zombie from a live process here: assume it still runs
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (command)": state ppid pgrp ...
        except (OSError, IndexError):
            continue
        if int(fields[2]) == process.pid and fields[0] != "Z":
            return True
    return False


class SubprocessRunner:
    """Runs ``python -m ScarNetCore.worker`` in a child process; progress and results travel through files."""

    CANCEL_GRACE_SECONDS = 10.0  # cooperative cancel first (between batches), then kill
    EXIT_WAIT_SECONDS = 10.0     # after a kill: how long to wait for the processes to be gone

    def __init__(self, pythonExecutable: Optional[str] = None, workDir: Optional[str] = None):
        self.pythonExecutable = pythonExecutable or Dependencies.pythonExecutable()  # PythonSlicer in Slicer
        self._workDirParent = workDir
        self._process: Optional[subprocess.Popen] = None
        self._dir: Optional[Path] = None
        self._state = RunState()
        self._cancelRequestedAt: Optional[float] = None

    def start(self, image, modelPath, device, batchSize) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="ScarNet-", dir=self._workDirParent))
        sitk.WriteImage(image, str(self._dir / "input.nrrd"))
        command = [self.pythonExecutable, "-m", "ScarNetCore.worker",
                   "--input", str(self._dir / "input.nrrd"), "--output", str(self._dir / "labels.nrrd"),
                   "--status", str(self._dir / "status.json"), "--cancel-file", str(self._dir / "cancel"),
                   "--device", device, "--batch-size", str(int(batchSize))]
        if modelPath:
            command += ["--model", str(modelPath)]
        env = dict(os.environ, PYTHONPATH=_pythonPathForWorker(), PYTHONUNBUFFERED="1")
        self._log = open(self._dir / "worker.log", "wb")
        self._process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                         **_startOptions())
        self._state = RunState(RUNNING)

    def _readStatus(self) -> Optional[dict]:
        try:
            return json.loads((self._dir / "status.json").read_text())
        except (OSError, ValueError):  # not written yet
            return None

    def _logTail(self, lines: int = 15) -> str:
        try:
            return "\n".join((self._dir / "worker.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def poll(self) -> RunState:
        if self._process is None or self._state.isDone:
            return self._state
        status = self._readStatus() or {}
        exitCode = self._process.poll()
        if exitCode is None:
            if self._cancelRequestedAt and time.monotonic() - self._cancelRequestedAt > self.CANCEL_GRACE_SECONDS:
                self._finish(RunState(CANCELLED, message="Cancelled; nothing was changed."))
            else:
                self._state = dataclasses.replace(self._state, done=int(status.get("done", 0)),
                                                  total=int(status.get("total", 0)))
            return self._state
        state = status.get("state")
        if self._cancelRequestedAt or state == CANCELLED:  # a cancelled run's result is never used
            final = RunState(CANCELLED, message="Cancelled; nothing was changed.")
        elif state == FINISHED and (self._dir / "labels.nrrd").exists():
            final = RunState(FINISHED, status.get("done", 0), status.get("total", 0),
                             labels=sitk.ReadImage(str(self._dir / "labels.nrrd")),
                             modelInfo=status.get("model_info", {}), device=status.get("device", ""),
                             qcFlags=list(status.get("qc_flags", [])), runRecord=status.get("run_record", {}))
        elif state == FAILED:
            final = RunState(FAILED, errorType=status.get("error_type", ""), message=status.get("message", ""))
        else:
            final = RunState(FAILED, errorType="WorkerCrashed",
                             message=f"The ScarNet worker process stopped unexpectedly (exit code {exitCode}).\n"
                                     + self._logTail())
        self._finish(final)
        return self._state

    def _finish(self, state: RunState) -> None:
        """End the run: no process of it may outlive it (a launcher that died leaves its child behind),
        and its folder goes only once none runs - a live worker could still be writing there."""
        self._state = state
        if _treeRunning(self._process):
            _killTree(self._process)
            deadline = time.monotonic() + self.EXIT_WAIT_SECONDS
            while _treeRunning(self._process) and time.monotonic() < deadline:
                time.sleep(0.02)
        self._process.poll()  # reap the launcher
        self._log.close()
        if _treeRunning(self._process):
            import logging
            logging.warning(f"ScarNet: worker processes of {self._dir} did not exit; the folder is left in place.")
            return
        import shutil
        shutil.rmtree(self._dir, ignore_errors=True)

    def cancel(self) -> None:
        if self._process is not None and not self._state.isDone and not self._cancelRequestedAt:
            (self._dir / "cancel").touch()
            self._cancelRequestedAt = time.monotonic()

    def wait(self, timeout: Optional[float] = None) -> RunState:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll().isDone and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.05)
        return self._state
