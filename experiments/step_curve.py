"""Dice against training steps for stage 2's 2-D network: the learning curve's 57-case runs (issue 31).

  score: python experiments/step_curve.py score RUN LAST.safetensors      (RUN: 57x4 or 57x8)
         exports the network as the only stage-2 network of the bundled model's pipeline (its stage 1 and
         settings, no refine stage), scores it in fp32 on the 8 validation and 15 test cases and adds its
         per-case rows to Resources/ModelCard/v2/learning_curve_per_case.csv as run RUN.
  plot:  python experiments/step_curve.py plot OUT.png
         plots mean Dice against steps for the 57-case runs (on all 23 cases: ± 1.96 standard errors over
         cases, as HISTORY.md's learning-curve table; validation and test alone as lines, too few cases
         for an interval) and prints each run's paired change from the run before it.

The test cases are for the curve only; nothing is chosen on them (training/README.md).
"""
import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

from ScarNetCore.io.files import read_csv, write_csv
from ScarNetCore.model.checkpoint import read_metadata

ROOT = Path(__file__).resolve().parents[1]
PER_CASE = ROOT / "Resources/ModelCard/v2/learning_curve_per_case.csv"
BUNDLED = ROOT / "Resources/Models/scarnet_v2_emidec.safetensors"
FIELDS = ["run", "training_cases", "subset", "case", "myocardium_dice", "scar_dice", "ref_myocardium_ml",
          "pred_myocardium_ml", "qc_flags"]
# the 57-case runs, 25 steps an epoch: 100 and 200 epochs (HISTORY.md), 400 and 800 (training/README.md)
STEPS = {"57": 2500, "57x2": 5000, "57x4": 10000, "57x8": 20000}
LICENCE = "CC BY-NC-SA 4.0 (weights derived from EMIDEC data; research, non-commercial)"
REFINE = ROOT / "training/checkpoints/refine_validation.safetensors"
# the rule of "stage 2's 2-D networks trained on" (HISTORY.md), fixed before the 20,000-step run
RULE_MYOCARDIUM, RULE_SCAR, RULE_VOLUME = 0.839, 0.673, 0.03


def score(run: str, steps: int, network: Path, work: Path, data: str) -> None:
    rows = [r for r in read_rows() if r["run"] != run]
    work.mkdir(parents=True, exist_ok=True)
    model = work / f"curve_{run}.safetensors"
    subprocess.run([sys.executable, str(ROOT / "training/export.py"), str(network), str(model),
                    "--name", f"stage-2 learning curve, run {run} ({steps} steps)", "--version", f"curve-{run}",
                    "--licence", LICENCE, "--locate", str(BUNDLED)], check=True)
    for subset in ("validation", "test"):
        out = work / f"curve_{run}_{subset}"
        evaluate(model, subset, out, data)
        for r in read_csv(out / "per_case.csv"):
            infarct = float(r["ref_scar_ml"]) > 0
            if infarct != is_infarct_case(r["case"]):
                raise SystemExit(f"error: {r['case']} has {r['ref_scar_ml']} mL of reference scar; "
                                 "the curve's infarct cases are the P cases")
            rows.append({"run": run, "training_cases": 57, "subset": subset, **{k: r[k] for k in FIELDS[3:]}})
    write_csv(rows, PER_CASE, columns=FIELDS)
    print(f"{run}: {sum(r['run'] == run for r in rows)} cases added to {PER_CASE.relative_to(ROOT)}")


def evaluate(model: Path, subset: str, out: Path, data: str) -> None:
    subprocess.run([sys.executable, "-m", "training.evaluate", "--model", str(model), "--data", data,
                    "--split", str(ROOT / "training/configs/emidec_split.json"), "--subset", subset,
                    "--out", str(out), "--precision", "fp32"], check=True, cwd=ROOT)


def candidate(network: Path, work: Path, data: str) -> bool:
    """Score the validation pipeline with its 2-D network replaced by NETWORK, beside the unchanged one."""
    work.mkdir(parents=True, exist_ok=True)
    pair = [work / "pair_2d.safetensors", work / "pair_2_5d.safetensors"]
    for member, path in enumerate(pair):
        subprocess.run([sys.executable, str(ROOT / "training/validation_pipeline.py"), str(path),
                        "--member", str(member)], check=True)
    for path in (pair[0], network):   # the network replaced must be the pair's 2-D one, and by a 2-D one
        if read_metadata(path)["config"]["in_channels"] != 1:
            raise SystemExit(f"error: {path} is not a 2-D stage-2 network (one input slice)")
    passed = {}
    for name, first in (("unchanged", pair[0]), ("candidate", network)):
        model = work / f"v3_{name}.safetensors"
        subprocess.run([sys.executable, str(ROOT / "training/export.py"), str(first), str(pair[1]), str(model),
                        "--name", f"validation pipeline, 2-D network: {first.name} ({name})",
                        "--version", f"v3-{name}", "--licence", LICENCE, "--locate", str(BUNDLED),
                        "--refine", str(REFINE)], check=True)
        out = work / f"v3_{name}_validation"
        evaluate(model, "validation", out, data)
        passed[name] = judge(name, out)
    return passed["candidate"]


def judge(name: str, out: Path) -> bool:
    """Print the rule's clauses for one evaluation folder; True when all hold."""
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    rows = read_csv(out / "per_case.csv")
    myocardium = summary["structures"]["myocardium"]["dice_mean"]
    scar = summary["structures"]["scar"]["dice_mean"]
    predicted = sum(float(r["pred_myocardium_ml"]) for r in rows)
    reference = sum(float(r["ref_myocardium_ml"]) for r in rows)
    normal_scar = {r["case"]: float(r["pred_scar_ml"]) for r in rows if not is_infarct_case(r["case"])}
    agreement = summary["scar_percent_agreement"]
    clauses = [(f"myocardium Dice {myocardium:.3f} >= {RULE_MYOCARDIUM}", myocardium >= RULE_MYOCARDIUM),
               (f"scar Dice {scar:.3f} >= {RULE_SCAR}", scar >= RULE_SCAR),
               (f"myocardium {predicted:.0f} mL against {reference:.0f} mL ({predicted / reference - 1:+.1%}), "
                f"within {RULE_VOLUME:.0%}", abs(predicted / reference - 1) <= RULE_VOLUME),
               (f"scar in the normal cases {normal_scar} mL: none", not any(normal_scar.values()))]
    ci = {k: "–".join(f"{x:.3f}" for x in summary["structures"][k]["dice_ci95"]) for k in ("myocardium", "scar")}
    print(f"{name}: 95 % CIs myocardium {ci['myocardium']}, scar {ci['scar']}; "
          f"MVO Dice {summary['structures']['mvo']['dice_mean']:.3f}, scar % bias "
          f"{agreement['bias']:+.1f}, limits of agreement {agreement['loa_low']:+.1f} to {agreement['loa_high']:+.1f}")
    for text, holds in clauses:
        print(f"  {'pass' if holds else 'FAIL'}  {text}")
    return all(holds for _, holds in clauses)


def read_rows() -> list[dict]:
    return read_csv(PER_CASE)


def is_infarct_case(case: str) -> bool:
    """EMIDEC names its infarct cases P and its normal ones N (the old rows hold no reference scar)."""
    return case.startswith("Case_P")


def values(rows: list[dict], run: str, structure: str) -> dict[str, float]:
    """Per-case Dice of one run; scar over the infarct cases only (as in HISTORY.md's table)."""
    return {r["case"]: float(r[f"{structure}_dice"]) for r in rows
            if r["run"] == run and (structure == "myocardium" or is_infarct_case(r["case"]))}


def mean_ci(xs) -> tuple[float, float]:
    xs = list(xs)
    return statistics.mean(xs), 1.96 * statistics.stdev(xs) / math.sqrt(len(xs))


def plot(path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows()
    runs = {run: steps for run, steps in STEPS.items() if any(r["run"] == run for r in rows)}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, structure in zip(axes, ("myocardium", "scar")):
        for subset, colour in (("validation", "tab:blue"), ("test", "tab:grey"), (None, "black")):
            picked = [r for r in rows if subset is None or r["subset"] == subset]
            points = [(steps, *mean_ci(values(picked, run, structure).values())) for run, steps in runs.items()]
            label = {None: "all 23 cases (± 1.96 SE)", "validation": "8 validation", "test": "15 test"}[subset]
            ax.errorbar([p[0] for p in points], [p[1] for p in points],
                        yerr=[p[2] for p in points] if subset is None else None, marker="o", color=colour,
                        capsize=3, lw=2 if subset is None else 1, label=label, alpha=1 if subset is None else 0.6)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(runs.values()), [f"{s:,}" for s in runs.values()])
        ax.set_xlabel("optimiser steps (one full cosine schedule each)")
        ax.set_ylabel(f"{structure} Dice" + (" (infarct cases)" if structure == "scar" else ""))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Stage 2's 2-D network alone, 57 training cases: Dice against training steps", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print("run  steps  myocardium (23)  scar (17 infarct)  paired change from the run before (± 1.96 SE)")
    previous = None
    for run, steps in runs.items():
        myo, scar = values(rows, run, "myocardium"), values(rows, run, "scar")
        line = f"{run:5} {steps:6,}  {mean_ci(myo.values())[0]:.3f}  {mean_ci(scar.values())[0]:.3f}"
        if previous:
            for name, now, before in (("myocardium", myo, previous[0]), ("scar", scar, previous[1])):
                change = mean_ci(now[c] - before[c] for c in now)
                line += f"  {name} {change[0]:+.3f} ± {change[1]:.3f}"
        print(line)
        previous = (myo, scar)
    print(f"figure: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--data", default=str(ROOT.parent / "shared/data/emidec/slices"))
    s = sub.add_parser("score", parents=[data])
    s.add_argument("run", choices=[run for run in STEPS if run not in ("57", "57x2")])
    s.add_argument("network", type=Path)
    s.add_argument("--work", type=Path, default=ROOT / "runs")
    p = sub.add_parser("plot")
    p.add_argument("out", type=Path)
    c = sub.add_parser("candidate", parents=[data])
    c.add_argument("network", type=Path)
    c.add_argument("--work", type=Path, default=ROOT / "runs/v3_candidate")
    args = parser.parse_args()
    if args.command == "score":
        score(args.run, STEPS[args.run], args.network.resolve(), args.work.resolve(), str(Path(args.data).resolve()))
    elif args.command == "candidate":
        passed = candidate(args.network.resolve(), args.work.resolve(), str(Path(args.data).resolve()))
        print(f"the candidate {'passes' if passed else 'fails'} the rule (training/README.md)")
    else:
        plot(args.out)


if __name__ == "__main__":
    main()
