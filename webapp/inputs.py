"""Checks for what a user types or an API client sends: each failure is one sentence saying what to do."""

from __future__ import annotations

import math

from training.config import number_words, value_words  # numbers and values in messages, written as the training checks write them

MAX_PROMPT_CHARS = 10_000


class UserError(ValueError):
    """Something a user gave cannot be used; the message says what is wrong and what to do."""


def number(value, name: str, lo: float | None = None, hi: float | None = None, *, integer: bool = False):
    """`value` as an int (integer=True) or float within [lo, hi], else a UserError naming the setting."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "a whole number" if integer else "a number"
        raise UserError(f"{name} must be {kind}, not {value_words(value)}.")
    if not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, not {value}.")
    if integer:
        if not float(value).is_integer():
            raise UserError(f"{name} must be a whole number, not {value}.")
        if abs(value) < 2**53:  # a browser rounds a larger one to a float: quoted as 1e+20, not as false digits
            value = int(value)
    else:
        value = float(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        if lo is not None and hi is not None:
            raise UserError(f"{name} must be between {number_words(lo)} and {number_words(hi)}, not {number_words(value)}.")
        if lo is not None:
            raise UserError(f"{name} must be at least {number_words(lo)}, not {number_words(value)}.")
        raise UserError(f"{name} must be at most {number_words(hi)}, not {number_words(value)}.")
    return int(value) if integer else value


def text(value, name: str = "The prompt", *, max_chars: int = MAX_PROMPT_CHARS, allow_empty: bool = False,
         hint: str = "type some text (or pick an example)") -> str:
    """A text field's value, checked for type, emptiness and length."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise UserError(f"{name} must be text, not {value_words(value)}.")
    if not allow_empty and not value.strip():
        raise UserError(f"{name} is empty: {hint}.")
    if len(value) > max_chars:
        raise UserError(f"{name} is {len(value):,} characters long; the limit is {max_chars:,}. Shorten it.")
    if "\x00" in value:
        raise UserError(f"{name} contains a NUL character; remove it.")
    return value


def choice(value, name: str, options) -> str:
    options = list(options)
    if value not in options:
        raise UserError(f"{name} must be one of {', '.join(map(str, options))}, not {value_words(value)}.")
    return value

