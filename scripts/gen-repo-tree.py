#!/usr/bin/env python3
"""Writes a deterministic, repo-like source tree for the extraction benchmark.

Usage: gen-repo-tree.py ROOT FILES MB

About MB megabytes of text in FILES files spread over nested directories (every 11th file
executable). The text is tuned to compress like real source code (~4.4x with gzip -6):
each file uses a few dozen identifiers drawn from a Zipf-weighted vocabulary, shares
boilerplate lines with other files, and repeats some of its own lines.
"""
import itertools
import os
import random
import sys

root, files, mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(42)
syll = ["ka", "lo", "mi", "ne", "ru", "ta", "po", "si", "de", "fa",
        "gu", "hi", "jo", "be", "zu", "wy", "qu", "xa", "ve", "co"]
vocab = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(2000)]
cum_weights = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(vocab))))
keywords = ["def", "return", "import", "class", "self", "if", "else", "for", "in", "while",
            "const", "let", "fn", "=>", "{", "}", "(", ")", ";", "=", "+", "==", "None",
            "true", "false"]


def line(words_from):
    k = rng.randint(2, 12)
    words = rng.choices(words_from, k=k)
    for j in range(k):
        r = rng.random()
        if r < 0.35:
            words[j] = rng.choice(keywords)
        elif r < 0.38:
            words[j] = str(rng.randint(0, 10 ** rng.randint(1, 4)))
    return " " * (4 * rng.randint(0, 4)) + " ".join(words)


common = [line(rng.choices(vocab, cum_weights=cum_weights, k=200)) for _ in range(3000)]
avg = mb * 1024 * 1024 // files
dirs = [os.path.join(*["d%02d" % rng.randint(0, 40) for _ in range(rng.randint(1, 4))])
        for _ in range(max(1, files * 3 // 40))]
for i in range(files):
    d = os.path.join(root, rng.choice(dirs))
    os.makedirs(d, exist_ok=True)
    size = int(rng.expovariate(1.0 / avg)) + 64
    local = rng.choices(vocab, cum_weights=cum_weights, k=30)
    out, n = [], 0
    while n < size:
        r = rng.random()
        if r < 0.2:
            text = rng.choice(common)
        elif r < 0.5 and out:
            text = rng.choice(out[-100:])
        else:
            text = line(local)
        out.append(text)
        n += len(text) + 1
    path = os.path.join(d, "f%05d%s" % (i, rng.choice([".py", ".js", ".rs", ".md", ".txt", ".json"])))
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    if i % 11 == 0:
        os.chmod(path, 0o755)
