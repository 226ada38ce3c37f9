"""CrowNest sample: reads a data file, prints a summary, writes out/result.json."""

import json
import os
import platform

with open(os.path.join("data", "numbers.txt")) as f:
    numbers = [int(line) for line in f if line.strip()]

total = sum(numbers)
print(f"hello from Python {platform.python_version()} in {os.getcwd()}")
print(f"read {len(numbers)} numbers, sum {total}")

os.makedirs("out", exist_ok=True)
with open(os.path.join("out", "result.json"), "w") as f:
    json.dump({"count": len(numbers), "sum": total, "max": max(numbers)}, f, indent=2)
    f.write("\n")
print("wrote out/result.json")
