"""The deployment's Celery settings: the engine's, re-exported (override here, with a reason).

The settings the engine needs (and why each is set) live in
``orchestration.worker.celery_config``; this name is kept so that code importing
``config.celery`` keeps working.
"""

from orchestration.worker.celery_config import (
    BACKEND_RETRY_POLICY,
    BACKEND_STORE_RETRIES,
    CLIENT_BACKEND_RETRY_POLICY,
    CLIENT_BACKEND_STORE_RETRIES,
    STEP_REDIS_BACKEND,
    celery_config,
    result_backend,
    worker_overrides,
)

__all__ = ["BACKEND_RETRY_POLICY", "BACKEND_STORE_RETRIES", "CLIENT_BACKEND_RETRY_POLICY",
           "CLIENT_BACKEND_STORE_RETRIES", "STEP_REDIS_BACKEND", "celery_config",
           "result_backend", "worker_overrides"]
