"""How the command lines show an error a user caused: one sentence on stderr, never a traceback."""


def sentence(e: Exception) -> str:
    """An error as one sentence: ours say what to do; the system's (an OSError) name the path and the reason."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"Cannot use {e.filename}: {e.strerror[0].lower()}{e.strerror[1:]}."
    return str(e)
