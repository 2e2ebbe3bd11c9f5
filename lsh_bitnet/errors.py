"""Error types shared by every layer of the package. A leaf module: it imports nothing of ours, so
`validate.py`, `attention/` and `models/` can all raise the same class without importing each other."""


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and how to fix it."""


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition: the one precondition helper of the config checks."""
    if not condition:
        raise ConfigError(message)
