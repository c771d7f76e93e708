"""Immutable records validated by pydantic-core from schemas compiled at build time.

The documents flock exchanges (network config, CNI results, allocations)
are declared once, as subclasses of ``Record`` in ``netconf.config``,
``netconf.results`` and ``netconf.state``: each field is a class
annotation in pydantic's vocabulary (``Annotated``, ``Field``, validators;
imported under ``TYPE_CHECKING``), its default the class attribute, the
model config the class keywords::

    class PodRef(Record, frozen=True):
        namespace: str | None = None

Under ``from __future__ import annotations`` none of that is evaluated at
run time. ``netconf.compile_schemas`` (build time) evaluates the
annotations, builds a pydantic model per record and writes each model's
core schema, with the record class in place of the model, to
``netconf.compiled_schemas``. At run time the records are validated and
serialised by pydantic-core's ``SchemaValidator`` and ``SchemaSerializer``
built from those schemas: the same validation, the same error messages,
the same values as the models — without importing pydantic, whose import
and first schema build would be most of a plugin exec's work
(docs/frozen-binary.md, "pydantic validates at build time, pydantic-core
at run time"). For records declared with ``encoder=True`` the
compiler also writes a plain JSON encoder (``encode_json``), which keeps
pydantic-core's serializer off the plugin's path.

``pydantic_core._pydantic_core`` (the compiled extension) is imported
lazily, on the first validation. The plugin's ``main()`` registers the
``pydantic_core`` package without running its ``__init__``, which would
import ``core_schema`` and ``typing_extensions`` for nothing.

Pure: no I/O.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing would cost every plugin exec
    from collections.abc import Sequence
    from typing import Any, Self

    from pydantic_core._pydantic_core import SchemaSerializer, SchemaValidator, ValidationError
    from pydantic_core.core_schema import CoreSchema

# Every record class by name, registered as it is defined: the compiled
# schemas refer to record classes through this (netconf.compiled_schemas
# imports no record module, so the two import each other in one direction only).
_record_classes: dict[str, type[Record]] = {}
_validators: dict[type[Record], SchemaValidator] = {}
_serializers: dict[type[Record], SchemaSerializer] = {}


def _schema(record_class: type[Record]) -> CoreSchema:
    # Imported on first use, not for a cycle (the generated module imports
    # no record module) but so that `make schemas` can import the records
    # while the generated file is stale or missing.
    from netconf.compiled_schemas import SCHEMA_BUILDERS

    return SCHEMA_BUILDERS[record_class.__name__](_record_classes)


def validator_for(record_class: type[Record]) -> SchemaValidator:
    """The SchemaValidator of a record class, built on first use (cheap: the schema is compiled already)."""
    validator = _validators.get(record_class)
    if validator is None:
        from pydantic_core._pydantic_core import SchemaValidator

        validator = _validators[record_class] = SchemaValidator(_schema(record_class))
    return validator


def serializer_for(record_class: type[Record]) -> SchemaSerializer:
    serializer = _serializers.get(record_class)
    if serializer is None:
        from pydantic_core._pydantic_core import SchemaSerializer

        serializer = _serializers[record_class] = SchemaSerializer(_schema(record_class))
    return serializer


def validation_error_class() -> type[ValidationError]:
    """pydantic-core's ValidationError (the class ``pydantic.ValidationError`` also is)."""
    from pydantic_core._pydantic_core import ValidationError

    return ValidationError


def describe_validation_error(exc: ValidationError, root: str = "") -> str:
    """``location: message`` for each error of a (pydantic or pydantic-core) ValidationError, joined by ``; ``.

    The one place validation errors become text: ``details`` of the CNI
    errors, the reconciler's node config errors. ``root`` names the
    document's place in a larger one (``prevResult``).
    """
    return "; ".join(f"{error_location(error['loc'], root)}: {error['msg']}" for error in exc.errors())


def error_location(loc: Sequence[str | int], root: str = "") -> str:
    """A ValidationError location as a dotted path (``flock.pools.0``); ``<top>`` for the document itself."""
    return ".".join([root, *map(str, loc)] if root else map(str, loc)) or "<top>"


def encode_json(record_class: type[Record], fields: dict[str, Any]) -> dict[str, Any]:
    """The JSON form, by alias, of a ``record_class`` record with these field values.

    What ``dump(mode="json", by_alias=True)`` gives, built by code the
    compiler generated from the declaration (``encoder=True``) instead of
    by pydantic-core's serializer, whose first use in a process imports
    decimal, pathlib, uuid, inspect and ``core_schema`` for types no record
    has. ``fields`` maps field names to values (a record's ``__dict__``);
    a missing one raises KeyError.
    """
    from netconf.compiled_schemas import ENCODERS  # on first use: see _schema

    return ENCODERS[record_class.__name__](fields)


class Record:
    """A validated, read-only document; fields as attributes, as on a pydantic model.

    The slots are the ones pydantic-core's model validator fills:
    ``__dict__`` (fields), ``__pydantic_fields_set__`` (what the input
    gave, for ``exclude_unset``), ``__pydantic_extra__`` (unknown keys of
    open documents) and ``__pydantic_private__``.

    A subclass declares its fields as annotations (see the module
    docstring); its class keywords are pydantic model config
    (``extra="forbid"``, ``populate_by_name=True``, ``frozen=True``),
    inherited by its subclasses, plus ``encoder=True`` to have the compiler
    generate its JSON encoder. Subclasses whose names start with ``_`` are
    bases, not documents: the compiler makes no schema of them.

    Raises pydantic-core's ValidationError on invalid input.
    """

    __slots__ = ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")
    # Declared for type checkers only (no value: the slots above hold them).
    __pydantic_fields_set__: set[str]
    __pydantic_extra__: dict[str, Any] | None
    __record_config__: dict[str, Any] = {}
    __record_encoder__ = False

    def __init_subclass__(cls, *, encoder: bool = False, **config: Any) -> None:
        super().__init_subclass__()
        if not cls.__name__.startswith("_"):
            _record_classes[cls.__name__] = cls
        cls.__record_config__ = {**cls.__record_config__, **config}
        cls.__record_encoder__ = encoder

    def __init__(self, **data: Any) -> None:
        validator_for(type(self)).validate_python(data, self_instance=self)

    @classmethod
    def validate(cls, data: Any, *, strict: bool | None = None) -> Self:
        record: Self = validator_for(cls).validate_python(data, strict=strict)  # the validator builds a ``cls``
        return record

    @classmethod
    def validate_json(cls, raw: bytes | str, *, strict: bool | None = None) -> Self:
        record: Self = validator_for(cls).validate_json(raw, strict=strict)
        return record

    def replace(self, **changes: Any) -> Self:
        """A validated copy with some fields changed (by field name)."""
        return self.validate({**self.__dict__, **(self.__pydantic_extra__ or {}), **changes})

    def dump(self, *, mode: str = "python", by_alias: bool = False, exclude_unset: bool = False) -> dict[str, Any]:
        document: dict[str, Any] = serializer_for(type(self)).to_python(
            self, mode=mode, by_alias=by_alias, exclude_unset=exclude_unset
        )
        return document

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
