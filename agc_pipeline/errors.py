"""One exception type for configurations that cannot work."""


class ConfigError(ValueError):
    """A parameter breaks a rule; the message names the parameter and the rule.

    Raised at start-up, before any long computation, and reported by the apps as one line.
    """


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)
