"""GGUF both ways: files written here with gguf.GGUFWriter the way llama.cpp's converter writes Gemma 3
(transformers names -> gguf's own tensor-name map, norms stored as 1 + w) load with the weights they were
written from; our export reads back in transformers (an independent GGUF reader) with our logits."""

import numpy as np
import pytest
import torch

import gemma3
from gemma3 import Gemma3, Gemma3Config
from gemma3.io.layouts import from_native

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

TEXTS = ["Once upon a time, there was a little girl named Lily.",
         'She said: "Hello, Tom!"  Then they played with 3 red balls... é ü 日本',
         "  two spaces\nand a new line"]


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    model = Gemma3(Gemma3Config.from_preset("tiny", **overrides)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # zero at init: random, so a norm read without its +1 undone shows
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def write_like_llama_cpp(path, model, qtype=Q.F32, arch="gemma3", tokenizer="gpt2", qtypes=None):
    """A GGUF written as convert_hf_to_gguf.py writes Gemma 3, with names from gguf's own map."""
    cfg = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, cfg.layers)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(cfg.context)
    w.add_embedding_length(cfg.hidden)
    w.add_block_count(cfg.layers)
    w.add_feed_forward_length(cfg.ffn)
    w.add_head_count(cfg.heads)
    w.add_head_count_kv(cfg.kv_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_sliding_window(cfg.window)
    w.add_rope_freq_base(cfg.rope_global_base)
    if tokenizer == "gpt2":
        from gemma3.io.tokenizer_files import gpt2_vocab
        tokens, merges = gpt2_vocab()
        w.add_tokenizer_model("gpt2")
        w.add_token_list(tokens)
        w.add_token_types([1] * (len(tokens) - 1) + [3])
        w.add_token_merges(merges)
        w.add_eos_token_id(50256)
        w.add_bos_token_id(50256)
        w.add_add_bos_token(False)
    else:
        tokenizer(w)
    for hf_name, t in from_native(model.state_dict()).items():
        name = names.get_name(hf_name.removesuffix(".weight")) + ".weight"
        a = t.detach().float().numpy()
        if "norm" in hf_name:
            w.add_tensor(name, a + np.float32(1))  # llama.cpp stores Gemma norms with the 1 added, in F32
            continue
        kind = (qtypes or {}).get(hf_name, qtype)
        if isinstance(kind, np.ndarray):  # raw blocks made by a test
            w.add_tensor(name, kind, raw_dtype=Q.Q4_K)
        elif kind == Q.F32:
            w.add_tensor(name, a)
        elif kind == Q.F16:
            w.add_tensor(name, a.astype(np.float16))
        else:
            w.add_tensor(name, quantize(a, kind), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def stored(a: torch.Tensor, kind) -> torch.Tensor:
    """What a tensor becomes once written in `kind` and read back by gguf's reference code."""
    a = a.detach().float().numpy()
    if kind == Q.F16:
        return torch.from_numpy(a.astype(np.float16).astype(np.float32))
    if kind == Q.F32:
        return torch.from_numpy(a)
    return torch.from_numpy(np.array(dequantize(quantize(a, kind), kind), dtype=np.float32))


@pytest.mark.parametrize("kind", [Q.F32, Q.F16, Q.BF16, Q.Q8_0], ids=lambda k: k.name)
def test_a_gemma3_gguf_loads_the_weights_it_was_written_from(tmp_path, kind):
    model = tiny_model()
    f = write_like_llama_cpp(tmp_path / "tiny.gguf", model, kind)
    loaded, tok = gemma3.load_model(f, device="cpu", dtype=torch.float32)
    assert loaded.config == model.config
    assert tok.name == "gpt2" and tok.encode(TEXTS[0]) == gemma3.gpt2_tokenizer().encode(TEXTS[0])
    got, want = loaded.state_dict(), model.state_dict()
    assert set(got) == set(want)
    for name, w in want.items():
        if "norm" in name:
            # the +1 comes off: stored (1 + w) in fp32, read back as exactly stored - 1
            again = torch.from_numpy(w.numpy() + np.float32(1)) - 1
            assert torch.equal(got[name], again), name
            torch.testing.assert_close(got[name], w, atol=1.2e-7, rtol=0)
        else:
            assert torch.equal(got[name], stored(w, kind)), name
    ids = torch.randint(0, 50257, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, ref = loaded(ids), model(ids)
    if kind == Q.F32:
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    else:
        assert (ours - ref).abs().max() < 0.1 * ref.abs().max()  # rounding, not a wrong weight


def test_gemma_s_norm_plus_one_is_undone_so_the_model_multiplies_by_what_llama_cpp_does(tmp_path):
    """In fp32, 1 + (stored - 1) is the stored value: RMSNorm scales by the exact weight llama.cpp uses."""
    model = tiny_model()
    f = write_like_llama_cpp(tmp_path / "tiny.gguf", model)
    loaded, _ = gemma3.load_model(f, device="cpu", dtype=torch.float32)
    stored_norm = torch.from_numpy(model.final_norm.weight.detach().numpy() + np.float32(1))
    assert torch.equal(1.0 + loaded.final_norm.weight, stored_norm)


def q4_k_blocks(rows: int, cols: int, seed=0):
    """Q4_K blocks built by hand so each value is known: d = 0.5, dmin = 0.25, sub-block scales j + 1 and
    mins j (j = 0..7), 4-bit quants q; value = d * scale * q - dmin * min (ggml's dequantize_row_q4_K)."""
    rng = np.random.default_rng(seed)
    n = rows * cols // 256
    q = rng.integers(0, 16, size=(n, 8, 32), dtype=np.uint8)  # 8 sub-blocks of 32
    sc, mn = np.arange(1, 9, dtype=np.uint8), np.arange(0, 8, dtype=np.uint8)
    scales = np.zeros(12, dtype=np.uint8)  # 6-bit scales/mins packed as in get_scale_min_k4
    scales[0:4] = sc[0:4] | ((sc[4:8] >> 4) << 6)
    scales[4:8] = mn[0:4] | ((mn[4:8] >> 4) << 6)
    scales[8:12] = (sc[4:8] & 0xF) | ((mn[4:8] & 0xF) << 4)
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(n, 128)  # 32 bytes: sub-block 2i low nibbles, 2i+1 high
    head = np.array([0.5, 0.25], dtype=np.float16).view(np.uint8)
    blocks = np.concatenate([np.tile(head, (n, 1)), np.tile(scales, (n, 1)), qs], axis=1)
    values = 0.5 * sc[None, :, None] * q.astype(np.float32) - 0.25 * mn[None, :, None]
    return blocks.reshape(rows, -1), torch.from_numpy(values.reshape(rows, cols).astype(np.float32))


def test_a_q4_k_tensor_dequantises_to_the_values_its_blocks_hold(tmp_path):
    model = tiny_model(hidden=256)  # k-quant blocks span 256 values: rows of the hidden size
    rows, cols = model.blocks[0].attn.wq.weight.shape
    blocks, values = q4_k_blocks(rows, cols)
    assert torch.equal(torch.from_numpy(dequantize(blocks, Q.Q4_K)), values)  # the hand decoding is ggml's
    f = write_like_llama_cpp(tmp_path / "k.gguf", model, Q.F16,
                             qtypes={"model.layers.0.self_attn.q_proj.weight": blocks})
    loaded, _ = gemma3.load_model(f, device="cpu", dtype=torch.float32)
    assert torch.equal(loaded.blocks[0].attn.wq.weight, values)


def test_another_architecture_gets_one_sentence(tmp_path, capsys):
    f = write_like_llama_cpp(tmp_path / "llama.gguf", tiny_model(), arch="llama")
    with pytest.raises(ValueError, match=r"^llama\.gguf is a GGUF of the 'llama' architecture; only Gemma 3"):
        gemma3.load_model(f)
    from gemma3.__main__ import main
    assert main(["info", "--model", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: llama.gguf is a GGUF") and err[0].startswith("Loading") and len(err) == 2


@pytest.mark.parametrize("cut", [0.5, 0.999, 0.001])
def test_a_truncated_gguf_gets_one_sentence(tmp_path, cut):
    f = write_like_llama_cpp(tmp_path / "m.gguf", tiny_model())
    data = f.read_bytes()
    f.write_bytes(data[:max(8, int(len(data) * cut))])
    with pytest.raises(ValueError, match=r"^m\.gguf (could not be read as a GGUF file|has a damaged tensor)"):
        gemma3.load_model(f)


def test_a_folder_with_one_gguf_loads_and_with_two_says_which(tmp_path):
    model = tiny_model()
    write_like_llama_cpp(tmp_path / "a.gguf", model)
    loaded, _ = gemma3.load_model(tmp_path, device="cpu")
    assert loaded.config == model.config
    write_like_llama_cpp(tmp_path / "b.gguf", model)
    with pytest.raises(ValueError, match=r"several GGUF files \(a\.gguf, b\.gguf\); name the one"):
        gemma3.load_model(tmp_path)


def test_the_270m_metadata_gives_the_270m_config():
    """The keys llama.cpp's converter writes for google/gemma-3-270m give what its config.json gives."""
    from gemma3.io.gguf import config_from_meta
    meta = {"general.architecture": "gemma3", "gemma3.context_length": 32768, "gemma3.embedding_length": 640,
            "gemma3.block_count": 18, "gemma3.feed_forward_length": 2048, "gemma3.attention.head_count": 4,
            "gemma3.attention.head_count_kv": 1, "gemma3.attention.key_length": 256,
            "gemma3.attention.value_length": 256, "gemma3.rope.freq_base": np.float32(1e6),
            "gemma3.attention.sliding_window": 512, "gemma3.attention.layer_norm_rms_epsilon": np.float32(1e-6)}
    hf = {"vocab_size": 262144, "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18,
          "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "max_position_embeddings": 32768,
          "rope_theta": 1e6, "rope_local_base_freq": 1e4, "sliding_window": 512, "query_pre_attn_scalar": 256,
          "rms_norm_eps": 1e-6, "sliding_window_pattern": 6, "tie_word_embeddings": True}
    assert config_from_meta(meta, 262144, tied=True) == Gemma3Config.from_hf(hf)


def sentencepiece_vocab(w):
    """A Gemma-style SentencePiece vocabulary (tokenizer.ggml.model = llama): specials, byte fallback,
    "\u2581" for spaces, a token of two spaces stored as spaces, pieces in merge order."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    pieces = ["\u2581", "o", "n", "c", "e", "u", "p", "a", "t", "i", "m", "h", "r", "s", "l", "d", "y",
              "\u2581t", "he", "\u2581the", "on", "\u2581on", "ce", "\u2581once", "up", "\u2581up", "  ",
              "\u2581a", "im", "ime", "ly", "\u2581time", "er", "\u2581there", "\u2581upon"]
    tokens = specials + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [3, 3, 3, 2, 3, 4, 4] + [6] * 256 + [1] * len(pieces)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_add_bos_token(True)
    return tokens


def test_a_sentencepiece_vocabulary_tokenizes_as_transformers_reads_the_same_file(tmp_path):
    from transformers import AutoTokenizer
    vocab = []
    model = tiny_model(vocab_size=7 + 256 + 35)
    write_like_llama_cpp(tmp_path / "sp.gguf", model, tokenizer=lambda w: vocab.extend(sentencepiece_vocab(w)))
    _, tok = gemma3.load_model(tmp_path / "sp.gguf", device="cpu")
    ref = AutoTokenizer.from_pretrained(tmp_path, gguf_file="sp.gguf")
    assert (tok.eot_id, tok.bos_id, tok.vocab_size) == (1, 2, len(vocab))
    assert 6 in tok.stop_ids  # <end_of_turn>
    for text in ["once upon a time there", "the  time", "  once", "Ünïcode 日本 on", "<start_of_turn>up"] + TEXTS:
        ids = tok.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False), text
        assert tok.decode(ids) == ref.decode(ids) == text
    pieces = ("\u2581once", "\u2581upon", "\u2581a", "\u2581time")
    assert tok.encode(" once upon a time") == [vocab.index(t) for t in pieces]
    assert tok.encode("é") == [7 + 0xC3, 7 + 0xA9]  # not in the vocabulary: its UTF-8 bytes
    gemma3.save_model(gemma3.load_model(tmp_path / "sp.gguf", device="cpu")[0], tok, tmp_path / "ours")
    _, again = gemma3.load_model(tmp_path / "ours", device="cpu")  # our format: the tokenizer as tokenizer.json
    assert (again.eot_id, again.bos_id) == (1, 2) and all(again.encode(t) == tok.encode(t) for t in TEXTS)


# ---- export: our GGUF read by transformers ----------------------------------------------------------
# transformers reads no attention scale from a gemma3 GGUF (it keeps query_pre_attn_scalar 256, as llama.cpp
# uses head_dim): the tiny model with the 270m's head size, so both readers agree on what the file means.

def export_model():
    return tiny_model(seed=3, head_dim=256, query_pre_attn_scalar=256)


# measured on this model: f16 0.0019, q8_0 0.042 of the largest logit (bf16 0.013); a weight in the wrong
# place or a norm without its 1 taken off moves logits by their own size. f16 (a rounding of f32, read by our
# reader in test_a_gemma3_gguf_loads_the_weights_it_was_written_from) is left out: transformers' read takes 11 s.
@pytest.mark.parametrize("kind,tol", [("f32", 1e-5), ("q8_0", 0.1)])
def test_our_export_read_by_transformers_gives_our_logits(tmp_path, kind, tol):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from gemma3.io.gguf import export_gguf
    model, tok = export_model(), gemma3.gpt2_tokenizer()
    export_gguf(model, tok, tmp_path / "m.gguf", kind)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
    cfg = hf.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.head_dim, cfg.intermediate_size, cfg.sliding_window) == (64, 7, 4, 1, 256, 128, 8)
    assert [t.split("_")[0] for t in cfg.layer_types] == model.config.layer_types
    ids = torch.tensor([tok.encode(" ".join(TEXTS))])
    with torch.no_grad():
        theirs, ours = hf(ids).logits, model(ids)
        back, _ = gemma3.load_model(tmp_path / "m.gguf", device="cpu", dtype=torch.float32)
        ours_read = back(ids)
    torch.testing.assert_close(theirs, ours_read, atol=2e-4, rtol=0)  # same file, two readers, same logits
    err = (theirs - ours).abs().max() / ours.abs().max()
    assert err < tol, f"{kind}: {err:.2e}"  # f32 exact; q8_0 within its rounding
    if kind != "f32":
        return  # the vocabulary is written the same whatever the weights' type: read it once
    ref = AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    for text in TEXTS:
        assert ref.encode(text, add_special_tokens=False) == tok.encode(text)
    assert ref.eos_token_id == tok.eot_id == 50256


def test_convert_to_gguf_on_the_command_line_round_trips(tmp_path):
    from gemma3.__main__ import main
    model, tok = export_model(), gemma3.gpt2_tokenizer()
    gemma3.save_model(model, tok, tmp_path / "ours")
    assert main(["convert", "--model", str(tmp_path / "ours"), "--format", "gguf", "--dtype", "bf16",
                 "--out", str(tmp_path / "m.gguf"), "--device", "cpu"]) == 0
    back, back_tok = gemma3.load_model(tmp_path / "m.gguf", device="cpu", dtype=torch.float32)
    assert back.config == model.config and back_tok.name == "gpt2"
    for name, w in model.state_dict().items():
        want = w if "norm" in name else w.to(torch.bfloat16).float()
        torch.testing.assert_close(back.state_dict()[name], want, atol=1.2e-7 if "norm" in name else 0, rtol=0)
    with pytest.raises(ValueError, match="query_pre_attn_scalar is not its head_dim"):
        from gemma3.io.gguf import export_gguf
        export_gguf(tiny_model(query_pre_attn_scalar=16), tok, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists() and not list(tmp_path.glob(".x.gguf*"))


def test_a_gguf_type_for_another_format_gets_one_sentence(tmp_path, capsys):
    from gemma3.__main__ import main
    gemma3.save_model(tiny_model(), gemma3.gpt2_tokenizer(), tmp_path / "ours")
    assert main(["convert", "--model", str(tmp_path / "ours"), "--format", "hf", "--dtype", "q8_0",
                 "--out", str(tmp_path / "hf")]) == 2
    assert capsys.readouterr().err.strip() == ("error: --dtype q8_0 is a GGUF type; for --format hf choose "
                                               "auto, fp32, bf16.")
    assert not (tmp_path / "hf").exists()


# ---- hf:owner/name repositories of GGUF files ---------------------------------------------------------

@pytest.fixture
def online_hub(monkeypatch):
    """The Hub as reachable, with list_repo_files answering from a given list (no network is used)."""
    import huggingface_hub
    from gemma3.io import hub
    monkeypatch.setattr(hub, "_hub_offline", lambda: False)
    monkeypatch.setattr(hub, "hub_reachable", lambda endpoint=None: True)
    files = []
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id, **kw: list(files))
    return files


def test_a_hub_repo_of_several_ggufs_asks_which_one(online_hub):
    online_hub += ["README.md", "gemma-3-270m-Q4_K_M.gguf", "gemma-3-270m-Q8_0.gguf"]
    with pytest.raises(ValueError, match=r"^someone/gemma-3-270m-GGUF holds several GGUF files "
                                         r"\(gemma-3-270m-Q4_K_M\.gguf, gemma-3-270m-Q8_0\.gguf\); pick one as "
                                         r"hf:someone/gemma-3-270m-GGUF/<file>"):
        gemma3.load_model("hf:someone/gemma-3-270m-GGUF")


def test_a_hub_gguf_file_named_in_the_source_is_the_one_loaded(tmp_path, online_hub, monkeypatch):
    import huggingface_hub
    model = tiny_model()
    write_like_llama_cpp(tmp_path / "gemma-3-270m-Q8_0.gguf", model, Q.Q8_0)
    asked = []

    def download(repo_id, filename, **kw):
        asked.append((repo_id, filename))
        return str(tmp_path / filename)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    online_hub += ["gemma-3-270m-Q4_K_M.gguf", "gemma-3-270m-Q8_0.gguf"]
    loaded, _ = gemma3.load_model("hf:someone/repo/gemma-3-270m-Q8_0.gguf", device="cpu")
    assert asked == [("someone/repo", "gemma-3-270m-Q8_0.gguf")] and loaded.config == model.config
    online_hub.remove("gemma-3-270m-Q4_K_M.gguf")  # one GGUF only: it is the one, unnamed
    gemma3.load_model("hf:someone/repo", device="cpu")
    assert asked[-1] == ("someone/repo", "gemma-3-270m-Q8_0.gguf")


def test_a_byte_level_vocabulary_of_its_own_tokenizes_as_transformers_reads_it(tmp_path):
    """A "gpt2"-model tokenizer that is not GPT-2's own (here: only its first 3000 merges) is built from the
    file's tokens and merges, not swapped for the bundled GPT-2."""
    from transformers import AutoTokenizer
    from gemma3.io.gguf import gguf_tokenizer
    from gemma3.io.tokenizer_files import gpt2_vocab
    tokens, merges = gpt2_vocab()

    def vocab(w):
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_types([1] * (len(tokens) - 1) + [3])
        w.add_token_merges(merges[:3000])
        w.add_eos_token_id(50256)
        w.add_bos_token_id(50256)
        w.add_add_bos_token(False)
    write_like_llama_cpp(tmp_path / "bl.gguf", tiny_model(), tokenizer=vocab)
    tok = gguf_tokenizer(tmp_path / "bl.gguf")
    ref = AutoTokenizer.from_pretrained(tmp_path, gguf_file="bl.gguf")
    assert tok.name != "gpt2" and tok.eot_id == 50256
    for text in TEXTS + ["a story<|endoftext|>Another"]:
        ids = tok.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False), text
        assert tok.decode(ids) == text
    assert tok.encode(TEXTS[0]) != gemma3.gpt2_tokenizer().encode(TEXTS[0])  # fewer merges: more pieces
