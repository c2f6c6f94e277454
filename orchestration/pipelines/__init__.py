"""Declared pipelines: workflows loaded from JSON/YAML files (floor: beside compile, llm,
observe; imports define, store, core, errors).

A pipeline file names its inputs, triggers, schedules and steps (model steps, code
steps, routing tables); :func:`load_pipeline` checks it against the published schema
(``pipeline.schema.json``) and every name in it, then declares it as a
:class:`~orchestration.define.workflow.Workflow` that runs like any other.
"""

from orchestration.pipelines.loader import (
    PipelineWorkflow,
    check_pipeline,
    content_hash,
    load_pipeline,
    load_pipelines,
    plan_of,
)
from orchestration.pipelines.schema import SCHEMA_FILE, schema

__all__ = [
    "PipelineWorkflow",
    "SCHEMA_FILE",
    "check_pipeline",
    "content_hash",
    "load_pipeline",
    "load_pipelines",
    "plan_of",
    "schema",
]
