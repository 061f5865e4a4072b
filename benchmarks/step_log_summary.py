"""Where a throughput run's time went, by batch size: reads `throughput.py --step-log` and the
run's `--output-json` and prints, per group of steps, the wall time, its share of the run and its
HBM floor (the weights once per step plus the K/V of the step's context tokens, at the run's
measured read bandwidth) — so steps that fall far short of their floor stand out.

    python benchmarks/step_log_summary.py nano_steps.json nano_graphs.json
"""
from __future__ import annotations

import argparse
import json

# Decode steps grouped by how many sequences they ran (upper bounds exclusive, descending).
DECODE_GROUPS = ((200, ">= 200"), (132, "132-199"), (66, "66-131"), (33, "33-65"), (0, "< 33"))


def group_of(step: dict) -> str:
    if step["tokens"] != step["seqs"]:
        return "prefill / mixed"
    return "decode, " + next(name for low, name in DECODE_GROUPS if step["seqs"] >= low) + " seqs"


def summarize(steps: list[dict], run: dict) -> list[dict]:
    bandwidth = run["read_bandwidth_gbs"] * 1e9  # bytes / s
    weights, kv_per_token = run["weight_bytes"], run["kv_bytes_per_token"]
    total_ms = sum(s["wall_ms"] for s in steps)
    groups: dict[str, dict] = {}
    for s in steps:
        g = groups.setdefault(group_of(s), {"steps": 0, "wall_ms": 0.0, "floor_ms": 0.0})
        g["steps"] += 1
        g["wall_ms"] += s["wall_ms"]
        g["floor_ms"] += (weights + s["context_tokens"] * kv_per_token) / bandwidth * 1e3
    rows = []
    for name, g in sorted(groups.items(), key=lambda kv: -kv[1]["wall_ms"]):
        rows.append({"group": name, "steps": g["steps"], "wall_ms": round(g["wall_ms"], 1),
                     "share": round(g["wall_ms"] / total_ms, 4),
                     "ms_per_step": round(g["wall_ms"] / g["steps"], 3),
                     "floor_ms": round(g["floor_ms"], 1),
                     "efficiency": round(g["floor_ms"] / g["wall_ms"], 4)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step_log", help="JSON list written by throughput.py --step-log")
    p.add_argument("result", help="JSON written by throughput.py --output-json (same run, GPU)")
    args = p.parse_args()
    with open(args.step_log) as f:
        steps = json.load(f)
    with open(args.result) as f:
        run = json.load(f)
    missing = [k for k in ("context_tokens", "wall_ms") if steps and k not in steps[0]]
    if missing:
        raise SystemExit(f"step log lacks {missing}: written by an older throughput.py")
    if "read_bandwidth_gbs" not in run:
        raise SystemExit("the result has no roofline fields (a CPU run?)")
    print(f"{'steps':<24}{'count':>7}{'wall ms':>11}{'share':>8}{'ms/step':>9}{'floor ms':>10}"
          f"{'efficiency':>12}")
    for r in summarize(steps, run):
        print(f"{r['group']:<24}{r['steps']:>7}{r['wall_ms']:>11.0f}{r['share']:>8.1%}"
              f"{r['ms_per_step']:>9.2f}{r['floor_ms']:>10.0f}{r['efficiency']:>12.1%}")


if __name__ == "__main__":
    main()
