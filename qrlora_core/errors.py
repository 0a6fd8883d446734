"""One exception type for everything a user can get wrong.

Its message is shown verbatim in the ComfyUI node error, so every raise
says what is wrong, which file or layer, and what to do.
"""

import math


CLIPPED_LENGTH = 120  # characters of a name or value from a file that a message repeats


class AdapterError(ValueError):
    seen = None  # safefile.Seen of the file refused, where every byte of it was read: its identity, to cache the refusal by


def clipped(text, limit: int = CLIPPED_LENGTH) -> str:
    """A name, key or value taken from a file, as a message repeats it: at most a short prefix.

    A file can name a tensor with megabytes of text; whole, it would go
    into the error, ComfyUI's /history and the log of every failed prompt.
    """
    text = text if isinstance(text, str) else str(text)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def require_finite(**numbers) -> None:
    """Refuse NaN and infinity in a node's number inputs, naming the input.

    ComfyUI's min/max checks let NaN through (every comparison with NaN is
    false), and JSON sent to /prompt may carry NaN or Infinity; one such
    value would reach the weights or a saved file.
    """
    for name, value in numbers.items():
        if value is not None and not math.isfinite(value):
            raise AdapterError(f"The input {name} is {value}, which is not a number a node can use: set it to a finite value (e.g. 1.0).")
