"""The intent classifiers of semantic routers, trained once per process (``ctx.intents``).

A router's classifier is trained the first time one of its steps runs in this process
(a fraction of a second for a few hundred examples) and kept, keyed by its method and
examples: every later delivery, in any run, reuses it. Two threads asking at once train
it once. Nothing is written to disk or pickled.
"""

from __future__ import annotations

import threading

import structlog

from orchestration.define.intents import RouterSpec
from orchestration.retrieval.intents import IntentClassifier, train

log = structlog.get_logger("orchestration.execute.intents")


class IntentModels:
    """Fitted classifiers by (method, examples fingerprint)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, IntentClassifier] = {}

    def classifier(self, router: RouterSpec) -> IntentClassifier:
        """The router's classifier, trained now if this process has none yet."""
        key = router.fingerprint
        found = self._models.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._models.get(key)
            if found is None:
                found = train(router.method, router.examples)
                self._models[key] = found
                log.info("intent classifier trained", router=router.step,
                         method=router.method, labels=len(router.labels),
                         examples=sum(len(v) for v in router.examples.values()))
            return found

    def scores(self, router: RouterSpec, text: str) -> dict[str, float]:
        """``{label: score in 0..1}`` for ``text``."""
        return self.classifier(router).scores(text)

    def __len__(self) -> int:
        return len(self._models)


_MODELS = IntentModels()


def intent_models() -> IntentModels:
    """This process's classifiers (what ``ctx.intents`` is)."""
    return _MODELS
