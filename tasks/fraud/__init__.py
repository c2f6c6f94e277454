"""Fraud voting: seven local scikit-learn models score a transaction; a weighted vote decides."""
