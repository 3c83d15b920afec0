"""Issue 21: a few hundred malformed config.json files, safetensors headers and GGUF headers, made from a
fixed seed, handed to the loader. Each made-invalid one is refused with one sentence (a ValueError or
FileNotFoundError, one line, no traceback, no server path) within a second, with memory bounded; bytes
flipped at random in a GGUF header either load or are refused the same way, never anything else."""

import json
import math
import random
import resource
import shutil
import struct
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import torch

import gemma3

sys.path.insert(0, str(Path(__file__).parent))
from test_gguf import tiny_model, write_like_llama_cpp  # noqa: E402
from test_limits import gguf_bytes, gguf_str, kv  # noqa: E402

SEED = 21
PER_LOAD_S = 1.0
PER_LOAD_BYTES = 64 * 2**20  # Python memory a refused load may take at its peak (tracemalloc)
WHOLE_RUN_BYTES = 300 * 2**20  # growth of the process's peak resident memory over all the cases

BAD = [None, -1, 0, 10**12, 2**64, 1.5, "64", [], {}, True, float("nan"), float("inf"), -float("inf")]
SIZES = ["vocab_size", "hidden", "layers", "heads", "kv_heads", "head_dim", "ffn", "window", "context"]
NUMBERS = ["rope_local_base", "rope_global_base", "rope_global_scale", "query_pre_attn_scalar", "norm_eps"]
HF_NEEDED = ["num_hidden_layers", "hidden_size", "vocab_size", "intermediate_size", "num_attention_heads",
             "num_key_value_heads"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny model in our format, in transformers' and as a GGUF: the valid files the cases are made from."""
    root = tmp_path_factory.mktemp("valid")
    model = tiny_model()
    gemma3.save_model(model, gemma3.gpt2_tokenizer(), root / "ours")
    gemma3.export_hf(model, gemma3.gpt2_tokenizer(), root / "hf")
    write_like_llama_cpp(root / "m.gguf", model)
    return root


def config_cases(rng: random.Random, ours: dict, hf: dict):
    """(name, kind, config) with a value no model of these weights can have, or a key it needs missing."""
    for _ in range(90):
        cfg = dict(ours)
        key = rng.choice(SIZES + NUMBERS + ["tied_head", "layer_types"])
        bad = [v for v in BAD if not (key in NUMBERS[:4] and isinstance(v, (int, float)) and not isinstance(v, bool)
                                      and math.isfinite(v) and v > 0)]  # a positive base is a valid one
        cfg[key] = rng.choice(bad if key != "layer_types" else [["full"], ["sliding"] * 3, ["global"] * 7, "x", 7])
        yield f"ours {key}={cfg[key]!r}", "ours", cfg
    for _ in range(40):
        cfg = dict(hf)
        key = rng.choice(HF_NEEDED + ["sliding_window", "max_position_embeddings", "head_dim", "rms_norm_eps"])
        if rng.random() < 0.3 and key in HF_NEEDED:
            del cfg[key]
        else:
            cfg[key] = rng.choice([v for v in BAD if v is not None])
        yield f"hf {key}={cfg.get(key, '(missing)')!r}", "hf", cfg
    for text in ["", "{", "[1, 2]", "null", '"config"', "{" * 100_000, "[" * 100_000 + "]" * 100_000,
                 '{"format": "gemma3-tinystories", "layers": 1e999}', "\x00\xff" * 50]:
        yield f"garbage {text[:12]!r}", "ours", text


def safetensors_cases(rng: random.Random, valid: bytes):
    """(name, bytes) of a model.safetensors whose header claims what its bytes do not hold."""
    n = struct.unpack("<Q", valid[:8])[0]
    header = json.loads(valid[8:8 + n])
    body = valid[8 + n:]
    names = [k for k in header if k != "__metadata__"]

    def pack(h, data=body):
        raw = json.dumps(h).encode()
        return struct.pack("<Q", len(raw)) + raw + data

    for _ in range(25):
        yield "truncated", valid[:rng.randrange(0, len(valid) - 1)]
    for claim in [0, 1, 7, len(valid), 2**31, 2**63, 2**64 - 1]:
        yield f"header length {claim}", struct.pack("<Q", claim) + valid[8:]
    for _ in range(50):
        h = json.loads(json.dumps(header))
        t = h[rng.choice(names)]
        what = rng.randrange(6)
        if what == 0:
            t["shape"] = [rng.choice([2**40, 2**62, -1, 10**6])] * rng.randint(1, 4)
        elif what == 1:
            t["data_offsets"] = [rng.randrange(len(body)), rng.choice([len(body) + 1, 2**63, 0])]
        elif what == 2:
            t["dtype"] = rng.choice(["F99", "", "I32x", 7, None])
        elif what == 3:
            t["shape"] = rng.choice(["64", None, [1.5], {}])
        elif what == 4:
            del t[rng.choice(["dtype", "shape", "data_offsets"])]
        else:
            h = rng.choice([[], "x", 7, None])
        yield f"header field {what}", pack(h)
    many = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(10_001)}
    yield "10001 tensors", pack(many, b"")
    yield "not JSON", struct.pack("<Q", 20) + b"{not json at all...}" + body


def gguf_cases(rng: random.Random, valid: bytes):
    """(name, bytes, must_refuse) of GGUF files: headers that claim more than they hold (refused), and the
    valid file's header with bytes flipped at random (loaded or refused, never anything else)."""
    arch = kv("general.architecture", 8, gguf_str("gemma3"))
    for claim in [2**63, 10**9, 10_001, 50]:
        yield f"{claim} tensors", gguf_bytes(arch, tensors=claim), True
        yield f"{claim} metadata entries", b"GGUF" + struct.pack("<IQQ", 3, 0, claim) + arch, True
    for item, size in [(0, 1), (7, 1), (4, 4), (12, 8), (8, 8), (9, 12)]:
        for n in [2**62, 2**32, 4_194_305, 10_000]:
            yield f"array of {n} type {item}", gguf_bytes(arch, kv("x", 9, struct.pack("<IQ", item, n) + bytes(64))), True
    for n in [2**63, 2**40, 1_048_577, 100]:
        yield f"string of {n}", gguf_bytes(arch, kv("x", 8, struct.pack("<Q", n) + b"ab")), True
    for kind in [13, 99, 2**32 - 1]:
        yield f"metadata type {kind}", gguf_bytes(arch, kv("x", kind, bytes(16))), True
    tensor = gguf_str("token_embd.weight")
    for n_dims, dims, kind, offset in [(0, [], 0, 0), (5, [4] * 5, 0, 0), (2, [2**62, 2**62], 0, 0),
                                       (2, [64, 0], 0, 0), (2, [64, 10], 99, 0), (2, [64, 10], 26, 0),
                                       (2, [64, 10], 28, 0), (2, [63, 10], 8, 0), (2, [64, 10], 0, 2**63),
                                       (2, [64, 10], 0, 32)]:
        info = tensor + struct.pack("<I", n_dims) + b"".join(struct.pack("<Q", d) for d in dims) \
            + struct.pack("<IQ", kind, offset)
        yield f"tensor dims {dims} type {kind} at {offset}", gguf_bytes(arch, tensors=1) + info + bytes(64), True
    for align in [0, 3, 2**20, -1]:
        value = kv("general.alignment", 5 if align < 0 else 4, struct.pack("<i" if align < 0 else "<I", align))
        yield f"alignment {align}", gguf_bytes(arch, value), True
    for _ in range(30):
        yield "truncated", valid[:rng.randrange(0, 4096)], True
    for key, value in [("gemma3.block_count", kv("gemma3.block_count", 8, gguf_str("7"))),
                       ("gemma3.block_count", kv("gemma3.block_count", 6, struct.pack("<f", 7.5))),
                       ("tokenizer.ggml.tokens", kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 4, 3) + bytes(12)))]:
        yield f"{key} of the wrong type", gguf_bytes(arch, value), True
    header_end = valid.index(b"token_embd.weight")  # the metadata: everything before the tensor table
    for _ in range(40):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(4, header_end)] = rng.randrange(256)
        yield "flipped", bytes(data), False


def attempt(load, traced: bool):
    """(error or None, seconds, peak bytes of Python's allocations or 0) of one load."""
    if traced:
        tracemalloc.start()
    t0 = time.perf_counter()
    try:
        load()
        error = None
    except (ValueError, FileNotFoundError) as e:
        error = e
    finally:
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return error, elapsed, peak


def check(load, name: str, must_refuse: bool, paths: list[str], traced: bool = False):
    """Run one load: refused in one sentence (or, when allowed, loaded), in time and in bounded memory.
    `traced`: the refusal is run once more with Python's allocations traced (tracemalloc, which slows a load
    tenfold: not while it is timed) for the headers whose claims would make the reader allocate."""
    error, elapsed, _ = attempt(load, False)
    peak = attempt(load, True)[2] if traced and error is not None else 0
    if error is None:  # a valid file, built as any other (a byte flipped in a token: a vocabulary of its own)
        assert not must_refuse, f"{name}: loaded"
        return
    assert elapsed < PER_LOAD_S, f"{name}: {elapsed:.2f} s: {error}"
    assert peak < PER_LOAD_BYTES, f"{name}: {peak:,} bytes: {error}"
    message = str(error)
    assert message and "\n" not in message and "Traceback" not in message, f"{name}: {message!r}"
    assert message.rstrip(")").endswith((".", "?")), f"{name}: {message!r}"
    assert not any(p in message for p in paths), f"{name}: a server path in {message!r}"


def test_malformed_configs_and_headers_are_refused_in_one_sentence_within_a_second(made, tmp_path):
    """Issue 21 (fuzz): every malformed config.json, safetensors header and GGUF header is refused with one
    sentence within a second, with memory bounded; none crashes, hangs or exhausts memory."""
    rng = random.Random(SEED)
    ours = json.loads((made / "ours" / "config.json").read_text())
    hf = json.loads((made / "hf" / "config.json").read_text())
    paths = [str(tmp_path), str(made)]
    cases = 0
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for name, kind, cfg in config_cases(rng, ours, hf):
        folder = tmp_path / f"c{cases}"
        shutil.copytree(made / kind, folder)
        (folder / "config.json").write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
        check(lambda: gemma3.load_model(folder, device="cpu", dtype=torch.float32), name, True, paths)
        shutil.rmtree(folder)
        cases += 1
    valid = (made / "ours" / "model.safetensors").read_bytes()
    for name, data in safetensors_cases(rng, valid):
        folder = tmp_path / f"s{cases}"
        shutil.copytree(made / "ours", folder)
        (folder / "model.safetensors").write_bytes(data)
        check(lambda: gemma3.load_model(folder, device="cpu", dtype=torch.float32), name, True, paths, True)
        shutil.rmtree(folder)
        cases += 1
    valid = (made / "m.gguf").read_bytes()
    for name, data, must_refuse in gguf_cases(rng, valid):
        f = tmp_path / f"g{cases}.gguf"
        f.write_bytes(data)
        check(lambda: gemma3.load_model(f, device="cpu", dtype=torch.float32), name, must_refuse, paths,
              must_refuse)
        f.unlink()
        cases += 1
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    assert cases >= 300 and grown < WHOLE_RUN_BYTES, (cases, grown)
