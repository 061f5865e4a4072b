"""Peer for benchmarks/throughput.py: Hugging Face transformers `generate` in static batches.

Same requests as pagedllm (benchmarks/workloads.py), random (dummy) weights of a real shape,
ignore-EOS via min_new_tokens. Each static batch generates up to its longest requested output;
only the requested tokens count as output. Prints one JSON line.

  python benchmarks/hf_generate_peer.py --shape qwen3-0.6b --workload nano --batch-size 64
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from model_shapes import write_shape_dir
from workloads import WORKLOADS, random_requests


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="qwen3-0.6b")
    p.add_argument("--workload", default="nano", choices=sorted(WORKLOADS))
    p.add_argument("--num-prompts", type=int, default=None, help="override the workload's count")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    num, imin, imax, omin, omax = WORKLOADS[args.workload]
    num = args.num_prompts or num
    config = AutoConfig.from_pretrained(write_shape_dir(args.shape))
    dtype = getattr(torch, args.dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype, attn_implementation="sdpa")
    model.eval()
    requests = random_requests(num, imin, imax, omin, omax, config.vocab_size, args.seed)

    pad = 0
    useful_out = total_in = 0
    start = time.perf_counter()
    for b in range(0, len(requests), args.batch_size):
        batch = requests[b: b + args.batch_size]
        width = max(len(r.prompt_token_ids) for r in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):  # left padding, as decoder-only generation needs
            n = len(r.prompt_token_ids)
            ids[i, width - n:] = torch.tensor(r.prompt_token_ids)
            mask[i, width - n:] = 1
        new = max(r.output_len for r in batch)
        with torch.inference_mode():
            model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                           max_new_tokens=new, min_new_tokens=new, do_sample=False,
                           pad_token_id=pad)
        useful_out += sum(r.output_len for r in batch)
        total_in += sum(len(r.prompt_token_ids) for r in batch)
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    print(json.dumps({
        "engine": "transformers.generate", "shape": args.shape, "workload": args.workload,
        "num_prompts": num, "batch_size": args.batch_size, "elapsed_s": round(elapsed, 2),
        "requests_per_s": round(num / elapsed, 3),
        "output_tok_per_s": round(useful_out / elapsed, 1),
        "total_tok_per_s": round((useful_out + total_in) / elapsed, 1),
    }))


if __name__ == "__main__":
    main()
