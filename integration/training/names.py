"""The names a training run writes into `loras`, spelled once."""

from ..files import EXTENSION


def checkpoint_name(run: str, steps: int) -> str:
    """A run's checkpoint after `steps` steps, relative to loras: <prefix>_<run>_step<steps>.safetensors."""
    return f"{run}_step{steps:06}{EXTENSION}"


def sample_name(run: str, steps: int, k) -> str:
    """The k-th sample image (1-based; "*" for all of them) made after `steps` steps, next to that step's checkpoint."""
    return f"{run}_step{steps:06}_sample{k}.png"
