#!/usr/bin/env python3
"""Score a feature directory (`sift export-features spam ... FILES`, or the
one tests/onnx.rs writes) with an ONNX model in onnxruntime, independently of
sift's Rust inference path: fold bucket i into column i mod D (D from the
model's declared input shape), run the model, print one JSON object
{"probabilities": [...], "threshold": p, "dim": D} on stdout."""

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train import densify, load_features  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--features", required=True)
    args = ap.parse_args()
    sess = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    dim = int(inp.shape[1])
    props = sess.get_modelmeta().custom_metadata_map
    meta, indptr, idx, val, _label, _group = load_features(args.features)
    if json.loads(props["sift.features"]) != meta["features"]:
        sys.exit("score.py: the features were exported with another featurizer config than the model's")
    X = densify(indptr, idx, val, range(meta["n"]), dim)
    p = sess.run(None, {inp.name: X})[0]
    out = {
        "probabilities": [float(x) for x in p[:, -1]],
        "threshold": float(props["sift.threshold"]),
        "dim": dim,
    }
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
