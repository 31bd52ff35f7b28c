"""Helpers for tests, benchmarks and local trials: real local servers, tiny data. Not used by the stages."""
