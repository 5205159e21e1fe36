"""Error types for user mistakes (bad files, bad arguments, bad settings). The CLI prints them as one line.

Every check of a setting goes through :func:`require`, which raises :class:`ConfigError`; the
``validate()`` method of each configuration dataclass (generator, extraction, coefficient MLP,
training, discriminator, synthetic data) is a list of such requirements and returns the config.
"""
from __future__ import annotations


class AgoraError(ValueError):
    """A problem with the user's input that the user can fix; the message names it."""


class ConfigError(AgoraError):
    """A setting outside its allowed range; the message names the setting and the value."""


def require(condition: bool, message: str, error: type[AgoraError] = ConfigError) -> None:
    """Raise ``error(message)`` unless ``condition`` holds."""
    if not condition:
        raise error(message)


__all__ = ["AgoraError", "ConfigError", "require"]
