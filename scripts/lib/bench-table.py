#!/usr/bin/env python3
"""Upserts one row of the user-path benchmark table in docs/benchmarks.md.

Usage: bench-table.py DOC PATH PLAIN CROWNEST RATIO GOAL LOAD DATE

The table sits between the lines `<!-- user-path-table:begin -->` and
`<!-- user-path-table:end -->`; a row is keyed by its first cell (PATH, written as
given: markdown). The row with that key is replaced in place, or appended. Each benchmark script
writes only its own rows, so the table always shows the latest measurement of every path.
"""
import sys

BEGIN, END = "<!-- user-path-table:begin -->", "<!-- user-path-table:end -->"
HEADER = [
    "| path | plain tool | crownest | ratio | goal | load avg | date |",
    "|---|---|---|---|---|---|---|",
]


def main() -> None:
    doc, path, *cells = sys.argv[1:]
    if len(cells) != 6:
        sys.exit("usage: bench-table.py DOC PATH PLAIN CROWNEST RATIO GOAL LOAD DATE")
    key = path
    row = "| " + " | ".join([key, *cells]).replace("\n", " ") + " |"
    text = open(doc, encoding="utf-8").read()
    if BEGIN not in text or END not in text:
        sys.exit(f"{doc}: no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    body, tail = rest.split(END, 1)
    rows = [l for l in body.strip("\n").splitlines() if l.startswith("| ") and l not in HEADER]
    for i, old in enumerate(rows):
        if old.split(" | ", 1)[0] == "| " + key:
            rows[i] = row
            break
    else:
        rows.append(row)
    table = "\n".join(HEADER + rows)
    open(doc, "w", encoding="utf-8").write(f"{head}{BEGIN}\n{table}\n{END}{tail}")


if __name__ == "__main__":
    main()
