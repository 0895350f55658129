"""The one error of bad input: `key: reason`, one line (the command prints it, exit status 2)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A wrong configuration value: `key: reason`, one line."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{key}: {self.reason}")

    @classmethod
    def from_exception(cls, exc: BaseException, default_key: str) -> ConfigError:
        """Wrap an error raised by a constructor; keep its key when it starts with one."""
        text = " ".join(str(exc).split()) or type(exc).__name__
        head, sep, tail = text.partition(": ")
        if sep and " " not in head and head:
            return cls(head, tail)
        return cls(default_key, text)
