"""Helpers shared by the test suites (services of a test's own, fixtures)."""
