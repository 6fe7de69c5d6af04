"""Batch-1 gradients of the reference: shows that they are not the derivative of its loss.

Runs the reference (imported from a work tree of easyoo/Omni-AD, patched by bench/refpatch.py)
on the shared `parity-batches/b1s128` input and weights and prints:

1. the batch-duplication identity: for Omni-AD's loss (mean squared error, per-sample
   InstanceNorm, train-mode BatchNorm whose statistics do not change when every image appears
   twice) the gradients of one image x equal those of the batch [x, x]. The reference breaks it;
   the first module output (from the loss backwards) whose gradient breaks it is named;
2. the PyTorch defect in isolation: `F.instance_norm` on a [1, C, H, W] NCHW input whose
   incoming gradient is channels-last (the reference permutes NHWC <-> NCHW around its norms),
   against the same gradient passed NCHW-contiguous, at batch 1 and 2, float32 and float64;
3. central finite differences in float64 at batch 1, along a random direction of a few
   parameters: the reference's autograd gradient against the true directional derivative of its
   own loss, as it is and with `refpatch`'s `cpu_norm_grad_fix` (gradients made contiguous at the
   norms' outputs; forward unchanged).

    python bench/batch1_identity.py --ref OMNI_AD_WORK_TREE [--fixtures ../shared/fixtures]

Not run by CI (needs torch, timm and the reference code).
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refpatch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

FD_PARAMS = [
    "net_s.layers_up.3.blocks.0.blocks.0.conv33.pconv.0.weight",
    "net_s.layers_up.3.blocks.0.blocks.0.mlp.0.weight",
    "net_s.layers_up.3.blocks.0.blocks.0.l.weight",  # downstream of the defective norms
    "net_s.layers_up.0.blocks.0.blocks.0.toProxy.q.weight",  # stage 0: upstream of stage 3
]


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def build(om, weights, dtype=torch.float32):
    net = refpatch.build_model(om, [1, 1, 1, 1])
    refpatch.load_weights(net, weights, "the weights")
    return net.to(dtype).train()


def run(om, weights, x):
    net = build(om, weights)
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


def identity(om, weights, x):
    g1, o1 = run(om, weights, x)
    g2, o2 = run(om, weights, torch.cat([x, x]))
    worst = sorted(((rel(g1[n], g2[n]), n) for n in g1 if g2[n].norm() > 1e-6), reverse=True)
    for r, n in worst[:3]:
        print(f"  {r:.2e}  {n}")
    n_bad = sum(r > 1e-3 for r, _ in worst)
    print(f"  {n_bad} of {len(worst)} gradients (norm > 1e-6) differ by more than 1e-3")
    for (n, a), (_, b) in list(zip(o1, o2))[::-1]:
        r = rel(a.grad, b.grad[:1] * 2)  # a mean over twice the elements halves each gradient
        if r > 1e-3:
            print(f"  first module output breaking it: {n}: {tuple(a.shape)}, strides {a.stride()}, {r:.2e}")
            break
    return g1


def isolated():
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        for b in (1, 2):
            x = torch.randn(b, 64, 32, 32, dtype=dtype)
            g = torch.randn(b, 64, 32, 32, dtype=dtype)
            res = []
            for grad in (g, g.contiguous(memory_format=torch.channels_last)):
                xi = x.clone().requires_grad_(True)
                y = F.instance_norm(xi)
                y.backward(grad)
                res.append(xi.grad)
            print(f"  {str(dtype):14} batch {b}: ||g_cl - g_nchw|| / ||g_nchw|| = {rel(res[1], res[0]):.2e}")
    # What the backward of instance_norm's internal view hands to batch_norm's backward (the same
    # computation as F.instance_norm: batch_norm on input.contiguous().view(1, B*C, H, W)):
    seen = {}
    xi = torch.randn(1, 8, 5, 6, requires_grad=True)
    v = xi.contiguous().view(1, 8, 5, 6)
    o = F.batch_norm(v, None, None, training=True)
    o.register_hook(lambda gr: seen.setdefault("g", gr))
    y = o.view(1, 8, 5, 6)
    y.backward(torch.randn(1, 8, 5, 6).contiguous(memory_format=torch.channels_last))
    g = seen["g"]
    print(
        f"  at batch 1 batch_norm's backward receives a gradient of strides {g.stride()} (input "
        f"{v.stride()}): channels-last contiguous = {g.is_contiguous(memory_format=torch.channels_last)}, "
        "but its batch stride (8) is below C*H*W, so suggest_memory_format() says NCHW, like the input's"
    )


def finite_differences(om, weights, x, eps=1e-4):
    x = x.double()
    net = build(om, weights, torch.float64)
    params = dict(net.named_parameters())
    gen = torch.Generator().manual_seed(0)
    dirs = {n: torch.randn(params[n].shape, generator=gen, dtype=torch.float64) for n in FD_PARAMS}

    def loss():
        ft, fs = net(x)
        return om.refpatch_L2Loss()(ft, fs)

    with torch.no_grad():
        fd = {}
        for n, d in dirs.items():
            p = params[n]
            p += eps * d
            lp = loss().item()
            p -= 2 * eps * d
            lm = loss().item()
            p += eps * d
            fd[n] = (lp - lm) / (2 * eps)
    for fix in (False, True):
        om.refpatch_settings["cpu_norm_grad_fix"] = fix
        net.zero_grad(set_to_none=True)
        loss().backward()
        print(f"  cpu_norm_grad_fix={fix}:")
        for n, d in dirs.items():
            ad = float((params[n].grad * d).sum())
            print(f"    {n}: autograd {ad:+.9e}  finite diff {fd[n]:+.9e}  rel {abs(ad - fd[n]) / abs(fd[n]):.1e}")
    om.refpatch_settings["cpu_norm_grad_fix"] = False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", required=True, help="work tree of the reference (easyoo/Omni-AD)")
    ap.add_argument("--fixtures", default=str(Path(__file__).resolve().parents[2] / "shared/fixtures"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    fx = Path(args.fixtures)
    torch.set_num_threads(args.threads)
    om = refpatch.load_reference(args.ref)
    weights = {k: v.float() for k, v in load_file(str(fx / "parity/small_weights_f16.safetensors")).items()}
    x = load_file(str(fx / "parity-batches/b1s128_expected.safetensors"))["input"]
    print(f"torch {torch.__version__}")
    print("1. reference gradients at batch 1 vs on [x, x] (should agree to float32 noise):")
    g_bug = identity(om, weights, x)
    om.refpatch_settings["cpu_norm_grad_fix"] = True
    print("   the same with cpu_norm_grad_fix:")
    g_fix = identity(om, weights, x)
    om.refpatch_settings["cpu_norm_grad_fix"] = False
    worst = sorted(((rel(g_bug[n], g_fix[n]), n) for n in g_fix if g_fix[n].norm() > 1e-6), reverse=True)
    print(f"   batch 1, as is vs fixed: worst {worst[0][0]:.2e} ({worst[0][1]})")
    print("2. F.instance_norm backward, channels-last vs NCHW incoming gradient (same values):")
    isolated()
    print("3. float64 finite differences at batch 1 (direction: random normal on one parameter):")
    finite_differences(om, weights, x)


if __name__ == "__main__":
    main()
