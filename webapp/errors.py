"""Errors as a visitor sees them: one sentence in a gr.Error, never a traceback; the server keeps serving.

Every event handler of the page is wrapped in `friendly`. An error the visitor can cause (a bad value, a
missing file, a second training run) shows its own message; anything else is logged in full on the
server and shown as one sentence that says the app is still running.
"""

import functools
import inspect
import logging

import gradio as gr

from training.data import DataError
from training.runs import RunError

from .inputs import UserError

log = logging.getLogger("app")

USER_ERRORS = (UserError, ValueError, RunError, DataError, FileNotFoundError, ConnectionError, PermissionError)


def user_error(e: Exception, where: str) -> gr.Error:
    """The gr.Error a visitor sees for `e`, raised in the handler named `where`."""
    if isinstance(e, USER_ERRORS):
        return gr.Error(str(e).strip() or e.__class__.__name__, print_exception=False)
    log.exception("unexpected error in %s", where)
    return gr.Error(f"Something went wrong ({e.__class__.__name__}: {str(e)[:300]}). The app is still "
                    "running: try again, or reload the page.")


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
