"""Immutable records validated by pydantic-core from schemas compiled out of pydantic models.

The documents flock exchanges (network config, CNI results, allocations)
are declared once, as pydantic models, in ``netconf.declarations``.
``netconf.compile_schemas`` turns each declaration into pydantic's own core
schema and writes it to ``netconf.compiled_schemas``, with the declaration
classes swapped for the pydantic-free record classes of this module's
subclasses. At run time the records are validated and serialised by
pydantic-core's ``SchemaValidator`` and ``SchemaSerializer`` built from
those schemas: the same validation, the same error messages, the same
values as the models — without importing pydantic, whose import and first
schema build cost a plugin exec ~60% of its instructions (docs/frozen-binary.md).

``pydantic_core._pydantic_core`` (the compiled extension) is imported
lazily, on the first validation. The plugin's ``main()`` registers the
``pydantic_core`` package without running its ``__init__``, which would
import ``core_schema`` and ``typing_extensions`` (~25 ms) for nothing.

Pure: no I/O.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~8 ms of a plugin exec; annotations only
    from typing import Any, Self

_validators: dict[type, Any] = {}
_serializers: dict[type, Any] = {}


def _core():
    from pydantic_core import _pydantic_core

    return _pydantic_core


def _schema(record_class: type) -> dict:
    from netconf.compiled_schemas import SCHEMAS

    return SCHEMAS[record_class.__name__]


def validator_for(record_class: type):
    """The SchemaValidator of a record class, built on first use (~0.2 ms)."""
    validator = _validators.get(record_class)
    if validator is None:
        validator = _validators[record_class] = _core().SchemaValidator(_schema(record_class))
    return validator


def serializer_for(record_class: type):
    serializer = _serializers.get(record_class)
    if serializer is None:
        serializer = _serializers[record_class] = _core().SchemaSerializer(_schema(record_class))
    return serializer


def validation_error_class() -> type[Exception]:
    """pydantic-core's ValidationError (the class ``pydantic.ValidationError`` also is)."""
    return _core().ValidationError


class Record:
    """A validated, read-only document; fields as attributes, as on a pydantic model.

    The slots are the ones pydantic-core's model validator fills:
    ``__dict__`` (fields), ``__pydantic_fields_set__`` (what the input
    gave, for ``exclude_unset``), ``__pydantic_extra__`` (unknown keys of
    open documents) and ``__pydantic_private__``. The fields of each record
    are those of its declaration in ``netconf.declarations``.

    Raises pydantic-core's ValidationError on invalid input.
    """

    __slots__ = ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")

    def __init__(self, **data: Any) -> None:
        validator_for(type(self)).validate_python(data, self_instance=self)

    @classmethod
    def validate(cls, data: Any, *, strict: bool | None = None) -> Self:
        return validator_for(cls).validate_python(data, strict=strict)

    @classmethod
    def validate_json(cls, raw: bytes | str, *, strict: bool | None = None) -> Self:
        return validator_for(cls).validate_json(raw, strict=strict)

    def replace(self, **changes: Any) -> Self:
        """A validated copy with some fields changed (by field name)."""
        return self.validate({**self.__dict__, **(self.__pydantic_extra__ or {}), **changes})

    def dump(self, *, mode: str = "python", by_alias: bool = False, exclude_unset: bool = False) -> dict[str, Any]:
        return serializer_for(type(self)).to_python(self, mode=mode, by_alias=by_alias, exclude_unset=exclude_unset)

    def dump_json(self, *, by_alias: bool = False, indent: int | None = None) -> bytes:
        return serializer_for(type(self)).to_json(self, by_alias=by_alias, indent=indent)

    @property
    def extra(self) -> dict[str, Any]:
        """Keys an open document had beyond its declared fields."""
        return self.__pydantic_extra__ or {}

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only; use replace()")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.__dict__ == other.__dict__ and self.extra == other.extra

    def __hash__(self) -> int:
        return hash((type(self), tuple(self.__dict__.values())))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in {**self.__dict__, **self.extra}.items())
        return f"{type(self).__name__}({fields})"
