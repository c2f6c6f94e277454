"""The knowledge base of Fernhill, a fictional data-platform company, written for this repo.

Everything here is invented (no real company, person or product). It is the one source of
the RAG corpus: ``generate.py`` turns it into documents (prose), SQL facts, a knowledge
graph (entities and relations) and the labelled question set, so the three stores agree
on what the documents say.
"""

from __future__ import annotations

from typing import Any, Final

Record = dict[str, Any]

SERVICES: Final[list[Record]] = [
    {"name": "ingest-gateway", "aliases": ["ingest gateway", "the gateway"],
     "team": "data-plane", "language": "Go", "regions": ["eu-west", "us-east", "ap-south"],
     "depends_on": ["auth-service", "stream-router"], "p99_ms": 45, "uptime": "99.95%",
     "launched": 2019,
     "about": "Accepts events from customer SDKs over HTTPS and gRPC, validates their schema "
              "and hands them to the stream router. Batches larger than 5 MB are rejected "
              "with a 413 so clients split them."},
    {"name": "stream-router", "aliases": ["stream router", "router"],
     "team": "data-plane", "language": "Rust", "regions": ["eu-west", "us-east", "ap-south"],
     "depends_on": ["storage-tier"], "p99_ms": 12, "uptime": "99.95%", "launched": 2020,
     "about": "Partitions incoming events by tenant and writes them to the storage tier in "
              "ordered segments. Back-pressure from storage slows the gateway instead of "
              "dropping data."},
    {"name": "storage-tier", "aliases": ["storage tier", "object storage layer"],
     "team": "platform", "language": "Rust", "regions": ["eu-west", "us-east", "ap-south"],
     "depends_on": [], "p99_ms": 30, "uptime": "99.99%", "launched": 2018,
     "about": "Columnar segment files on replicated object storage with three copies in two "
              "availability zones. Compaction runs nightly and merges small segments."},
    {"name": "query-engine", "aliases": ["query engine", "sql engine"],
     "team": "data-plane", "language": "C++", "regions": ["eu-west", "us-east", "ap-south"],
     "depends_on": ["storage-tier", "auth-service"], "p99_ms": 850, "uptime": "99.9%",
     "launched": 2019,
     "about": "Runs customers' SQL over the segment files with vectorised execution. Queries "
              "longer than 15 minutes are cancelled and the user is asked to add a filter."},
    {"name": "auth-service", "aliases": ["auth service", "authentication service", "login"],
     "team": "identity", "language": "Kotlin", "regions": ["eu-west", "us-east", "ap-south"],
     "depends_on": ["audit-log"], "p99_ms": 60, "uptime": "99.99%", "launched": 2018,
     "about": "Issues session tokens and API keys, checks single sign-on assertions and "
              "enforces two-factor authentication for administrators."},
    {"name": "billing-api", "aliases": ["billing api", "billing service"],
     "team": "payments", "language": "Python", "regions": ["eu-west", "us-east"],
     "depends_on": ["auth-service", "usage-meter"], "p99_ms": 220, "uptime": "99.9%",
     "launched": 2020,
     "about": "Turns metered usage into invoices at the end of each billing period, charges "
              "cards through the payment processor and emails receipts."},
    {"name": "usage-meter", "aliases": ["usage meter", "metering"],
     "team": "payments", "language": "Go", "regions": ["eu-west", "us-east"],
     "depends_on": ["stream-router"], "p99_ms": 40, "uptime": "99.9%", "launched": 2021,
     "about": "Counts ingested events and scanned bytes per workspace every minute so that "
              "invoices and quota warnings use the same numbers."},
    {"name": "notification-hub", "aliases": ["notification hub", "notifications"],
     "team": "developer-experience", "language": "TypeScript",
     "regions": ["eu-west", "us-east"], "depends_on": ["auth-service"], "p99_ms": 300,
     "uptime": "99.5%", "launched": 2021,
     "about": "Sends email, Slack and webhook notifications for alerts, quota warnings and "
              "failed exports, with one retry schedule for every channel."},
    {"name": "report-builder", "aliases": ["report builder", "dashboards"],
     "team": "insights", "language": "TypeScript", "regions": ["eu-west", "us-east"],
     "depends_on": ["query-engine"], "p99_ms": 1200, "uptime": "99.5%", "launched": 2022,
     "about": "Lets users drag charts onto dashboards and schedules them as PDF reports; "
              "every chart is a saved query run by the query engine."},
    {"name": "scheduler", "aliases": ["job scheduler"],
     "team": "platform", "language": "Go", "regions": ["eu-west", "us-east", "ap-south"],
     "depends_on": ["storage-tier"], "p99_ms": 25, "uptime": "99.95%", "launched": 2019,
     "about": "Runs recurring jobs such as compaction, exports and scheduled reports, with "
              "at most one instance of a job running at a time."},
    {"name": "export-service", "aliases": ["export service", "exports"],
     "team": "insights", "language": "Python", "regions": ["eu-west", "us-east"],
     "depends_on": ["query-engine", "scheduler"], "p99_ms": 4000, "uptime": "99.5%",
     "launched": 2021,
     "about": "Writes query results to CSV, Parquet or JSON files in a customer's bucket and "
              "signs download links that expire after 24 hours."},
    {"name": "audit-log", "aliases": ["audit log", "audit trail"],
     "team": "identity", "language": "Kotlin", "regions": ["eu-west", "us-east", "ap-south"],
     "depends_on": ["storage-tier"], "p99_ms": 35, "uptime": "99.99%", "launched": 2020,
     "about": "Keeps an append-only record of sign-ins, permission changes and data exports "
              "that administrators can search for 400 days."},
    {"name": "search-indexer", "aliases": ["search indexer", "catalog search"],
     "team": "insights", "language": "Java", "regions": ["eu-west", "us-east"],
     "depends_on": ["storage-tier"], "p99_ms": 150, "uptime": "99.5%", "launched": 2023,
     "about": "Indexes table and column names with their descriptions so that people can "
              "find datasets in the catalog by keyword."},
    {"name": "webhook-relay", "aliases": ["webhook relay", "webhooks"],
     "team": "developer-experience", "language": "Go", "regions": ["eu-west", "us-east"],
     "depends_on": ["notification-hub"], "p99_ms": 90, "uptime": "99.5%", "launched": 2022,
     "about": "Delivers signed webhook calls to customer endpoints and retries failed "
              "deliveries with exponential backoff for up to 48 hours."},
    {"name": "admin-console", "aliases": ["admin console", "console"],
     "team": "developer-experience", "language": "TypeScript",
     "regions": ["eu-west", "us-east", "ap-south"], "depends_on": ["auth-service",
                                                                  "billing-api"],
     "p99_ms": 400, "uptime": "99.9%", "launched": 2018,
     "about": "The web interface where workspace owners manage members, API keys, plans and "
              "invoices."},
]

TEAMS: Final[list[Record]] = [
    {"name": "platform", "title": "Platform team", "aliases": ["platform team"],
     "lead": "amara-okafor", "location": "Lisbon", "size": 9,
     "about": "Owns the storage layer and the scheduler, and the on-call rotation for both."},
    {"name": "data-plane", "title": "Data Plane team", "aliases": ["data plane team",
                                                                   "data plane"],
     "lead": "jonas-lindqvist", "location": "Stockholm", "size": 11,
     "about": "Builds everything an event touches between the SDK and a query result."},
    {"name": "payments", "title": "Payments team", "aliases": ["payments team"],
     "lead": "priya-raman", "location": "Bangalore", "size": 6,
     "about": "Responsible for metering, invoicing, refunds and tax handling."},
    {"name": "identity", "title": "Identity team", "aliases": ["identity team"],
     "lead": "tomas-herrera", "location": "Madrid", "size": 7,
     "about": "Looks after sign-in, single sign-on, API keys, permissions and the audit "
              "trail."},
    {"name": "insights", "title": "Insights team", "aliases": ["insights team"],
     "lead": "mei-chen", "location": "Toronto", "size": 8,
     "about": "Makes data usable once stored: dashboards, reports, exports and the catalog."},
    {"name": "developer-experience", "title": "Developer Experience team",
     "aliases": ["developer experience team", "developer experience", "devex"],
     "lead": "kwame-mensah", "location": "Accra", "size": 5,
     "about": "Maintains the SDKs, the admin console, notifications and webhooks."},
    {"name": "reliability", "title": "Reliability team", "aliases": ["reliability team",
                                                                     "sre team"],
     "lead": "sofia-rossi", "location": "Milan", "size": 6,
     "about": "Runs incident response, capacity planning and the status page; it owns no "
              "product service but reviews every postmortem."},
]

PEOPLE: Final[list[Record]] = [
    {"name": "amara-okafor", "full": "Amara Okafor", "role": "engineering manager",
     "team": "platform", "joined": 2017, "location": "Lisbon",
     "about": "Designed the first version of the storage tier's compaction."},
    {"name": "jonas-lindqvist", "full": "Jonas Lindqvist", "role": "engineering manager",
     "team": "data-plane", "joined": 2018, "location": "Stockholm",
     "about": "Previously wrote the stream router's partitioning scheme."},
    {"name": "priya-raman", "full": "Priya Raman", "role": "engineering manager",
     "team": "payments", "joined": 2019, "location": "Bangalore",
     "about": "Moved invoicing from monthly batch jobs to continuous metering."},
    {"name": "tomas-herrera", "full": "Tomas Herrera", "role": "engineering manager",
     "team": "identity", "joined": 2018, "location": "Madrid",
     "about": "Introduced mandatory two-factor authentication for administrators."},
    {"name": "mei-chen", "full": "Mei Chen", "role": "engineering manager",
     "team": "insights", "joined": 2020, "location": "Toronto",
     "about": "Started the catalog search project in 2023."},
    {"name": "kwame-mensah", "full": "Kwame Mensah", "role": "engineering manager",
     "team": "developer-experience", "joined": 2021, "location": "Accra",
     "about": "Maintains the Python and JavaScript SDKs himself on Fridays."},
    {"name": "sofia-rossi", "full": "Sofia Rossi", "role": "head of reliability",
     "team": "reliability", "joined": 2019, "location": "Milan",
     "about": "Wrote the incident severity scale that every team uses."},
    {"name": "lena-vogel", "full": "Lena Vogel", "role": "staff engineer",
     "team": "data-plane", "joined": 2020, "location": "Berlin",
     "about": "Leads the work on the query engine's vectorised joins."},
    {"name": "diego-santos", "full": "Diego Santos", "role": "site reliability engineer",
     "team": "reliability", "joined": 2022, "location": "Sao Paulo",
     "about": "Maintains the runbooks for regional failover."},
    {"name": "hana-sato", "full": "Hana Sato", "role": "product designer",
     "team": "insights", "joined": 2022, "location": "Osaka",
     "about": "Designed the drag-and-drop layout of the report builder."},
]

PLANS: Final[list[Record]] = [
    {"name": "plan-starter", "title": "Starter plan", "aliases": ["starter plan", "starter"],
     "price": 0, "seats": 3, "storage_gb": 10, "retention_days": 7,
     "support": "community forum", "includes": ["ingest-gateway", "query-engine"],
     "about": "Free forever for small projects; no credit card is needed to sign up."},
    {"name": "plan-team", "title": "Team plan", "aliases": ["team plan"],
     "price": 99, "seats": 10, "storage_gb": 250, "retention_days": 30,
     "support": "email, business days",
     "includes": ["ingest-gateway", "query-engine", "report-builder"],
     "about": "For teams that share dashboards; extra seats cost 12 USD each per month."},
    {"name": "plan-business", "title": "Business plan", "aliases": ["business plan"],
     "price": 499, "seats": 50, "storage_gb": 2000, "retention_days": 180,
     "support": "email and chat, 24 hours on weekdays",
     "includes": ["ingest-gateway", "query-engine", "report-builder", "export-service",
                  "webhook-relay"],
     "about": "Adds scheduled exports, webhooks and single sign-on."},
    {"name": "plan-enterprise", "title": "Enterprise plan", "aliases": ["enterprise plan",
                                                                        "enterprise"],
     "price": 2500, "seats": 500, "storage_gb": 20000, "retention_days": 730,
     "support": "dedicated engineer, around the clock",
     "includes": ["ingest-gateway", "query-engine", "report-builder", "export-service",
                  "webhook-relay", "audit-log"],
     "about": "Custom contracts, a 99.99% uptime commitment and data residency in one "
              "region."},
]

INCIDENTS: Final[list[Record]] = [
    {"name": "INC-2041", "date": "2025-02-11", "service": "query-engine", "minutes": 47,
     "severity": "SEV2", "cause": "a planner change that ignored partition filters",
     "fix": "rolled back the planner and added a regression test on partition pruning"},
    {"name": "INC-2077", "date": "2025-03-30", "service": "auth-service", "minutes": 18,
     "severity": "SEV1", "cause": "an expired signing certificate for session tokens",
     "fix": "rotated the certificate and added an alert 30 days before expiry"},
    {"name": "INC-2103", "date": "2025-05-06", "service": "billing-api", "minutes": 95,
     "severity": "SEV2", "cause": "duplicate invoices after a retry of the payment processor "
                                  "call", "fix": "made invoice creation idempotent per period"},
    {"name": "INC-2150", "date": "2025-06-19", "service": "stream-router", "minutes": 33,
     "severity": "SEV1", "cause": "a hot partition from one tenant's burst of events",
     "fix": "split hot partitions automatically above 50,000 events per second"},
    {"name": "INC-2188", "date": "2025-07-24", "service": "export-service", "minutes": 240,
     "severity": "SEV3", "cause": "expired credentials for a customer bucket in ap-south",
     "fix": "warn owners 7 days before bucket credentials expire"},
    {"name": "INC-2215", "date": "2025-08-15", "service": "storage-tier", "minutes": 12,
     "severity": "SEV1", "cause": "a full disk on compaction workers in eu-west",
     "fix": "moved compaction scratch space to a separate volume"},
    {"name": "INC-2260", "date": "2025-09-03", "service": "notification-hub", "minutes": 70,
     "severity": "SEV3", "cause": "the email provider throttling quota warning bursts",
     "fix": "spread quota warnings over ten minutes"},
    {"name": "INC-2298", "date": "2025-10-09", "service": "webhook-relay", "minutes": 55,
     "severity": "SEV2", "cause": "a DNS resolver outage in us-east",
     "fix": "added a second resolver and cached lookups for five minutes"},
    {"name": "INC-2321", "date": "2025-11-14", "service": "report-builder", "minutes": 28,
     "severity": "SEV3", "cause": "a browser cache serving an old chart library",
     "fix": "versioned the chart library's file names"},
    {"name": "INC-2344", "date": "2025-12-01", "service": "ingest-gateway", "minutes": 64,
     "severity": "SEV1", "cause": "a load balancer rule that dropped gRPC traffic",
     "fix": "tested load balancer changes against gRPC in staging first"},
]

REGIONS: Final[list[Record]] = [
    {"name": "eu-west", "city": "Dublin", "opened": 2018, "aliases": ["eu west", "europe"],
     "about": "The first region and the default for accounts created in Europe."},
    {"name": "us-east", "city": "Virginia", "opened": 2019, "aliases": ["us east"],
     "about": "The default region for accounts created in the Americas."},
    {"name": "ap-south", "city": "Mumbai", "opened": 2022, "aliases": ["ap south", "asia"],
     "about": "Hosts the core services only; billing and reports are served from eu-west."},
]

# Guides and policies: prose only. A few state numbers that are also SQL facts.
GUIDES: Final[list[Record]] = [
    {"name": "guide-api-keys", "title": "Creating and rotating API keys",
     "text": "Workspace owners create API keys in the admin console under Settings, Keys. "
             "A key is shown once; store it in a secret manager. To rotate a key, create a "
             "second one, deploy it, then revoke the old key: both work in the meantime. "
             "Keys that were not used for 90 days are disabled automatically."},
    {"name": "guide-sso", "title": "Setting up single sign-on",
     "text": "Single sign-on with SAML or OpenID Connect is available on the Business and "
             "Enterprise plans. Upload your identity provider's metadata in the admin console, "
             "map its groups to roles, then test with one account before enforcing it for "
             "everyone."},
    {"name": "guide-2fa", "title": "Two-factor authentication",
     "text": "Administrators must use two-factor authentication with an authenticator app or "
             "a hardware key; text messages are not accepted. Members can turn it on in their "
             "profile. Lost devices are reset by another administrator after a video call."},
    {"name": "guide-data-retention", "title": "How long data is kept",
     "text": "Raw events are kept for the retention period of your plan and then deleted "
             "during nightly compaction. Aggregates you saved as tables are kept until you "
             "delete them. Deleted data cannot be recovered after 14 days."},
    {"name": "guide-gdpr-deletion", "title": "Deleting a person's data (GDPR requests)",
     "text": "To erase everything about one end user, call the deletion endpoint with their "
             "user id. Matching events are removed from storage within 30 days and the "
             "request is written to the audit log with the id of the person who made it."},
    {"name": "guide-rate-limits", "title": "API rate limits",
     "text": "The ingest API accepts 1,000 requests per second per workspace; the query API "
             "accepts 20 concurrent queries. A client over the limit receives HTTP 429 with a "
             "Retry-After header and should wait that many seconds."},
    {"name": "guide-refunds", "title": "Refund policy",
     "text": "Annual plans can be refunded in full within 30 days of purchase. Monthly plans "
             "are not refunded, but a downgrade takes effect at the end of the current "
             "period. Refunds are paid to the original card within ten business days."},
    {"name": "guide-invoices", "title": "Invoices and receipts",
     "text": "Invoices are issued on the first day of each month for the previous month's "
             "usage and emailed to the billing contact. Past invoices can be downloaded as PDF "
             "from the admin console. Companies in the EU can add a VAT number."},
    {"name": "guide-change-card", "title": "Changing the payment card",
     "text": "Update the card under Billing in the admin console. The new card is charged "
             "from the next invoice; a failed charge is retried three times over a week "
             "before the workspace becomes read-only."},
    {"name": "guide-export-formats", "title": "Export formats",
     "text": "Exports can be written as CSV, Parquet or newline-delimited JSON. Parquet "
             "keeps column types and is the smallest; CSV opens in spreadsheets. Files larger "
             "than 5 GB are split into numbered parts."},
    {"name": "guide-slow-queries", "title": "Why is my query slow?",
     "text": "Most slow queries scan too much data. Filter on the time column so whole "
             "partitions are skipped, select only the columns you need, and avoid joining two "
             "large tables without a filter. The query profile shows the bytes scanned."},
    {"name": "guide-sdk-install", "title": "Installing the SDKs",
     "text": "Official SDKs exist for Python, JavaScript, Go and Java. Install the Python "
             "one with pip, initialise it with your API key and region, and call track() for "
             "each event. The SDK batches events and retries on network errors."},
    {"name": "guide-webhook-signatures", "title": "Verifying webhook signatures",
     "text": "Every webhook carries an HMAC-SHA256 signature of its body in a header. Compute "
             "the signature with your endpoint secret and compare in constant time; reject "
             "calls older than five minutes to stop replays."},
    {"name": "guide-backups", "title": "Backups and disaster recovery",
     "text": "Storage is backed up every six hours to a second region. The recovery point "
             "objective is six hours and the recovery time objective is four hours for a "
             "full regional outage."},
    {"name": "guide-on-call", "title": "On-call rotation",
     "text": "Each product team runs a weekly on-call rotation that hands over on Mondays at "
             "10:00 local time. The reliability team is the second line for SEV1 incidents "
             "and joins every incident call within 15 minutes."},
    {"name": "guide-severity", "title": "Incident severity levels",
     "text": "SEV1 means customers cannot ingest or query data; SEV2 means a major feature "
             "is broken or badly degraded; SEV3 means a minor feature is affected or a "
             "workaround exists. Every SEV1 and SEV2 gets a written postmortem within five "
             "business days."},
    {"name": "guide-status-page", "title": "The status page",
     "text": "Current incidents and planned maintenance are published on the status page, "
             "which you can subscribe to by email or RSS. Maintenance is announced at least "
             "72 hours ahead."},
    {"name": "guide-roles", "title": "Roles and permissions",
     "text": "A workspace has owners, administrators, editors and viewers. Only owners can "
             "change the plan or delete the workspace; administrators manage members and "
             "keys; editors write queries and dashboards; viewers only read."},
    {"name": "guide-quota-warnings", "title": "Quota warnings",
     "text": "When a workspace reaches 80% and again 100% of its plan's monthly event quota, "
             "owners get a notification. Ingestion continues over the quota and the extra "
             "events are billed at the plan's overage rate."},
    {"name": "guide-data-residency", "title": "Data residency",
     "text": "Choose a region when creating a workspace; data at rest stays in that region. "
             "Moving a workspace to another region is a support request and takes up to two "
             "weeks for large workspaces."},
    {"name": "guide-password-policy", "title": "Password policy",
     "text": "Passwords need at least 12 characters and are checked against lists of leaked "
             "passwords. After ten failed attempts an account is locked for 15 minutes."},
    {"name": "guide-dashboard-sharing", "title": "Sharing dashboards",
     "text": "A dashboard can be shared with members, with a group, or through a public link "
             "that anyone can open without signing in. Public links can be revoked at any "
             "time and never show the underlying queries."},
    {"name": "guide-scheduled-reports", "title": "Scheduled reports",
     "text": "Any dashboard can be emailed as a PDF on a daily, weekly or monthly schedule. "
             "Recipients do not need an account. Schedules run in the workspace's time zone."},
    {"name": "guide-account-deletion", "title": "Closing your account",
     "text": "An owner can close the workspace from Settings. Data is kept for 14 days in "
             "case you change your mind, then deleted for good; the last invoice is issued "
             "right away."},
    {"name": "guide-support-channels", "title": "How to contact support",
     "text": "Open a ticket from the help menu or email the support address. Response times "
             "depend on the plan, from best-effort on the community forum to one hour for "
             "Enterprise SEV1 issues."},
]

#: Facts stated by guides (subject, attribute, value, keywords).
GUIDE_FACTS: Final[list[tuple[str, str, str, str, str]]] = [
    ("guide-rate-limits", "ingest-gateway", "rate_limit_requests_per_second", "1000",
     "rate limit requests per second throttle"),
    ("guide-rate-limits", "query-engine", "concurrent_query_limit", "20",
     "concurrent queries limit rate at once"),
    ("guide-api-keys", "admin-console", "unused_key_disable_days", "90",
     "unused api key disabled days"),
    ("guide-backups", "storage-tier", "backup_interval_hours", "6",
     "backup backed up every hours how often"),
    ("guide-password-policy", "auth-service", "password_min_length", "12",
     "password minimum length characters"),
]

RELATION_WORDS: Final[dict[str, list[str]]] = {
    "depends_on": ["depend", "dependency", "dependencies", "rely", "relies", "calls",
                   "upstream", "downstream", "needs", "uses", "break", "breaks", "affect"],
    "owns": ["owner", "owned", "responsible", "maintains", "team"],
    "leads": ["lead", "leader", "manager", "manages", "head", "runs", "who"],
    "member_of": ["member", "works", "engineer", "people", "who"],
    "affected": ["incident", "incidents", "outage", "outages", "broke", "down"],
    "runs_in": ["region", "regions", "hosted", "available", "where"],
    "includes": ["include", "included", "plan", "plans", "available", "get"],
}
