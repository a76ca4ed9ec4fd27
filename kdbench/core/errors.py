"""The one error type a user sees: a one-line message, exit code 2 from the CLI."""


class KdbenchError(ValueError):
    """Bad input (suite file, name, value, data file): reported on one line, exit code 2."""


def choices_error(kind: str, value, choices) -> KdbenchError:
    """`unknown method 'kdd'; choose from: ce, kd, ...` (with a close match suggested when there is one)."""
    import difflib

    choices = sorted(str(c) for c in choices)
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return KdbenchError(f"unknown {kind} {value!r}{hint}; choose from: {', '.join(choices)}")
