"""Shared helpers for the test suite's real-server fixtures."""
