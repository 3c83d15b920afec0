"""Tokenizers from files: a Hugging Face tokenizer.json (HFTokenizer), the vocabulary a GGUF file's metadata
holds (Gemma's SentencePiece, or byte-level BPE), and a tokenizer written out as transformers reads it
(save_for_transformers). The bundled GPT-2 tokenizer and the interface every tokenizer shares are in
gemma3/tokenizer.py.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from ..config import LIMITS
from ..tokenizer import ENDOFTEXT, GPT2Tokenizer, gpt2_tokenizer, load_gpt2_ranks


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer.json (e.g. google/gemma-3-270m).

    There is no decode_bytes: byte-level and byte-fallback decoders both turn an incomplete
    UTF-8 sequence into U+FFFD, so a streamer should hold back decoded text that ends in
    "\\ufffd" until more ids arrive (works for GPT-2 too).
    """

    def __init__(self, path=None, tok=None, name=None):
        from tokenizers import Tokenizer

        if tok is None:
            path = Path(path)
            self.path = path / "tokenizer.json" if path.is_dir() else path
            tok = Tokenizer.from_file(str(self.path))
            name = name or self.path.parent.name or "tokenizer.json"
        self.tok = tok
        self.name = name or "tokenizer"
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

    rows = None  # set by limit(): the model's embedding rows

    def encode(self, text: str) -> list[int]:
        """Ids without BOS/EOS added; prepend bos_id yourself when it is not None.

        Unlike GPT-2 here, special tokens typed in the text ("<eos>", "<start_of_turn>") become
        their ids, as transformers does for the same tokenizer.json. After limit(rows), text holding a
        token without an embedding row is refused with one sentence.
        """
        ids = self.tok.encode(text, add_special_tokens=False).ids
        if self.rows is not None and ids and max(ids) >= self.rows:
            token = self.tok.id_to_token(next(i for i in ids if i >= self.rows))
            raise ValueError(f"The text holds the token {token!r}, which this model has no embedding for; "
                             "leave it out.")
        return ids

    def limit(self, rows: int):
        """Use only the ids a model with `rows` embedding rows has: Gemma's tokenizers list more entries than
        its embedding rows (unused and multimodal tokens, after the last row). encode refuses text holding
        one of them (the model cannot read it), and the model, whose logits cover its rows only, never
        samples one; a BOS without a row is refused at once."""
        if self.bos_id is not None and self.bos_id >= rows:
            raise ValueError(f"The tokenizer's BOS token has id {self.bos_id}, beyond the model's {rows:,} "
                             "embedding rows; the tokenizer does not belong to this model.")
        self.rows = self.vocab_size = rows
        self.stop_ids = {i for i in self.stop_ids if i < rows}
        if self.eot_id is not None and self.eot_id >= rows:
            self.eot_id = min(self.stop_ids, default=None)

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def save(self, folder):
        """Write tokenizer.json into folder."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.tok.save(str(Path(folder) / "tokenizer.json"))



def save_for_transformers(tokenizer, folder, model_max_length: int):
    """Write `tokenizer` into `folder` so that transformers' AutoTokenizer.from_pretrained loads the same tokens.

    GPT-2: vocab.json, merges.txt and tokenizer_config.json, as openai-community/gpt2 has them: transformers'
    GPT2Tokenizer with <|endoftext|> as BOS, EOS and UNK. No tokenizer.json, so the folder still loads here
    with this exact tokenizer. Any other (HFTokenizer): tokenizer.json and a tokenizer_config.json naming its
    special tokens, which AutoTokenizer loads as this very tokenizer (BOS added the way tokenizer.json's
    post-processor adds it)."""
    folder = Path(folder)
    if isinstance(tokenizer, GPT2Tokenizer):
        tokens, merges = gpt2_vocab()
        (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False),
                                           encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        _write_tokenizer_config(folder, "GPT2Tokenizer", model_max_length, add_prefix_space=False,
                                bos_token=ENDOFTEXT, eos_token=ENDOFTEXT, unk_token=ENDOFTEXT)
        return
    tokenizer.save(folder)
    tok = tokenizer.tok
    name = tok.id_to_token
    tokens = dict(bos_token=tokenizer.bos_id, eos_token=tokenizer.eot_id, pad_token=tok.token_to_id("<pad>"),
                  unk_token=tok.token_to_id(getattr(tok.model, "unk_token", None) or "<unk>"))
    _write_tokenizer_config(folder, "PreTrainedTokenizerFast", model_max_length,
                            **{k: name(i) for k, i in tokens.items() if i is not None})


def _write_tokenizer_config(folder: Path, tokenizer_class: str, model_max_length: int, **settings):
    config = dict(tokenizer_class=tokenizer_class, model_max_length=model_max_length, **settings)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


# ---- from a GGUF file's metadata ------------------------------------------------------------------------
# llama.cpp's token types (gguf.TokenType): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
_CONTROL, _USER_DEFINED = 3, 4


def tokenizer_from_gguf_meta(meta: dict, name: str = "gguf", rows: int | None = None):
    """Our tokenizer interface over the vocabulary of a GGUF file (`tokenizer.ggml.*` keys).

    "gpt2": byte-level BPE from tokens + merges; GPT-2's own vocabulary (as our exports write it) gives the
    bundled GPT-2 tokenizer. "llama": SentencePiece BPE as Gemma uses it (no merges stored: the vocabulary
    order is the merge order, text spaces become "\u2581", unknown bytes fall back to <0xNN> tokens).
    """
    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ValueError("The GGUF file holds no tokenizer (no tokenizer.ggml.tokens); it cannot be used for text.")
    _check_vocabulary(meta, tokens)
    tokens = tokens[:rows]  # Gemma's list more entries than embedding rows: the model can read none beyond
    if kind == "gpt2":
        tok = _byte_level(meta, tokens)
        if tok is None:
            return gpt2_tokenizer()
    elif kind == "llama":
        tok = _sentencepiece(tokens)
    else:
        raise ValueError(f"The GGUF file's tokenizer is of type {kind!r}; only 'llama' (SentencePiece, as "
                         "Gemma's) and 'gpt2' (byte-level BPE) are supported.")
    types = (meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))[:len(tokens)]
    _add_special(tok, tokens, types)
    bos, eos = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    for key, value in (("bos", bos), ("eos", eos)):
        if value is not None and (type(value) is not int or not 0 <= value < len(tokens)):
            raise ValueError(f"The GGUF file's tokenizer.ggml.{key}_token_id is not the id of one of its "
                             f"{len(tokens):,} tokens.")
    add_bos = meta.get("tokenizer.ggml.add_bos_token", kind == "llama")
    if add_bos and bos is not None:
        from tokenizers import processors

        tok.post_processor = processors.TemplateProcessing(single=f"{tokens[bos]} $A",
                                                           special_tokens=[(tokens[bos], bos)])
    out = HFTokenizer(tok=tok, name=name)
    if eos is not None:
        out.eot_id = int(eos)
        out.stop_ids = out.stop_ids | {int(eos)}
    return out


def _check_vocabulary(meta: dict, tokens):
    """Refuse, in one sentence, a vocabulary that is not lists of strings, or whose entries are longer than
    LIMITS allow: rebuilding the tokenizer costs time in proportion to each entry's length times its own."""
    merges, types = meta.get("tokenizer.ggml.merges", []), meta.get("tokenizer.ggml.token_type", [])
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens) \
            or not isinstance(merges, list) or not all(isinstance(m, str) and " " in m for m in merges) \
            or not isinstance(types, list):
        raise ValueError("The GGUF file's tokenizer.ggml.tokens, merges or token_type are not lists of the "
                         "right kind; re-download or re-export it.")
    longest, total = max(map(len, tokens)), sum(map(len, tokens))
    if longest > LIMITS["token_chars"] or total > LIMITS["vocab_chars"]:
        raise ValueError(f"The GGUF file's vocabulary has an entry of {longest:,} characters and "
                         f"{total:,} in all; at most {LIMITS['token_chars']:,} and {LIMITS['vocab_chars']:,} "
                         "are read.")


def _byte_level(meta, tokens):
    """A `tokenizers` byte-level BPE, or None when the vocabulary is GPT-2's own (bundled, exact)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    merges = meta.get("tokenizer.ggml.merges") or []
    gpt2_tokens, gpt2_merges = gpt2_vocab()
    if list(tokens[:len(gpt2_tokens)]) == gpt2_tokens and list(merges) == gpt2_merges \
            and all(t.startswith("[PAD") for t in tokens[len(gpt2_tokens):]):
        return None
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]  # those of tokens beyond the embedding rows dropped
    tok = Tokenizer(models.BPE(vocab, [p for p in pairs if p[0] in vocab and p[1] in vocab and p[0] + p[1] in vocab]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece(tokens):
    """Gemma's SentencePiece BPE rebuilt from its vocabulary: a token of several spaces is stored as spaces
    but looked up as "\u2581"s; every token splits into pairs of tokens, merged in vocabulary order."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    tokens = ["\u2581" * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab = {t: i for i, t in enumerate(tokens)}
    # Each entry's splits cost time in proportion to its length (at most LIMITS["token_chars"]), so the
    # whole rebuild is linear in the vocabulary's characters; every merge names the vocabulary's own strings.
    pieces = {t: t for t in vocab}
    merges = []
    for token in tokens:
        pairs = [(left, right) for k in range(1, len(token))
                 if (left := pieces.get(token[:k])) and (right := pieces.get(token[k:]))]
        pairs.sort(key=lambda p: (-len(p[0]), vocab[p[0]], vocab[p[1]]))
        merges += pairs
        if len(merges) > LIMITS["vocab_merges"]:
            raise ValueError(f"The GGUF file's vocabulary makes more than {LIMITS['vocab_merges']:,} merges; "
                             "it is not a SentencePiece vocabulary this package reads.")
    unk = next((t for t in ("<unk>",) if t in vocab), None)
    tok = Tokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    return tok


def _add_special(tok, tokens, types):
    """Control tokens (<bos>, <start_of_turn>, <|endoftext|> ...) as special tokens, user-defined ones as added
    tokens, so that either typed in the text stays one token, as llama.cpp matches them."""
    from tokenizers import AddedToken

    control = [AddedToken(t, normalized=False, special=True) for t, k in zip(tokens, types) if k == _CONTROL]
    user = [AddedToken(t, normalized=False, special=False) for t, k in zip(tokens, types) if k == _USER_DEFINED]
    if control:
        tok.add_special_tokens(control)
    if user:
        tok.add_tokens(user)


# ---- GPT-2's vocabulary as byte-level tokens and merges (transformers' and llama.cpp's form) ----------

@lru_cache(maxsize=1)
def byte_spelling() -> dict[int, str]:
    """GPT-2's printable spelling of each byte (bytes_to_unicode), which byte-level vocabularies use."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def _spell(token: bytes) -> str:
    s = byte_spelling()
    return "".join(s[b] for b in token)


def _two_parts(ranks: dict, token: bytes, rank: int) -> list[bytes]:
    """BPE of `token` with the merges ranked below its own: the pair it was merged from."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < rank and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


@lru_cache(maxsize=1)
def gpt2_vocab() -> tuple[list[str], list[str]]:
    """GPT-2's tokens (byte-level spelling, by id, <|endoftext|> last) and merges ("a b", by rank)."""
    ranks = load_gpt2_ranks()
    by_id = sorted(ranks, key=ranks.get)
    merges = []
    for token in by_id:
        if len(token) > 1:
            parts = _two_parts(ranks, token, ranks[token])
            if len(parts) != 2:
                raise ValueError("The GPT-2 ranks file does not describe a BPE vocabulary.")
            merges.append(f"{_spell(parts[0])} {_spell(parts[1])}")
    return [_spell(t) for t in by_id] + [ENDOFTEXT], merges
