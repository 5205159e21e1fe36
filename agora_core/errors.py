"""Error types for user mistakes (bad files, bad arguments). The CLI prints them as one line."""


class AgoraError(ValueError):
    """A problem with the user's input that the user can fix; the message names it."""
