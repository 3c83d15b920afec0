"""`python -m gemma3 convert --format hf` (gemma3.export_hf) writes the tokenizer with the model: transformers'
AutoTokenizer loads from the exported folder the tokenizer the model was trained with, the same ids for the same
text and the same text back, with the model's special tokens."""

import pytest
import torch

import gemma3
from gemma3.__main__ import main
from gemma3.io.tokenizer_files import HFTokenizer

transformers = pytest.importorskip("transformers")

TEXTS = ["Once upon a time, there was a little girl named Lily.",
         'She said: "Hello, Tom!"  Then they played with 3 red balls... it\'s 12:30',
         "  two spaces\nand a new line\n\n\tand a tab   ",
         "héllo wörld, naïve crème brûlée, 日本語, Ünïcode 😀 🙂"]


def round_trips(folder, ours, bos: bool):
    """AutoTokenizer from `folder` against our tokenizer: the same ids for each text, the text back, BOS in front
    exactly when the model reads text after one."""
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ref(text, add_special_tokens=False)["input_ids"] == ids, text
        assert ref(text)["input_ids"] == ([ours.bos_id] if bos else []) + ids, text
        assert ref.decode(ids) == ours.decode(ids) == text
    assert ref.eos_token_id == ours.eot_id
    return ref


def test_convert_hf_writes_the_gpt2_tokenizer(tmp_path):
    """Issue 21 item 12: the exported folder of a GPT-2-vocabulary model gives transformers GPT-2's tokenizer
    (it gave a 5-token one), with <|endoftext|> as its end of text, and still loads here as the bundled GPT-2."""
    torch.manual_seed(0)
    model = gemma3.Gemma3(gemma3.Gemma3Config.from_preset("tiny"))
    source = gemma3.save_model(model, gemma3.gpt2_tokenizer(), tmp_path / "native")
    out = tmp_path / "exported" / "hf"
    assert main(["convert", "--model", str(source), "--device", "cpu", "--format", "hf", "--out", str(out)]) == 0
    ref = round_trips(out, gemma3.gpt2_tokenizer(), bos=False)
    assert len(ref) == 50257 and ref.eos_token == "<|endoftext|>" == ref.decode([50256])
    assert ref.model_max_length == model.config.context
    assert gemma3.load_model(out, device="cpu")[1].name == "gpt2"


def byte_level_with_bos():
    """A byte-level BPE tokenizer.json with <pad>/<eos>/<bos> and BOS added to text, no <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>", "<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return HFTokenizer(tok=tok, name="byte-level")


def gemma_from_gguf(folder):
    """Gemma's SentencePiece-style tokenizer, as load_model reads it from a GGUF file's metadata."""
    from test_gguf import sentencepiece_vocab, tiny_model, write_like_llama_cpp

    write_like_llama_cpp(folder / "sp.gguf", tiny_model(vocab_size=7 + 256 + 35), tokenizer=sentencepiece_vocab)
    return gemma3.load_model(folder / "sp.gguf", device="cpu")[1]


@pytest.mark.parametrize("make", [gemma_from_gguf, lambda folder: byte_level_with_bos()], ids=["gemma", "byte-level"])
def test_export_hf_writes_a_tokenizer_json_tokenizer_as_itself(make, tmp_path):
    """Issue 21 item 12: a model with a tokenizer.json tokenizer (Gemma's SentencePiece from a GGUF, or a byte-level
    BPE) exports it so that AutoTokenizer adds BOS as the model expects and names the model's special tokens (the
    byte-level one failed to load: transformers assumed Gemma's <unk>)."""
    tok = make(tmp_path)
    model = gemma3.Gemma3(gemma3.Gemma3Config.from_preset("tiny", vocab_size=tok.vocab_size))
    out = gemma3.export_hf(model, tok, tmp_path / "exported" / "hf")
    ref = round_trips(out, tok, bos=True)
    assert (ref.bos_token, ref.eos_token, ref.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert ref.model_max_length == model.config.context
