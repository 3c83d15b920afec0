"""The tokenizer interface, and GPT-2's BPE tokenizer (tiktoken) built offline from the bundled ranks file.

Every tokenizer exposes the same small interface (the others, read from a model's files, are in
gemma3/io/tokenizer_files.py: a Hugging Face tokenizer.json, a GGUF file's vocabulary):
    encode(text) -> list[int]     ordinary text, no special tokens added
    decode(ids) -> str            invalid UTF-8 becomes U+FFFD
    eot_id, stop_ids, bos_id, vocab_size, name
"""

import base64
import hashlib
from functools import lru_cache
from pathlib import Path

import tiktoken

from .defaults import ASSETS

GPT2_RANKS = ASSETS / "gpt2.tiktoken"  # assets/ of the checkout, or the installed copy (gemma3/defaults.py)
GPT2_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# tiktoken's own GPT-2 (r50k) split pattern, copied from tiktoken_ext/openai_public.py
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
ENDOFTEXT = "<|endoftext|>"


def load_gpt2_ranks(path=GPT2_RANKS) -> dict[bytes, int]:
    """Read a .tiktoken ranks file ("<base64 token> <rank>" per line) after checking its sha256.

    Same parse as tiktoken.load.load_tiktoken_bpe, which we avoid because it also copies
    local files into a cache folder under the system temp dir.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GPT-2 tokenizer file {path} is missing; restore assets/gpt2.tiktoken from the repository.")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != GPT2_SHA256:
        raise ValueError(f"GPT-2 tokenizer file {path} is corrupt (sha256 mismatch); restore assets/gpt2.tiktoken from the repository.")
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


class GPT2Tokenizer:
    """GPT-2 byte-level BPE: 50257 ids, <|endoftext|> = 50256, no BOS."""

    name = "gpt2"
    bos_id = None

    def __init__(self, ranks_path=GPT2_RANKS):
        self.enc = tiktoken.Encoding(
            name="gpt2",
            pat_str=GPT2_PAT,
            mergeable_ranks=load_gpt2_ranks(ranks_path),
            special_tokens={ENDOFTEXT: 50256},
            explicit_n_vocab=50257,
        )
        self.eot_id = 50256
        self.stop_ids = {self.eot_id}
        self.vocab_size = self.enc.n_vocab

    def encode(self, text: str) -> list[int]:
        """Ordinary text to ids; a typed "<|endoftext|>" stays plain text, never id 50256."""
        return self.enc.encode_ordinary(text)

    def decode(self, ids) -> str:
        return self.enc.decode(list(ids), errors="replace")

    def decode_bytes(self, ids) -> bytes:
        """Raw bytes of the ids, so a streamer can hold back an incomplete UTF-8 character."""
        return self.enc.decode_bytes(list(ids))

    def save(self, folder):
        """Nothing to write: a folder without tokenizer.json loads as GPT-2."""



@lru_cache(maxsize=None)
def gpt2_tokenizer(ranks_path=GPT2_RANKS) -> GPT2Tokenizer:
    """The GPT-2 tokenizer, built once per process."""
    return GPT2Tokenizer(ranks_path)
