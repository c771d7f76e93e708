"""Each fake (and each real adapter) satisfies the Protocol the verbs use, checked twice.

* Statically: the assignments under ``TYPE_CHECKING`` below make a type
  checker (mypy) verify that every implementation is structurally a
  ``PodLoopback``, ``PodAnnotations`` or ``Clock``.
* At run time, today: the Protocols exist only under ``TYPE_CHECKING`` in
  the plugin (importing ``typing`` costs start-up), so they are read from
  the source with ``ast``, and every implementation — fakes, their
  subclasses in the unit tests, the real adapters — must have each
  Protocol method with the same parameters (names, kinds, which have
  defaults), by ``inspect.signature``.
"""

from __future__ import annotations

import ast
import inspect

import pytest

import cni_plugin.loopback
import cni_plugin.verbs
import tests.unit.test_plugin_attachments
import tests.unit.test_plugin_seams
import tests.unit.test_plugin_verbs
from cni_plugin.dispatch import PodAnnotationsOnFirstUse
from cni_plugin.kubernetes import ApiPodAnnotations
from cni_plugin.loopback import NetlinkPodLoopback
from cni_plugin.verbs import SystemClock
from tests.unit.fakes import FakeClock, FakePodAnnotations, FakePodLoopback

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import cast

    from cni_plugin.loopback import PodLoopback
    from cni_plugin.verbs import Clock, PodAnnotations
    from netconf.config import FlockBlock

    _fake_loopback: PodLoopback = FakePodLoopback()
    _real_loopback: PodLoopback = NetlinkPodLoopback()
    _fake_annotations: PodAnnotations = FakePodAnnotations()
    _real_annotations: PodAnnotations = ApiPodAnnotations("/kubeconfig", "flock.fritzlab.net/anycast", 2.0)
    _deferred_annotations: PodAnnotations = PodAnnotationsOnFirstUse(cast("FlockBlock", None))
    _fake_clock: Clock = FakeClock()
    _real_clock: Clock = SystemClock()

# Protocol (module, class name) -> the implementations; subclasses of the fakes are found below.
IMPLEMENTATIONS = {
    (cni_plugin.loopback, "PodLoopback"): (FakePodLoopback, NetlinkPodLoopback),
    (cni_plugin.verbs, "PodAnnotations"): (FakePodAnnotations, ApiPodAnnotations, PodAnnotationsOnFirstUse),
    (cni_plugin.verbs, "Clock"): (FakeClock, SystemClock),
}
# Modules whose subclasses of the fakes must conform too (imported above, so they are loaded).
TEST_MODULES = (tests.unit.test_plugin_verbs, tests.unit.test_plugin_attachments, tests.unit.test_plugin_seams)


def protocol_methods(module, name: str) -> dict[str, list[tuple[str, str, bool]]]:
    """The methods of Protocol ``name`` in ``module``'s source: parameter (name, kind, has default) lists."""
    with open(module.__file__) as handle:
        tree = ast.parse(handle.read())
    [found] = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and node.name == name and any(_base_name(base) == "Protocol" for base in node.bases)
    ]
    methods = {}
    for item in found.body:
        if isinstance(item, ast.FunctionDef):
            methods[item.name] = _ast_parameters(item.args)
    assert methods, f"{name} declares no methods"
    return methods


def _base_name(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def _ast_parameters(args: ast.arguments) -> list[tuple[str, str, bool]]:
    positional = [*args.posonlyargs, *args.args]
    first_default = len(positional) - len(args.defaults)
    parameters = [
        (arg.arg, "POSITIONAL_ONLY" if index < len(args.posonlyargs) else "POSITIONAL_OR_KEYWORD", index >= first_default)
        for index, arg in enumerate(positional)
    ]
    if args.vararg:
        parameters.append((args.vararg.arg, "VAR_POSITIONAL", False))
    parameters += [
        (arg.arg, "KEYWORD_ONLY", default is not None) for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True)
    ]
    if args.kwarg:
        parameters.append((args.kwarg.arg, "VAR_KEYWORD", False))
    return parameters


def signature_parameters(function) -> list[tuple[str, str, bool]]:
    return [
        (parameter.name, parameter.kind.name, parameter.default is not inspect.Parameter.empty)
        for parameter in inspect.signature(function).parameters.values()
    ]


def _subclasses(cls) -> list[type]:
    found = []
    for subclass in cls.__subclasses__():
        found += [subclass, *_subclasses(subclass)]
    return found


def cases():
    for (module, protocol), implementations in IMPLEMENTATIONS.items():
        everything = list(implementations)
        for implementation in implementations:
            everything += [cls for cls in _subclasses(implementation) if cls.__module__.startswith("tests.")]
        for implementation in dict.fromkeys(everything):
            yield pytest.param(module, protocol, implementation, id=f"{protocol}-{implementation.__qualname__}")


@pytest.mark.parametrize("module, protocol, implementation", list(cases()))
def test_implementation_has_every_protocol_method_with_the_same_parameters(module, protocol, implementation):
    for name, expected in protocol_methods(module, protocol).items():
        method = getattr(implementation, name, None)
        assert callable(method), f"{implementation.__qualname__} lacks {protocol}.{name}"
        assert signature_parameters(method) == expected, f"{implementation.__qualname__}.{name} differs from {protocol}.{name}"


def test_the_protocols_are_found_where_the_plugin_declares_them():
    """Guards the ast reading: the run-time check above must not pass by finding nothing."""
    assert set(protocol_methods(cni_plugin.loopback, "PodLoopback")) == {
        "identify",
        "ensure_addresses",
        "delete_addresses",
        "list_addresses",
    }
    assert set(protocol_methods(cni_plugin.verbs, "PodAnnotations")) == {"anycast_annotation"}
    assert set(protocol_methods(cni_plugin.verbs, "Clock")) == {"now"}


def test_every_fake_is_checked():
    """A new fake in tests/unit/fakes.py must get its Protocol here."""
    import tests.unit.fakes as fakes

    declared = {name for name, value in vars(fakes).items() if inspect.isclass(value) and name.startswith("Fake")}
    checked = {cls.__name__ for implementations in IMPLEMENTATIONS.values() for cls in implementations}
    assert declared <= checked, declared - checked
