"""training/train.py on a tiny config with real EMIDEC slices: learning, resume after SIGKILL, DDP.

Every run uses 4 training + 4 validation slices (one case each) with the frozen-encoder feature
cache (1 view); the cache is built once per module and copied into each run folder, so the costly
LiteMedSAM encoder runs on 8 slices in total.
"""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ScarNetCore.model.checkpoint import load_checkpoint
from training.config import TrainConfig
from training.train import STATE_FILE, run

REPO = Path(__file__).resolve().parents[1]
SLICES = REPO.parent / "shared" / "data" / "emidec" / "slices"
EPOCHS = 5

pytestmark = pytest.mark.skipif(not SLICES.is_dir(), reason=f"EMIDEC slices not found at {SLICES}")


def tiny_config(out: Path, split: Path, **optim) -> dict:
    # augment_cached off (the default): 4 unaugmented slices, so the loss must fall every epoch
    settings = {"batch_size": 2, "epochs": EPOCHS, "lr": 0.02, "schedule": "constant", "warmup_epochs": 0,
                "amp": "fp32", "cache_features": True, "cache_views": 1, "augment_cached": False, "seed": 7}
    settings.update(optim)
    return {"output_dir": str(out),
            "data": {"root": str(SLICES), "layout": "slices", "split_file": str(split), "max_slices": 4},
            "model": {"base_channels": 4, "trainable_encoder_stages": 0},
            "optim": settings}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_training")
    split = root / "split.json"
    split.write_text(json.dumps({"train": ["Case_P043"], "validation": ["Case_P044"], "test": []}))
    run(TrainConfig.from_dict(tiny_config(root / "prep", split, epochs=0)))  # epochs 0: builds the cache only
    assert (root / "prep" / "feature_cache" / "train" / "view_0" / "done.json").is_file()
    return root, split


def new_run(workspace, name: str, **optim) -> tuple[Path, Path]:
    """A run folder holding a copy of the shared feature cache, and its YAML config."""
    root, split = workspace
    out = root / name
    shutil.copytree(root / "prep" / "feature_cache", out / "feature_cache")
    config = root / f"{name}.yaml"
    config.write_text(yaml.safe_dump(tiny_config(out, split, **optim)))
    return out, config


def read_log(out: Path) -> list[dict]:
    with open(out / "log.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def trained_parameters(path: Path) -> dict:
    model, _ = load_checkpoint(path)
    return {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}


@pytest.fixture(scope="module")
def reference_run(workspace):
    out, config = new_run(workspace, "reference")
    best = run(TrainConfig.load(config))
    assert best == out / "best.safetensors"
    return out


def test_tiny_config_learns(reference_run):
    rows = read_log(reference_run)
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    losses = [float(r["train_loss"]) for r in rows]
    print("training loss per epoch:", losses)
    # overfitting 4 slices with 2 steps per epoch: the loss falls epoch after epoch
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.97 * losses[0], losses
    model, meta = load_checkpoint(reference_run / "best.safetensors")
    assert meta.header["training_config"]["optim"]["epochs"] == EPOCHS
    assert meta.header["training_data"]["cases"]["train"] == ["Case_P043"]
    assert 1 <= meta.header["metrics"]["validation"]["epoch"] <= EPOCHS
    state = torch.load(reference_run / STATE_FILE, weights_only=True)
    assert state["epoch"] == EPOCHS - 1 and len(state["history"]) == EPOCHS


def test_init_checkpoint_starts_from_its_weights(workspace, reference_run):
    # lr 0 (AdamW's decoupled weight decay scales with lr too): a trained epoch must leave the
    # initial weights untouched, so the saved model is exactly the checkpoint it started from.
    # augment_cached on: the on-the-fly path of the CPU recipe runs end to end.
    start = reference_run / "best.safetensors"
    out, config = new_run(workspace, "init", epochs=1, lr=0.0, augment_cached=True)
    run(TrainConfig.load(config, [f"model.init_checkpoint={start}"]))
    initial, saved = trained_parameters(start), trained_parameters(out / "last.safetensors")
    assert initial.keys() == saved.keys()
    for key, value in initial.items():
        torch.testing.assert_close(saved[key], value, rtol=0, atol=0, msg=key)
    best = trained_parameters(out / "best.safetensors")
    assert all(torch.equal(best[k], initial[k]) for k in initial)
    with pytest.raises(ValueError, match="base_channels"):
        run(TrainConfig.load(config, [f"model.init_checkpoint={start}", "model.base_channels=8",
                                      f"output_dir={out.parent / 'init_mismatch'}"]))


def test_refit_trains_on_the_validation_cases_and_ships_the_last_epoch(workspace):
    """data.refit: the final fit of a chosen recipe on train ∪ validation (here a 2.5-D stage 2, on-the-fly
    views, no encoder): its checkpoint records the validation case as trained on, and nothing is 'best'."""
    root, split = workspace
    out = root / "refit"
    config = tiny_config(out, split, epochs=1, cache_features=False)
    config["data"]["stage"], config["data"]["refit"] = "segment", True
    config["model"] = {"encoder": "none", "base_channels": 4, "in_channels": 3}
    final = run(TrainConfig.from_dict(config))
    assert final == out / "last.safetensors" and not (out / "best.safetensors").exists()
    _, meta = load_checkpoint(final)
    assert meta.header["training_data"]["cases"]["train"] == ["Case_P043", "Case_P044"]
    assert meta.header["training_config"]["data"]["refit"] is True and len(read_log(out)) == 1
    config["data"]["folds"], config["data"]["split_file"] = 5, None
    with pytest.raises(ValueError, match="refit needs a split_file"):
        run(TrainConfig.from_dict(config))


def test_a_stage_trained_at_its_own_spacing_records_that_geometry(workspace):
    """model.spacing_mm / grid_size: a locate stage at 2 mm on a 224 grid (448 mm) draws its views there
    and its checkpoint says so, which is what inference resamples to; the full-slice model refuses it."""
    root, split = workspace
    out = root / "locate_2mm"
    config = tiny_config(out, split, epochs=1, cache_features=False)
    config["data"]["stage"] = "locate"
    config["model"] = {"encoder": "none", "base_channels": 4, "spacing_mm": 2.0, "grid_size": 224}
    net, meta = load_checkpoint(run(TrainConfig.from_dict(config)))
    assert net.config.grid_size == 224 and net.config.num_classes == 2
    assert meta.preprocessing.target_spacing_mm == 2.0 and meta.preprocessing.grid_size == 224
    config["data"]["stage"], config["output_dir"] = "full", str(root / "full_2mm")
    with pytest.raises(ValueError, match="spacing_mm"):
        run(TrainConfig.from_dict(config))


def test_resume_after_kill_matches_uninterrupted_run(workspace, reference_run):
    out, config = new_run(workspace, "killed")
    command = [sys.executable, str(REPO / "training" / "train.py"), "--config", str(config)]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (out / STATE_FILE).exists():  # appears (atomically) once epoch 1 is complete
        assert proc.poll() is None, f"training ended before its first checkpoint:\n{proc.stdout.read()}"
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.read()  # drain the pipe
    assert proc.returncode == -signal.SIGKILL

    # nothing half-written: every named file is complete and they agree with each other
    state = torch.load(out / STATE_FILE, weights_only=True)
    done = state["epoch"] + 1
    assert 1 <= done < EPOCHS, f"killed after epoch {done}: the kill came too late to test resuming"
    assert len(state["history"]) == done
    logged = [int(r["epoch"]) for r in read_log(out)]
    assert logged in (list(range(1, done + 1)), list(range(1, done)))  # log.csv follows train_state.pt
    load_checkpoint(out / "last.safetensors")
    load_checkpoint(out / "best.safetensors")

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"resumed from {out / STATE_FILE} after epoch {done}" in second.stdout, second.stdout
    assert f"epoch {done + 1}/{EPOCHS}" in second.stdout and f"epoch {done}/{EPOCHS}" not in second.stdout
    rows = read_log(out)
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    assert torch.load(out / STATE_FILE, weights_only=True)["epoch"] == EPOCHS - 1

    # deterministic resume: same losses and the same final weights as the uninterrupted run
    reference = read_log(reference_run)
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in reference]
    resumed, uninterrupted = trained_parameters(out / "last.safetensors"), trained_parameters(reference_run / "last.safetensors")
    for key, value in uninterrupted.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-5, atol=1e-6, msg=key)


DDP_WRAPPER = '''
"""Runs training.train.run under torchrun and dumps, per rank, what that rank trained and saw."""
import os, sys
import torch
sys.path.insert(0, {repo!r})
import training.train as T
from training.config import TrainConfig

rank = int(os.environ["RANK"])
seen, models = [], []

class RecordingDDP(T.DistributedDataParallel):
    def __init__(self, module, *args, **kwargs):
        super().__init__(module, *args, **kwargs)
        # parameters as training starts (after DDP's broadcast from rank 0)
        models.append((module, {{k: v.detach().clone() for k, v in module.named_parameters()}}))

class RecordingLoss(T.ScarNetLoss):
    def forward(self, logits, target):
        seen.append(torch.bincount(target.flatten(), minlength=5).tolist())  # the labels this rank trained on
        return super().forward(logits, target)

T.DistributedDataParallel, T.ScarNetLoss = RecordingDDP, RecordingLoss
T.run(TrainConfig.load(sys.argv[1]))
(model, initial), = models
torch.save({{"final": {{k: v.detach() for k, v in model.named_parameters()}}, "initial": initial, "seen": seen}},
           os.path.join(sys.argv[2], f"rank{{rank}}.pt"))
'''


def test_ddp_two_processes_synchronise_gradients(workspace, reference_run, tmp_path):
    # DDP splits the 4 training slices between 2 ranks (2 each, batch 2: one step per epoch).
    # If gradients were not all-reduced, the two ranks would take different optimiser steps on
    # different data and end with different weights; identical weights after 2 epochs prove the sync.
    out, config = new_run(workspace, "ddp", epochs=2)
    wrapper = tmp_path / "ddp_wrapper.py"
    wrapper.write_text(DDP_WRAPPER.format(repo=str(REPO)))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"  # 2 ranks on a small CPU machine
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(wrapper), str(config), str(tmp_path)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "world size 2" in result.stdout
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    # each rank trained on its own slices (2 epochs × 1 step), and the two shares differ
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == 2
    assert ranks[0]["seen"] != ranks[1]["seen"]
    # same start, training moved the weights, and both ranks end bit-identical
    for key, start in ranks[0]["initial"].items():
        assert torch.equal(start, ranks[1]["initial"][key]), key
    trainable = [k for k in ranks[0]["final"] if not k.startswith("encoder.")]
    assert any(not torch.equal(ranks[0]["final"][k], ranks[0]["initial"][k]) for k in trainable)
    for key in ranks[0]["final"]:
        assert torch.equal(ranks[0]["final"][key], ranks[1]["final"][key]), f"ranks diverged at {key}"
    # rank 0 wrote the checkpoint (= rank 1's weights) and a sane log
    saved = trained_parameters(out / "last.safetensors")
    for key in trainable:
        torch.testing.assert_close(saved[key], ranks[1]["final"][key], rtol=0, atol=0)
    rows = read_log(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    losses = [float(r["train_loss"]) for r in rows]
    # epoch 1 starts from the same weights as the single-process run: similar loss on half the slices
    single = float(read_log(reference_run)[0]["train_loss"])
    assert all(0 < x < 10 for x in losses) and abs(losses[0] - single) < 0.1 * single, (losses, single)


def test_a_refine_stage_learns_from_stage_2s_saved_probabilities(workspace):
    """The refine recipe end to end: training/evaluate.py --save-probabilities writes the bundled
    model's probabilities per case (float16, [slices, classes, rows, columns], summing to 1); a refine
    stage trains on them (data.prior_dir), starting as the stage-2 network it is initialised from:
    the weights for the new probability inputs start at zero, so with lr 0 it answers as that network
    whatever probabilities it is given."""
    from ScarNetCore.model.cascade import SEGMENT_GEOMETRY
    from ScarNetCore.model.checkpoint import save_checkpoint
    from ScarNetCore.model import ScarNet, ScarNetConfig
    from ScarNetCore.resources import default_model_path
    from training.evaluate import main as evaluate
    root, split = workspace
    cache = root / "stage2_eval"
    assert evaluate(["--model", str(default_model_path()), "--data", str(SLICES), "--out", str(cache),
                     "--cases", "Case_P043", "Case_P044", "--save-probabilities"]) == 0
    saved = np.load(cache / "probabilities" / "Case_P043.npy", allow_pickle=False)
    assert saved.dtype == np.float16 and saved.shape[1:] == (5, 256, 256)
    assert len(saved) == len(list((SLICES / "images").glob("Case_P043_slice*.png")))
    assert np.allclose(saved.astype(np.float32).sum(1), 1, atol=2e-2) and saved[:, 1:].max() > 0.5

    torch.manual_seed(0)
    stage_2 = ScarNet(ScarNetConfig(encoder="none", base_channels=4, grid_size=SEGMENT_GEOMETRY.grid_size,
                                    in_channels=3))
    start = save_checkpoint(root / "stage2_start.safetensors", stage_2, SEGMENT_GEOMETRY)
    config = tiny_config(root / "refine", split, epochs=1, lr=0.0, cache_features=False)
    config["data"].update(stage="refine", prior_dir=str(cache / "probabilities"))
    config["model"] = {"encoder": "none", "base_channels": 4, "in_channels": 3, "init_checkpoint": str(start)}
    refine, meta = load_checkpoint(run(TrainConfig.from_dict(config)))
    assert refine.config.prior and refine.config.input_channels == 15 and meta.header["training_config"]["data"]["stage"] == "refine"
    x, prior = torch.rand(2, 3, 128, 128), torch.rand(2, 12, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(refine(torch.cat([x, prior], 1)), stage_2.eval()(x))
    # with the remote contrast too: three more first-layer inputs, also starting at zero
    config["output_dir"] = str(root / "refine_contrast")
    config["model"]["remote_contrast"] = True
    contrast, _ = load_checkpoint(run(TrainConfig.from_dict(config)))
    assert contrast.config.remote_contrast and contrast.down[0].body[0].weight.shape[1] == 18
    with torch.no_grad():
        torch.testing.assert_close(contrast(torch.cat([x, prior], 1)), stage_2(x))
    config["data"]["prior_dir"] = None
    with pytest.raises(ValueError, match="prior_dir"):
        run(TrainConfig.from_dict(config))


def test_amp_takes_the_engine_precision_words():
    """optim.amp says auto, fp32, bf16 or fp16, as inference does; an old config's 'none' gets one line saying fp32."""
    assert TrainConfig.from_dict({"optim": {"amp": "fp32"}}).optim.amp == "fp32"
    with pytest.raises(ValueError, match="none is now written fp32"):
        TrainConfig.from_dict({"optim": {"amp": "none"}})
    with pytest.raises(ValueError, match="auto, fp32, bf16, fp16"):
        TrainConfig.from_dict({"optim": {"amp": "half"}})


def test_training_reads_slices_and_builds_the_hybrid_without_simpleitk(tmp_path):
    """The lent GPU machine has no SimpleITK and no encoder packages (training/gpu_prepare.sh): there,
    training must import, read the slices layout (Pillow) and build the LiteMedSAM hybrid from model
    v1's encoder weights with the package's code alone. Here those packages are made unimportable."""
    blocked = tmp_path / "blocked"
    for name in ("SimpleITK", "nibabel", "monai", "highdicom", "pydicom", "segment_anything"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name}: not on the GPU machine')\n")
    v1 = REPO / "Resources" / "Models" / "scarnet_litemedsam_emidec.safetensors"
    script = f"""
import sys
import training.train
from training.data import read_dataset
from ScarNetCore.model import ScarNet, ScarNetConfig
samples = read_dataset({str(SLICES)!r}, "slices", cases={{"Case_N012"}})
net = ScarNet(ScarNetConfig(encoder="litemedsam", encoder_checkpoint={str(v1)!r}))
assert "SimpleITK" not in sys.modules or sys.modules["SimpleITK"] is None
print(len(samples), samples[0].image.shape, sum(p.numel() for p in net.encoder.parameters()))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(blocked)])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    words = done.stdout.split()
    slices, encoder_parameters = int(words[0]), int(words[-1])
    assert slices == len(list((SLICES / "images").glob("Case_N012_slice*.png"))) and encoder_parameters > 1_000_000
