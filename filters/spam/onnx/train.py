#!/usr/bin/env python3
"""Train sift's ONNX spam model: a small MLP over sift's own hashed features.

Reads a feature directory written by `sift export-features spam` (the sparse
vectors sift serves, see src/classify/export.rs), trains

    p(spam) = sigmoid(w2 . relu(W1^T x + b1) + b2),   x in R^D, D = 2^bits

with numpy (Adam, class-balanced logistic loss, L2), sets the decision
threshold on training data only (k-fold out-of-fold scores of the training
ham, at most --target-fpr of them at or above it), and writes an ONNX model
(MatMul/Add/Relu/MatMul/Add/Sigmoid, built with onnx.helper) whose
metadata_props carry what sift needs to serve it:

    sift.features   the featurizer config (JSON, from the export)
    sift.dim        D, equal to the input's declared width
    sift.threshold  the threshold, a spam probability
    sift.*          training notes (data, recipe, counts)

Input "features": float32 [N, D] (bucket i of the sparse vector adds to
column i mod D). Output "spam_probability": float32 [N, 1].
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FORMAT = "sift-features/1"


def load_features(d):
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        sys.exit(f"{d}: format {meta.get('format')!r}, expected {FORMAT!r}")
    rd = lambda name, dt: np.fromfile(os.path.join(d, name), dtype=dt)
    indptr = rd("indptr.u64", "<u8").astype(np.int64)
    idx = rd("idx.u32", "<u4")
    val = rd("val.f32", "<f4")
    label = rd("label.u8", np.uint8)
    group = rd("group.u8", np.uint8)
    n = meta["n"]
    if len(indptr) != n + 1 or len(idx) != indptr[-1] or len(val) != len(idx):
        sys.exit(f"{d}: inconsistent arrays")
    return meta, indptr, idx, val, label, group


def densify(indptr, idx, val, rows, dim):
    """Dense float32 [len(rows), dim]; bucket i adds to column i mod dim."""
    out = np.zeros((len(rows), dim), dtype=np.float32)
    for k, r in enumerate(rows):
        a, b = indptr[r], indptr[r + 1]
        np.add.at(out[k], idx[a:b] % dim, val[a:b])
    return out


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def forward(X, P):
    H = np.maximum(X @ P["W1"] + P["b1"], 0.0)
    z = H @ P["W2"] + P["b2"]
    return H, z[:, 0]


def fit(X, y, args, seed):
    """Adam on class-balanced logistic loss + L2 on W1/W2."""
    rng = np.random.default_rng(seed)
    n, dim = X.shape
    h = args.hidden
    P = {
        "W1": (rng.standard_normal((dim, h)) * args.init).astype(np.float32),
        "b1": np.zeros(h, np.float32),
        "W2": (rng.standard_normal((h, 1)) * np.sqrt(1.0 / h)).astype(np.float32),
        "b2": np.zeros(1, np.float32),
    }
    pos = max(1, int(y.sum()))
    neg = max(1, n - pos)
    cw = np.where(y > 0, n / (2.0 * pos), n / (2.0 * neg)).astype(np.float32)
    m = {k: np.zeros_like(v) for k, v in P.items()}
    v = {k: np.zeros_like(v) for k, v in P.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    t = 0
    for epoch in range(args.epochs):
        order = rng.permutation(n)
        lr = args.lr * (0.5 ** (epoch // max(1, args.epochs // 2)))
        for s in range(0, n, args.batch):
            bi = order[s : s + args.batch]
            Xb, yb, wb = X[bi], y[bi], cw[bi]
            H, z = forward(Xb, P)
            p = sigmoid(z)
            dz = (wb * (p - yb) / len(bi)).astype(np.float32)[:, None]
            G = {
                "W2": H.T @ dz + args.l2 * P["W2"],
                "b2": dz.sum(0),
            }
            dH = (dz @ P["W2"].T) * (H > 0)
            G["W1"] = Xb.T @ dH + args.l2 * P["W1"]
            G["b1"] = dH.sum(0)
            t += 1
            for k in P:
                m[k] = b1 * m[k] + (1 - b1) * G[k]
                v[k] = b2 * v[k] + (1 - b2) * G[k] * G[k]
                mh = m[k] / (1 - b1**t)
                vh = v[k] / (1 - b2**t)
                P[k] -= (lr * mh / (np.sqrt(vh) + eps)).astype(np.float32)
    return P


def threshold_for_fpr(ham_logits, target):
    """Logit threshold: at most `target` of these ham scores are >= it
    (the rule of sift's native model, src/classify/train.rs)."""
    h = np.sort(np.asarray(ham_logits, dtype=np.float64))[::-1]
    allowed = int(np.floor(max(0.0, target) * len(h)))
    if allowed >= len(h):
        return float(h[-1])
    t = float(h[allowed])
    return t + max(abs(t), 1.0) * 1e-4


def stratified_folds(y, k, seed):
    rng = np.random.default_rng(seed)
    folds = [[] for _ in range(k)]
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        for j, r in enumerate(idx):
            folds[j % k].append(r)
    return [np.array(sorted(f), dtype=np.int64) for f in folds]


def to_onnx(P, dim, meta_props, path):
    h = P["W1"].shape[1]
    inits = [
        numpy_helper.from_array(P["W1"].astype(np.float32), "W1"),
        numpy_helper.from_array(P["b1"].astype(np.float32), "b1"),
        numpy_helper.from_array(P["W2"].astype(np.float32), "W2"),
        numpy_helper.from_array(P["b2"].astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["features", "W1"], ["h_lin"]),
        helper.make_node("Add", ["h_lin", "b1"], ["h_pre"]),
        helper.make_node("Relu", ["h_pre"], ["h"]),
        helper.make_node("MatMul", ["h", "W2"], ["z_lin"]),
        helper.make_node("Add", ["z_lin", "b2"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["spam_probability"]),
    ]
    graph = helper.make_graph(
        nodes,
        "sift_spam_mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", dim])],
        [helper.make_tensor_value_info("spam_probability", TensorProto.FLOAT, ["N", 1])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="sift filters/spam/onnx/train.py",
        doc_string=f"sift spam MLP {dim}->{h}->1; input: sift's hashed features folded mod {dim}",
    )
    model.ir_version = 9
    helper.set_model_props(model, meta_props)
    onnx.checker.check_model(model)
    onnx.save(model, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", required=True, help="directory from `sift export-features spam`")
    ap.add_argument("--out", required=True, help="ONNX model to write")
    ap.add_argument("--groups", default="all", help="comma-separated export groups to train on (default: all)")
    ap.add_argument("--dim", type=int, default=0, help="input width D (default 2^bits of the export)")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--l2", type=float, default=1e-5)
    ap.add_argument("--init", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--folds", type=int, default=5, help="folds for the out-of-fold threshold")
    ap.add_argument("--target-fpr", type=float, default=0.01)
    ap.add_argument("--report", default="", help="also print metrics on these groups (never used for training or the threshold)")
    args = ap.parse_args()

    t0 = time.time()
    meta, indptr, idx, val, label, group = load_features(args.features)
    names = meta["groups"]
    bits = meta["features"]["bits"]
    dim = args.dim or (1 << bits)
    if dim > (1 << bits):
        sys.exit(f"--dim {dim} exceeds 2^bits = {1 << bits}")
    if args.groups == "all":
        want = set(range(len(names)))
    else:
        want = {names.index(g) for g in args.groups.split(",")}
    rows = np.flatnonzero(np.isin(group, list(want)) & (label != 255))
    if len(rows) == 0:
        sys.exit("no labelled rows in the chosen groups")
    X = densify(indptr, idx, val, rows, dim)
    y = label[rows].astype(np.float32)
    print(f"train: {len(rows)} rows ({int(y.sum())} spam), D {dim}, hidden {args.hidden}; "
          f"densify {time.time() - t0:.1f}s", file=sys.stderr)

    # Threshold: out-of-fold scores of the training ham.
    ham_oof = []
    if args.folds >= 2:
        folds = stratified_folds(y, args.folds, args.seed ^ 0xCA1)
        for k, held in enumerate(folds):
            tr = np.concatenate([f for j, f in enumerate(folds) if j != k])
            Pk = fit(X[tr], y[tr], args, args.seed + 1 + k)
            _, z = forward(X[held], Pk)
            ham_oof.extend(z[y[held] == 0].tolist())
            print(f"  fold {k + 1}/{args.folds} done, {time.time() - t0:.1f}s", file=sys.stderr)
        thr_logit = threshold_for_fpr(ham_oof, args.target_fpr)
    else:
        thr_logit = 0.0
    P = fit(X, y, args, args.seed)
    thr = float(sigmoid(np.float64(thr_logit)))
    thr = min(max(thr, 1e-6), 1 - 1e-6)
    _, z = forward(X, P)
    train_acc = float(((sigmoid(z) >= thr) == (y > 0)).mean())
    del X

    group_desc = ",".join(names[g] for g in sorted(want))
    props = {
        "sift.features": json.dumps(meta["features"], sort_keys=True),
        "sift.dim": str(dim),
        "sift.threshold": repr(thr),
        "sift.output": "spam_probability [N,1]",
        "sift.train": json.dumps({
            "groups": group_desc, "n": int(len(rows)), "n_spam": int(y.sum()),
            "hidden": args.hidden, "epochs": args.epochs, "batch": args.batch, "lr": args.lr,
            "l2": args.l2, "seed": args.seed, "folds": args.folds, "target_fpr": args.target_fpr,
        }, sort_keys=True),
    }
    to_onnx(P, dim, props, args.out)
    size = os.path.getsize(args.out)
    print(f"wrote {args.out} ({size} bytes): trained on {group_desc} ({len(rows)} rows), "
          f"threshold p {thr:.6f} (logit {thr_logit:.4f}, {args.folds}-fold OOF, target ham FPR {args.target_fpr}), "
          f"training accuracy {train_acc:.4f}, {time.time() - t0:.1f}s")

    if args.report:
        import onnxruntime as ort
        rep = {names.index(g) for g in args.report.split(",")}
        rrows = np.flatnonzero(np.isin(group, list(rep)) & (label != 255))
        Xr = densify(indptr, idx, val, rrows, dim)
        yr = label[rrows] > 0
        sess = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"])
        p = sess.run(None, {"features": Xr})[0][:, 0]
        pred = p >= thr
        tp = int((pred & yr).sum()); fp = int((pred & ~yr).sum())
        fn = int((~pred & yr).sum()); tn = int((~pred & ~yr).sum())
        prec = tp / max(1, tp + fp); rec = tp / max(1, tp + fn)
        f1 = 2 * prec * rec / max(1e-12, prec + rec)
        print(f"report on {args.report} (onnxruntime in Python): n {len(rrows)} P {prec:.4f} R {rec:.4f} "
              f"F1 {f1:.4f} ham FPR {100 * fp / max(1, fp + tn):.2f}% (tp {tp} fp {fp} tn {tn} fn {fn})")


if __name__ == "__main__":
    main()
