"""bf16 on trained weights, CPU path: the default model's GGUF cut to 14 layers
(pagedllm.testing.truncated_gguf), teacher-forced greedy decisions of pagedllm bf16 against
transformers float32 (pagedllm.testing.bf16_agreement). The GPU twin of this test is in
tests/gpu/test_end_to_end_gpu.py."""
from __future__ import annotations

import pytest

pytest.importorskip("accelerate")  # transformers needs it to load a GGUF
pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def smol14(tmp_path_factory):
    from pagedllm.models.default_model import default_model_path
    from pagedllm.testing.truncated_gguf import truncate_gguf

    try:
        source = default_model_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return truncate_gguf(source, tmp_path_factory.mktemp("gguf") / "smol14.gguf", 14)


def test_truncated_gguf_keeps_the_first_layers_and_the_tokenizer(smol14):
    import gguf

    from pagedllm.models.default_model import default_model_path

    cut, full = gguf.GGUFReader(str(smol14)), gguf.GGUFReader(default_model_path())
    assert cut.fields["llama.block_count"].contents() == 14
    names = {t.name for t in cut.tensors}
    assert "blk.13.ffn_down.weight" in names and "blk.14.ffn_down.weight" not in names
    originals = {t.name: t for t in full.tensors}
    assert all(t.data.tobytes() == originals[t.name].data.tobytes() for t in cut.tensors)
    assert (cut.fields["tokenizer.ggml.tokens"].contents()
            == full.fields["tokenizer.ggml.tokens"].contents())


def test_cpu_bf16_teacher_forced_agreement_on_trained_weights(smol14):
    from pagedllm.testing.bf16_agreement import measure

    r = measure(smol14, "cpu", num_prompts=8, tokens=16, max_model_len=512)
    # Each position is an independent decision on the same text: only near-ties may differ.
    assert r["teacher_forced_ours_bf16_vs_hf_fp32"] >= 0.95, r
    assert r["teacher_forced_ours_bf16_vs_hf_fp32"] >= r["teacher_forced_hf_bf16_vs_hf_fp32"] - 0.02, r
