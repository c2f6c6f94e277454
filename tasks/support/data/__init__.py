"""Shipped support-ticket data: the training set, the demo batch, and their generator."""
