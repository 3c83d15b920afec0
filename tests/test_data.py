"""training.data: preparing story corpora into token files, and the batches the trainer reads."""

import argparse
import json
import os
import time

import numpy as np
import pytest
import torch

from gemma3.tokenizer import gpt2_tokenizer
from training import data
from training.data import Batches, DataError, eval_windows, load_split, prepare, read_meta

TOK = gpt2_tokenizer()
EOT = TOK.eot_id
STORIES = [
    "Once upon a time, there was a little cat named Tom.\nTom liked to play in the sun.",
    "Lily had a red ball. She threw it high — and it never came down!",
    "The dog said: \"Let's share.\" They shared the cake. 🍰 The end.",
    "A tiny frog jumped.",
    "Ben and Mia built a tower of blocks.\nIt fell.\nThey laughed and built it again.",
    "Sue saw a big tree. \"Hello, tree,\" she said.",
    "The boat went out to sea and came back with fish.",
    "Max was sad, then happy.",
]


def split_stories(out, split) -> list[str]:
    """Decode <split>.bin: every story must be followed by exactly one <|endoftext|>."""
    ids = np.fromfile(out / f"{split}.bin", dtype=np.uint16)
    assert len(ids) and ids[-1] == EOT, "the last story must end with <|endoftext|>"
    ends = np.flatnonzero(ids == EOT)
    starts = np.concatenate([[0], ends[:-1] + 1])
    assert (ends > starts).all(), "two <|endoftext|> in a row (an empty story)"
    return [TOK.decode(ids[s:e].tolist()) for s, e in zip(starts, ends)]


def check_round_trip(out, stories, meta):
    train, val = split_stories(out, "train"), split_stories(out, "val")
    assert sorted(train + val) == sorted(stories) and set(train).isdisjoint(val)
    for part in (train, val):  # each split keeps the corpus order
        assert part == sorted(part, key=stories.index)
    for split, part in (("train", train), ("val", val)):
        assert meta[f"{split}_tokens"] == (out / f"{split}.bin").stat().st_size // 2
        assert meta[f"{split}_stories"] == len(part)
        assert meta[f"{split}_bytes"] == sum(len(s.encode()) + 1 for s in part)
    assert read_meta(out) == meta and meta["eot_id"] == EOT and meta["dtype"] == "uint16"
    return train, val


def write_source(path, stories, kind):
    if kind == "txt":
        path.write_text("\n\n".join(stories) + "\n", encoding="utf-8")
    elif kind == "jsonl":
        path.write_text("".join(json.dumps({"text": s, "id": i}) + "\n" for i, s in enumerate(stories)))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": stories}), path)
    return path


@pytest.mark.parametrize("kind", ["txt", "jsonl", "parquet"])
def test_local_file_round_trips_with_one_eot_per_story(tmp_path, kind):
    src = write_source(tmp_path / f"stories.{kind}", STORIES, kind)
    meta = prepare(str(src), tmp_path / "out", val_fraction=0.25, progress=False)
    train, val = check_round_trip(tmp_path / "out", STORIES, meta)
    assert len(val) == 2 and len(train) == 6


def test_txt_with_endoftext_separators_keeps_paragraphs(tmp_path):
    stories = ["First paragraph.\n\nSecond paragraph of the same story.", "Another story.", "A third one."]
    src = tmp_path / "v2.txt"
    src.write_text("\n<|endoftext|>\n".join(stories) + "\n<|endoftext|>\n")
    meta = prepare(src, tmp_path / "out", val_fraction=0.3, progress=False)
    check_round_trip(tmp_path / "out", stories, meta)


def test_folder_and_list_of_files(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    write_source(folder / "a.txt", STORIES[:3], "txt")
    write_source(folder / "sub" / "b.jsonl", STORIES[3:6], "jsonl")
    write_source(folder / "c.parquet", STORIES[6:], "parquet")
    (folder / "notes.md").write_text("not a story file")
    order = STORIES[:3] + STORIES[6:] + STORIES[3:6]  # sorted paths: a.txt, c.parquet, sub/b.jsonl
    check_round_trip(tmp_path / "o1", order, prepare(folder, tmp_path / "o1", progress=False))
    files = [str(folder / "a.txt"), str(folder / "c.parquet")]
    check_round_trip(tmp_path / "o2", STORIES[:3] + STORIES[6:], prepare(files, tmp_path / "o2", progress=False))


def test_holdout_is_deterministic_and_at_least_one_story(tmp_path):
    src = write_source(tmp_path / "s.txt", STORIES, "txt")
    a = prepare(src, tmp_path / "a", val_fraction=0.01, seed=3, progress=False)
    b = prepare(src, tmp_path / "b", val_fraction=0.01, seed=3, progress=False)
    assert a["val_stories"] == 1
    assert (tmp_path / "a" / "val.bin").read_bytes() == (tmp_path / "b" / "val.bin").read_bytes()


def test_rerun_with_same_parameters_is_a_no_op(tmp_path, capsys):
    src = write_source(tmp_path / "s.jsonl", STORIES, "jsonl")
    out = tmp_path / "out"
    first = prepare(src, out, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    time.sleep(0.01)
    capsys.readouterr()
    again = prepare(src, out, progress=False)
    assert again == first
    assert "nothing to do" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_changed_parameters_or_source_prepare_again(tmp_path, capsys):
    src = write_source(tmp_path / "s.txt", STORIES, "txt")
    out = tmp_path / "out"
    assert prepare(src, out, val_fraction=0.1, progress=False)["val_stories"] == 1
    assert prepare(src, out, val_fraction=0.5, progress=False)["val_stories"] == 4
    write_source(src, STORIES + ["A new story about a kite."], "txt")
    capsys.readouterr()
    meta = prepare(src, out, val_fraction=0.5, progress=False)
    assert "nothing to do" not in capsys.readouterr().out
    check_round_trip(out, STORIES + ["A new story about a kite."], meta)
    (out / "val.bin").write_bytes(b"")  # a damaged output is not mistaken for a finished one
    capsys.readouterr()
    prepare(src, out, val_fraction=0.5, progress=False)
    assert "nothing to do" not in capsys.readouterr().out
    assert (out / "val.bin").stat().st_size == 2 * read_meta(out)["val_tokens"] > 0


def test_builtin_corpus(tmp_path):
    from training.stories import stories

    meta = prepare("builtin", tmp_path / "b", builtin_stories=60, val_fraction=0.05, seed=0, progress=False)
    assert (meta["train_stories"], meta["val_stories"]) == (60, 3)
    train, val = split_stories(tmp_path / "b", "train"), split_stories(tmp_path / "b", "val")
    assert train == [s.strip() for s in stories(60, seed=0)]
    assert val != train[:3]  # validation comes from another seed
    assert meta["train_tokens"] == (tmp_path / "b" / "train.bin").stat().st_size // 2


def test_progress_counts_the_stories_asked_for_then_the_validation_stories(tmp_path, capsys):
    """A new user asked for 50,000 built-in stories and saw "22.5k/50.5k stories": one bar for the training stories
    asked for, then one for the validation stories; an upload's one bar counts the files' stories."""
    prepare("builtin", tmp_path / "b", builtin_stories=60, val_fraction=0.05, seed=0, num_proc=1)
    bars = capsys.readouterr().err
    assert "tokenising the training stories: 100%" in bars and "60/60 " in bars
    assert "tokenising the validation stories: 100%" in bars and "3/3 " in bars
    assert "/63 " not in bars  # never the two together (a rate such as 7363.81 stories/s may hold the digits)
    path = tmp_path / "s.txt"
    path.write_text("\n\n".join(STORIES), encoding="utf-8")
    prepare(path, tmp_path / "f", num_proc=1)
    bars = capsys.readouterr().err
    assert "tokenising the stories: 100%" in bars and f"{len(STORIES)}/{len(STORIES)} " in bars


def test_hub_id_offline_fails_fast_with_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    with pytest.raises(DataError) as e:
        prepare("roneneldan/TinyStories", tmp_path / "ts", progress=False)
    assert time.time() - start < 15
    msg = str(e.value)
    assert "TinyStories" in msg and "--source builtin" in msg and "local files" in msg and "\n" not in msg
    assert not (tmp_path / "ts" / "meta.json").exists()


@pytest.fixture
def hub_unreachable(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE unset, the Hub's endpoint a closed port on this machine (nothing ever leaves it), name
    lookups hanging as with a dead DNS server, and empty caches. Returns the datasets module."""
    import socket
    import threading

    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants as C

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for module, name, value in ((C, "HF_HUB_OFFLINE", False), (datasets.config, "HF_HUB_OFFLINE", False),
                                (C, "ENDPOINT", endpoint), (datasets.config, "HF_ENDPOINT", endpoint),
                                (C, "HF_HUB_CACHE", str(tmp_path / "hub")),
                                (datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")):
        monkeypatch.setattr(module, name, value)
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(30)
        raise socket.gaierror("name lookup timed out")

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    yield datasets
    release.set()


def test_hub_id_without_a_network_fails_at_once(tmp_path, hub_unreachable):
    """The issue measured 36 s (retries) for a Hub dataset without a network; the target is under 3 s (a 1.5 s
    probe). The bound is 5 s, as a shared 2-core machine stalls now and then; `import datasets` is not counted."""
    start = time.time()
    with pytest.raises(DataError) as e:
        prepare("nobody/no-such-stories", tmp_path / "ts", progress=False)
    assert time.time() - start < 5
    msg = str(e.value)
    assert "no-such-stories" in msg and "cannot be reached" in msg and "--source builtin" in msg and "\n" not in msg
    assert hub_unreachable.config.HF_HUB_OFFLINE is False  # offline mode was switched on for the cache look only
    assert not (tmp_path / "ts" / "meta.json").exists()


def test_hub_id_without_a_network_reads_the_cache(tmp_path, hub_unreachable, monkeypatch):
    """No network but a cached copy: datasets is asked in offline mode, so it answers from its cache at once."""
    datasets = hub_unreachable
    asked = []

    def load_dataset(name, **kw):
        asked.append(datasets.config.HF_HUB_OFFLINE)
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": STORIES})})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    meta = prepare("someone/stories", tmp_path / "h", val_fraction=0.2, num_proc=1, progress=False)
    check_round_trip(tmp_path / "h", STORIES, meta)
    assert asked == [True] and datasets.config.HF_HUB_OFFLINE is False


@pytest.mark.parametrize("with_validation", [True, False])
def test_hub_dataset_path_tokenises_with_datasets_map(tmp_path, monkeypatch, with_validation):
    datasets = pytest.importorskip("datasets")
    splits = {"train": datasets.Dataset.from_dict({"text": [" " + s + "\n" for s in STORIES[:6]] + [""]})}
    if with_validation:
        splits["validation"] = datasets.Dataset.from_dict({"text": STORIES[6:]})
    monkeypatch.setattr(datasets, "load_dataset", lambda name, **kw: datasets.DatasetDict(splits))
    meta = prepare("someone/stories", tmp_path / "h", val_fraction=0.2, num_proc=1, progress=False)
    train, val = check_round_trip(tmp_path / "h", STORIES if with_validation else STORIES[:6], meta)
    assert len(val) == (2 if with_validation else 1)  # the empty row is no story


def test_crash_while_writing_keeps_previous_output(tmp_path, monkeypatch):
    src = write_source(tmp_path / "s.txt", STORIES, "txt")
    out = tmp_path / "out"
    prepare(src, out, val_fraction=0.25, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_encode, calls, partial, where = data._encode, [], [], [out]

    def crashing_encode(texts, num_threads):
        calls.append(1)
        if len(calls) == 3:
            partial.append(os.path.getsize(where[0] / ".train.bin.tmp"))
            raise RuntimeError("disk on fire")
        return real_encode(texts, num_threads)

    monkeypatch.setattr(data, "CHUNK", 2)
    monkeypatch.setattr(data, "_encode", crashing_encode)
    with pytest.raises(RuntimeError, match="disk on fire"):
        prepare(src, out, val_fraction=0.5, progress=False)
    assert partial and partial[0] > 0  # the crash really came mid-write
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old output intact, no temp files
    calls.clear()
    where[0] = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="disk on fire"):
        prepare(src, tmp_path / "fresh", progress=False)
    assert not (tmp_path / "fresh" / "meta.json").exists()
    with pytest.raises(DataError, match="prepare"):
        load_split(tmp_path / "fresh", "train")


def test_crash_before_meta_is_written_reads_as_unprepared(tmp_path, monkeypatch):
    src = write_source(tmp_path / "s.txt", STORIES, "txt")
    out = tmp_path / "out"
    prepare(src, out, val_fraction=0.25, progress=False)

    def fail(path, text):
        raise OSError("power cut")

    monkeypatch.setattr(data, "atomic_write_text", fail)
    with pytest.raises(OSError):
        prepare(src, out, val_fraction=0.5, progress=False)
    with pytest.raises(DataError):
        read_meta(out)
    monkeypatch.undo()
    assert prepare(src, out, val_fraction=0.5, progress=False)["val_stories"] == 4


@pytest.mark.parametrize("name, content, match", [
    ("missing.txt", None, "does not exist"),
    ("empty.txt", "\n\n", "0 stories"),
    ("one.txt", "Just one story.", "at least 2"),
    ("bad.jsonl", '{"story": "no text field"}\n', '"text" field'),
    ("broken.jsonl", '{"text": "ok"}\n{oops\n', "line 2"),
    ("binary.txt", b"\xff\xfe\x00bad", "UTF-8"),
    ("docs/notes.md", "x", "no .txt"),
    ("s.csv", "text\nhi", "not a .txt"),
])
def test_bad_local_sources_give_one_clear_sentence(tmp_path, name, content, match):
    path = tmp_path / name
    if content is not None:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    source = path.parent if name.startswith("docs/") else path
    with pytest.raises(DataError, match=match) as e:
        prepare(source, tmp_path / "out", progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())  # nothing left behind


def test_cli_args(tmp_path, capsys):
    src = write_source(tmp_path / "s.txt", STORIES, "txt")
    parser = argparse.ArgumentParser()
    data.add_prepare_args(parser)
    assert parser.parse_args([]).source == ["builtin"]
    args = parser.parse_args(["--source", str(src), "--out", str(tmp_path / "o"), "--val-fraction", "0.5",
                              "--num-proc", "2", "--seed", "1", "--quiet"])
    meta = data.run_prepare(args)
    assert meta["val_stories"] == 4 and meta["params"]["seed"] == 1
    assert data.default_out("builtin") == os.path.join("data", "builtin")
    assert data.default_out("roneneldan/TinyStories") == os.path.join("data", "TinyStories")
    assert data.default_out("corpus/my_stories.txt") == os.path.join("data", "my_stories")


# ----------------------------------------------------------------------------- loading

def test_load_split_is_a_readonly_uint16_memmap_and_errors_are_clear(tmp_path):
    src = write_source(tmp_path / "s.txt", STORIES, "txt")
    meta = prepare(src, tmp_path / "out", progress=False)
    train = load_split(tmp_path / "out", "train")
    assert train.dtype == np.uint16 and len(train) == meta["train_tokens"] and not train.flags.writeable
    with pytest.raises(DataError, match="prepare"):
        read_meta(tmp_path / "nowhere")
    (tmp_path / "out" / "val.bin").unlink()
    with pytest.raises(DataError, match="val.bin"):
        load_split(tmp_path / "out", "val")


def test_batches_are_a_pure_function_of_seed_step_micro():
    tokens = np.arange(5000, dtype=np.uint16)
    b = Batches(tokens, batch_size=4, seq_len=16, seed=7)
    x, y = b.get(3, micro=1)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y[:, -1], x[:, -1] + 1)
    assert torch.equal(x, x[:, :1] + torch.arange(16))  # contiguous windows of the token stream
    again = Batches(tokens, batch_size=4, seq_len=16, seed=7).get(3, micro=1)  # e.g. after a resume
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])
    assert not torch.equal(x, b.get(4, micro=1)[0])
    assert not torch.equal(x, b.get(3, micro=0)[0])
    assert not torch.equal(x, Batches(tokens, 4, 16, seed=8).get(3, micro=1)[0])


def test_ranks_together_see_exactly_the_single_process_batch():
    tokens = np.random.default_rng(0).integers(0, 50257, 3000).astype(np.uint16)
    world, B = 4, 3
    whole = Batches(tokens, world * B, 32, seed=1).get(10, micro=2)
    parts = [Batches(tokens, B, 32, seed=1, rank=r, world=world).get(10, micro=2) for r in range(world)]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole[0])
    assert torch.equal(torch.cat([p[1] for p in parts]), whole[1])
    assert not torch.equal(parts[0][0], parts[1][0])


def test_windows_reach_both_ends_and_short_splits_are_refused():
    tokens = np.arange(18, dtype=np.uint16)  # seq_len 16: windows start at 0 or 1
    starts = {int(t) for step in range(5) for t in Batches(tokens, 8, 16, seed=0).get(step)[0][:, 0]}
    assert starts == {0, 1}  # the last token of the split is reachable as a target
    Batches(tokens[:17], 2, 16, seed=0).get(0)  # exactly seq_len + 1 tokens is enough
    with pytest.raises(DataError, match="seq_len"):
        Batches(tokens[:16], 2, 16, seed=0)
    with pytest.raises(DataError, match="seq_len"):
        eval_windows(tokens[:10], 4, 16)


def test_eval_windows_are_fixed():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = eval_windows(tokens, 8, 32)
    x2, y2 = eval_windows(tokens, 8, 32)
    assert x.shape == (8, 32) and torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(x[:, 1:], y[:, :-1])


def test_token_ids_beyond_the_vocabulary_are_a_sentence_and_prepare_repairs_them(tmp_path, capsys):
    """A train.bin of the right size holding ids the tokenizer does not have (a corrupt file): the run
    manager and the trainer refuse it in one sentence naming the file, and preparing again rewrites it."""
    from training import runs

    out = tmp_path / "data"
    prepare("builtin", out, builtin_stories=100, progress=False)
    ids = np.fromfile(out / "train.bin", dtype=np.uint16)
    ids[7] = 60_000
    ids.tofile(out / "train.bin")  # same size: meta.json still matches
    sentence = (f"{out / 'train.bin'} is corrupt: it holds token id 60,000, beyond the 50,257 ids of the "
                "tokenizer; prepare the data again.")
    with pytest.raises(DataError) as e:
        load_split(out, "train", TOK.vocab_size)
    assert str(e.value) == sentence
    assert load_split(out, "val", TOK.vocab_size).max() < TOK.vocab_size
    with pytest.raises(DataError, match="is corrupt: it holds token id 60,000"):
        runs.start({"preset": "tiny", "data": str(out), "device": "cpu"}, tmp_path / "runs", name="r")
    assert not (tmp_path / "runs" / "r").exists(), "refused before any run folder is made"
    capsys.readouterr()
    prepare("builtin", out, builtin_stories=100, progress=False)
    assert "nothing to do" not in capsys.readouterr().out, "the same parameters prepare again over a corrupt file"
    assert load_split(out, "train", TOK.vocab_size).max() < TOK.vocab_size


@pytest.mark.parametrize("content, reason", [
    ("{not json", "is damaged (Expecting property name"),
    ("[1, 2]", "is damaged (it holds no JSON object)"),
    (b"\xff\xfe{}", "is damaged ("),
    ('{"version": 1}', "is damaged (no token count for train)"),
])
def test_a_damaged_meta_json_is_named_in_one_sentence(tmp_path, content, reason):
    out = tmp_path / "data"
    prepare("builtin", out, builtin_stories=100, progress=False)
    meta = out / "meta.json"
    meta.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError) as e:
        load_split(out, "train")
    assert str(e.value).startswith(f"{meta} {reason}") and "prepare the data again" in str(e.value)
    assert "\n" not in str(e.value)
    assert prepare("builtin", out, builtin_stories=100, progress=False)["train_stories"] == 100  # and it repairs
