"""A real checkpoint small enough to carry: the first N layers of a GGUF, tensors copied as they
are stored (quantized bytes untouched), every metadata entry kept (tokenizer, chat template)
except the layer count.

The bf16 agreement test needs trained weights (random ones give near-tied logits) and the device
takes at most 64 MiB of carried files; SmolLM2-135M-Instruct's Q4_1 GGUF (the default model,
98 MB) cut to 14 of its 30 layers is ~60 MB. Its outputs are those of a truncated network, but
its weights, norms and embedding are the trained ones.

    python -m pagedllm.testing.truncated_gguf OUT.gguf [--layers 14] [--source FILE.gguf]
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import gguf

from pagedllm.models.default_model import default_model_path

_LAYER = re.compile(r"^blk\.(\d+)\.")


def truncate_gguf(source: str | Path, out: str | Path, num_layers: int) -> Path:
    """Writes `out`: `source` with blocks 0..num_layers-1 only. Returns the path."""
    reader = gguf.GGUFReader(str(source))
    arch = reader.fields["general.architecture"].contents()
    count_key = f"{arch}.block_count"
    total = int(reader.fields[count_key].contents())
    if not 1 <= num_layers <= total:
        raise ValueError(f"num_layers: {num_layers} not in [1, {total}] for {source}")
    writer = gguf.GGUFWriter(str(out), arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue  # the writer writes these itself
        vtype = gguf.GGUFValueType(field.types[0])
        value = num_layers if key == count_key else field.contents()
        sub_type = gguf.GGUFValueType(field.types[1]) if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, vtype, sub_type=sub_type)
    for tensor in reader.tensors:
        m = _LAYER.match(tensor.name)
        if m and int(m.group(1)) >= num_layers:
            continue
        # The stored data with the tensor's own type: quantized tensors arrive as rows of bytes
        # (the writer turns that byte shape back into the element shape), floats as floats.
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--layers", type=int, default=14)
    p.add_argument("--source", default=None, help="GGUF to cut (default: the default model's)")
    args = p.parse_args()
    path = truncate_gguf(args.source or default_model_path(), args.out, args.layers)
    print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB, {args.layers} layers")


if __name__ == "__main__":
    main()
