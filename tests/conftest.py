"""Shared test setup: offline environment, importable repo root, and a tiny transformers reference model."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402

# Test models are tiny: one thread avoids thread-pool handoffs, which on a busy 2-core machine
# cost ~10 ms per op (measured: a decode-step SDPA takes 26 us on 1 thread, 10 ms on 2 under load).
torch.set_num_threads(1)

# A tiny Gemma 3 in transformers' terms. head_dim 32 is deliberately not hidden/heads (64/4 = 16), and
# query_pre_attn_scalar 16 is not head_dim, so neither shortcut can go unnoticed; a window of 8 makes
# the sliding mask bite on short inputs.
TINY_HF = dict(
    vocab_size=50257,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=7,         # Gemma pattern: layers 0-4 sliding, 5 full, 6 sliding again
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=32,
    sliding_window=8,
    query_pre_attn_scalar=16,
    max_position_embeddings=512,
    pad_token_id=None,
)


def randomise_norms(model: torch.nn.Module, std: float = 0.5, seed: int = 0) -> torch.nn.Module:
    """Give every RMSNorm weight (zero at init) random values, so a misplaced norm changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def build_hf_tiny(seed: int = 0, **overrides):
    """A randomly initialised transformers Gemma3ForCausalLM at the tiny shape, in eval mode (fp32)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    # eager: transformers' plainest attention code, the most independent reference for ours (SDPA)
    config = Gemma3TextConfig(**{**TINY_HF, "attn_implementation": "eager", **overrides})
    config.bos_token_id = config.eos_token_id = None
    model = Gemma3ForCausalLM(config).eval()
    return randomise_norms(model, seed=seed)


@pytest.fixture(scope="session")
def hf_tiny(tmp_path_factory):
    """(transformers model, folder it was saved to with save_pretrained) -- the reference for parity tests."""
    model = build_hf_tiny()
    path = tmp_path_factory.mktemp("hf_tiny")
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="session")
def tiny(hf_tiny):
    """Our model, loaded in fp32 from the transformers folder of `hf_tiny` (same weights)."""
    import gemma3

    model, _ = gemma3.load_model(hf_tiny[1], device="cpu", dtype=torch.float32)
    return model


def random_ids(batch: int, length: int, seed: int = 0, vocab: int = TINY_HF["vocab_size"]) -> torch.Tensor:
    """Reproducible random token ids [batch, length]."""
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
