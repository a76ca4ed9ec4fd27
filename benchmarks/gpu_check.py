"""One command that checks kdbench's GPU path and times it, with no download.

    python benchmarks/gpu_check.py [--data-dir DIR] [--out gpu-check.json] [--tiny] [--skip SECTION ...]

On a CUDA machine (meant to finish in under 8 minutes on a current data-centre GPU; `--tiny` for a quick pass):
- checks, under each `[gpu]` autocast setting (bf16, fp16 with loss scaling, off): every registered method and
  teacher kind trains a few steps (finite losses, the weights move), every registered attack gives valid
  adversarial examples, every corruption is valid and deterministic, the CIFAR-10 smoke suite runs end to end
  (on synthetic CIFAR-shaped images, or the real CIFAR-10 in `--data-dir`, 8/6-image subsets as the suite
  says); and a bf16-trained model evaluated in float32 twice gives the same metrics;
- times, for ResNet-18 and MobileNetV2 students and a WRN-34-10 teacher at batch 128 and 512, a bare
  forward+backward step, the `ce`, `kd`, `rslad` and `ard` steps (the teacher: `ce` and PGD-10 adversarial
  training), PGD-20 and APGD-CE-100 evaluation, each as a ratio to the bare step and in images/s;
- times the registered `autoattack` on ResNet-18 when nothing breaks (every component on every image);
- estimates robustness-cifar10's GPU-hours from those timings, and from its FLOP count.

Without CUDA it says so, runs the same checks on the CPU at a tiny size (small stand-in architectures; the
`[gpu]` settings become CPU autocast in the method checks, and do not apply to a suite's CPU jobs) in a few
minutes, and exits 0 unless a check failed. Results go to a JSON file (written atomically) and a table.
Exit codes: 0 all checks passed, 1 a check failed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _autoattack_cost as aa  # noqa: E402
import _gpu_checks as checks  # noqa: E402
import _gpu_timing as timing  # noqa: E402

from kdbench.records.store import atomic_write_text  # noqa: E402
from kdbench.execution.workspace import torch_threads  # noqa: E402

SECTIONS = ("methods", "attacks", "corruptions", "determinism", "smoke", "timing", "autoattack", "estimate")


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu-check.json", help="JSON results file (default: gpu-check.json)")
    ap.add_argument("--data-dir", default=None, help="a folder holding CIFAR-10 (cifar-10-batches-py/) for the smoke "
                                                     "suite; default: synthetic CIFAR-shaped images")
    ap.add_argument("--tiny", action="store_true", help="the CPU's tiny size, on any device")
    ap.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    ap.add_argument("--skip", nargs="*", default=[], metavar="SECTION", help=f"sections to leave out: {', '.join(SECTIONS)}")
    ap.add_argument("--settings", default=",".join(checks.SETTINGS), help="autocast settings to check (bf16,fp16,off)")
    ap.add_argument("--autoattack-images", type=int, default=None, help="images for the AutoAttack timing")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: 1 on the CPU, as a job of a default run; torch's own on CUDA)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    bad = [s for s in args.skip if s not in SECTIONS]
    if bad:
        ap.exit(2, f"gpu_check.py: unknown section {bad[0]!r}; choose from: {', '.join(SECTIONS)}\n")
    settings = [s for s in args.settings.split(",") if s]
    bad = [s for s in settings if s not in checks.SETTINGS]
    if bad or not settings:
        ap.exit(2, f"gpu_check.py: unknown setting {(bad or [''])[0]!r}; choose from: {', '.join(checks.SETTINGS)}\n")
    if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
        ap.exit(2, f"gpu_check.py: unknown device {args.device!r}; choose from: auto, cpu, cuda, cuda:N\n")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.exit(2, f"gpu_check.py: device {args.device!r} requested but CUDA is not available; choose from: auto, cpu\n")
    if args.data_dir and not (Path(args.data_dir) / "cifar-10-batches-py").is_dir():
        ap.exit(2, f"gpu_check.py: --data-dir {args.data_dir!r} holds no cifar-10-batches-py/ folder\n")
    args.settings = settings
    return args


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def table(results: dict) -> str:
    lines = [f"kdbench GPU check on {results['device']} ({results['size']} size), torch {torch.__version__}", ""]
    checks_rows = results["checks"]
    if checks_rows:
        lines.append(f"{'section':<12} {'name':<34} {'setting':<8} {'result':<6} {'s':>7}  detail")
        for r in checks_rows:
            lines.append(f"{r['section']:<12} {r['name'][:34]:<34} {r['setting']:<8} {'ok' if r['ok'] else 'FAIL':<6} "
                         f"{r['seconds']:>7.2f}  {r['detail'][:70]}")
        failed = sum(not r["ok"] for r in checks_rows)
        lines += ["", f"{len(checks_rows)} checks, {failed} failed", ""]
    if results.get("timing"):
        lines.append(f"step timings under {results['timing_setting']} (ratio to the bare forward+backward step of "
                     f"the same model and batch):")
        lines.append(f"{'arch':<12} {'role':<8} {'batch':>5}  {'what':<36} {'ms':>10} {'img/s':>9} {'ratio':>7}")
        for r in results["timing"]:
            lines.append(f"{r['arch']:<12} {r['role']:<8} {r['batch']:>5}  {r['what'][:36]:<36} {r['seconds'] * 1e3:>10.1f} "
                         f"{r['images_per_s']:>9.1f} {r['ratio_to_bare']:>7.2f}")
        lines.append("")
    a = results.get("autoattack")
    if a:
        lines.append(f"AutoAttack ({a['version']}) on {a['arch']}, every component on every image (the upper "
                     f"bound): {a['per_1000_s']:,.0f} s per 1,000 images ({a['how']}, {a['images']} images)")
        lines.append("")
    est = results.get("estimate")
    if est:
        if "from_timings" in est:
            t = est["from_timings"]
            lines.append(f"robustness-cifar10 on this device, from the timings above: {timing.fmt_hours(t['hours'])} "
                         f"(training {timing.fmt_hours(t['train_hours'])}, evaluation {timing.fmt_hours(t['eval_hours'])}"
                         f", an upper bound)")
        g = est["from_flops"]
        lines.append(f"robustness-cifar10: {g['flops']:.3g} FLOPs (training {g['train_flops']:.3g}, evaluation "
                     f"{g['eval_flops']:.3g}). ESTIMATE, not measured: {g['basis']}:")
        for gpu, hours in g["gpus"].items():
            lines.append(f"  {gpu}: " + ", ".join(f"{timing.fmt_hours(h)} at {u}" for u, h in hours.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device(args.device if args.device.startswith("cuda") else "cuda" if cuda else "cpu")
    threads = args.threads or (None if device.type == "cuda" else 1)
    with torch_threads(threads):  # the caller's thread count is restored afterwards
        return _main(args, device)


def _main(args, device) -> int:
    tiny = args.tiny or device.type != "cuda"
    say = (lambda *a: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if device.type != "cuda":
        print("CUDA is not available: running the same checks on the CPU at a tiny size (stand-in architectures); "
              "nothing here tests the GPU path.", flush=True)
    size, plan = (checks.TINY, timing.TINY_PLAN) if tiny else (checks.FULL, timing.FULL_PLAN)
    ev = checks.check_ev(tiny)
    t_start = time.perf_counter()
    results = {"device": device_name(device), "size": "tiny" if tiny else "full", "torch": torch.__version__,
               "checks": [], "timing": [], "timing_setting": "bf16" if device.type == "cuda" else "float32 (CPU)"}
    run = [s for s in SECTIONS if s not in args.skip]
    with tempfile.TemporaryDirectory(prefix="kdbench-gpu-check-") as work:
        for setting in args.settings:
            if "methods" in run:
                say(f"methods under {setting} ...")
                results["checks"] += checks.check_methods(device, setting, size)
            if "attacks" in run and (device.type == "cuda" or setting == args.settings[0]):
                say(f"attacks ({'placed as ' + setting if device.type == 'cuda' else 'float32'}) ...")
                results["checks"] += checks.check_attacks(device, setting, size, ev)
            if "smoke" in run and (device.type == "cuda" or setting == args.settings[0]):
                say(f"robustness-cifar10-smoke under {setting} ...")
                results["checks"] += checks.check_smoke(device, setting, size, Path(work),
                                                        Path(args.data_dir) if args.data_dir else None)
        if "corruptions" in run:
            say("corruptions ...")
            results["checks"] += checks.check_corruptions(device, size)
        if "determinism" in run:
            say("float32 evaluation of a bf16-trained model, twice ...")
            results["checks"] += checks.check_determinism(device, size, ev)
    if "timing" in run:
        say("timing steps and attacks ...")
        results["timing"] = timing.time_all(plan, device, "bf16", say)
    if "autoattack" in run:
        arch = "cnn-small" if tiny else "resnet18"
        n = args.autoattack_images or (1 if tiny else 100)
        say(f"timing AutoAttack on {arch}, {n} images ...")
        results["autoattack"] = aa.time_autoattack(arch, device, n)
    if "estimate" in run:
        results["estimate"] = {"from_flops": timing.gpu_estimate()}
        if results["timing"] and not tiny:
            results["estimate"]["from_timings"] = timing.suite_hours_from_timings(results["timing"], plan)
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    atomic_write_text(Path(args.out), json.dumps(results, indent=1) + "\n")
    print(table(results))
    print(f"\n{results['seconds']:.0f} s; results in {args.out}")
    return 1 if any(not r["ok"] for r in results["checks"]) else 0


if __name__ == "__main__":
    sys.exit(main())
