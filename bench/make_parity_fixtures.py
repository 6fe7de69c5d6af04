#!/usr/bin/env python3
"""Writes a parity fixture (the format of the shared ``parity`` / ``parity-batches`` fixtures) by
running the reference Omni-AD code, imported from a work tree given by ``--ref`` and patched in
memory by ``refpatch.py`` (learned attention MLPs ``toProxy.ffn1/ffn2``, feature jitter off, and
the ablations omniad can configure). Not run by CI.

Output in ``--out``, all written atomically (meta last):

* ``<tag>_expected.safetensors``: ``input``, ``teacher_{0,1,2}``, ``decoder_{0,1,2}`` (eval mode),
  ``anomaly_map_raw``, ``anomaly_map``, ``image_score``, ``train_loss`` (one train-mode step: BatchNorm
  batch statistics, jitter off, loss = sum over scales of MSE) and ``grad.<param>`` for the selected
  parameters, all float32 from one CPU thread.
* ``<tag>_meta.json``: what a loader needs to build the same model (``depths_decoder``,
  ``image_size``, ``batch``, ``num_tokens``, ``heads``, ``branches``, ``attention``, teacher), the
  weights (``weights_file``, or ``weights_recipe``, see below), ``grad_tensors`` and
  ``grad_tolerance``: per gradient, ``max(1e-3, 4 x e)`` where ``e`` is the reference's own float32
  error against a float64 run of the same code and weights, ``||g32 - g64|| / ||g64||``, the worst of
  1 and 2 threads, or, where larger, how far its float32 gradient moves when the outputs of the
  teacher (alone, and with those of every leaf module of the neck and decoder) are multiplied by
  ``1 + eps x randn`` (``--perturb-eps``, default 1e-7, worst of 2 seeds and both kinds; 0 = the
  float32-vs-float64 rule alone; a ReLU input within 1e-7 of zero flips with some perturbations
  and not with others):
  another float32 implementation rounds differently by about that much (omniad folds BatchNorm
  into the teacher's convolutions and fuses the attention), and the neck's train-mode BatchNorm +
  ReLU over a few pixels turns it into a 1e-2 change of the neck's gradients at batch 1, while
  near-cancelling attention gradients of stage 3 move by more than 1e-3; ``null`` where
  the float64 gradient norm is <= 1e-9 x the largest stored one (analytically zero: only an
  absolute noise floor makes sense there).

Weights, one of:

* ``--weights FILE``: a safetensors file with every tensor of the model (e.g. the shared
  ``parity/small_weights_f16.safetensors``); the meta names it by a path relative to ``--out``.
* ``--weights-seed S`` (default): weights regenerated from a recipe in the meta instead of stored
  (a ResNet34-based model is 16M+ parameters, far too big for the repository). ``weights_recipe``
  lists, for every tensor of the state dict except ``num_batches_tracked`` (which is 0),
  ``[name, shape, seed, mean, std, sum]``; the tensor is
  ``torch.manual_seed(seed); (torch.randn(shape) * std + mean)`` in float32 on the CPU, then rounded
  to float16 and back (libtorch's CPU generator: tch's ``manual_seed`` + ``Tensor::randn`` give the
  same numbers); ``sum`` is the float64 sum of the rounded tensor, to check a regenerated one.

Gradients are the true derivative of the loss: ``refpatch``'s ``cpu_norm_grad_fix`` is on, which
sidesteps a PyTorch CPU defect that the reference hits at batch 1 (see ``batch1_identity.py``; the
forward pass is unchanged, and at batch >= 2 the fix changes nothing). ``--no-cpu-norm-grad-fix``
runs the reference as it is (the shared ``parity-batches/b1s128`` fixture was made that way).
``--write-differing FILE`` (with ``--compare``) writes the gradients that differ from the compared
fixture's by more than their tolerance to FILE and prints their names.

Example (the shared ``parity-batches/b1s128`` fixture, input taken from it):

    python bench/make_parity_fixtures.py --ref OMNI_AD_TREE --out OUT --tag b1s128 \\
        --weights SHARED/parity/small_weights_f16.safetensors --depths 1,1,1,1 --image-size 128 \\
        --batch 1 --input-from SHARED/parity-batches/b1s128_expected.safetensors \\
        --grads-like SHARED/parity-batches/b1s128_meta.json \\
        --compare SHARED/parity-batches/b1s128

Needs: torch==2.13.0 (CPU), timm, einops, tensorboardX, torchvision, numpy, scipy, safetensors.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refpatch  # noqa: E402

NOTE = (
    "attention FFNs are learned modules toProxy.ffn1/ffn2; eval-mode outputs; gradients from one "
    "train-mode step (BatchNorm batch statistics, feature jitter off), loss = sum over scales of "
    "MSE(mean)"
)


def die(msg: str):
    raise SystemExit(f"error: {msg}")


def parse_depths(s: str):
    try:
        d = [int(v) for v in s.split(",")]
    except ValueError:
        die(f"--depths {s!r}: expected 4 comma-separated integers")
    if len(d) != 4 or min(d) < 1:
        die(f"--depths {s!r}: expected 4 positive integers")
    return d


# ------------------------------------------------------------------------------------------------
# Weights
# ------------------------------------------------------------------------------------------------


def recipe_entry(name: str, shape, seed: int):
    """(mean, std) of a tensor of the recipe, from its name and shape."""
    leaf = name.rsplit(".", 1)[-1]
    numel = math.prod(shape)
    if leaf == "running_var":
        return 1.0, 0.1
    if leaf == "running_mean":
        return 0.0, 0.1
    if len(shape) == 1:  # BatchNorm / LayerNorm affine, biases
        norm = re.search(r"(^|\.)(bn\w*|norm|downsample\.1)\.(weight|bias)$", name)
        if norm and leaf == "weight":
            return 1.0, 0.05
        return 0.0, 0.05
    if leaf in ("learnable_q", "learnable_kv"):
        return 0.0, 0.05
    if leaf in ("pe1", "pe2"):
        return 0.0, 0.05
    fan_in = numel // shape[0]
    return 0.0, 1.0 / math.sqrt(fan_in)


def recipe_tensor(shape, seed: int, mean: float, std: float) -> torch.Tensor:
    torch.manual_seed(seed)
    t = torch.randn(list(shape), dtype=torch.float32) * std + mean
    return t.half().float()


def make_recipe(net, base_seed: int):
    entries, tensors = [], {}
    for i, (name, t) in enumerate(sorted(net.state_dict().items())):
        if name.endswith("num_batches_tracked"):
            continue
        shape = list(t.shape)
        seed = base_seed + i
        mean, std = recipe_entry(name, shape, seed)
        w = recipe_tensor(shape, seed, mean, std)
        if name.endswith("running_var") and float(w.min()) <= 0:
            die(f"recipe: {name} has a non-positive variance; pick another --weights-seed")
        tensors[name] = w
        entries.append([name, shape, seed, mean, std, float(w.double().sum())])
    return entries, tensors


# ------------------------------------------------------------------------------------------------
# One run of the reference
# ------------------------------------------------------------------------------------------------


def anomaly_maps(ft, fs, size):
    """Mean over scales of 1-cos (float32), bilinear align_corners=True to ``size``, summed in
    float64 / 3; then scipy gaussian_filter(sigma=4) per image (truncate 4, mode reflect);
    image score = max of the filtered map."""
    raw = np.zeros((ft[0].shape[0],) + tuple(size), dtype=np.float64)
    for t, s in zip(ft, fs):
        a = (1 - F.cosine_similarity(t.float(), s.float(), dim=1)).unsqueeze(1)
        a = F.interpolate(a, size=size, mode="bilinear", align_corners=True).squeeze(1)
        raw += a.detach().cpu().numpy()
    raw /= len(ft)
    blurred = np.stack([scipy.ndimage.gaussian_filter(m, sigma=4) for m in raw])
    score = blurred.reshape(blurred.shape[0], -1).max(axis=1)
    f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float()  # noqa: E731
    return f32(raw), f32(blurred), f32(score)


def run_reference(om, depths, weights, x, dtype, threads, perturb=None):
    """Eval outputs and one train-mode step of the patched reference in ``dtype``. ``perturb =
    (eps, seed, leaves)``: in the train-mode step, the teacher's output (and with ``leaves`` that
    of every leaf module of the neck and the decoder) is multiplied by ``1 + eps * randn``
    (float32-sized changes, as another implementation's rounding makes them)."""
    torch.set_num_threads(threads)
    net = refpatch.build_model(om, depths)
    refpatch.load_weights(net, weights, "the weights")
    net = net.to(dtype)
    xin = x.to(dtype)
    net.eval()
    with torch.no_grad():
        ft, fs = net(xin)
    raw, amap, score = anomaly_maps(ft, fs, tuple(x.shape[2:]))
    out = {"input": x.float()}
    for i in range(3):
        out[f"teacher_{i}"] = ft[i].float()
        out[f"decoder_{i}"] = fs[i].float()
    out.update(anomaly_map_raw=raw, anomaly_map=amap, image_score=score)
    net.train()
    if perturb:
        eps, seed, leaves = perturb
        gen = torch.Generator().manual_seed(seed)

        def jiggle(t):
            return t * (1 + eps * torch.randn(t.shape, generator=gen, dtype=t.dtype))

        def hook(_m, _i, out):
            if isinstance(out, torch.Tensor):
                return jiggle(out)
            if isinstance(out, (list, tuple)):
                return type(out)(jiggle(t) for t in out)
            return None

        net.net_t.register_forward_hook(hook)
        for name, m in net.named_modules():
            if leaves and name.startswith(("Neck", "net_s")) and not list(m.children()):
                m.register_forward_hook(hook)
    ft, fs = net(xin)
    loss = om.refpatch_L2Loss()(ft, fs)
    net.zero_grad(set_to_none=True)
    loss.backward()
    out["train_loss"] = loss.detach().float().reshape(1)
    grads = {
        n: p.grad.detach().clone()
        for n, p in net.named_parameters()
        if p.requires_grad and p.grad is not None
    }
    n_params = sum(p.numel() for p in net.parameters())
    return out, grads, n_params


# ------------------------------------------------------------------------------------------------


def atomic_write(path: Path, write):
    tmp = path.with_name(path.name + ".part")
    write(tmp)
    os.replace(tmp, path)


def select_grads(names, args):
    if args.grads_like:
        meta = json.loads(Path(args.grads_like).read_text())
        want = [g[len("grad."):] for g in meta["grad_tensors"]]
        missing = [w for w in want if w not in names]
        if missing:
            die(f"--grads-like: the model has no parameters {missing[:5]}")
        return want
    inc = [re.compile(p) for p in args.grad_include]
    exc = [re.compile(p) for p in args.grad_exclude]
    return [
        n
        for n, numel in names.items()
        if (numel <= args.grad_max_numel or any(r.search(n) for r in inc))
        and not any(r.search(n) for r in exc)
    ]


def rel_max(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def compare(prefix: str, expected: dict, meta: dict, differing_file=None):
    """Prints how far the new fixture is from an existing one (``PREFIX_expected.safetensors``);
    with ``differing_file``, writes there the new gradients that differ from the old ones by more
    than their tolerance."""
    old = load_file(prefix + "_expected.safetensors")
    old_meta = json.loads(Path(prefix + "_meta.json").read_text())
    print(f"\ncomparison with {Path(prefix).name}:")
    worst = 0.0
    for k, v in old.items():
        if k not in expected:
            print(f"  {k}: missing in the new fixture")
            worst = math.inf
            continue
        if k.startswith("grad."):
            r = float((expected[k].double() - v.double()).norm() / v.double().norm().clamp_min(1e-30))
        else:
            r = rel_max(expected[k], v)
        worst = max(worst, r) if not k.startswith("grad.") or v.norm() > 1e-6 else worst
        if not k.startswith("grad.") or r > 1e-5:
            print(f"  {k}: {'||diff||/||old||' if k.startswith('grad.') else 'max|diff|/max|old|'} = {r:.2e}")
    tol_old, tol_new = old_meta.get("grad_tolerance", {}), meta["grad_tolerance"]
    same_null = all((tol_old.get(k) is None) == (tol_new.get(k) is None) for k in tol_old)
    ratios = [tol_new[k] / tol_old[k] for k in tol_old if tol_old[k] and tol_new.get(k)]
    print(
        f"  grad_tolerance: {len(tol_old)} entries, null pattern {'identical' if same_null else 'DIFFERENT'}, "
        f"new/old ratio {min(ratios):.3f}..{max(ratios):.3f}" if ratios else "  grad_tolerance: none"
    )
    print(f"  num_params_total: new {meta['num_params_total']}, old {old_meta.get('num_params_total')}")
    print(f"  worst relative difference (tensors, grads with norm > 1e-6): {worst:.2e}")
    if differing_file:
        differing = {}
        for k, v in old.items():
            tol = tol_new.get(k, 1e-3)
            if k.startswith("grad.") and tol is not None and k in expected:
                r = float((expected[k].double() - v.double()).norm() / v.double().norm().clamp_min(1e-30))
                if r > tol:
                    differing[k] = expected[k].float().contiguous()
        path = Path(differing_file)
        atomic_write(path, lambda p: save_file(differing, str(p)))
        print(f"  {len(differing)} gradients differ by more than their tolerance, written to {path}:")
        print(json.dumps(sorted(differing)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", required=True, help="work tree of the reference (easyoo/Omni-AD)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--tag", required=True)
    ap.add_argument("--depths", default="1,1,1,1")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seed", type=int, default=3, help="seed of the random input")
    ap.add_argument("--num-tokens", type=int, default=64)
    ap.add_argument("--branches", default="both", choices=refpatch.BRANCHES)
    ap.add_argument("--attention", default="learnable_tokens", choices=refpatch.ATTENTIONS)
    ap.add_argument("--weights", help="safetensors with every tensor (else the recipe)")
    ap.add_argument("--weights-seed", type=int, default=1000, help="base seed of the weights recipe")
    ap.add_argument("--input-from", help="take 'input' from this expected.safetensors")
    ap.add_argument(
        "--input-f16",
        action="store_true",
        help="round the random input to float16 and store it so (half the bytes, no loss)",
    )
    ap.add_argument("--grads-like", help="store the gradients that this meta.json lists")
    ap.add_argument("--grad-max-numel", type=int, default=4096, help="store gradients up to this size")
    ap.add_argument("--grad-include", action="append", default=[], help="regex: also store these")
    ap.add_argument("--grad-exclude", action="append", default=[], help="regex: do not store these")
    ap.add_argument(
        "--omit-teacher",
        action="store_true",
        help="do not store teacher_{0,1,2} (listed in the meta's 'omitted'; to save space where "
        "another fixture checks the teacher)",
    )
    ap.add_argument(
        "--omit",
        action="append",
        default=[],
        help="do not store this output (e.g. decoder_0; listed in the meta's 'omitted')",
    )
    ap.add_argument(
        "--perturb-eps",
        type=float,
        default=1e-7,
        help="relative perturbation of the teacher's features for the tolerance (0 = f32 vs f64 only)",
    )
    ap.add_argument("--compare", help="PREFIX of an existing fixture to compare with (prints)")
    ap.add_argument("--write-differing", help="with --compare: write the differing gradients here")
    ap.add_argument(
        "--no-cpu-norm-grad-fix",
        dest="cpu_norm_grad_fix",
        action="store_false",
        help="run the reference's backward as it is (batch 1: not the loss's derivative on CPU)",
    )
    args = ap.parse_args()

    depths = parse_depths(args.depths)
    if args.image_size < 64 or args.image_size % 32:
        die(f"--image-size {args.image_size}: a multiple of 32, at least 64")
    side = round(math.sqrt(args.num_tokens))
    if side * side != args.num_tokens:
        die(f"--num-tokens {args.num_tokens}: must be a perfect square")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    om = refpatch.load_reference(
        args.ref,
        num_tokens=args.num_tokens,
        branches=args.branches,
        attention=args.attention,
        cpu_norm_grad_fix=args.cpu_norm_grad_fix,
    )
    skeleton = refpatch.build_model(om, depths)

    if args.weights:
        wpath = Path(args.weights)
        if not wpath.is_file():
            die(f"--weights {wpath}: not found")
        weights = {k: v for k, v in load_file(str(wpath)).items()}
        weights_meta = {"weights_file": os.path.relpath(wpath.resolve(), out_dir.resolve())}
    else:
        entries, weights = make_recipe(skeleton, args.weights_seed)
        weights_meta = {
            "weights_recipe_note": (
                "per tensor [name, shape, seed, mean, std, sum]: torch.manual_seed(seed); "
                "(torch.randn(shape, float32, cpu) * std + mean) rounded to float16 and back; "
                "sum = float64 sum of the result; num_batches_tracked = 0"
            ),
            "weights_recipe": entries,
        }
    refpatch.load_weights(skeleton, weights, "the weights")  # fails early on a mismatch

    if args.input_from:
        x = load_file(args.input_from)["input"].float()
        if list(x.shape) != [args.batch, 3, args.image_size, args.image_size]:
            die(f"--input-from: input is {list(x.shape)}, expected batch/size from the flags")
    else:
        g = torch.Generator().manual_seed(args.seed)
        x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g)
        if args.input_f16:
            x = x.half().float()

    # The teacher (net_t) is frozen: OmniAD.train() turns its requires_grad off.
    trainable = {n: p.numel() for n, p in skeleton.named_parameters() if not n.startswith("net_t.")}
    grad_names = select_grads(trainable, args)
    print(f"{len(grad_names)} gradients, {sum(trainable[n] for n in grad_names)} values", flush=True)
    del skeleton

    results = {}
    for dtype, threads in ((torch.float32, 1), (torch.float32, 2), (torch.float64, 1)):
        print(f"running the reference: {dtype}, {threads} thread(s)", flush=True)
        results[(dtype, threads)] = run_reference(om, depths, weights, x, dtype, threads)
    expected, g32, n_params = results[(torch.float32, 1)]
    _, g32b, _ = results[(torch.float32, 2)]
    _, g64, _ = results[(torch.float64, 1)]
    perturbed = []
    for seed in range(2 if args.perturb_eps > 0 else 0):
        for leaves in (False, True):
            what = "teacher and every leaf module" if leaves else "teacher"
            print(f"running the reference: float32, {what} perturbed ({args.perturb_eps:g}, seed {seed})", flush=True)
            perturbed.append(
                run_reference(om, depths, weights, x, torch.float32, 2, (args.perturb_eps, seed, leaves))[1]
            )
    absent = [n for n in grad_names if n not in g32]
    if absent:
        die(f"no gradient for {absent[:5]}")

    norms64 = {n: float(g64[n].norm()) for n in grad_names}
    largest = max(norms64.values())
    tolerance = {}
    for n in grad_names:
        if norms64[n] <= 1e-9 * largest:
            tolerance["grad." + n] = None
            continue
        e = max(
            float((g[n].double() - g64[n]).norm()) / norms64[n] for g in (g32, g32b)
        )
        e_p = max(
            [float((g[n].double() - g32b[n].double()).norm()) / norms64[n] for g in perturbed],
            default=0.0,
        )
        tolerance["grad." + n] = max(1e-3, 4 * max(e, e_p))
    for n in grad_names:
        expected["grad." + n] = g32[n].float().contiguous()
    if args.input_f16 and not args.input_from:
        expected["input"] = x.half()
    omitted = [f"teacher_{i}" for i in range(3)] if args.omit_teacher else []
    omitted += [k for k in args.omit if k not in omitted]
    for k in omitted:
        del expected[k]

    meta = {
        "depths_decoder": depths,
        "teacher": "resnet34 (timm, features_only, out_indices [1,2,3])",
        "input": f"[{args.batch},3,{args.image_size},{args.image_size}] normalised",
        "note": NOTE,
        "anomaly_map": (
            f"mean over scales of 1-cos, bilinear align_corners=True to {args.image_size}, then "
            "gaussian sigma 4 truncate 4 reflect"
        ),
        "image_size": [args.image_size, args.image_size],
        "batch": args.batch,
        "num_tokens": args.num_tokens,
        "heads": 8,
        "neck_width": 512,
        "branches": args.branches,
        "attention": args.attention,
        "jitter_scale": 0.0,
        "cpu_norm_grad_fix": args.cpu_norm_grad_fix,
        "input_seed": None if args.input_from else args.seed,
        "omitted": omitted,
        "num_params_total": n_params,
        "train_loss": float(expected["train_loss"][0]),
        "grad_tensors": ["grad." + n for n in grad_names],
        "grad_tolerance_note": (
            "per gradient tensor: max(1e-3, 4 x e), e = the larger of the reference's own float32 "
            "error against float64 (worst of 1 and 2 threads) and, when perturbation > 0, how "
            "far its float32 gradient moves when the outputs of the teacher (alone, and with those "
            "of every leaf module of the neck and decoder) are multiplied by 1 + perturbation x "
            "randn (worst of 2 seeds: the rounding of another float32 implementation; the neck's train-mode "
            "BatchNorm + ReLU over a few pixels turns it into a 1e-2 change of its gradients, and "
            "near-cancelling attention gradients move by far more than 1e-3); all relative to the "
            "float64 norm; null = analytically zero (float64 norm <= 1e-9 x the largest), only "
            "the absolute noise floor applies"
        ),
        "perturbation": args.perturb_eps,
        "grad_tolerance": tolerance,
        **weights_meta,
        "generator": "bench/make_parity_fixtures.py " + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if k in ("tag", "depths", "image_size", "batch", "seed", "num_tokens", "branches", "attention", "weights_seed")
            and not (k == "weights_seed" and args.weights)
        ),
    }
    exp_path = out_dir / f"{args.tag}_expected.safetensors"
    meta_path = out_dir / f"{args.tag}_meta.json"
    atomic_write(exp_path, lambda p: save_file({k: v.contiguous() for k, v in expected.items()}, str(p)))
    atomic_write(meta_path, lambda p: p.write_text(json.dumps(meta, indent=1) + "\n"))
    size = exp_path.stat().st_size + meta_path.stat().st_size
    tol_vals = [v for v in tolerance.values() if v is not None]
    print(
        f"wrote {exp_path} and {meta_path} ({size / 1e6:.2f} MB): train_loss {meta['train_loss']:.7g}, "
        f"{len(grad_names)} gradients ({sum(v is None for v in tolerance.values())} analytically zero), "
        f"tolerance {min(tol_vals):.1e}..{max(tol_vals):.1e}, {n_params} parameters"
    )
    if args.compare:
        compare(args.compare, expected, meta, args.write_differing)


if __name__ == "__main__":
    main()
