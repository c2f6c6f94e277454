"""The labelled question set: each question with the documents that answer it.

Written by hand against ``knowledge.py``; ``kind`` says which store the question was
written to exercise (``fact``: a number or attribute; ``relation``: a path through the
graph; ``prose``: a how-to answered in words; ``mixed``). The bench and the tests score
recall@5 against ``relevant``.
"""

from __future__ import annotations

from typing import Final

QUESTIONS: Final[list[tuple[str, str, list[str]]]] = [
    # -- facts: a number or an attribute of a named thing ---------------------------------
    ("fact", "How much does the Business plan cost per month?", ["plan-business"]),
    ("fact", "How many seats come with the Team plan?", ["plan-team"]),
    ("fact", "How long is raw event data retained on the Enterprise plan?",
     ["plan-enterprise", "guide-data-retention"]),
    ("fact", "How many minutes did INC-2150 last?", ["inc-2150"]),
    ("fact", "What caused INC-2077?", ["inc-2077"]),
    ("fact", "What is the p99 latency target of the query engine?", ["svc-query-engine"]),
    ("fact", "Which programming language is the stream router written in?",
     ["svc-stream-router"]),
    ("fact", "What uptime does the audit log commit to?", ["svc-audit-log"]),
    ("fact", "How many people work in the Payments team?", ["team-payments"]),
    ("fact", "Where is the Data Plane team based?", ["team-data-plane"]),
    ("fact", "When did Lena Vogel join the company?", ["person-lena-vogel"]),
    ("fact", "How often is storage backed up?", ["guide-backups"]),
    ("fact", "How many requests per second does the ingest gateway accept per workspace?",
     ["guide-rate-limits"]),
    ("fact", "What is the minimum password length?", ["guide-password-policy"]),
    ("fact", "Which city hosts the ap-south region?", ["region-ap-south"]),
    # -- relations: one or two hops through the graph --------------------------------------
    ("relation", "Which team owns billing-api?", ["svc-billing-api", "team-payments"]),
    ("relation", "Who leads the team that owns the query engine?",
     ["svc-query-engine", "team-data-plane", "person-jonas-lindqvist"]),
    ("relation", "Which services depend on the auth service?",
     ["svc-ingest-gateway", "svc-query-engine", "svc-billing-api", "svc-notification-hub",
      "svc-admin-console"]),
    ("relation", "What does the stream router depend on?",
     ["svc-stream-router", "svc-storage-tier"]),
    ("relation", "Which incidents affected services owned by the Payments team?",
     ["inc-2103", "team-payments"]),
    ("relation", "Which team does Hana Sato work in, and who leads it?",
     ["person-hana-sato", "team-insights", "person-mei-chen"]),
    ("relation", "Which plans include the export service?",
     ["plan-business", "plan-enterprise"]),
    ("relation", "If the storage tier goes down, which services that depend on it break?",
     ["svc-stream-router", "svc-query-engine", "svc-scheduler", "svc-audit-log",
      "svc-search-indexer"]),
    ("relation", "Who leads the Reliability team?", ["team-reliability", "person-sofia-rossi"]),
    ("relation", "Which services does Kwame Mensah's team own?",
     ["person-kwame-mensah", "team-developer-experience"]),
    ("relation", "Which team is responsible for the service hit by INC-2298?",
     ["inc-2298", "svc-webhook-relay", "team-developer-experience"]),
    ("relation", "Which services does the Identity team own?",
     ["team-identity", "svc-auth-service", "svc-audit-log"]),
    ("relation", "Which incidents hit the query engine?", ["inc-2041"]),
    ("relation", "Which regions is the billing api hosted in?",
     ["svc-billing-api"]),
    # -- prose: how-to and policy questions in other words than the documents --------------
    ("prose", "How do I replace an API key without breaking my integration?",
     ["guide-api-keys"]),
    ("prose", "Can I get my money back on a monthly subscription?", ["guide-refunds"]),
    ("prose", "How can I check that a webhook call really came from you?",
     ["guide-webhook-signatures"]),
    ("prose", "My queries take forever, what should I change?", ["guide-slow-queries"]),
    ("prose", "Which file formats can I export results to?",
     ["guide-export-formats", "svc-export-service"]),
    ("prose", "What happens if charging my card fails?", ["guide-change-card"]),
    ("prose", "How do I erase everything you store about one of my end users?",
     ["guide-gdpr-deletion"]),
    ("prose", "What is the difference between a SEV1 and a SEV2 incident?",
     ["guide-severity"]),
    ("prose", "Can someone without an account receive our dashboard reports by email?",
     ["guide-scheduled-reports"]),
    ("prose", "What happens when we send more events than our quota allows?",
     ["guide-quota-warnings"]),
    ("prose", "How do I connect our SAML identity provider?", ["guide-sso"]),
    ("prose", "Which programming languages have an official SDK?", ["guide-sdk-install"]),
    ("prose", "What happens to our data after we close the workspace?",
     ["guide-account-deletion"]),
    # -- mixed -----------------------------------------------------------------------------
    ("mixed", "Is single sign-on part of the Team plan?", ["guide-sso", "plan-team"]),
    ("mixed", "How long do download links from the export service stay valid?",
     ["svc-export-service"]),
]
