"""What a model file claims is checked before anything is built (issue 21, items 4, 6, 7 and 11): sizes
against gemma3.config.LIMITS and against the tensors present, only regular files opened, the config beside
a weights file named directly, impossible values refused in one sentence, and a GGUF whose tokenizer lists
more tokens than the model has embedding rows."""

import json
import os
import struct
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
import torch

import gemma3
from gemma3.io import checkpoints
from gemma3.config import LIMITS
from gemma3.generation import generate_tokens

sys.path.insert(0, str(Path(__file__).parent))
from test_gguf import TEXTS, sentencepiece_vocab, tiny_model, write_like_llama_cpp  # noqa: E402


def refused(load, match: str, within: float = 1.0) -> str:
    """The one-sentence refusal `load()` raises within `within` seconds (it runs in a thread, so a load that
    blocks fails the test instead of hanging it)."""
    outcome = []

    def run():
        try:
            load()
            outcome.append(None)
        except Exception as e:  # noqa: BLE001 - the test looks at what it was
            outcome.append(e)

    t0 = time.perf_counter()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(max(within, 5.0))
    elapsed = time.perf_counter() - t0
    assert outcome, f"the load was still running after {elapsed:.1f} s"
    e = outcome[0]
    assert isinstance(e, (ValueError, FileNotFoundError)), f"loaded, or {e!r}"
    message = str(e)
    assert "\n" not in message and "Traceback" not in message and message.endswith("."), message
    assert match in message, message
    assert elapsed < within, f"{elapsed:.2f} s: {message}"
    return message


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny model with window 64 and context 1024, in our format and in transformers' (fresh copies per test
    from `folder`)."""
    root = tmp_path_factory.mktemp("saved")
    torch.manual_seed(0)
    model = gemma3.Gemma3(gemma3.Gemma3Config.from_preset("tiny", window=64, context=1024)).eval()
    gemma3.save_model(model, gemma3.gpt2_tokenizer(), root / "ours")
    gemma3.export_hf(model, gemma3.gpt2_tokenizer(), root / "hf")
    return model, root


def folder(saved, tmp_path, kind="ours") -> Path:
    import shutil
    return Path(shutil.copytree(saved[1] / kind, tmp_path / kind))


@pytest.fixture
def never_built(monkeypatch):
    """Fails the test if a model is built: every claim must be refused before that."""
    def build(cfg):
        raise AssertionError(f"a model of {cfg.layers} layers was built before the claim was checked")
    monkeypatch.setattr(checkpoints, "Gemma3", build)


# ---- item 4: caps before allocation ---------------------------------------------------------------

@pytest.mark.parametrize("kind,key", [("ours", "layers"), ("hf", "num_hidden_layers")])
def test_a_config_claiming_10000_layers_is_refused_before_anything_is_built(saved, tmp_path, never_built, kind, key):
    """Issue 21 item 4: a config.json claiming 10,000 layers took 99 s to build; now one sentence at once."""
    f = folder(saved, tmp_path, kind)
    cfg = json.loads((f / "config.json").read_text())
    cfg[key] = 10_000
    (f / "config.json").write_text(json.dumps(cfg))
    refused(lambda: gemma3.load_model(f, device="cpu"), f"layers must be a whole number from 1 to {LIMITS['layers']}")


@pytest.mark.parametrize("key,value", [("layers", 200), ("hidden", 4096), ("vocab_size", 262_144), ("ffn", 8192)])
def test_a_size_the_weights_do_not_have_is_refused_before_anything_is_built(saved, tmp_path, never_built, key, value):
    """Issue 21 item 4: a claim within the limits is checked against the tensors present, not built first."""
    f = folder(saved, tmp_path)
    cfg = json.loads((f / "config.json").read_text())
    cfg[key] = value
    if key == "layers":
        cfg["layer_types"] = []
    (f / "config.json").write_text(json.dumps(cfg))
    refused(lambda: gemma3.load_model(f, device="cpu"), "Checkpoint does not match its config")


def gguf_bytes(*entries: bytes, tensors: int = 0) -> bytes:
    """A GGUF header as bytes: version 3, `tensors` tensors claimed, the given metadata entries (see `kv`)."""
    return b"GGUF" + struct.pack("<IQQ", 3, tensors, len(entries)) + b"".join(entries)


def gguf_str(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def kv(key: str, kind: int, payload: bytes) -> bytes:
    """One metadata entry: key, type (8 string, 9 array, 4 uint32 ...), the value's bytes."""
    return gguf_str(key) + struct.pack("<I", kind) + payload


def test_a_gguf_metadata_array_larger_than_the_limit_is_refused_with_memory_bounded(tmp_path):
    """Issue 21 item 4: a metadata array of 1-byte booleans became 8.5x the file's size in memory; now the
    values of all metadata together are capped."""
    n = LIMITS["gguf_metadata_values"] + 1
    f = tmp_path / "big.gguf"
    f.write_bytes(gguf_bytes(kv("general.architecture", 8, gguf_str("gemma3")),
                             kv("general.flags", 9, struct.pack("<IQ", 7, n) + bytes(n))))
    tracemalloc.start()
    try:
        refused(lambda: gemma3.load_model(f, device="cpu"), f"more than {LIMITS['gguf_metadata_values']:,} values")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < n, f"{peak:,} bytes for a file of {f.stat().st_size:,}"


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json", "m.gguf"])
def test_a_fifo_in_a_model_folder_is_refused_at_once(saved, tmp_path, name):
    """Issue 21 item 4: a FIFO in a model folder hung the loader forever (or was skipped silently); any file
    that is not a regular file is refused before it is opened."""
    f = folder(saved, tmp_path)
    if name == "m.gguf":  # a folder holding one GGUF, which is a FIFO
        (f / "config.json").unlink()
        (f / "model.safetensors").unlink()
    elif (f / name).exists():
        (f / name).unlink()
    os.mkfifo(f / name)
    try:
        refused(lambda: gemma3.load_model(f, device="cpu"), f"{name} is not a regular file")
        if name in ("model.safetensors", "m.gguf"):  # named directly, too
            refused(lambda: gemma3.load_model(f / name, device="cpu"), f"{name} is not a regular file")
    finally:
        fd = os.open(f / name, os.O_RDWR | os.O_NONBLOCK)  # lets a reader still blocked on the FIFO go
        os.close(fd)


def test_a_sentencepiece_vocabulary_is_rebuilt_in_linear_time_and_absurd_entries_are_refused():
    """Issue 21 item 4: one 800,000-character token took 79 s (every split of every token was copied); now
    an entry is at most LIMITS["token_chars"] long, and a vocabulary whose splits all match is refused once
    it makes more merges than LIMITS["vocab_merges"], in well under a second per million characters."""
    from gemma3.io.tokenizer_files import tokenizer_from_gguf_meta
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a", "b", "a" * 800_000]}
    refused(lambda: tokenizer_from_gguf_meta(meta), "an entry of 800,000 characters")
    runs = [c * k for c in "abcdefghijkl" for k in range(1, LIMITS["token_chars"] + 1)]  # every split is a token
    meta["tokenizer.ggml.tokens"] = runs
    refused(lambda: tokenizer_from_gguf_meta(meta), "merges", within=4.0)


def test_a_safetensors_header_claiming_more_than_the_limit_is_refused_before_it_is_read(saved, tmp_path, monkeypatch):
    """Issue 21 item 4: a header's length and tensor count are checked before the safetensors library reads it."""
    f = folder(saved, tmp_path)
    header = json.dumps({f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
                         for i in range(LIMITS["tensors"] + 1)}).encode()
    (f / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    monkeypatch.setattr(checkpoints, "load_file", lambda *a, **k: AssertionError("the header was handed on"))
    refused(lambda: gemma3.load_model(f, device="cpu"), f"more than the {LIMITS['tensors']:,} a model file may hold")


# ---- item 6: the config beside a weights file named directly --------------------------------------

@pytest.mark.parametrize("kind", ["ours", "hf"])
def test_a_weights_file_named_directly_uses_the_config_beside_it(saved, kind):
    """Issue 21 item 6: folder/model.safetensors loaded with the default window and context (512 / 32768);
    the config.json beside it says 64 / 1024."""
    model, root = saved
    loaded, _ = gemma3.load_model(root / kind / "model.safetensors", device="cpu", dtype=torch.float32)
    assert (loaded.config.window, loaded.config.context) == (64, 1024)
    assert loaded.config == model.config
    ids = torch.arange(100).view(1, -1)  # longer than the window: a wrong window changes the logits
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


# ---- item 7: impossible values ---------------------------------------------------------------------

@pytest.mark.parametrize("key,value,says", [
    ("window", 0, "window must be a whole number from 1"),
    ("hidden", -64, "hidden must be a whole number from 1"),
    ("heads", 0, "heads must be a whole number from 1"),
    ("context", 0, "context must be a whole number from 1"),
    ("rope_local_base", float("nan"), "rope_local_base must be a finite positive number"),
    ("rope_global_base", float("inf"), "rope_global_base must be a finite positive number"),
    ("norm_eps", float("nan"), "norm_eps must be a number from 0"),
    ("query_pre_attn_scalar", -1.0, "query_pre_attn_scalar must be a finite positive number"),
    ("window", "64", "window must be a whole number from 1"),
    ("head_dim", 31, "head_dim must be even"),
])
def test_an_impossible_config_is_refused_in_one_sentence(saved, tmp_path, key, value, says):
    """Issue 21 item 7: a config with sliding window 0 or NaN values loaded silently."""
    f = folder(saved, tmp_path)
    cfg = json.loads((f / "config.json").read_text())
    cfg[key] = value
    (f / "config.json").write_text(json.dumps(cfg))  # NaN and Infinity: as Python's json writes them
    refused(lambda: gemma3.load_model(f, device="cpu"), says)


@pytest.mark.parametrize("hf_key,value,says", [
    ("sliding_window", 0, "window must be a whole number from 1"),
    ("rms_norm_eps", float("nan"), "norm_eps must be a number from 0"),
    ("rope_parameters", "linear", "wrong type"),
    ("sliding_window_pattern", 0, "sliding_window_pattern must be a whole number"),
])
def test_an_impossible_transformers_config_is_refused_in_one_sentence(saved, tmp_path, hf_key, value, says):
    """Issue 21 item 7: the same for a transformers config.json."""
    f = folder(saved, tmp_path, "hf")
    cfg = json.loads((f / "config.json").read_text())
    cfg[hf_key] = value
    if hf_key == "sliding_window_pattern":
        del cfg["layer_types"]
    (f / "config.json").write_text(json.dumps(cfg))
    refused(lambda: gemma3.load_model(f, device="cpu"), says)


def test_a_gguf_value_or_tensor_of_an_unexpected_type_is_refused_in_one_sentence(tmp_path):
    """Issue 21 item 7: a GGUF whose block count is text ("7") or a float (7.9) loaded as 7 layers, and a tensor of
    the wrong shape gave a multi-line RuntimeError; each is one sentence now, before any tensor is read."""
    import gguf

    model = tiny_model()
    for value, says in [("7", "block_count is not a whole number"), (7.9, "block_count is not a whole number")]:
        class Writer(gguf.GGUFWriter):
            def add_block_count(self, n):
                (self.add_string if isinstance(value, str) else self.add_float32)("gemma3.block_count", value)
        real, gguf.GGUFWriter = gguf.GGUFWriter, Writer
        try:
            f = write_like_llama_cpp(tmp_path / "m.gguf", model)
        finally:
            gguf.GGUFWriter = real
        refused(lambda: gemma3.load_model(f, device="cpu"), says)
    wrong = tiny_model(ffn=96)  # every feed-forward matrix of another size than the metadata says
    f = write_like_llama_cpp(tmp_path / "w.gguf", wrong)
    data = bytearray(f.read_bytes())
    pos = data.index(b"gemma3.feed_forward_length") + len(b"gemma3.feed_forward_length") + 4
    data[pos:pos + 4] = (128).to_bytes(4, "little")
    f.write_bytes(bytes(data))
    refused(lambda: gemma3.load_model(f, device="cpu"), "Checkpoint does not match its config")


# ---- item 11: more tokenizer entries than embedding rows --------------------------------------------

EXTRA = ["<image_soft_token>", "<unused_a>", "\u2581once\u2581upon"]  # after the last row, as in Gemma's GGUF files
ROWS = 7 + 256 + 35  # sentencepiece_vocab's size


def gemma_like_gguf(tmp_path):
    """A tiny model of ROWS embedding rows in a GGUF whose SentencePiece vocabulary lists EXTRA after them."""
    def vocab(w):
        class Extra:
            def __getattr__(self, name):
                return getattr(w, name)

            def add_token_list(self, t):
                w.add_token_list(t + EXTRA)

            def add_token_scores(self, s):
                w.add_token_scores(s + [0.0] * len(EXTRA))

            def add_token_types(self, t):
                w.add_token_types(t + [3, 3, 1])
        sentencepiece_vocab(Extra())
    model = tiny_model(vocab_size=ROWS)
    return model, write_like_llama_cpp(tmp_path / "g.gguf", model, tokenizer=vocab)


def test_a_gguf_listing_more_tokens_than_embedding_rows_loads_and_never_uses_an_id_without_a_row(tmp_path):
    """Issue 21 item 11: a real Gemma GGUF lists more tokenizer entries than embedding rows (unused and
    multimodal tokens) and failed to load; it loads, with a tokenizer of the tokens that have a row, so no id
    without one is ever read or sampled: those tokens typed in the text are read as plain text."""
    model, f = gemma_like_gguf(tmp_path)
    loaded, tok = gemma3.load_model(f, device="cpu", dtype=torch.float32)
    assert loaded.config.vocab_size == tok.vocab_size == ROWS
    ids = tok.encode(" ".join(TEXTS) + " once upon a time")
    assert ids and max(ids) < ROWS
    with torch.no_grad():  # the same weights as written (F32): the logits of the model it was made from
        torch.testing.assert_close(loaded(torch.tensor([ids])), model(torch.tensor([ids])), atol=1e-5, rtol=0)
    for token in ["<image_soft_token>", "<unused_a>", " once upon"]:  # each of EXTRA, typed
        typed = tok.encode(f"a story{token} of")
        assert max(typed) < ROWS and tok.decode(typed) == f"a story{token} of"
    got = list(generate_tokens(loaded, [tok.bos_id] + ids, max_new_tokens=200, temperature=3.0, seed=0))
    assert len(got) > 20 and max(got) < ROWS


def test_a_tokenizer_json_listing_more_tokens_than_embedding_rows_refuses_text_needing_them(tmp_path):
    """Issue 21 item 11: the same vocabulary as a tokenizer.json beside the weights (in full: with EXTRA) loads;
    text that would become an id without an embedding row is refused in one sentence, other text is read."""
    from gemma3.io.gguf import _open
    from gemma3.io.tokenizer_files import tokenizer_from_gguf_meta
    model, f = gemma_like_gguf(tmp_path)
    full = tokenizer_from_gguf_meta(_open(f).meta)
    assert full.vocab_size == ROWS + len(EXTRA)
    gemma3.save_model(model, full, tmp_path / "ours")
    loaded, tok = gemma3.load_model(tmp_path / "ours", device="cpu", dtype=torch.float32)
    assert tok.vocab_size == ROWS and max(tok.encode(TEXTS[0])) < ROWS
    for text in ["a story<image_soft_token>", " once upon a time"]:
        refused(lambda: tok.encode(text), "which this model has no embedding for")
    got = list(generate_tokens(loaded, tok.encode(TEXTS[0]), max_new_tokens=100, temperature=3.0, seed=0))
    assert max(got) < ROWS
