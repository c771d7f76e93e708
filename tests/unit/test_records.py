"""Records validated from compiled schemas behave exactly like pydantic models of their declarations.

The plugin validates with pydantic-core alone (netconf.records); the record
classes' annotations are the source of truth, from which
netconf.compile_schemas builds pydantic models and compiles their schemas.
These tests hold the two together: the compiled file is current, and for
the same input record and model accept or refuse alike, with the same
values and the same errors.
"""

from __future__ import annotations

import copy
import ipaddress
import typing

import pytest
from pydantic import AfterValidator, BaseModel, ValidationError

from netconf import compile_schemas
from netconf.config import FlockBlock, NetworkConfig
from netconf.records import Record, describe_validation_error, error_location
from netconf.results import Result
from netconf.values import Allocation, AllocationFile, PodRef, utc_now

MODELS = compile_schemas.models()

CONFIG = {
    "cniVersion": "1.0.0",
    "name": "flocknet",
    "type": "flock-anycast",
    "flock": {"pools": ["192.0.2.0/24", "2001:db8:a::/48"], "stateDir": "/var/lib/flock", "lockTimeout": 10},
    "runtimeConfig": {"anycast": ["192.0.2.53"], "portMappings": []},
    "args": {"cni": {"anycast": "192.0.2.54", "labels": {"a": "b"}}},
    "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]},
    "x-runtime-extra": [1, 2],
}
RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "sandbox": "/run/netns/p", "mtu": 1450}],
    "ips": [{"address": "10.0.0.2/24", "interface": 0, "gateway": "10.0.0.1"}],
    "routes": [{"dst": "0.0.0.0/0", "priority": 5}],
    "dns": {},
    "vendor": {"kept": True},
}
ALLOCATION_FILE = {
    "version": 2,
    "allocation": {
        "network": "n",
        "containerID": "c1",
        "ifname": "eth0",
        "netns": "/run/netns/p",
        "anycast": ["192.0.2.53", "2001:db8:a::53"],
        "podIPs": ["10.0.0.2"],
        "state": "committed",
        "createdAt": "2026-11-26T05:00:00Z",
        "updatedAt": "2026-11-26T05:00:01.5+02:00",
    },
}


def mutated(document, path, value):
    changed = copy.deepcopy(document)
    target = changed
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return changed


_DELETE = object()

CASES = [
    (NetworkConfig, CONFIG),
    (NetworkConfig, mutated(CONFIG, ("flock", "pools"), ["10.0.0.1/24"])),
    (NetworkConfig, mutated(CONFIG, ("flock", "pools"), [7])),
    (NetworkConfig, mutated(CONFIG, ("flock", "stateDir"), "relative")),
    (NetworkConfig, mutated(CONFIG, ("flock", "lockTimeout"), 0)),
    (NetworkConfig, mutated(CONFIG, ("flock", "logLevel"), "loud")),
    (NetworkConfig, mutated(CONFIG, ("flock", "typo"), 1)),
    (NetworkConfig, mutated(CONFIG, ("name",), "")),
    (NetworkConfig, mutated(CONFIG, ("runtimeConfig", "anycast"), "not-a-list")),
    (NetworkConfig, mutated(CONFIG, ("cniVersion",), _DELETE)),
    (Result, RESULT),
    (Result, mutated(RESULT, ("ips", 0, "address"), "10.0.0.2")),
    (Result, mutated(RESULT, ("ips", 0, "interface"), "zero")),
    (Result, mutated(RESULT, ("interfaces", 0, "name"), _DELETE)),
    (AllocationFile, ALLOCATION_FILE),
    (AllocationFile, mutated(ALLOCATION_FILE, ("version",), 1)),
    (AllocationFile, mutated(ALLOCATION_FILE, ("allocation", "anycast", 0), "192.0.2.300")),
    (AllocationFile, mutated(ALLOCATION_FILE, ("allocation", "state"), "half")),
    (AllocationFile, mutated(ALLOCATION_FILE, ("allocation", "createdAt"), "yesterday")),
]


def test_compiled_schemas_are_current():
    with open(compile_schemas.OUTPUT, encoding="utf-8") as handle:
        on_disk = handle.read()
    assert on_disk == compile_schemas.compile_all(), "netconf/compiled_schemas.py is stale: run `make schemas`"


@pytest.mark.parametrize("record_class, document", CASES)
def test_record_validates_like_its_declaration(record_class, document):
    declaration = MODELS[record_class]
    try:
        expected = declaration.model_validate(document)
    except ValidationError as exc:
        with pytest.raises(ValidationError) as raised:
            record_class.validate(document)
        assert _errors(raised.value) == _errors(exc)
        return
    record = record_class.validate(document)
    assert type(record) is record_class
    for mode in ("python", "json"):
        assert record.dump(mode=mode, by_alias=True, exclude_unset=True) == expected.model_dump(
            mode=mode, by_alias=True, exclude_unset=True
        )
    assert record.dump_json(by_alias=True) == expected.model_dump_json(by_alias=True).encode()


def _errors(exc: ValidationError) -> list[tuple]:
    return [(error["type"], error["loc"], error["msg"]) for error in exc.errors()]


def test_nested_records_and_extras_are_records_not_models():
    config = NetworkConfig.validate(CONFIG)
    assert type(config.flock).__module__ == "netconf.config"
    assert config.flock.pools == [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8:a::/48")]
    assert config.args.cni.extra == {"labels": {"a": "b"}}
    assert config.extra == {"x-runtime-extra": [1, 2]}
    assert not any(isinstance(value, BaseModel) for value in vars(config).values())


def allocation(**changes):
    now = utc_now()
    fields = dict(
        network="n",
        container_id="c1",
        ifname="eth0",
        netns="/run/netns/p",
        pod=PodRef(namespace="ns", name="p"),
        anycast=(ipaddress.ip_address("192.0.2.53"),),
        pod_ips=(ipaddress.ip_address("10.0.0.2"),),
        state="pending",
        created_at=now,
        updated_at=now,
    )
    return Allocation(**{**fields, **changes})


def test_records_are_read_only_and_replace_validates():
    record = allocation()
    with pytest.raises(AttributeError):
        record.state = "committed"
    committed = record.replace(state="committed")
    assert (record.state, committed.state) == ("pending", "committed")
    assert committed.replace(state="pending") == record
    with pytest.raises(ValidationError):
        record.replace(state="half")
    with pytest.raises(ValidationError):
        Allocation(network="n")


def test_equal_records_hash_alike_and_differ_from_other_types():
    assert hash(allocation().pod) == hash(PodRef(namespace="ns", name="p"))
    assert allocation().pod != PodRef(namespace="ns", name="other")
    assert PodRef() != object()


class _WithLambda(BaseModel):
    value: typing.Annotated[str, AfterValidator(lambda value: value)]


def test_compiler_refuses_what_the_records_could_not_import():
    with pytest.raises(SystemExit, match="cannot import without pydantic"):
        compile_schemas._rewrite(_WithLambda.__pydantic_core_schema__, ("_WithLambda",), {}, set(), {}, set())


def test_every_record_has_a_schema_and_typed_fields():
    """The record classes are the declarations: each has its compiled schema, in declaration order."""
    from netconf.compiled_schemas import SCHEMA_BUILDERS

    records = compile_schemas.record_classes()
    assert [record.__name__ for record in records] == list(SCHEMA_BUILDERS)
    assert "_Open" not in SCHEMA_BUILDERS  # a base, not a document
    assert list(MODELS[Allocation].model_fields) == list(Allocation.__annotations__)
    assert FlockBlock.__record_config__ == {"extra": "forbid", "populate_by_name": True, "frozen": True}
    assert Result.__record_config__ == {"extra": "allow", "populate_by_name": True}  # inherited from results._Open


def test_compiler_derives_models_from_annotations_defaults_and_class_keywords():
    model = MODELS[FlockBlock]
    assert model.model_config["extra"] == "forbid"
    assert model.model_fields["state_dir"].alias == "stateDir"
    assert model.model_fields["state_dir"].default == FlockBlock.state_dir == "/var/lib/flock"
    assert model.model_fields["pools"].is_required()
    assert MODELS[Allocation].model_fields["pod"].default_factory is MODELS[PodRef]


def test_compiler_refuses_a_field_hidden_by_a_property():
    class Hidden(Record):
        key: str

        @property
        def key(self):  # noqa: F811 - the mistake under test
            return "x"

    with pytest.raises(SystemExit, match="is a field and also a property"):
        compile_schemas._ModelBuilder().model(Hidden)


def test_encoder_refuses_a_type_it_cannot_write():
    class Odd(Record, encoder=True):
        ratio: float

    builder = compile_schemas._ModelBuilder()
    model = builder.model(Odd)
    encoders = compile_schemas._Encoders({Odd: model}, set())
    with pytest.raises(SystemExit, match="Odd.ratio: no JSON encoder for <class 'float'>"):
        encoders.function(Odd)


def test_one_formatter_for_validation_errors():
    with pytest.raises(ValidationError) as raised:
        NetworkConfig.validate(mutated(CONFIG, ("flock", "pools"), [7]))
    assert describe_validation_error(raised.value) == "flock.pools.0: Value error, a pool is a CIDR string, not int"
    with pytest.raises(ValidationError) as raised:
        Result.validate([])
    assert describe_validation_error(raised.value, root="prevResult").startswith("prevResult: Input should be")
    assert describe_validation_error(raised.value).startswith("<top>: Input should be")
    assert error_location(("ips", 0, "address"), root="prevResult") == "prevResult.ips.0.address"


def test_the_generated_module_imports_no_record_module():
    """records -> compiled_schemas -> fields, one way: the generated module names record classes through the registry."""
    import ast

    from netconf import compiled_schemas

    tree = ast.parse(open(compiled_schemas.__file__, encoding="utf-8").read())
    imported = {node.module for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert imported == {"__future__", "netconf.fields"}
