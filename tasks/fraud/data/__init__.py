"""Shipped card-transaction data: the training set, the sample batch, and their generator."""
