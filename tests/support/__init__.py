"""Helpers for prov's own tests and benchmarks (not used by the controller at run time)."""
