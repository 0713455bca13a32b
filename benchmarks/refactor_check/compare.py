"""Compare the old and new tiny-pipeline outputs: every file byte for byte, JSON files key by key with
timing fields (wall-clock seconds, throughput) and great-expectations' timestamped data-doc paths set aside."""
import json
import sys
from pathlib import Path

TIMING = ("seconds", "per_second", "images_per_s", "_s", "elapsed", "duration", "timestamp", "run_time")

def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if not any(t in k for t in TIMING)}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return x

def files(root):
    return {p.relative_to(root) for p in root.rglob("*")
            if p.is_file() and "data_docs" not in p.parts and p.name != "params.yaml" and not p.name.startswith("log_")}

old, new = Path(sys.argv[1]), Path(sys.argv[2])
fo, fn = files(old), files(new)
print("only in old:", sorted(map(str, fo - fn)), " only in new:", sorted(map(str, fn - fo)))
identical = equal_but_timing = 0
for rel in sorted(fo & fn):
    a, b = (old / rel).read_bytes(), (new / rel).read_bytes()
    if a == b:
        identical += 1
        continue
    if rel.suffix == ".json":
        ja, jb = json.loads(a), json.loads(b)
        if strip(ja) == strip(jb):
            equal_but_timing += 1
            print(f"same but timing: {rel}")
            continue
        if isinstance(ja, dict):
            for k in sorted(set(ja) | set(jb)):
                if strip(ja.get(k)) != strip(jb.get(k)):
                    print(f"DIFFERS {rel} [{k}]: old={str(ja.get(k))[:200]}\n      new={str(jb.get(k))[:200]}")
            continue
    print(f"DIFFERS {rel}")
print(f"{identical} files byte-identical, {equal_but_timing} JSON equal apart from timing fields, of {len(fo & fn)} compared")
