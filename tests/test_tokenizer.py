"""Tokenizer tests: GPT-2 from the bundled ranks file (offline) and a tiny HF tokenizer.json."""

import socket

import pytest

import gemma3
from gemma3 import tokenizer as T


@pytest.fixture(scope="module")
def gpt2():
    return T.gpt2_tokenizer()


def test_known_ids(gpt2):
    assert gpt2.encode("Once upon a time") == [7454, 2402, 257, 640]
    assert gpt2.encode(" the") == [262]
    assert gpt2.encode("Hello") == [15496]
    assert gpt2.encode(" world") == [995]
    assert gpt2.encode("Hello world") == [15496, 995]


def test_sizes_and_names(gpt2):
    assert gpt2.eot_id == 50256 and gpt2.stop_ids == {50256}
    assert gpt2.vocab_size == 50257
    assert gpt2.name == "gpt2" and gpt2.bos_id is None
    assert gpt2.decode([50256]) == "<|endoftext|>"


def test_round_trip_unicode(gpt2):
    text = "Crème brûlée à Zürich 😀🎉 naïve café — 日本語\n\n  tabs\tand  spaces "
    ids = gpt2.encode(text)
    assert gpt2.decode(ids) == text
    assert gpt2.decode_bytes(ids) == text.encode("utf-8")


def test_split_character_is_held_back_by_bytes(gpt2):
    ids = gpt2.encode("😀")
    assert len(ids) > 1  # the emoji spans several byte-level tokens
    partial = gpt2.decode_bytes(ids[:1])
    with pytest.raises(UnicodeDecodeError):
        partial.decode("utf-8")
    assert gpt2.decode(ids[:1]).endswith("\ufffd")


def test_literal_endoftext_is_plain_text(gpt2):
    ids = gpt2.encode("a <|endoftext|> b")
    assert 50256 not in ids
    assert gpt2.decode(ids) == "a <|endoftext|> b"


def test_pattern_matches_installed_tiktoken():
    from tiktoken_ext.openai_public import r50k_pat_str

    assert T.GPT2_PAT == r50k_pat_str


def test_ranks_parse_matches_tiktoken_loader(monkeypatch):
    from tiktoken.load import load_tiktoken_bpe

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # disable tiktoken's temp-dir copy
    assert T.load_gpt2_ranks() == load_tiktoken_bpe(str(T.GPT2_RANKS), T.GPT2_SHA256)


def test_builds_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    T.gpt2_tokenizer.cache_clear()
    tok = T.gpt2_tokenizer()
    assert tok.encode("Once upon a time") == [7454, 2402, 257, 640]
    assert gemma3.load_tokenizer(None) is tok


def test_missing_or_corrupt_ranks(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        T.GPT2Tokenizer(tmp_path / "nope.tiktoken")
    bad = tmp_path / "gpt2.tiktoken"
    bad.write_bytes(T.GPT2_RANKS.read_bytes()[:-10])
    with pytest.raises(ValueError, match="corrupt"):
        T.GPT2Tokenizer(bad)


def test_load_tokenizer_falls_back_to_gpt2(tmp_path):
    assert isinstance(gemma3.load_tokenizer(tmp_path), T.GPT2Tokenizer)


@pytest.fixture
def tiny_hf(tmp_path):
    """A byte-level BPE tokenizer.json trained on a few sentences, with <bos>/<eos> like Gemma."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<eos>", "<bos>", "<end_of_turn>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    text = ["Once upon a time there was a tiny model.", "It liked crème brûlée and 😀.", "The end."]
    tok.train_from_iterator(text, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    tok.save(str(tmp_path / "tokenizer.json"))
    return tmp_path


def test_hf_tokenizer(tiny_hf, tmp_path):
    tok = gemma3.load_tokenizer(tiny_hf)
    assert isinstance(tok, gemma3.HFTokenizer)
    assert tok.eot_id == 1 and tok.bos_id == 2
    assert tok.stop_ids == {1, 3}
    assert tok.vocab_size == 300
    text = "Once upon a time, naïve 😀 things <eos>!"
    ids = tok.encode(text)
    assert ids[0] != tok.bos_id
    assert tok.eot_id in ids  # typed special tokens are matched, as transformers does
    assert tok.decode(ids) == text
    # an emoji cut in the middle decodes to a trailing U+FFFD, which the streamer holds back
    emoji = tok.encode("😀")
    assert len(emoji) > 1 and tok.decode(emoji[:1]).endswith("\ufffd")
    # save and reload gives the same tokenizer
    tok.save(tmp_path / "copy")
    assert gemma3.load_tokenizer(tmp_path / "copy").encode(text) == ids


def test_hf_without_bos_or_eos(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=280, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["hello world"], trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    hf = gemma3.HFTokenizer(tmp_path / "tokenizer.json")
    assert hf.bos_id is None and hf.eot_id == 0 and hf.stop_ids == {0}
