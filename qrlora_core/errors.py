"""One exception type for everything a user can get wrong.

Its message is shown verbatim in the ComfyUI node error, so every raise
says what is wrong, which file or layer, and what to do.
"""


class AdapterError(ValueError):
    pass
