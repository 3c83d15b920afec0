"""Gemma 3 from scratch: the model, its KV cache, sampling, the GPT-2 tokenizer and checkpoints."""

from .checkpoints import export_hf, load_model, save_model
from .config import PRESETS, Gemma3Config
from .generate import generate, generate_tokens, stream
from .gguf import export_gguf
from .model import Gemma3
from .tokenizer import GPT2Tokenizer, HFTokenizer, gpt2_tokenizer, load_tokenizer

__all__ = [
    "Gemma3", "Gemma3Config", "PRESETS", "load_model", "save_model", "export_hf", "export_gguf",
    "generate", "stream", "generate_tokens", "GPT2Tokenizer", "HFTokenizer", "gpt2_tokenizer", "load_tokenizer",
]
