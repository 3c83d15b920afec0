"""GPT-2's tokenizer as the files transformers reads (vocab.json, merges.txt, tokenizer_config.json).

Our GPT-2 tokenizer is tiktoken's ranks (assets/gpt2.tiktoken); transformers' GPT2Tokenizer is the same
byte-level BPE written as a vocabulary of printable strings plus the ordered list of merges. Both come
from the ranks alone: a token's printable form maps each byte through GPT-2's byte-to-character table,
and the merge that makes a token of rank r is the pair BPE reaches when it may use only ranks below r.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from gemma3.tokenizer import ENDOFTEXT, gpt2_tokenizer


def byte_to_char() -> dict[int, str]:
    """GPT-2's table: printable bytes stand for themselves, the others for characters from U+0100 on."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _split(ranks: dict[bytes, int], token: bytes, below: int) -> list[bytes]:
    """Byte-pair encode `token` with the merges of rank below `below` only."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best, at = None, None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < below and (best is None or rank < best):
                best, at = rank, i
        if best is None:
            break
        parts[at:at + 2] = [parts[at] + parts[at + 1]]
    return parts


@lru_cache(maxsize=1)
def vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    ranks = gpt2_tokenizer().enc._mergeable_ranks
    table = byte_to_char()
    show = lambda b: "".join(table[x] for x in b)  # noqa: E731
    vocab = {show(token): rank for token, rank in ranks.items()}
    vocab[ENDOFTEXT] = gpt2_tokenizer().eot_id
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            first, second = _split(ranks, token, rank)  # exactly two parts, or the ranks are not a BPE
            merges.append((show(first), show(second)))
    return vocab, merges


def write_gpt2_files(folder: Path):
    """vocab.json, merges.txt and tokenizer_config.json for AutoTokenizer, into an existing folder.

    No tokenizer.json: gemma3.load_model keeps reading such a folder with its own GPT-2 tokenizer."""
    vocab, merges = vocab_and_merges()
    folder = Path(folder)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                       encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "model_max_length": 1_000_000,
        "bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}, indent=2))
