"""A CNI conformance harness: exec any plugin binary the way a runtime does and
judge it against the CNI spec, versions 0.3.0 to 1.1.0.

Run ``pytest tests/conformance --cni-plugin PATH``; see docs/conformance.md.
"""
