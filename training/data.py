"""Story corpora -> train.bin / val.bin (uint16 GPT-2 ids, <|endoftext|> after every story) + meta.json,
and the deterministic batches the trainer reads from them.

    python -m training prepare --source builtin                  # procedural stories, no network
    python -m training prepare --source roneneldan/TinyStories   # a Hugging Face dataset (needs network)
    python -m training prepare --source my_stories.txt           # .txt / .jsonl / .parquet, a folder, or several

A .txt holds stories separated by blank lines, or by "<|endoftext|>" lines if the file uses them.
train_bytes / val_bytes count each story's UTF-8 bytes plus one byte per separator (for bits per byte).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import torch

from gemma3.io.files import atomic_write_text, check_no_file_above

from gemma3.io.hub import hub_reachable
from gemma3.tokenizer import ENDOFTEXT, gpt2_tokenizer

from .stories import iter_stories

VERSION = 1
TINYSTORIES = "roneneldan/TinyStories"
SUFFIXES = (".txt", ".jsonl", ".parquet")
CHUNK = 2048  # stories encoded and written at a time
SPLIT_WORDS = {"train": "training stories", "val": "validation stories"}   # what the progress bars count
HINT = "use local files (--source path/to/stories.txt) or the built-in corpus (--source builtin)"


class DataError(ValueError):
    """A problem with the data a user pointed us at, in one sentence."""


# ----------------------------------------------------------------------------- reading stories

def _local_files(source) -> list[Path] | None:
    """The files a local source names, or None if `source` is a Hub dataset id."""
    items = [source] if isinstance(source, (str, Path)) else list(source)
    files = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
            if not found:
                raise DataError(f"Folder {item} holds no .txt, .jsonl or .parquet files.")
            files += found
        elif item.is_file():
            if item.suffix not in SUFFIXES:
                raise DataError(f"{item} is not a .txt, .jsonl or .parquet file.")
            files.append(item)
        elif len(items) == 1 and item.suffix not in SUFFIXES and re.fullmatch(r"\w[\w.-]*(/\w[\w.-]*)?", str(items[0])):
            return None  # "owner/name": a Hub dataset id
        else:
            raise DataError(f"Data file {item} does not exist; check the path passed to --source.")
    return files


def _read_file(path: Path):
    """Yield the stripped, non-empty stories of one file."""
    try:
        yield from _read_stories(path)
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text.") from None


def _read_stories(path: Path):
    if path.suffix == ".txt":
        with open(path, encoding="utf-8") as f:
            sep = re.compile(re.escape(ENDOFTEXT) if ENDOFTEXT in f.read(1 << 20) else r"\n\s*\n")
            f.seek(0)
            rest = ""
            while block := f.read(1 << 20):
                *stories, rest = sep.split(rest + block)
                yield from (s for s in map(str.strip, stories) if s)
            if rest.strip():
                yield rest.strip()
    elif path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        raise DataError(f"{path} line {n} is not valid JSON.") from None
                    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                        raise DataError(f'{path} line {n} has no "text" field; each line must be like {{"text": "..."}}.')
                    if story := row["text"].strip():
                        yield story
    else:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        if "text" not in pf.schema_arrow.names:
            raise DataError(f"{path} has no 'text' column (columns: {', '.join(pf.schema_arrow.names)}).")
        for batch in pf.iter_batches(columns=["text"], batch_size=CHUNK):
            yield from (s for t in batch.column(0).to_pylist() if t and (s := t.strip()))


def _n_val(n: int, val_fraction: float) -> int:
    return min(n - 1, max(1, round(n * val_fraction)))


def _holdout(n: int, val_fraction: float, seed: int) -> np.ndarray:
    """Which of n stories are validation: a seeded random val_fraction of them, at least one."""
    is_val = np.zeros(n, dtype=bool)
    is_val[np.random.default_rng(seed).choice(n, _n_val(n, val_fraction), replace=False)] = True
    return is_val


def _split_local(files, val_fraction, seed):
    """(story count, iterator of ("train" | "val", story))."""
    n = sum(1 for f in files for _ in _read_file(f))  # a first pass: counts, and finds bad files before writing
    name = files[0] if len(files) == 1 else f"the {len(files)} files given"
    if n < 2:
        raise DataError(f"{name} contains {n} stories; at least 2 are needed (one for validation).")
    is_val = _holdout(n, val_fraction, seed)
    stories = (s for f in files for s in _read_file(f))
    return n, (("val" if v else "train", s) for v, s in zip(is_val, stories))


# ----------------------------------------------------------------------------- writing tokens

class _SplitWriter:
    """Appends token chunks to out_dir/.<split>.bin.tmp, counting tokens, stories and bytes."""

    def __init__(self, out_dir: Path, split: str):
        self.path, self.tmp = out_dir / f"{split}.bin", out_dir / f".{split}.bin.tmp"
        self.file = open(self.tmp, "wb")
        self.tokens = self.stories = self.bytes = 0

    def write(self, ids: np.ndarray, stories: int, nbytes: int):
        ids.astype(np.uint16).tofile(self.file)
        self.tokens, self.stories, self.bytes = self.tokens + len(ids), self.stories + stories, self.bytes + nbytes

    def close(self):
        if not self.file.closed:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()


def _encode(texts: list[str], num_threads: int) -> list[list[int]]:
    return gpt2_tokenizer().enc.encode_ordinary_batch(texts, num_threads=num_threads)


def _write_stories(pairs, writers, total, what, num_proc, progress):
    """Tokenise (split, story) pairs in chunks, each story followed by <|endoftext|>; the progress bar counts the
    `total` stories it says `what` they are ("the training stories": 22.5k/50k stories)."""
    from tqdm.auto import tqdm

    eot = gpt2_tokenizer().eot_id
    with tqdm(total=total, unit=" stories", disable=not progress, desc=f"tokenising {what}") as bar:
        while chunk := list(itertools.islice(pairs, CHUNK)):
            for split, w in writers.items():
                texts = [s for sp, s in chunk if sp == split]
                if texts:
                    ids = itertools.chain.from_iterable(t + [eot] for t in _encode(texts, num_proc))
                    w.write(np.fromiter(ids, dtype=np.uint16), len(texts), sum(len(s.encode()) + 1 for s in texts))
            bar.update(len(chunk))


def _tokenise_rows(batch):
    """datasets.map function: GPT-2 ids of each stripped story + <|endoftext|>, and its byte count."""
    texts = [(t or "").strip() for t in batch["text"]]
    ids = _encode(texts, 1)
    eot = gpt2_tokenizer().eot_id
    return {"ids": [i + [eot] if t else [] for i, t in zip(ids, texts)],
            "nbytes": [len(t.encode()) + 1 if t else 0 for t in texts]}


_OFFLINE_LOCK = threading.Lock()


@contextlib.contextmanager
def _hub_offline_mode(datasets):
    """datasets and huggingface_hub in offline mode for a while (both read these flags on every call)."""
    from huggingface_hub import constants

    with _OFFLINE_LOCK:
        was = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
        datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
        try:
            yield
        finally:
            datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = was


def _load_hub(source: str, val_fraction: float, seed: int):
    """{"train": Dataset, "val": Dataset} from the Hub, or a one-sentence DataError."""
    import datasets

    # One short probe first: without a network, datasets retries for half a minute before it gives
    # up (or falls back to its cache). Unreachable, the cache is read in offline mode at once.
    unreachable = not datasets.config.HF_HUB_OFFLINE and not hub_reachable(datasets.config.HF_ENDPOINT)
    try:
        if unreachable:
            with _hub_offline_mode(datasets):
                ds = datasets.load_dataset(source)
        else:
            ds = datasets.load_dataset(source)
    except Exception as e:  # offline, no network, no such dataset: all the same advice
        if unreachable:
            reason = "the Hugging Face Hub cannot be reached from here and it is not in the local cache"
        else:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"Could not load the Hugging Face dataset {source!r} ({reason}); {HINT}.") from None
    if "train" not in ds or "text" not in ds["train"].column_names:
        raise DataError(f"Hugging Face dataset {source!r} has no 'train' split with a 'text' column.")
    val = ds.get("validation", ds.get("val", ds.get("test")))
    if val is None:
        is_val = _holdout(len(ds["train"]), val_fraction, seed)
        return {s: ds["train"].select(np.flatnonzero(is_val == (s == "val"))) for s in ("train", "val")}
    return {"train": ds["train"], "val": val}


def _write_hub(splits, writers, num_proc, progress):
    import datasets
    import pyarrow.compute as pc

    features = datasets.Features({"ids": datasets.Sequence(datasets.Value("uint16")), "nbytes": datasets.Value("int64")})
    bars_were_on = datasets.is_progress_bar_enabled()
    if not progress:
        datasets.disable_progress_bars()  # a global switch: map() has no per-call one
    try:
        for split, ds in splits.items():  # map caches its result (uint16: 2 bytes a token) in the datasets cache
            ds = ds.map(_tokenise_rows, batched=True, num_proc=num_proc if num_proc > 1 else None, features=features,
                        remove_columns=ds.column_names, desc=f"tokenising the {SPLIT_WORDS[split]}")
            for table in ds.with_format("arrow").iter(batch_size=16 * CHUNK):  # stream to disk in slices
                nbytes = table.column("nbytes").to_numpy()
                flat = pc.list_flatten(table.column("ids")).to_numpy()
                writers[split].write(flat, int((nbytes > 0).sum()), int(nbytes.sum()))
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()


# ----------------------------------------------------------------------------- prepare

def _is_done(out_dir: Path, params: dict) -> dict | None:
    """meta.json when out_dir holds a finished preparation with these parameters; None when it must be
    prepared (again): missing, damaged, other parameters, or a token file of the wrong size or holding
    ids the tokenizer does not have."""
    try:
        meta = read_meta(out_dir)
        if meta.get("version") != VERSION or meta.get("params") != params:
            return None
        for split in ("train", "val"):  # each of the size meta.json says, with no id beyond the vocabulary
            load_split(out_dir, split, gpt2_tokenizer().vocab_size)
    except (OSError, ValueError):  # DataError is a ValueError
        return None
    return meta


def prepare(source="builtin", out_dir="data/builtin", *, val_fraction=0.01, num_proc=None, builtin_stories=50_000,
            seed=0, progress=True) -> dict:
    """Tokenise `source` into out_dir/{train,val}.bin + meta.json and return the meta dict (a no-op if done)."""
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1, not {val_fraction}.")
    num_proc = max(1, num_proc or min(8, os.cpu_count() or 1))
    source = os.fspath(source) if isinstance(source, (str, os.PathLike)) else [os.fspath(s) for s in source]
    source = TINYSTORIES if source == "tinystories" else source
    files = None if source == "builtin" else _local_files(source)
    if source == "builtin":
        if builtin_stories < 2:
            raise DataError(f"The built-in corpus needs at least 2 stories, not {builtin_stories}.")
        params = dict(source="builtin", stories=builtin_stories, val_fraction=val_fraction, seed=seed)
    elif files is not None:
        fingerprint = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
        params = dict(source="files", files=fingerprint, val_fraction=val_fraction, seed=seed)
    else:
        params = dict(source=source, val_fraction=val_fraction, seed=seed)

    out_dir = check_no_file_above(out_dir)
    if os.path.lexists(out_dir) and not out_dir.is_dir():
        raise DataError(f"{out_dir} is a file; choose a folder for --out.")
    if meta := _is_done(out_dir, params):
        print(f"{out_dir} is already prepared with these parameters ({meta['train_tokens']:,} train tokens); "
              "nothing to do.")
        return meta

    start, hub_splits = time.time(), None
    if source == "builtin":   # a progress bar for each split: (story count, what they are, (split, story) pairs)
        n_val = _n_val(builtin_stories, val_fraction)
        parts = [(builtin_stories, f"the {SPLIT_WORDS['train']}",
                  (("train", s.strip()) for s in itertools.islice(iter_stories(seed=seed), builtin_stories))),
                 (n_val, f"the {SPLIT_WORDS['val']}",   # validation stories come from their own seed
                  (("val", s.strip()) for s in itertools.islice(iter_stories(seed=seed + 1_000_003), n_val)))]
    elif files is not None:   # one bar: the files' stories, each split's among them
        total, pairs = _split_local(files, val_fraction, seed)  # reads everything once: bad input fails here
        parts = [(total, "the stories", pairs)]
    else:
        hub_splits = _load_hub(source, val_fraction, seed)

    out_dir.mkdir(parents=True, exist_ok=True)
    writers = {}
    try:
        writers = {s: _SplitWriter(out_dir, s) for s in ("train", "val")}
        if hub_splits:
            _write_hub(hub_splits, writers, num_proc, progress)
        else:
            for total, what, pairs in parts:
                _write_stories(pairs, writers, total, what, num_proc, progress)
        for w in writers.values():
            w.close()
            if w.stories == 0:
                raise DataError(f"{source} gave no {w.path.stem} stories; {HINT}.")
        tok = gpt2_tokenizer()
        meta = dict(version=VERSION, source=source,
                    tokenizer="gpt2", eot_id=tok.eot_id, vocab_size=tok.vocab_size, dtype="uint16",
                    **{f"{s}_{k}": getattr(w, k) for s, w in writers.items() for k in ("tokens", "stories", "bytes")},
                    created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), seconds=round(time.time() - start, 1),
                    params=params)
        # commit: the old meta.json goes first and the new one comes last, so a crash in between
        # leaves a folder that reads as unprepared rather than a mix of old and new
        (out_dir / "meta.json").unlink(missing_ok=True)
        for w in writers.values():
            os.replace(w.tmp, w.path)
        atomic_write_text(out_dir / "meta.json", json.dumps(meta, indent=2))
    finally:
        for w in writers.values():
            w.close()
            w.tmp.unlink(missing_ok=True)
    if progress:
        print(f"Wrote {out_dir}: {meta['train_tokens']:,} train tokens ({meta['train_stories']:,} stories), "
              f"{meta['val_tokens']:,} val tokens ({meta['val_stories']:,} stories) in {meta['seconds']} s.")
    return meta


def default_out(source) -> str:
    """data/builtin, data/TinyStories, data/<file or folder name>."""
    if isinstance(source, (list, tuple)):
        source = source[0] if len(source) == 1 else "files"
    name = "TinyStories" if source == "tinystories" else Path(str(source).rstrip("/\\")).stem or "files"
    return str(Path("data") / name)


def add_prepare_args(p: argparse.ArgumentParser):
    p.add_argument("--source", nargs="+", default=["builtin"],
                   help="builtin (procedural stories), a Hugging Face dataset id (e.g. roneneldan/TinyStories, "
                        "or 'tinystories'), or .txt/.jsonl/.parquet files or folders (default: builtin)")
    p.add_argument("--out", default=None, help="output folder (default: data/<source name>, e.g. data/builtin)")
    p.add_argument("--val-fraction", type=float, default=0.01,
                   help="share of stories held out for validation when the source has no validation split")
    p.add_argument("--num-proc", type=int, default=None, help="tokeniser threads / processes (default: min(8, CPUs))")
    p.add_argument("--stories", type=int, default=50_000, help="number of built-in training stories")
    p.add_argument("--seed", type=int, default=0, help="seed of the built-in corpus and of the validation hold-out")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary of what it wrote")


def run_prepare(args: argparse.Namespace) -> dict:
    source = args.source[0] if len(args.source) == 1 else args.source
    return prepare(source, args.out or default_out(source), val_fraction=args.val_fraction, num_proc=args.num_proc,
                   builtin_stories=args.stories, seed=args.seed, progress=not args.quiet)


# ----------------------------------------------------------------------------- loading for the trainer

def read_meta(data_dir) -> dict:
    """data_dir/meta.json, or a DataError naming the file when it is missing or damaged."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise DataError(f"{data_dir} holds no prepared data (no meta.json); run "
                        f"`python -m training prepare --out {data_dir}` first.")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{path} is damaged (it is not UTF-8 text); prepare the data again with "
                        f"`python -m training prepare --out {data_dir}`.") from None
    except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise DataError(f"{path} is damaged ({_first_line(e)}); prepare the data again with "
                        f"`python -m training prepare --out {data_dir}`.") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path} is damaged (it holds no JSON object); prepare the data again with "
                        f"`python -m training prepare --out {data_dir}`.")
    return meta


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def check_ids(tokens: np.ndarray, vocab_size: int, path) -> None:
    """A DataError when `tokens` holds an id the tokenizer does not have (a corrupt file): the maximum of
    the memmap, one pass over the file."""
    top = int(tokens.max()) if len(tokens) else 0
    if top >= vocab_size:
        raise DataError(f"{path} is corrupt: it holds token id {top:,}, beyond the {vocab_size:,} ids of the "
                        f"tokenizer; prepare the data again.")


def load_split(data_dir, split: str, vocab_size: int | None = None) -> np.memmap:
    """The uint16 tokens of split "train" or "val", memory-mapped read-only; with vocab_size, checked to hold
    no id beyond it (check_ids)."""
    meta = read_meta(data_dir)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}.")
    path = Path(data_dir) / f"{split}.bin"
    tokens = meta.get(f"{split}_tokens")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise DataError(f"{Path(data_dir) / 'meta.json'} is damaged (no token count for {split}); prepare the "
                        f"data again with `python -m training prepare --out {data_dir}`.")
    if not path.is_file() or path.stat().st_size != 2 * tokens:
        raise DataError(f"{path} is missing or incomplete; run `python -m training prepare --out {data_dir}` again.")
    if tokens == 0:  # mmap refuses an empty file; Batches says the split is too short
        empty = np.zeros(0, dtype=np.uint16)
        empty.flags.writeable = False
        return empty
    data = np.memmap(path, dtype=np.uint16, mode="r")
    if vocab_size is not None:
        check_ids(data, vocab_size, path)
    return data


def _windows(tokens, starts, seq_len):
    xy = torch.from_numpy(np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64))
    return xy[:, :-1].contiguous(), xy[:, 1:].contiguous()


def _check_length(tokens, seq_len):
    if len(tokens) < seq_len + 1:
        raise DataError(f"The split has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}; "
                        "prepare more data or lower seq_len.")


class Batches:
    """Random windows as a pure function of (seed, step, micro): a resumed run sees exactly the same data.

    Every rank draws the same world * batch_size offsets and keeps its own rows, so one process with
    batch_size * world sees exactly the union of what the ranks see.
    """

    def __init__(self, tokens, batch_size: int, seq_len: int, seed: int, rank: int = 0, world: int = 1):
        _check_length(tokens, seq_len)
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.seed, self.rank, self.world = seed, rank, world

    def get(self, step: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 [batch_size, seq_len], y = x shifted by one token."""
        rng = np.random.default_rng([self.seed, step, micro])
        starts = rng.integers(0, len(self.tokens) - self.seq_len - 1, size=self.world * self.batch_size, endpoint=True)
        return _windows(self.tokens, starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size], self.seq_len)


def eval_windows(tokens, n_windows: int, seq_len: int, seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    """The same n_windows validation windows (x, y) every time."""
    _check_length(tokens, seq_len)
    starts = np.random.default_rng(seed).integers(0, len(tokens) - seq_len - 1, size=n_windows, endpoint=True)
    return _windows(tokens, starts, seq_len)
