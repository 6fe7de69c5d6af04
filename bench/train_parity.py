#!/usr/bin/env python3
"""Training-loop parity: `omniad train` against the reference trainer's logic, step by step.

Both sides start from the same weights, read the same images in the same order and train with
feature jitter off:

1. `omniad synth --size S` writes the synthetic benchmark (MVTec layout) into WORK/data;
2. a random ResNet34 (timm, `torch.manual_seed(--seed)`) is saved to WORK/teacher.safetensors
   and given to both sides;
3. `omniad train --lr 1e-30 --epochs 1` gives omniad's initial weights (an update of 1e-30 does
   not change a float32 weight; BatchNorm running statistics are reset to 0 / 1 afterwards);
   `omniad train` with the real settings then trains E epochs (batch 16, lr 1e-3, weight decay
   1e-4, clip 5, the last incomplete batch dropped, no validation share) and logs every step's
   loss (`train_log.jsonl`);
4. the reference (imported from a work tree of easyoo/Omni-AD, patched by `refpatch.py`: learned
   attention MLPs, jitter 0) is trained from those weights with its own trainer logic: its
   `optim.get_optim` (AdamW, no weight decay on 1-D parameters and biases), its
   `optim.scheduler.get_scheduler` (timm StepLR per iteration, x0.1 at 80% of the epochs),
   `timm.utils.dispatch_clip_grad(value=5)` after `backward`, `drop_last=True` batches, the
   images in omniad's order (`cargo run --example train_order`), preprocessing as its config
   (bilinear resize, centre crop, ToTensor, ImageNet normalisation); once in float32 and once in
   float64 (its own drift over the same steps);
5. prints per-step losses and, per parameter tensor, ||omniad - ref|| / ||ref|| of the final
   weights next to the reference's float32-vs-float64 drift.

    python bench/train_parity.py --ref OMNI_AD_TREE --omniad TARGET/omniad --work WORK_DIR

Run from the repository root (for `cargo run --example train_order`). Not run by CI.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refpatch  # noqa: E402

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def run(cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def omniad_train(args, work, out, lr, wd, epochs):
    run(
        [
            args.omniad, "train", "--data-root", work / "data", "--out", out,
            "--teacher", "resnet34", "--teacher-weights", work / "teacher.safetensors",
            "--epochs", epochs, "--batch-size", args.batch, "--lr", lr, "--weight-decay", wd,
            "--seed", args.seed, "--depths", args.depths, "--image-size", args.size,
            "--jitter-scale", 0, "--feature-cache", "none", "--val-fraction", 0,
        ]
    )


def load_image(path, size):
    img = Image.open(path).convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    a = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (a - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def reference_train(om, args, init, teacher, images, orders, dtype):
    """The reference trainer's loop (trainer/_base_trainer.py train + backward_term) over
    ``orders``; returns per-step losses and the final state dict."""
    # The reference's optim/__init__.py imports optimisers by their timm 0.8 names; timm 1.0
    # renamed two that Omni-AD never uses (it uses torch.optim.AdamW): alias them.
    import timm.optim.nadam as t_nadam
    import timm.optim.radam as t_radam

    t_nadam.Nadam = getattr(t_nadam, "Nadam", getattr(t_nadam, "NAdamLegacy", None))
    t_radam.RAdam = getattr(t_radam, "RAdam", getattr(t_radam, "RAdamLegacy", None))
    import optim as ref_optim  # the reference's package (its work tree is on sys.path)
    from optim.scheduler import get_scheduler
    from timm.utils import dispatch_clip_grad

    torch.manual_seed(0)
    net = refpatch.build_model(om, [int(d) for d in args.depths.split(",")])
    sd = net.state_dict()
    weights = {}
    for k, v in sd.items():
        if k.startswith("net_t."):
            weights[k] = teacher[k[len("net_t."):]]
        elif k.endswith("running_mean"):
            weights[k] = torch.zeros_like(v)
        elif k.endswith("running_var"):
            weights[k] = torch.ones_like(v)
        elif k.endswith("num_batches_tracked"):
            continue
        else:
            weights[k] = init[k]
    refpatch.load_weights(net, weights, "omniad's initial weights")
    net = net.to(dtype)
    net.train()
    optim = ref_optim.get_optim(
        dict(name="adamw", betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4, amsgrad=False),
        net,
        lr=1e-3 * args.batch / 16,
    )
    steps_per_epoch = len(images) // args.batch  # drop_last=True
    cfg = Namespace(
        trainer=Namespace(
            epoch_full=len(orders),
            scheduler_kwargs=dict(
                name="step", lr_noise=None, noise_pct=0.67, noise_std=1.0, noise_seed=42,
                lr_min=1e-5, warmup_lr=1e-6, warmup_iters=-1, cooldown_iters=0, warmup_epochs=0,
                cooldown_epochs=0, use_iters=True, patience_iters=0, patience_epochs=0,
                decay_iters=0, decay_epochs=int(len(orders) * 0.8), cycle_decay=0.1,
                decay_rate=0.1,
            ),
        ),
        data=Namespace(train_size=steps_per_epoch),
    )
    scheduler = get_scheduler(cfg, optim)
    losses, it = [], 0
    for order in orders:
        for b in range(steps_per_epoch):
            scheduler.step(it)
            it += 1
            idx = order[b * args.batch:(b + 1) * args.batch]
            x = torch.stack([images[i] for i in idx]).to(dtype)
            ft, fs = net(x)
            loss = om.refpatch_L2Loss()(ft, fs)
            optim.zero_grad()
            loss.backward()
            dispatch_clip_grad(net.parameters(), value=5.0)
            optim.step()
            losses.append(float(loss))
            print(f"  reference {dtype}: step {it} loss {losses[-1]:.6f}", flush=True)
    return losses, {k: v.detach().double() for k, v in net.state_dict().items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", required=True, help="work tree of the reference (easyoo/Omni-AD)")
    ap.add_argument("--omniad", required=True, help="the omniad binary")
    ap.add_argument("--work", required=True, help="work folder (created)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--depths", default="1,1,1,1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-f64", action="store_true", help="skip the float64 reference run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)

    if not (work / "data").is_dir():
        run([args.omniad, "synth", "--out", work / "data", "--size", args.size])
    if not (work / "teacher.safetensors").is_file():
        import timm

        torch.manual_seed(args.seed)
        t = timm.create_model("resnet34", pretrained=False)
        save_file({k: v.contiguous() for k, v in t.state_dict().items()}, str(work / "teacher.safetensors"))
    teacher = load_file(str(work / "teacher.safetensors"))

    order_json = subprocess.run(
        ["cargo", "run", "-q", "-p", "omniad-data", "--example", "train_order", "--",
         "mvtec", str(work / "data"), str(args.seed), "64"],
        check=True, capture_output=True, text=True,
    ).stdout
    listing = json.loads(order_json)
    paths = listing["paths"]
    per_epoch = len(paths) // args.batch
    epochs = math.ceil(args.steps / per_epoch)
    if epochs * per_epoch != args.steps:
        raise SystemExit(f"--steps {args.steps} is not a whole number of epochs of {per_epoch} steps")
    orders = listing["orders"][:epochs]
    print(f"{len(paths)} training images, {per_epoch} steps per epoch ({len(paths) % args.batch} dropped), {epochs} epochs")

    if not (work / "init" / "model.safetensors").is_file():
        omniad_train(args, work, work / "init", 1e-30, 0, 1)
    if not (work / "run" / "model.safetensors").is_file():
        omniad_train(args, work, work / "run", 1e-3, 1e-4, epochs)
    init = load_file(str(work / "init" / "model.safetensors"))
    final = {k: v.double() for k, v in load_file(str(work / "run" / "model.safetensors")).items()}
    log = [json.loads(line) for line in (work / "run" / "train_log.jsonl").read_text().splitlines() if line.strip()]
    ours = [e["loss"] for e in log if "loss" in e and "step" in e]

    images = [load_image(p, args.size) for p in paths]
    om = refpatch.load_reference(args.ref, jitter_scale=0.0)
    ref32, sd32 = reference_train(om, args, init, teacher, images, orders, torch.float32)
    save_file({k: v.float().contiguous() for k, v in sd32.items()}, str(work / "reference_f32.safetensors"))
    ref64, sd64 = (None, None)
    if not args.no_f64:
        ref64, sd64 = reference_train(om, args, init, teacher, images, orders, torch.float64)
        save_file({k: v.contiguous() for k, v in sd64.items()}, str(work / "reference_f64.safetensors"))
    (work / "losses.json").write_text(json.dumps({"omniad": ours, "reference_f32": ref32, "reference_f64": ref64}))

    print("\n| step | omniad loss | reference loss (f32) | rel. diff | reference f32 vs f64 |")
    print("|---|---|---|---|---|")
    worst_loss = 0.0
    for i, r in enumerate(ref32):
        o = ours[i] if i < len(ours) else float("nan")
        d = abs(o - r) / abs(r)
        worst_loss = max(worst_loss, d)
        drift = f"{abs(r - ref64[i]) / abs(ref64[i]):.1e}" if ref64 else "-"
        print(f"| {i + 1} | {o:.6f} | {r:.6f} | {d:.1e} | {drift} |")
    rows = []
    for k, v in sd32.items():
        if k.startswith("net_t.") or "running_" in k or k.endswith("num_batches_tracked") or k not in final:
            continue
        n = float(v.norm())
        d = float((final[k] - v).norm()) / max(n, 1e-30)
        drift = float((sd64[k] - v).norm()) / max(float(sd64[k].norm()), 1e-30) if sd64 else float("nan")
        rows.append((d, k, drift))
    rows.sort(reverse=True)
    print(f"\nfinal weights, {len(rows)} tensors: worst ||omniad - ref|| / ||ref|| (with the reference's f32-vs-f64 drift):")
    for d, k, drift in rows[:10]:
        print(f"  {d:.2e}  (drift {drift:.1e})  {k}")
    within = sum(d <= max(1e-3, drift) for d, _, drift in rows)
    print(f"\nlosses: worst relative difference {worst_loss:.2e} over {len(ref32)} steps")
    print(f"weights: {within} of {len(rows)} tensors within max(1e-3, reference drift)")
    if sd64:
        # omniad against the reference's float64 trajectory, bounded by how far the reference's
        # own float32 run strays from it.
        near = [
            k
            for _, k, drift in rows
            if float((final[k] - sd64[k]).norm()) / max(float(sd64[k].norm()), 1e-30) <= max(1e-3, drift)
        ]
        print(
            f"weights: {len(near)} of {len(rows)} tensors: ||omniad - ref_f64|| <= max(1e-3, ||ref_f32 - ref_f64||) "
            f"(relative); the others: {sorted(set(k for _, k, _ in rows) - set(near))}"
        )


if __name__ == "__main__":
    main()
