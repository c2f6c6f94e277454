"""The workflow of the version-skew test (``test_versions.py``), in two versions.

``ORCH_SKEW_VERSION`` chooses which one a process defines: "1" (the default: the test
process, which submits) or "2", where ``classify``'s code changed and ``reply`` was
renamed ``answer`` (a step removed, one added). Imported by the test's own workers only.
"""

from __future__ import annotations

import os

from orchestration import Workflow

QUEUE = "it.versions"
REPLY_QUEUE = "it.versions.reply"
VERSION = os.environ.get("ORCH_SKEW_VERSION", "1")

skew = Workflow("it_skew", queue=QUEUE, inputs=["text"])

if VERSION == "1":
    @skew.task
    def classify(text: str) -> str:
        return f"v1:{text.lower()}"

    @skew.task(queue=REPLY_QUEUE)
    def reply(classify: str) -> str:
        return f"reply to {classify}"
else:
    @skew.task
    def classify(text: str) -> str:
        return f"v2:{text.upper()}"  # the code changed

    @skew.task(queue=REPLY_QUEUE)
    def answer(classify: str) -> str:  # `reply` renamed: that step is gone
        return f"answer to {classify}"
