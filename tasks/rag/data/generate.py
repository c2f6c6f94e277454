"""Turn ``knowledge.py`` and ``questions.py`` into the shipped RAG corpus files.

``python -m tasks.rag.data.generate`` rewrites, next to this module:

- ``documents.jsonl``: ``{"doc_id", "title", "text"}``, one short document per service,
  team, person, plan, incident, region and guide;
- ``facts.jsonl``: ``{"subject", "attribute", "value", "doc_id", "keywords"}`` for the
  SQL store, and ``aliases.jsonl``: ``{"alias", "subject"}``;
- ``entities.jsonl`` and ``relations.jsonl`` for the knowledge graph;
- ``questions.jsonl``: ``{"qid", "kind", "question", "relevant"}``.

Output is byte-for-byte reproducible (a test checks the shipped files against it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from tasks.rag.data.knowledge import (
    GUIDE_FACTS,
    GUIDES,
    INCIDENTS,
    PEOPLE,
    PLANS,
    REGIONS,
    SERVICES,
    TEAMS,
)
from tasks.rag.data.questions import QUESTIONS

HERE: Final = Path(__file__).resolve().parent
FILES: Final = ("documents", "facts", "aliases", "entities", "relations", "questions")

Row = dict[str, Any]


def _listing(items: Iterable[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _by_name(records: list[Row]) -> dict[str, Row]:
    return {record["name"]: record for record in records}


class Corpus:
    """Every output row, built once from the knowledge base."""

    def __init__(self) -> None:
        self.documents: list[Row] = []
        self.facts: list[Row] = []
        self.aliases: dict[str, str] = {}
        self.entities: list[Row] = []
        self.relations: list[Row] = []
        self.teams = _by_name(TEAMS)
        self.people = _by_name(PEOPLE)
        for build in (self._services, self._teams, self._people, self._plans,
                      self._incidents, self._regions, self._guides):
            build()

    def _doc(self, doc_id: str, title: str, text: str) -> None:
        self.documents.append({"doc_id": doc_id, "title": title, "text": text})

    def _fact(self, doc_id: str, subject: str, attribute: str, value: object,
              keywords: str) -> None:
        self.facts.append({"subject": subject, "attribute": attribute, "value": str(value),
                           "doc_id": doc_id, "keywords": keywords})

    def _entity(self, name: str, doc_id: str, kind: str, aliases: list[str]) -> None:
        self.entities.append({"name": name, "doc_id": doc_id, "kind": kind,
                              "aliases": aliases})
        for alias in aliases:
            self.aliases[alias] = name

    def _relation(self, subject: str, relation: str, obj: str, doc_id: str) -> None:
        self.relations.append({"subject": subject, "relation": relation, "object": obj,
                               "doc_id": doc_id})

    def _services(self) -> None:
        for s in SERVICES:
            doc = f"svc-{s['name']}"
            team = self.teams[s["team"]]["title"]
            deps = s["depends_on"]
            needs = (f"It depends on {_listing(deps)}." if deps
                     else "It depends on no other Fernhill service.")
            self._doc(doc, s["name"], (
                f"{s['name']} is owned by the {team}. {s['about']} It is written in "
                f"{s['language']} and runs in {_listing(s['regions'])}. {needs} Its p99 "
                f"latency target is {s['p99_ms']} ms and its uptime commitment is "
                f"{s['uptime']}. It launched in {s['launched']}."))
            self._entity(s["name"], doc, "service", s["aliases"])
            for attribute, value, keywords in (
                    ("owner_team", s["team"], "owner owns team responsible"),
                    ("language", s["language"], "language written programming code"),
                    ("p99_latency_ms", s["p99_ms"], "p99 latency target milliseconds ms"),
                    ("uptime_commitment", s["uptime"], "uptime sla availability commit"),
                    ("launched_year", s["launched"], "launched launch year when started"),
                    ("regions", ", ".join(s["regions"]), "regions region hosted where run")):
                self._fact(doc, s["name"], attribute, value, keywords)
            self._relation(s["team"], "owns", s["name"], doc)
            for dep in deps:
                self._relation(s["name"], "depends_on", dep, doc)
            for region in s["regions"]:
                self._relation(s["name"], "runs_in", region, doc)

    def _teams(self) -> None:
        owned: dict[str, list[str]] = {}
        for s in SERVICES:
            owned.setdefault(s["team"], []).append(s["name"])
        for t in TEAMS:
            doc = f"team-{t['name']}"
            lead = self.people[t["lead"]]["full"]
            services = owned.get(t["name"], [])
            owns = (f"It owns {_listing(services)}." if services else "")
            self._doc(doc, t["title"], (
                f"The {t['title']} is led by {lead} and based in {t['location']}, with "
                f"{t['size']} people. {t['about']} {owns}").strip())
            self._entity(t["name"], doc, "team", [t["title"], *t["aliases"]])
            for attribute, value, keywords in (
                    ("lead", t["lead"], "lead leads leader manager head"),
                    ("location", t["location"], "based where location city office"),
                    ("headcount", t["size"], "size people many engineers headcount work")):
                self._fact(doc, t["name"], attribute, value, keywords)
            self._relation(t["lead"], "leads", t["name"], doc)

    def _people(self) -> None:
        for p in PEOPLE:
            doc = f"person-{p['name']}"
            team = self.teams[p["team"]]
            leads = (f" {p['full'].split()[0]} leads the {team['title']}."
                     if team["lead"] == p["name"] else "")
            self._doc(doc, p["full"], (
                f"{p['full']} is a {p['role']} in the {team['title']}, based in "
                f"{p['location']}, and joined Fernhill in {p['joined']}.{leads} {p['about']}"))
            self._entity(p["name"], doc, "person", [p["full"]])
            for attribute, value, keywords in (
                    ("role", p["role"], "role job title position"),
                    ("team", p["team"], "team works member"),
                    ("joined_year", p["joined"], "joined join when year since company"),
                    ("location", p["location"], "based where location city")):
                self._fact(doc, p["name"], attribute, value, keywords)
            self._relation(p["name"], "member_of", p["team"], doc)

    def _plans(self) -> None:
        for p in PLANS:
            doc = p["name"]
            price = ("is free" if p["price"] == 0
                     else f"costs {p['price']} USD per month")
            self._doc(doc, p["title"], (
                f"The {p['title']} {price} and includes up to {p['seats']} seats, "
                f"{p['storage_gb']} GB of storage and {p['retention_days']} days of raw event "
                f"retention. Support: {p['support']}. It gives access to "
                f"{_listing(p['includes'])}. {p['about']}"))
            self._entity(p["name"], doc, "plan", [p["title"], *p["aliases"]])
            for attribute, value, keywords in (
                    ("monthly_price_usd", p["price"], "price cost costs much per month usd"),
                    ("seats", p["seats"], "seats users members many come"),
                    ("storage_gb", p["storage_gb"], "storage gb space"),
                    ("retention_days", p["retention_days"],
                     "retention retained days kept keep data long"),
                    ("support", p["support"], "support help contact")):
                self._fact(doc, p["name"], attribute, value, keywords)
            for service in p["includes"]:
                self._relation(p["name"], "includes", service, doc)

    def _incidents(self) -> None:
        for i in INCIDENTS:
            doc = i["name"].lower()
            self._doc(doc, f"{i['name']}: {i['service']} incident", (
                f"{i['name']} ({i['severity']}, {i['date']}): {i['service']} was degraded "
                f"for {i['minutes']} minutes. Cause: {i['cause']}. Fix: {i['fix']}."))
            self._entity(i["name"], doc, "incident", [])
            for attribute, value, keywords in (
                    ("date", i["date"], "date when happened day"),
                    ("service", i["service"], "service affected which hit"),
                    ("duration_minutes", i["minutes"], "duration minutes long last lasted"),
                    ("severity", i["severity"], "severity level sev"),
                    ("cause", i["cause"], "cause caused why root reason"),
                    ("fix", i["fix"], "fix fixed remediation")):
                self._fact(doc, i["name"], attribute, value, keywords)
            self._relation(i["name"], "affected", i["service"], doc)

    def _regions(self) -> None:
        for r in REGIONS:
            doc = f"region-{r['name']}"
            hosted = [s["name"] for s in SERVICES if r["name"] in s["regions"]]
            self._doc(doc, f"Region {r['name']}", (
                f"The {r['name']} region is in {r['city']} and opened in {r['opened']}. "
                f"{r['about']} Services running there: {_listing(hosted)}."))
            self._entity(r["name"], doc, "region", r["aliases"])
            self._fact(doc, r["name"], "city", r["city"], "city where located hosts")
            self._fact(doc, r["name"], "opened_year", r["opened"], "opened when year")

    def _guides(self) -> None:
        for g in GUIDES:
            self._doc(g["name"], g["title"], g["text"])
        for doc, subject, attribute, value, keywords in GUIDE_FACTS:
            self._fact(doc, subject, attribute, value, keywords)

    def rows(self) -> dict[str, list[Row]]:
        """Each output file's rows, by file name (without ``.jsonl``)."""
        questions = [{"qid": f"q{index:02d}", "kind": kind, "question": text,
                      "relevant": relevant}
                     for index, (kind, text, relevant) in enumerate(QUESTIONS, start=1)]
        return {
            "documents": self.documents,
            "facts": self.facts,
            "aliases": [{"alias": a, "subject": s} for a, s in sorted(self.aliases.items())],
            "entities": self.entities,
            "relations": self.relations,
            "questions": questions,
        }


def to_jsonl(rows: Iterable[Row]) -> str:
    """One compact JSON object per line, keys sorted."""
    return "".join(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n" for row in rows)


def render() -> dict[str, str]:
    """``{file name: text}`` of every shipped file."""
    return {f"{name}.jsonl": to_jsonl(rows) for name, rows in Corpus().rows().items()}


def main() -> None:
    """Rewrite the shipped files next to this module."""
    for name, text in render().items():
        (HERE / name).write_text(text, encoding="utf-8")
        print(f"wrote {name}: {text.count(chr(10))} rows")


if __name__ == "__main__":
    main()
