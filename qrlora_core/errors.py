"""One exception type for everything a user can get wrong.

Its message is shown verbatim in the ComfyUI node error, so every raise
says what is wrong, which file or layer, and what to do.
"""

import math


class AdapterError(ValueError):
    pass


def require_finite(**numbers) -> None:
    """Refuse NaN and infinity in a node's number inputs, naming the input.

    ComfyUI's min/max checks let NaN through (every comparison with NaN is
    false), and JSON sent to /prompt may carry NaN or Infinity; one such
    value would reach the weights or a saved file.
    """
    for name, value in numbers.items():
        if value is not None and not math.isfinite(value):
            raise AdapterError(f"The input {name} is {value}, which is not a number a node can use: set it to a finite value (e.g. 1.0).")
