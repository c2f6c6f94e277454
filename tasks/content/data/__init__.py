"""Shipped sample articles and their generator."""
