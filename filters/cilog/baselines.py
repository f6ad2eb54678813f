#!/usr/bin/env python3
"""How hard is issue 7's target? Standard text classifiers on the labelled
CI logs, without sift: scikit-learn on the *human-selected* failure chunks
(and on the labeller's own evidence phrases), under the same two fold
schemes as `sift eval cilog --split repos|logs`, and the labelling guide's
precedence list applied as keyword rules with no training.

Not part of the test suite (it needs scikit-learn). Run:

    python3 -m venv target/venv-baselines
    target/venv-baselines/bin/pip install scikit-learn==1.9.1
    target/venv-baselines/bin/python filters/cilog/baselines.py [DATA_DIR]

DATA_DIR defaults to ../shared/data/cilogs (read in place, never copied).
Figures and what they mean: filters/cilog/README.md, "Measured (session 12)".
"""
import csv
import json
import os
import re
import sys

import numpy as np
from scipy.sparse import hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC

here = os.path.dirname(os.path.abspath(__file__))
data = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "../../../shared/data/cilogs")
labels = {r["id"]: r for r in csv.DictReader(open(os.path.join(data, "labels.csv")))}
ansi = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
chunks, evidence, y, repo = [], [], [], []
for line in open(os.path.join(data, "chunks.jsonl")):
    d = json.loads(line)
    r = labels[d["id"]]
    chunks.append(ansi.sub("", d["chunk"]))
    evidence.append(r["evidence"])
    y.append(r["label"])
    repo.append(r["repo"])
y, repo = np.array(y), np.array(repo)
SEEDS = (0, 1, 2)


def repo_folds(seed, k=5):
    repos = sorted(set(repo))
    np.random.RandomState(seed).shuffle(repos)
    fold = {r: i % k for i, r in enumerate(repos)}
    f = np.array([fold[r] for r in repo])
    return [(np.where(f != i)[0], np.where(f == i)[0]) for i in range(k)]


def log_folds(seed, k=5):
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(chunks, y))


def words():
    return TfidfVectorizer(token_pattern=r"[A-Za-z_]{2,}", sublinear_tf=True, min_df=2)


def chars():
    return TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, min_df=2)


MODELS = {
    "words, logistic regression": lambda: ([words()], LogisticRegression(C=10, max_iter=2000)),
    "words + char 3-5-grams, linear SVM (balanced)": lambda: (
        [words(), chars()],
        LinearSVC(C=0.5, class_weight="balanced"),
    ),
}


def cv(texts, make, folds):
    accs = []
    for s in SEEDS:
        pred = np.empty(len(y), dtype=object)
        for tr, te in folds(s):
            vecs, clf = make()
            xtr = hstack([v.fit_transform([texts[i] for i in tr]) for v in vecs]).tocsr()
            xte = hstack([v.transform([texts[i] for i in te]) for v in vecs]).tocsr()
            clf.fit(xtr, y[tr])
            pred[te] = clf.predict(xte)
        accs.append((pred == y).mean())
    return " / ".join(f"{a:.3f}" for a in accs) + f" (mean {np.mean(accs):.3f})"


print(f"{len(y)} labelled logs, {len(set(repo))} repositories; accuracy over seeds {SEEDS}")
for text_name, texts in (("human chunks", chunks), ("labeller's evidence phrases", evidence)):
    for model_name, make in MODELS.items():
        for fold_name, folds in (("grouped by repository", repo_folds), ("over logs", log_folds)):
            print(f"{text_name:28} | {model_name:46} | {fold_name:21} | {cv(texts, make, folds)}")

# The labelling guide's classes in its precedence order, as keyword rules.
RULES = [
    ("timeout", r"no output has been received|exceeded the maximum time|timed? ?out|timeout"),
    ("oom", r"out of memory|cannot allocate memory|outofmemoryerror|heap out of memory|\bkilled\b"),
    ("infra", r"docker daemon|the job was cancelled|no space left|failed to start|could not resolve host"
              r"|connection (refused|reset)|emulator|simulator|travis internal"),
    ("dependency", r"npm err|yarn|pip install|could not find a version|no matching distribution|gem install"
                   r"|bundler|could not resolve dependencies|could not find artifact|composer|go get|cabal"
                   r"|opam|brew install|version conflict|lockfile|checksum mismatch|404 not found"
                   r"|failed to fetch|unable to resolve"),
    ("compile", r"error:|compil|syntax error|undefined reference|cannot find symbol|linker|ld returned"
                r"|type error|error ts\d|error cs\d|error\[e\d"),
    ("lint", r"rubocop|eslint|flake8|gofmt|clang-format|checkstyle|swiftlint|lint|offenses|style"
             r"|line too long|pep8|pycodestyle|would reformat|spelling|license header"),
    ("test", r"assert|failed tests?|tests? failed|failures?:|expected|not ok|--- fail|\bfail\b|test"),
    ("config", r"command not found|no such file or directory|permission denied|no rule to make target"
               r"|not set|missing"),
]
pred = []
for t in chunks:
    low = t.lower()
    pred.append(next((c for c, p in RULES if re.search(p, low)), "unknown"))
print(f"{'human chunks':28} | {'LABELLING.md precedence as keyword rules':46} | {'no training':21} | "
      f"{(np.array(pred) == y).mean():.3f}")
