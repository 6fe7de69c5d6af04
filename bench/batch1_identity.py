"""Batch-1 gradients of the reference: checks the batch-duplication identity.

For Omni-AD's loss (mean squared error, per-sample InstanceNorm, train-mode BatchNorm whose
statistics do not change when every image appears twice), the gradients of one image x equal
the gradients of the batch [x, x]. This script runs the reference (imported from a work tree of
easyoo/Omni-AD, patched by bench/refpatch.py) both ways on the shared `parity-batches/b1s128`
input and weights, prints the worst disagreement, then walks the module outputs from the loss
backwards and names the first one whose gradient breaks the identity.

    python bench/batch1_identity.py --ref OMNI_AD_WORK_TREE [--fixtures ../shared/fixtures]

Not run by CI (needs torch, timm and the reference code).
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refpatch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402


def run(om, weights, x):
    net = refpatch.build_model(om, [1, 1, 1, 1])
    refpatch.load_weights(net, weights, "the weights")
    net.train()
    outs = []

    def hook(name):
        def f(_mod, _inp, out):
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.retain_grad()
                outs.append((name, out))

        return f

    for n, m in net.named_modules():
        if n.startswith(("net_s", "Neck")):
            m.register_forward_hook(hook(n))
    ft, fs = net(x)
    om.refpatch_L2Loss()(ft, fs).backward()
    grads = {n: p.grad.double() for n, p in net.named_parameters() if p.grad is not None}
    return grads, outs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", required=True, help="work tree of the reference (easyoo/Omni-AD)")
    ap.add_argument("--fixtures", default=str(Path(__file__).resolve().parents[2] / "shared/fixtures"))
    args = ap.parse_args()
    fx = Path(args.fixtures)
    torch.set_num_threads(2)
    om = refpatch.load_reference(args.ref)
    weights = {k: v.float() for k, v in load_file(str(fx / "parity/small_weights_f16.safetensors")).items()}
    x = load_file(str(fx / "parity-batches/b1s128_expected.safetensors"))["input"]
    g1, o1 = run(om, weights, x)
    g2, o2 = run(om, weights, torch.cat([x, x]))
    rel = lambda a, b: ((a - b).norm() / b.norm().clamp_min(1e-30)).item()  # noqa: E731
    worst = sorted(((rel(g1[n], g2[n]), n) for n in g1 if g2[n].norm() > 1e-6), reverse=True)
    print("reference, gradients at batch 1 vs on [x, x] (should agree to float32 noise):")
    for r, n in worst[:5]:
        print(f"  {r:.2e}  {n}")
    print("first module output (from the loss backwards) whose gradient breaks the identity:")
    for (n, a), (_, b) in list(zip(o1, o2))[::-1]:
        r = rel(a.grad, b.grad[:1] * 2)  # a mean over twice the elements halves each gradient
        if r > 1e-3:
            print(f"  {n}: {tuple(a.shape)}, strides {a.stride()}, relative difference {r:.2e}")
            break


if __name__ == "__main__":
    main()
