#!/usr/bin/env python3
"""Would "this line was in the repository's earlier logs" help find the failure?

A screen, not part of sift or its tests (stdlib only). A deployment sees
many failed builds of each repository, unlabelled: sift could keep a
sketch of the lines each repository's logs have had before and mark a
line seen before as likely boilerplate, not the failure. This measures
how well that would separate the human-selected chunk's lines from the
lines a failure finder is tempted by (lines with error, fail, exception,
fatal, cannot, unable, not found, denied, timed out, killed or warning
outside the chunk): per repository, logs in data order, a line (ANSI
codes and Travis fold/time markers removed, lower-cased, hex and digits
folded, spaces collapsed; at least 4 characters) counts as seen when an
earlier log of the same repository had it.

    python3 filters/cilog/background_screen.py [DATA_DIR]

DATA_DIR defaults to ../shared/data/cilogs (read in place, never copied).
Figures: filters/cilog/README.md, "Measured (session 33)".
"""
import collections
import csv
import re
import sys

D = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/cilogs"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
KW = re.compile(r"error|fail|exception|fatal|cannot|unable|not found|denied|timed out|killed|warning")


def norm(line):
    line = ANSI.sub("", line).split("\r")[-1]
    line = re.sub(r"travis_(fold|time):[^\s]*", "", line).strip().lower()
    line = re.sub(r"0x[0-9a-f]+", "h", line)
    line = re.sub(r"[0-9a-f]{8,}", "h", line)
    line = re.sub(r"\d+", "0", line)
    return re.sub(r"\s+", " ", line)


def main():
    rows = list(csv.DictReader(open(f"{D}/labels.csv")))
    by_repo = collections.defaultdict(list)
    for r in rows:
        by_repo[r["repo"]].append(r)
    st = collections.Counter()
    for rs in by_repo.values():
        seen = collections.Counter()
        for k, r in enumerate(rs):
            text = open(f"{D}/logs/{r['path']}", "rb").read().decode("utf-8", "replace")
            ns = [norm(x) for x in re.split(r"\r\n|\n", text)]
            a, b = (-1, -2)
            if r["chunk_first_line"]:
                a, b = int(r["chunk_first_line"]), int(r["chunk_last_line"])
            for i, n in enumerate(ns, start=1):
                if len(n) < 4:
                    continue
                kind = "chunk" if a <= i <= b else ("distractor" if KW.search(n) else None)
                if kind is None or k == 0:
                    continue
                st[kind, "n"] += 1
                st[kind, "seen"] += seen[n] > 0
            if k > 0:
                chunk = [ns[i - 1] for i in range(a, b + 1) if 0 < i <= len(ns) and len(ns[i - 1]) >= 4]
                st["logs"] += 1
                st["all_seen"] += bool(chunk) and all(seen[c] > 0 for c in chunk)
            for n in set(ns):
                seen[n] += 1
    for kind in ["chunk", "distractor"]:
        n = st[kind, "n"]
        print(f"{kind} lines of logs with an earlier log in their repository: {n}, "
              f"seen before {100 * st[kind, 'seen'] / max(1, n):.1f} %")
    print(f"logs with an earlier log: {st['logs']}; every chunk line seen before: {st['all_seen']}")


if __name__ == "__main__":
    main()
