"""Business workflows built on the orchestration engine."""
