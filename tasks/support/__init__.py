"""Support-ticket workflow: category and urgency models trained locally with scikit-learn."""
