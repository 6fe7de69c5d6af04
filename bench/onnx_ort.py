#!/usr/bin/env python3
"""Checks an `omniad export` ONNX model with ONNX Runtime (not CI).

Usage:
    python bench/onnx_ort.py DIR [DIR ...]

Each DIR is the output of the example `onnx_reference` (see the README):
`model.onnx`, its sidecar `model.onnx.json`, and `reference.safetensors` with the libtorch
outputs (`input`, `anomaly_map`, `image_score`, `descriptors`). The script runs `model.onnx`
with onnxruntime's CPU provider on `input` and prints, per DIR, one JSON line: the largest
absolute difference of the anomaly maps, scores and descriptors (f32), whether the verdicts
agree at the sidecar's thresholds (or, without thresholds, at the median libtorch score), and
the mean run time of one batch. Needs `pip install onnxruntime numpy`.
"""
import json
import struct
import sys
import time

import numpy as np
import onnxruntime as ort


def read_safetensors(path):
    """Reads a safetensors file (8-byte little-endian header length, JSON header, raw data)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise ValueError(f"{name}: dtype {info['dtype']}, expected F32")
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[base + a : base + b], dtype="<f4").reshape(info["shape"])
    return out


def verdicts(scores, desc, sidecar, fallback):
    """Anomalous flags by the sidecar's rule: recognised class -> its threshold, else global."""
    rec = sidecar.get("recognition")
    th = sidecar.get("thresholds") or {}
    out = []
    for s, d in zip(scores, desc):
        cls = None
        if rec:
            bank = np.asarray(rec["bank"], dtype=np.float32)
            dist = np.maximum(1.0 - bank @ d, 0.0)
            per = {}
            for x, lab in zip(dist, rec["labels"]):
                per[lab] = min(per.get(lab, np.inf), float(x))
            best = min(per, key=per.get)
            if per[best] > rec["unknown_distance"][best]:
                out.append(None)
                continue
            cls = rec["classes"][best]
        t = (th.get("per_class") or {}).get(cls) if cls else None
        if t is None:
            t = th.get("global", fallback)
        if t is None:
            t = fallback
        out.append(bool(s >= t))
    return out


def main(dirs):
    for d in dirs:
        ref = read_safetensors(f"{d}/reference.safetensors")
        sidecar = json.load(open(f"{d}/model.onnx.json"))
        opts = ort.SessionOptions()
        sess = ort.InferenceSession(f"{d}/model.onnx", opts, providers=["CPUExecutionProvider"])
        x = ref["input"]
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            amap, score, desc = sess.run(["anomaly_map", "image_score", "descriptors"], {"input": x})
            runs.append(time.perf_counter() - t0)
        fallback = float(np.median(ref["image_score"]))
        v_ort = verdicts(score, desc, sidecar, fallback)
        v_lib = verdicts(ref["image_score"], ref["descriptors"], sidecar, fallback)
        print(
            json.dumps(
                {
                    "dir": d,
                    "teacher": sidecar["config"]["teacher"],
                    "depths": sidecar["config"]["depths"],
                    "image_size": sidecar["input"]["size"],
                    "batch": int(x.shape[0]),
                    "onnxruntime": ort.__version__,
                    "map_max_abs_diff": float(np.abs(amap - ref["anomaly_map"]).max()),
                    "score_max_abs_diff": float(np.abs(score - ref["image_score"]).max()),
                    "descriptor_max_abs_diff": float(np.abs(desc - ref["descriptors"]).max()),
                    "verdicts_identical": v_ort == v_lib,
                    "verdicts": {
                        "anomalous": sum(v is True for v in v_lib),
                        "normal": sum(v is False for v in v_lib),
                        "unknown_class": sum(v is None for v in v_lib),
                    },
                    "ort_batch_seconds": min(runs),
                }
            )
        )


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
