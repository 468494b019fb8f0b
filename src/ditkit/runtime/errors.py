"""The one kind of error a user can cause: `InputError`, raised where bad input is checked. Imports no torch.

Every other exception that reaches the command line is a bug and is reported as one (a traceback and its own
exit code, see `ditkit.runtime.stopping`). Messages speak Python: they name the setting (`cfg_scale`,
`sample.num_steps`), never a command-line flag; the CLI and the web page add their own words for it.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: what was wrong, the value received, what is allowed and how to fix it, on one line.

    `setting` names the config field or argument at fault (e.g. "cfg_scale"); front ends map it to their
    own words (`--cfg-scale`, the page's "Guidance scale" field). A ValueError, so `except ValueError`
    keeps working for Python callers.
    """

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class InputTypeError(InputError, TypeError):
    """Bad input of the wrong type (a TypeError too, for Python callers that expect one)."""


def check_count(name: str, value: object, *, minimum: int, maximum: int | None = None) -> None:
    """Raise InputError unless `value` is an int (not a bool) in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}; got {value!r}", setting=name)
    if maximum is not None and value > maximum:
        raise InputError(f"{name} must be at most {maximum:,}; got {value:,}", setting=name)
