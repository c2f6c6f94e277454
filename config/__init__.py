"""Deployment configuration: typed settings, Celery settings, queues and the model catalogue."""
