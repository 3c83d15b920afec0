"""Safe file handling for model folders: every path a loader opens resolves inside the folder it was given,
only regular files are opened, and every writer writes atomically (a temporary file or folder, fsync, rename).

Used by every reader and writer of gemma3.io and by training (run folders, checkpoints, snapshots).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path

from ..config import LIMITS

# The app serves strangers, and a model folder is theirs to fill (a Hub repository lands in the cache,
# an allowed folder): an index may name any path, any file may be a link. So every file a loader opens
# is first resolved, links followed, and must lie inside the folder being loaded; a path that leaves it
# is refused with one sentence that reads the same whether its target exists or not, before anything
# out there is opened. The folder (or single weights file) the caller names is taken where its own links
# lead: naming it is the caller's choice, which the app checks against its allowed folders first.


def model_root(folder) -> Path:
    """The folder a model's files must resolve inside: `folder` itself with its links followed, or, for a
    snapshot in the Hugging Face cache (whose files are links to ../../blobs/), that repository's cache folder."""
    folder = Path(os.path.realpath(folder))
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent
    return folder


def inside(root: Path, folder, name: str, what: str | None = None) -> Path:
    """folder/name with every link followed, which must lie inside `root`; else one ValueError sentence.

    `name` may be anything an index or a folder listing holds (absolute, `../..`, a link, a link to a
    folder); the refusal names only `what` (default `name`), never the target, and is decided from
    the path alone, so it reads the same whether the outside target exists, is unreadable or is missing.
    """
    try:
        real = Path(os.path.realpath(Path(folder) / name))
        ok = real != root and real.is_relative_to(root)
    except (OSError, ValueError):  # e.g. a NUL byte in a name from an index
        ok = False
    if not ok:
        raise ValueError(f"{what or name} points outside the model folder; a model folder must hold its own "
                         "files, not links or paths to files elsewhere.")
    return real


def regular_file(path, name: str, limit: int | None = None) -> bool:
    """Whether `path` (links followed) is a regular file; False when nothing is there. Anything else in its
    place (a FIFO, a device, a socket, a folder) is refused with one sentence before it is opened: opening a
    FIFO blocks forever. With `limit`, a file of more bytes is refused too."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # missing, a broken link, a NUL byte in the name
        return False
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{name} is not a regular file; a model folder must hold plain files only.")
    if limit is not None and st.st_size > limit:
        raise ValueError(f"{name} holds {st.st_size:,} bytes, more than the {limit:,} such a file may have.")
    return True


def read_json(path: Path, name: str):
    regular_file(path, name, LIMITS["json_bytes"])
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        raise ValueError(f"{name} in the model folder is not readable JSON; re-save or re-download the model.") from None



def is_gguf(path) -> bool:
    """Whether `path` is a file that starts with GGUF's magic (a Hub cache file's real name has no suffix)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a folder, or a FIFO that would block the open
            return False
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except (OSError, ValueError):  # nothing there
        return False


# ---- writing --------------------------------------------------------------------------------------
# Every file our writers put in a model folder: save_model, export_hf, and training's step checkpoints,
# best/, snapshots and export. A folder holding config.json, model.safetensors and none but these is
# one of ours, which a writer may replace; a writer that adds a file must name it here.
MODEL_FILES = frozenset({
    "config.json", "model.safetensors", "generation_config.json", "README.md", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.model",
    "added_tokens.json", "chat_template.jinja", "trainer.pt", "complete.json", "snapshot.json"})


def is_model_folder(path, partial: bool = False) -> bool:
    """Is `path` a model folder one of our writers wrote: a real folder (not a link) of regular files, all
    named in MODEL_FILES, config.json and model.safetensors among them (partial: or a half-deleted one)?"""
    try:
        if os.path.islink(path) or not os.path.isdir(path):
            return False
        entries = list(os.scandir(path))
    except OSError:
        return False
    names = {e.name for e in entries}
    return names <= MODEL_FILES and (partial or {"config.json", "model.safetensors"} <= names) \
        and all(e.is_file(follow_symlinks=False) for e in entries)


def check_no_file_above(path) -> Path:
    """`path` as a Path, or a NotADirectoryError sentence when a file stands where one of its folders would."""
    path = Path(path)
    above = next((p for p in path.parents if os.path.lexists(p)), None)
    if above is not None and not above.is_dir():
        raise NotADirectoryError(f"{above} is a file, so nothing can be made at {path}; choose another path.")
    return path


def check_out_dir(out_dir, force: bool = True) -> Path:
    """Refuse, in one sentence and before any work, a folder to write a model into whose writing would
    lose something: a file at it or above it, a folder holding anything but a model of ours, or (unless
    force) any model at all. Nothing or an empty folder is fine. Returns out_dir as a Path."""
    out_dir = check_no_file_above(out_dir)
    if not os.path.lexists(out_dir) or (out_dir.is_dir() and not out_dir.is_symlink() and not any(out_dir.iterdir())):
        return out_dir
    if not is_model_folder(out_dir):
        what = "is a link" if out_dir.is_symlink() else "is a file" if not out_dir.is_dir() else \
            "already holds files that are not a model written here"
        raise FileExistsError(f"{out_dir} {what}; choose a new or empty folder (nothing was changed).")
    if not force:
        raise FileExistsError(f"{out_dir} already holds a model; pass --force to replace it, or choose another folder.")
    return out_dir


def atomic_dir_write(out_dir: Path, write):
    """Write into a temporary sibling folder, then swap it in, so a crash never leaves half a checkpoint.

    Only a model folder of ours (is_model_folder) or an empty one is replaced: anything else at out_dir
    is refused before `write` runs (check_out_dir), and so is a `.NAME.old` beside it that is not ours."""
    out_dir = check_out_dir(out_dir)
    old = out_dir.with_name(f".{out_dir.name}.old")  # the previous copy while the new one moves in
    if os.path.lexists(out_dir) and os.path.lexists(old) and not is_model_folder(old, partial=True):
        raise FileExistsError(f"{old} is in the way of replacing {out_dir.name} and is not a model written here; "
                              "move it away.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        write(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        replaced = out_dir.exists()
        if replaced:
            shutil.rmtree(old, ignore_errors=True)  # a leftover of an interrupted swap
            os.rename(out_dir, old)
        try:
            os.rename(tmp, out_dir)
        except BaseException:
            if replaced:
                os.rename(old, out_dir)  # put the previous checkpoint back
            raise
        if replaced:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def atomic_write_text(path: Path, text: str):
    """Write a small text file so that readers see the old or the new content, never half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
