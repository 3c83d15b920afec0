"""Tokenizers: GPT-2 BPE (tiktoken, built offline from assets/) and any Hugging Face tokenizer.json.

Both expose the same small interface:
    encode(text) -> list[int]     ordinary text, no special tokens added
    decode(ids) -> str            invalid UTF-8 becomes U+FFFD
    eot_id, stop_ids, bos_id, vocab_size, name
"""

import base64
import hashlib
import os
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


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer.json (e.g. google/gemma-3-270m).

    There is no decode_bytes: byte-level and byte-fallback decoders both turn an incomplete
    UTF-8 sequence into U+FFFD, so a streamer should hold back decoded text that ends in
    "\\ufffd" until more ids arrive (works for GPT-2 too).
    """

    def __init__(self, path):
        from tokenizers import Tokenizer

        path = Path(path)
        self.path = path / "tokenizer.json" if path.is_dir() else path
        self.tok = Tokenizer.from_file(str(self.path))
        self.name = self.path.parent.name or "tokenizer.json"
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        ids = [self.tok.token_to_id(t) for t in ("<eos>", ENDOFTEXT, "</s>")]
        ids = [i for i in ids if i is not None]
        self.eot_id = ids[0] if ids else None
        extra = self.tok.token_to_id("<end_of_turn>")
        self.stop_ids = set(ids) | ({extra} if extra is not None else set())
        # BOS is whatever the tokenizer's post-processor puts in front of plain text (Gemma: <bos>)
        plain = self.tok.encode("a", add_special_tokens=False).ids
        full = self.tok.encode("a", add_special_tokens=True).ids
        self.bos_id = full[0] if full[1 : len(plain) + 1] == plain and len(full) > len(plain) else None

    def encode(self, text: str) -> list[int]:
        """Ids without BOS/EOS added; prepend bos_id yourself when it is not None.

        Unlike GPT-2 here, special tokens typed in the text ("<eos>", "<start_of_turn>") become
        their ids, as transformers does for the same tokenizer.json.
        """
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def save(self, folder):
        """Write tokenizer.json into folder."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.tok.save(str(Path(folder) / "tokenizer.json"))


def load_tokenizer(folder=None):
    """HFTokenizer if folder holds tokenizer.json, else the bundled GPT-2 tokenizer.

    Like every file of a model folder, tokenizer.json must resolve (links followed) inside the folder
    (inside a Hub cache snapshot: inside its repository's cache folder); else one ValueError sentence.
    """
    if folder is None:
        return gpt2_tokenizer()
    from .checkpoints import inside, model_root  # checkpoints imports this module

    folder = Path(os.path.realpath(folder))
    path = inside(model_root(folder), folder, "tokenizer.json")
    if path.is_file():
        tok = HFTokenizer(path)
        tok.name = folder.name or tok.name  # the folder's name, not that of the file a link leads to
        return tok
    return gpt2_tokenizer()
