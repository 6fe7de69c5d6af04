"""Imports the reference Omni-AD code (a work tree of GitHub easyoo/Omni-AD, given by path) and
patches it, in memory, into the network omniad implements. Used by ``make_parity_fixtures.py`` and
``train_parity.py``; nothing of the reference is copied into this repository.

Patches (all by replacing attributes of the imported ``model.omniad`` module at run time):

* learned attention MLPs: the reference ``Attention`` builds ``Mlp(h*c)`` inside ``forward`` (a new
  random MLP on every call). Here every ``ToProxy2`` owns ``ffn1`` (used by its first attention,
  learnable queries over image tokens) and ``ffn2`` (its second, image tokens over learnable
  key/value tokens); the reference ``Attention.__init__`` runs unchanged and receives them in place
  of the fresh ``Mlp``. This is omniad's deliberate deviation (crates/omniad-model/src/decoder.rs).
* ``num_tokens``: the learnable query / key-value token count of ``ToProxy2`` (reference: 64).
* ``attention="self_attention"``: the global branch becomes plain multi-head self-attention over the
  image tokens with ``q``, ``kv_x`` and ``ffn1`` (omniad ``GlobalAttention::SelfAttention``); the
  learnable-token parameters are removed.
* ``branches="global_only"`` / ``"local_only"``: ``conv33``/``conv55``/``mlp`` resp. ``toProxy`` are
  replaced by parameter-free modules whose contribution is exactly zero (omniad ``Branches``).
* ``jitter_scale``: the feature-jitter scale while training (the reference hard-codes 20); 0 = off.
* ``cpu_norm_grad_fix``: works around a PyTorch CPU defect that the reference hits at batch 1 only
  (``batch1_identity.py`` demonstrates it): every ``nn.InstanceNorm2d`` output passes its incoming
  gradient on made contiguous. ``F.instance_norm`` runs ``batch_norm`` on
  ``input.contiguous().view(1, B*C, H, W)``; at B = 1 the backward of that view turns a
  channels-last gradient (the reference permutes NHWC <-> NCHW around its norms) into one whose
  size-1 batch axis has stride C, for which ``suggest_memory_format()`` answers "contiguous"; the
  CPU ``batch_norm_backward`` fast path (its guard compares the two suggested formats) then reads
  that channels-last memory as NCHW, i.e. a gradient with channels and pixels shuffled. At B >= 2
  the view cannot be formed and autograd copies the gradient to NCHW first, so nothing goes
  wrong. The forward pass is unchanged; the gradients become the true derivative of the loss.
  ``om.refpatch_settings["cpu_norm_grad_fix"]`` may be flipped at run time.

Needs: torch, timm, einops, tensorboardX (imported by the reference's util), torchvision.
"""

from __future__ import annotations

import os
import sys
from argparse import Namespace
from pathlib import Path

import torch
import torch.nn as nn

BRANCHES = ("both", "global_only", "local_only")
ATTENTIONS = ("learnable_tokens", "self_attention")


class _ZeroLike(nn.Module):
    """Parameter-free stand-in whose output is exactly zero, shaped like its input."""

    def forward(self, x):
        return torch.zeros_like(x)


class _ZeroHalf(nn.Module):
    """Stand-in for the local branch's fusing ``mlp``: ``[B, 2C, H, W]`` -> zeros ``[B, C, H, W]``."""

    def forward(self, x):
        return torch.zeros_like(x[:, : x.shape[1] // 2])


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous (NCHW); see
    ``cpu_norm_grad_fix``."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def load_reference(
    ref_dir,
    num_tokens: int = 64,
    branches: str = "both",
    attention: str = "learnable_tokens",
    jitter_scale: float = 0.0,
    cpu_norm_grad_fix: bool = False,
):
    """Imports ``model.omniad`` from the reference work tree ``ref_dir`` and patches it (see the
    module docs). Returns the patched module. One configuration per process."""
    ref_dir = Path(ref_dir).resolve()
    if not (ref_dir / "model" / "omniad.py").is_file():
        raise SystemExit(f"error: {ref_dir} is not an Omni-AD work tree (no model/omniad.py)")
    if branches not in BRANCHES:
        raise SystemExit(f"error: branches {branches!r}: expected one of {BRANCHES}")
    if attention not in ATTENTIONS:
        raise SystemExit(f"error: attention {attention!r}: expected one of {ATTENTIONS}")
    if "model.omniad" in sys.modules:
        raise SystemExit("error: the reference is already imported in this process")
    sys.path.insert(0, str(ref_dir))
    cwd = os.getcwd()
    os.chdir(ref_dir)  # model/__init__.py globs its files relative to the working directory
    try:
        import model.omniad as om  # noqa: registers omniAD and timm's models
        import loss.base_loss as ref_loss
    except ImportError as e:
        raise SystemExit(f"error: cannot import the reference ({e}); needs timm, einops, tensorboardX")
    finally:
        os.chdir(cwd)
    om.refpatch_L2Loss = ref_loss.L2Loss  # the trainer's loss: sum over scales of MSE (mean)

    pending: list = []  # learned MLPs for the Attention objects the running ToProxy2 builds
    RefAttention, RefMlp = om.Attention, om.Mlp

    class Attention(RefAttention):
        """The reference Attention, given the calling block's learned MLP instead of a new one."""

        def __init__(self, *args, **kwargs):
            if not pending:
                raise RuntimeError("refpatch: Attention built outside a patched ToProxy2")
            ffn = pending.pop(0)
            om.Mlp = lambda *_a, **_k: ffn
            try:
                super().__init__(*args, **kwargs)
            finally:
                om.Mlp = RefMlp

    om.Attention = Attention

    proxy_init, proxy_forward = om.ToProxy2.__init__, om.ToProxy2.forward

    def toproxy_init(self, dim=512, **kwargs):
        kwargs["agent_q_num"] = kwargs["agent_kv_num"] = num_tokens
        proxy_init(self, dim=dim, **kwargs)
        self.ffn1 = RefMlp(dim)
        if attention == "learnable_tokens":
            self.ffn2 = RefMlp(dim)
        else:
            for name in ("learnable_q", "learnable_kv", "kv_y", "q_2", "pe1", "pe2"):
                delattr(self, name)

    def self_attention(self, x):
        # omniad GlobalAttention::SelfAttention: x + ffn1(MHSA(x)) with q, kv_x.
        b, h, w, c = x.shape
        t = x.reshape(b, h * w, c)

        def split(y):
            return y.reshape(b, h * w, self.head, c // self.head).permute(0, 2, 1, 3)

        k, v = self.kv_x(t).chunk(2, dim=-1)
        pending[:] = [self.ffn1]
        out = om.Attention(split(self.q(t)), split(k), split(v), self.norm, self.act, pe=0.0)()
        return out.reshape(b, h, w, c) + x

    def toproxy_forward(self, x):
        if attention == "self_attention":
            return self_attention(self, x)
        pending[:] = [self.ffn1, self.ffn2]
        out = proxy_forward(self, x)
        if pending:
            raise RuntimeError("refpatch: ToProxy2.forward did not build two Attention objects")
        return out

    om.ToProxy2.__init__ = toproxy_init
    om.ToProxy2.forward = toproxy_forward

    block_init = om.OmniBlock.__init__

    def omniblock_init(self, hidden_dim=0):
        block_init(self, hidden_dim=hidden_dim)
        if branches == "global_only":  # y33 = mlp(cat(conv33, conv55)) == 0
            self.conv33, self.conv55, self.mlp = nn.Identity(), nn.Identity(), _ZeroHalf()
        elif branches == "local_only":  # toProxy(x) == 0
            self.toProxy = _ZeroLike()

    om.OmniBlock.__init__ = omniblock_init

    ref_jitter = om.add_jitter

    def add_jitter(feature_tokens, scale=20, prob=1):
        # The reference passes 20 while training and 0 in eval mode.
        s = jitter_scale if scale else 0.0
        return ref_jitter(feature_tokens, scale=s, prob=prob) if s else feature_tokens

    om.add_jitter = add_jitter
    ref_norm_forward = nn.InstanceNorm2d.forward

    def norm_forward(self, x):
        out = ref_norm_forward(self, x)
        return _ContiguousGrad.apply(out) if om.refpatch_settings["cpu_norm_grad_fix"] else out

    nn.InstanceNorm2d.forward = norm_forward
    om.refpatch_settings = dict(
        num_tokens=num_tokens,
        branches=branches,
        attention=attention,
        jitter_scale=jitter_scale,
        cpu_norm_grad_fix=cpu_norm_grad_fix,
    )
    return om


def build_model(om, depths, teacher: str = "resnet34"):
    """``OmniAD`` of the (patched) reference with a randomly initialised timm teacher (weights are
    loaded afterwards)."""
    model_t = Namespace(
        name=f"timm_{teacher}",
        kwargs=dict(
            pretrained=False,
            checkpoint_path=None,
            strict=False,
            features_only=True,
            out_indices=[1, 2, 3],
        ),
    )
    return om.OmniAD(model_t=model_t, model_s=dict(depths_decoder=list(depths)))


def load_weights(net: nn.Module, tensors: dict, what: str):
    """Loads ``tensors`` (any float dtype; ``num_batches_tracked`` optional) into ``net`` as float32,
    strictly: every missing or unexpected name is an error."""
    sd = net.state_dict()
    missing = [k for k in sd if k not in tensors and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in tensors if k not in sd]
    bad = [k for k in tensors if k in sd and tuple(tensors[k].shape) != tuple(sd[k].shape)]
    if missing or unexpected or bad:
        raise SystemExit(
            f"error: {what} does not fit the model: missing {missing[:8]} ({len(missing)}), "
            f"unexpected {unexpected[:8]} ({len(unexpected)}), shape mismatch {bad[:8]}"
        )
    new = {}
    for k, v in sd.items():
        t = tensors.get(k)
        new[k] = torch.zeros_like(v) if t is None else t.to(v.dtype)
    net.load_state_dict(new, strict=True)
