"""One rule for settings read from files (checkpoint metadata, YAML configs): unknown keys are refused."""
from __future__ import annotations


def settings_from_dict(cls, data: dict | None, what: str, renamed: dict[str, str] | None = None):
    """cls(**data), JSON/YAML lists becoming tuples; a key `cls` does not have is an error naming it,
    so a misspelt setting is never silently ignored. `renamed`: old name -> new name, for settings
    that files written by an earlier ScarNet still carry under their old names."""
    data = {(renamed or {}).get(k, k): v for k, v in (data or {}).items()}
    unknown = set(data) - set(cls.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown {what} setting(s): {', '.join(sorted(unknown))}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
