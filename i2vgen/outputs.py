"""Output records that read like diffusers' `BaseOutput`: by attribute, by key, or by position.

    out.frames == out["frames"] == out[0] == out.to_tuple()[0]

Fields left None are skipped in positions and keys, as the reference does, so `out[0]` is always the first
field that holds something.
"""

import dataclasses


class BaseOutput:
    """Mixin for @dataclass outputs: `out[i]`, `out["name"]`, `to_tuple()`, `keys()`, `values()`, `items()`."""

    def to_tuple(self) -> tuple:
        return tuple(value for _, value in self.items())

    def keys(self) -> list[str]:
        return [name for name, _ in self.items()]

    def values(self) -> list:
        return [value for _, value in self.items()]

    def items(self) -> list[tuple[str, object]]:
        fields = ((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))
        return [(name, value) for name, value in fields if value is not None]

    def __getitem__(self, key):
        if isinstance(key, str):
            return dict(self.items())[key]
        return self.to_tuple()[key]

    def __len__(self) -> int:
        return len(self.items())

    def __iter__(self):
        """Iterates over the keys, as iterating the reference's (dict-based) outputs does."""
        return iter(self.keys())
