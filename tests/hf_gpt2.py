"""A tiny random Hugging Face GPT-2, the oracle of tests/test_model.py and tests/test_pretrained.py."""

import torch


def random_hf_gpt2(transformers, vocab_size=97, n_positions=32, n_layer=3, **overrides):
    """A tiny GPT2LMHeadModel whose every tensor matters: random LayerNorm affines and biases (a swapped
    or untransposed copy cannot pass) and large FFN weights (exact GELU and the tanh one differ there)."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(**{**dict(vocab_size=vocab_size, n_positions=n_positions, n_embd=48, n_layer=n_layer,
                                            n_head=4, bos_token_id=0, eos_token_id=0), **overrides})
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.02)
            elif name.endswith("mlp.c_fc.weight"):
                p.normal_(0, 0.3)
    return hf
