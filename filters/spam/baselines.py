#!/usr/bin/env python3
"""Evaluation (c) of issue 6 with scikit-learn instead of sift, on the very
same SMS splits: is sift's SMS figure (just below the 0.96 target) its
model's limit, or the data's?

`sift eval spam --only sms` with SIFT_EVAL_SPLITS=FILE appends one line per
split to FILE (training rows, then test rows, comma-separated, test texts
seen in training already dropped). This script reads those lines and, for
each feature recipe, trains a linear SVM per split, sets its threshold on
the training part alone (5-fold out-of-fold margins, the F1-best cut, as
sift does) and pools the test counts over the splits.

Not part of the test suite (it needs scikit-learn). Run:

    rm -f target/sms-splits.tsv
    SIFT_EVAL_SPLITS=target/sms-splits.tsv sift eval spam --only sms
    python3 -m venv target/venv-baselines
    target/venv-baselines/bin/pip install scikit-learn==1.9.1
    target/venv-baselines/bin/python filters/spam/baselines.py target/sms-splits.tsv [SMS_FILE]

SMS_FILE defaults to ../shared/data/spam/sms/SMSSpamCollection (read in
place, never copied). Figures: filters/spam/README.md, "Round W".
"""
import os
import re
import sys

import numpy as np
from scipy.sparse import hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.svm import LinearSVC

here = os.path.dirname(os.path.abspath(__file__))
splits_file = sys.argv[1]
sms = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "../../../shared/data/spam/sms/SMSSpamCollection")

# sift's corpus rows: non-empty lines after the header, in file order.
rows = [l.rstrip("\r\n").split("\t", 1) for l in open(sms, encoding="utf-8", errors="replace")]
rows = [r for i, r in enumerate(rows) if len(r) == 2 and not (i == 0 and r[0] == "Label")]
X = np.array([r[1] for r in rows], dtype=object)
y = np.array([r[0] == "spam" for r in rows]).astype(int)
splits = []
for line in open(splits_file):
    tr, te = line.rstrip("\n").split("\t")
    splits.append((np.array([int(v) for v in tr.split(",")]), np.array([int(v) for v in te.split(",")])))


def digits(s):
    return re.sub(r"\d", "0", s.lower())


def collapsed(s):
    return re.sub(r"\s+", " ", s.lower())


# sift's feature families, as near as scikit-learn gets: word uni- and
# bigrams (ASCII alphanumeric runs, digits folded) and byte 4-grams of the
# whitespace-collapsed text, no IDF; then the usual tf-idf recipes.
RECIPES = {
    "sift-like: words 1-2 + char 4, no idf": lambda: [
        TfidfVectorizer(preprocessor=digits, ngram_range=(1, 2), sublinear_tf=True, use_idf=False,
                        token_pattern=r"[a-z0-9]+|[^\x00-\x7f]+"),
        TfidfVectorizer(preprocessor=collapsed, analyzer="char", ngram_range=(4, 4), use_idf=False),
    ],
    "sift-like with idf": lambda: [
        TfidfVectorizer(preprocessor=digits, ngram_range=(1, 2), sublinear_tf=True, use_idf=True,
                        token_pattern=r"[a-z0-9]+|[^\x00-\x7f]+"),
        TfidfVectorizer(preprocessor=collapsed, analyzer="char", ngram_range=(4, 4), use_idf=True),
    ],
    "words 1-2 + char 2-5, no idf": lambda: [
        TfidfVectorizer(preprocessor=digits, ngram_range=(1, 2), sublinear_tf=True, use_idf=False),
        TfidfVectorizer(preprocessor=digits, analyzer="char", ngram_range=(2, 5), sublinear_tf=True, use_idf=False),
    ],
    "words 1-2 + char_wb 1-5, no idf": lambda: [
        TfidfVectorizer(preprocessor=digits, ngram_range=(1, 2), sublinear_tf=True, use_idf=False),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 5), sublinear_tf=True, use_idf=False),
    ],
    "words 1-2 + char_wb 1-5, tf-idf": lambda: [
        TfidfVectorizer(preprocessor=digits, ngram_range=(1, 2), sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 5), sublinear_tf=True),
    ],
}

print(f"{len(splits)} splits from {splits_file}")
for name, make in RECIPES.items():
    tp = fp = fn = 0
    per = []
    for k, (tr, te) in enumerate(splits):
        vs = make()
        xtr = hstack([v.fit_transform(X[tr]) for v in vs]).tocsr()
        xte = hstack([v.transform(X[te]) for v in vs]).tocsr()
        clf = LinearSVC(C=1.0)
        oof = cross_val_predict(clf, xtr, y[tr], cv=StratifiedKFold(5, shuffle=True, random_state=k),
                                method="decision_function")
        cuts = np.quantile(oof, np.linspace(0.5, 0.995, 300))
        cut = max(cuts, key=lambda t: f1_score(y[tr], oof > t))
        clf.fit(xtr, y[tr])
        p = clf.decision_function(xte) > cut
        a = int(((p == 1) & (y[te] == 1)).sum())
        b = int(((p == 1) & (y[te] == 0)).sum())
        c = int(((p == 0) & (y[te] == 1)).sum())
        tp, fp, fn = tp + a, fp + b, fn + c
        per.append(2 * a / (2 * a + b + c))
    print(f"{name:38s} pooled F1 {2 * tp / (2 * tp + fp + fn):.4f} (tp {tp} fp {fp} fn {fn}); "
          f"first split {per[0]:.4f}; per split {min(per):.4f}-{max(per):.4f}", flush=True)
