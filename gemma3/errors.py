"""How an error a user caused is shown: one sentence, never a traceback, never a server path."""

import os
import re
import sys

# an absolute path of two parts or more, not inside a URL or a relative path
ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/\\-])(?:/[^\s/'\"`,;:()\[\]{}<>|]+){2,}/?")


def no_paths(text: str) -> str:
    """`text` with every absolute path shown by its last part."""
    return ABSOLUTE_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


def sentence(e: Exception) -> str:
    """An error as one sentence: ours say what to do; the system's (an OSError) name the path and the reason."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"Cannot use {e.filename}: {e.strerror[0].lower()}{e.strerror[1:]}."
    return str(e)


def prog(module: str, script: str) -> str:
    """The command as it was typed, for usage lines: the installed console `script`, else `python -m <module>`."""
    typed = os.path.basename(sys.argv[0] if sys.argv else "")
    return script if typed in (script, f"{script}.exe") else f"python -m {module}"
