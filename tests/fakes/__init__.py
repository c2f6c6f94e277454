"""Test doubles that speak real protocols (HTTP), for unit and integration tests."""
