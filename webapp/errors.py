"""Errors as a visitor sees them: one sentence in a gr.Error, never a traceback or a server path; the server
keeps serving.

Every event handler of the page is wrapped in `friendly`. An error the visitor can cause (a bad value, a
missing file, a second training run) shows its own message; anything else is logged in full on the
server and shown as one sentence that says the app is still running. Either way the text goes through
`public`: the app's folders are shown by their names (runs/…, data/…), any other absolute path by its
last part, and a character that cannot be sent (a lone surrogate) escaped. `guard_inputs` gives a call
that sends too few inputs a sentence too (Gradio answers it with a bare error otherwise). `port_problem` is the
sentence `python app.py` exits with when it cannot listen.
"""

import errno
import functools
import inspect
import logging
import os
import re
import socket
from pathlib import Path

import gradio as gr

from gemma3.errors import no_paths
from training.data import DataError
from training.runs import RunError

from .inputs import UserError

log = logging.getLogger("app")

USER_ERRORS = (UserError, ValueError, RunError, DataError, FileNotFoundError, ConnectionError, PermissionError)
UNICODE = ("A name or path holds characters that are not valid text (a lone surrogate, as a broken copy and "
           "paste leaves); remove them and try again.")
NOT_UTF8 = "A file given is not UTF-8 text; save it as UTF-8 (or plain text) and try again."

REPO = Path(__file__).resolve().parent.parent
_shown: dict[str, str] = {str(REPO): ""}  # server folder -> the name a visitor sees it by ("": relative)
_WHOLE = r"(?![^/\s'\"`,;:()\[\]{}<>|])"  # the whole name, not the start of a longer one


def show_paths_as(folder, name: str):
    """Show `folder` (a server path) and what lies in it as `name` (e.g. the runs folder as "runs")."""
    _shown[str(Path(folder).resolve())] = name


def public(text) -> str:
    """`text` as a visitor may see it: no absolute server path, and only characters that can be sent."""
    text = str(text)
    for folder in sorted(_shown, key=len, reverse=True):
        name = _shown[folder]
        if name:
            text = re.sub(re.escape(folder) + _WHOLE, lambda m, name=name: name, text)
        else:  # the app's own folder: paths in it read relative to it
            text = re.sub(re.escape(folder) + "/", "", text)
            text = re.sub(re.escape(folder) + _WHOLE, ".", text)
    text = no_paths(text)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def user_error(e: Exception, where: str) -> gr.Error:
    """The gr.Error a visitor sees for `e`, raised in the handler named `where`."""
    if isinstance(e, UnicodeEncodeError):  # a codec's message says nothing a visitor can act on
        return gr.Error(UNICODE, print_exception=False)
    if isinstance(e, UnicodeDecodeError):
        return gr.Error(NOT_UTF8, print_exception=False)
    if isinstance(e, USER_ERRORS):
        return gr.Error(public(str(e).strip() or e.__class__.__name__), print_exception=False)
    log.exception("unexpected error in %s", where)
    return gr.Error(public(f"Something went wrong ({e.__class__.__name__}: {str(e)[:300]}). The app is still "
                           "running: try again, or reload the page."))


def friendly(fn):
    """fn (a function or a generator function), its errors turned into one gr.Error sentence each."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as e:
                raise user_error(e, fn.__name__) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as e:
            raise user_error(e, fn.__name__) from None
    return wrapper


def guard_inputs(blocks: gr.Blocks) -> gr.Blocks:
    """Answer an API call that sends fewer values than its event takes, or values Gradio refuses before any
    handler runs (a file not uploaded here), with a sentence.

    Gradio checks the count before any handler runs and raises a ValueError, which reaches the caller
    as {"error": null} (launch(show_error=False), the default, hides every error but gr.Error)."""
    check = blocks.validate_inputs
    if getattr(check, "guarded", False):
        return blocks

    def validate_inputs(block_fn, inputs):
        try:
            check(block_fn, inputs)
        except ValueError:
            name = getattr(block_fn, "api_name", None) or getattr(block_fn, "name", None) or "this event"
            needed = len(getattr(block_fn, "inputs", []) or [])
            raise gr.Error(f"The call to {name} sent {len(inputs)} value{'s' if len(inputs) != 1 else ''} but it "
                           f"takes {needed}; send every input (the API page lists them).",
                           print_exception=False) from None

    preprocess = blocks.preprocess_data

    async def preprocess_data(block_fn, inputs, *args, **kwargs):
        """Gradio's checks of the values themselves (a file must be one uploaded here, with its meta field)
        raise errors it hides the same way."""
        try:
            return await preprocess(block_fn, inputs, *args, **kwargs)
        except gr.Error:
            raise
        except Exception as e:
            log.warning("refused the inputs of %s: %s: %s", getattr(block_fn, "api_name", None),
                        e.__class__.__name__, str(e)[:500])
            name = getattr(block_fn, "api_name", None) or getattr(block_fn, "name", None) or "this event"
            raise gr.Error(f"The call to {name} sent a value its inputs cannot take (a file must be uploaded to "
                           "this app first, as gradio_client's handle_file does); check the values against the "
                           "API page.", print_exception=False) from None

    validate_inputs.guarded = True
    blocks.validate_inputs = validate_inputs
    blocks.preprocess_data = preprocess_data
    return blocks


def port_problem(host: str, port: int) -> str | None:
    """Why the app cannot listen on host:port, in one sentence (the port is taken, or the address is not this
    machine's); None when it can."""
    if not 0 < port < 65536:
        return f"--port must be between 1 and 65535, not {port}."
    try:
        socket.create_server((host, port)).close()
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return (f"port {port} on {host} is already in use (is the app running already?); stop that program or "
                    f"choose another port with --port.")
        return f"cannot listen on {host}:{port} ({os.strerror(e.errno) if e.errno else e}); check --host and --port."
    return None
