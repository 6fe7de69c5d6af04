"""Generates the small PyTorch files read by tests/weights_pth.rs.

Run from this directory with any Python that has torch (>= 1.6):

    python make_pth_fixtures.py

Every value is a simple function of the element index (see `tiny_state_dict`), so the Rust test
recomputes the expected values independently and compares them exactly (all are representable
in float16 and bfloat16).
"""
import argparse
import collections

import torch


def ramp(shape, scale, shift, dtype):
    n = 1
    for d in shape:
        n *= d
    return (torch.arange(n, dtype=torch.float64) * scale + shift).reshape(shape).to(dtype)


def tiny_state_dict():
    sd = collections.OrderedDict()
    sd["conv1.weight"] = ramp([4, 3, 3, 3], 0.25, -13.5, torch.float32)
    sd["bn1.weight"] = ramp([4], 0.5, 0.5, torch.float32)
    sd["bn1.bias"] = ramp([4], 0.25, -0.5, torch.float16)
    sd["bn1.running_mean"] = ramp([4], 0.5, -1.0, torch.bfloat16)
    sd["bn1.running_var"] = ramp([4], 1.0, 1.0, torch.float64)
    sd["bn1.num_batches_tracked"] = torch.tensor(7, dtype=torch.int64)
    # A transposed (non-contiguous) view: [[0, 2, 4, 6], [1, 3, 5, 7]].
    sd["fc.weight"] = ramp([4, 2], 1.0, 0.0, torch.float32).t()
    # A view with a storage offset: [3, 4] out of a 6-element storage.
    sd["fc.bias"] = ramp([6], 1.0, 0.0, torch.float32)[3:5]
    return sd


def main():
    sd = tiny_state_dict()
    torch.save(sd, "tiny_state_dict.pth")
    torch.save(sd, "tiny_state_dict_legacy.pth", _use_new_zipfile_serialization=False)
    wrapped = {
        "epoch": 3,
        "arch": "tiny",
        "args": argparse.Namespace(lr=0.1, milestones=[1, 2]),
        "state_dict": collections.OrderedDict(("module." + k, v) for k, v in sd.items()),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
    }
    torch.save(wrapped, "tiny_checkpoint_wrapped.pt")
    torch.save(ramp([3], 1.0, 0.0, torch.float32), "bare_tensor.pt")


if __name__ == "__main__":
    main()
