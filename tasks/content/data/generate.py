"""Deterministic generator of sample news articles for the content-summary workflow.

Articles are assembled from topic-specific sentence templates (technology, health,
environment, business, sports, science, city news, education) and shared reporting
sentences (quotes, background, what happens next), with names, places and figures filled
in at random. Within an article no template is used twice, so the text does not repeat
itself, and lengths are spread over short (150-250 words), medium (250-400) and long
(400-600) pieces.

Run ``python -m tasks.content.data.generate`` to rewrite ``articles.jsonl`` next to this
module. Output is byte-for-byte reproducible.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

SEED: Final = 41_017
ARTICLE_COUNT: Final = 60
FIRST_ARTICLE_ID: Final = 7001
MIN_WORDS: Final = 150
MAX_WORDS: Final = 600
LENGTH_BANDS: Final[tuple[tuple[int, int], ...]] = ((150, 250), (250, 400), (400, 600))

DATA_DIR: Final = Path(__file__).resolve().parent
ARTICLES_FILE: Final = DATA_DIR / "articles.jsonl"

Article = dict[str, object]

# fmt: off
_PEOPLE: Final = (
    "Maria Okafor", "Daniel Reyes", "Priya Natarajan", "Tomasz Nowak", "Aiko Tanaka",
    "Samuel Bennett", "Fatima Haddad", "Lena Fischer", "Oliver Grant", "Chen Wei",
    "Grace Mensah", "Hugo Laurent", "Isabel Duarte", "Kwame Asante", "Nora Lindqvist",
)
_CITIES: Final = (
    "Riverton", "Lakeside", "Northbridge", "Port Elson", "Ashford", "Millbrook", "Greenhaven",
    "Easton Falls", "Westmoor", "Bayview",
)
_WEEKDAYS: Final = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
_MONTHS: Final = ("January", "March", "April", "June", "September", "October", "November")

_TOPICS: Final[Mapping[str, Mapping[str, Sequence[str]]]] = {
    "technology": {
        "org": ("Brightwave Systems", "Nimbus Labs", "Corelink", "Quanta Software"),
        "thing": ("battery that charges in ten minutes", "translation earpiece",
                  "open-source chip design", "home energy assistant"),
        "group": ("small businesses", "schools", "hospitals", "city councils"),
        "titles": ("{org} unveils a {thing}", "Can a {thing} win over {group}?",
                   "{org} bets its future on a {thing}"),
        "sentences": (
            "{org} announced on {weekday} that it will ship its new {thing} in {month}.",
            "The company says the device was tested for eighteen months with {group} in {city}.",
            "Early testers reported saving roughly {pct} percent of the time they used to spend "
            "on routine work.",
            "Engineers at {org} spent most of the last year reducing the power the system draws.",
            "Critics warn that the product collects more data than it needs and want clearer "
            "privacy rules.",
            "The firm insists that personal information stays on the device unless users opt in.",
            "Rival manufacturers are expected to respond with cheaper versions before the end of "
            "the year.",
            "Industry analysts estimate the market could be worth {money} million dollars within "
            "five years.",
            "A previous attempt by the company to enter this market was abandoned after "
            "disappointing sales.",
            "Repair groups welcomed the decision to publish the full hardware specification.",
            "Pricing has not been confirmed, although staff hinted that a subscription will "
            "be optional.",
            "Security researchers have been invited to examine the software before launch.",
            "Several universities plan to use the platform in their engineering courses.",
            "The launch event drew about {count} visitors, many of them independent developers.",
        ),
    },
    "health": {
        "org": ("the Regional Health Board", "St. Anne's Hospital", "the Medical Research Trust",
                "Northside Clinic"),
        "thing": ("walk-in vaccination programme", "early screening scheme",
                  "community nursing pilot", "mental health hotline"),
        "group": ("older residents", "new parents", "shift workers", "teenagers"),
        "titles": ("{org} expands its {thing}", "A {thing} for {group} shows early results",
                   "Doctors debate the future of the {thing}"),
        "sentences": (
            "{org} confirmed on {weekday} that its {thing} will be extended until {month}.",
            "The scheme was designed for {group}, who often struggle to book regular "
            "appointments.",
            "Since it started, about {count} people have used the service at least once.",
            "Waiting times at the main clinic have fallen by {pct} percent according to "
            "internal figures.",
            "Nurses said the biggest change was being able to follow up with patients at home.",
            "Some family doctors worry that the extra work is not matched by extra funding.",
            "The programme costs around {money} thousand dollars a month to run.",
            "Patient groups have asked for evening sessions so that working people can attend.",
            "Researchers will publish a full evaluation once a second year of data is collected.",
            "Pharmacies in {city} have agreed to share appointment slots with the clinic.",
            "Officials stressed that emergency departments should still be used for serious "
            "injuries.",
            "A similar project in a neighbouring region was closed after volunteers left.",
            "Training for the new staff took place over six weekends in the spring.",
            "Local charities have offered free transport for patients without a car.",
        ),
    },
    "environment": {
        "org": ("the Green Valley Trust", "the River Authority", "Coastal Watch",
                "the Parks Department"),
        "thing": ("wetland restoration project", "tree planting drive", "plastic-free market",
                  "river clean-up scheme"),
        "group": ("farmers", "fishing crews", "volunteers", "schoolchildren"),
        "titles": ("{org} launches a {thing}", "{group} join the {thing} in {city}",
                   "Will the {thing} bring back the birds?"),
        "sentences": (
            "{org} began work on its {thing} on {weekday} near {city}.",
            "The first phase covers about {count} hectares of land that flooded regularly.",
            "Volunteers have already removed {count} bags of rubbish from the riverbanks.",
            "Ecologists expect wading birds to return within two breeding seasons.",
            "The project is funded by a mix of public grants and local donations worth {money} "
            "thousand dollars.",
            "Some {group} were sceptical at first because they feared losing grazing land.",
            "Water quality readings improved by {pct} percent after the first winter.",
            "Organisers plan guided walks every weekend so residents can see the changes.",
            "A drought last summer delayed planting and forced the team to rethink the schedule.",
            "The regional council wants to copy the approach on two other rivers.",
            "Scientists from the university will count insects and fish every quarter.",
            "Local businesses have sponsored benches made from recycled plastic.",
            "Critics argue that the money would be better spent on flood defences in town.",
            "The next stage depends on a planning decision expected in {month}.",
        ),
    },
    "business": {
        "org": ("Harbor Foods", "Meridian Logistics", "Atlas Textiles", "Summit Bank"),
        "thing": ("four-day working week", "new distribution centre", "apprenticeship scheme",
                  "expansion into Asia"),
        "group": ("shareholders", "warehouse staff", "suppliers", "young workers"),
        "titles": ("{org} announces a {thing}", "What the {thing} means for {group}",
                   "{org} defends its {thing}"),
        "sentences": (
            "{org} told investors on {weekday} that it is pressing ahead with a {thing}.",
            "Quarterly revenue rose {pct} percent to {money} million dollars, beating forecasts.",
            "The company employs about {count} people, most of them in {city}.",
            "Managers said the plan had been discussed with {group} for several months.",
            "Unions welcomed the announcement but asked for written guarantees on pay.",
            "Shares in the firm climbed in early trading before settling slightly higher.",
            "Higher energy and transport costs squeezed profit margins last year.",
            "The chief executive described the move as a long-term bet rather than a quick fix.",
            "Competitors are watching closely, and at least one has begun similar talks.",
            "Economists note that the sector has struggled to recruit since the pandemic.",
            "Suppliers were told that payment terms would not change under the new plan.",
            "A review of the first results is scheduled for {month}.",
            "The board rejected a takeover approach last year, saying it undervalued the business.",
            "Customers are unlikely to notice any difference in prices this year.",
        ),
    },
    "sports": {
        "org": ("Riverton Rovers", "the Lakeside Hawks", "Northbridge Athletic",
                "the City Marathon committee"),
        "thing": ("youth academy", "new stadium", "women's league team", "training centre"),
        "group": ("season ticket holders", "young players", "local coaches", "supporters"),
        "titles": ("{org} opens its {thing}", "Inside the {thing} that could change {org}",
                   "{group} give their verdict on the {thing}"),
        "sentences": (
            "{org} officially opened its {thing} on {weekday} in front of {count} supporters.",
            "The club spent about {money} million dollars on the facility over two years.",
            "Coaches say the aim is to develop players from {city} rather than buy them.",
            "Attendance at home games has grown {pct} percent since last season.",
            "The head coach praised the volunteers who kept the club running during lean years.",
            "Several former players attended and shared stories from the club's early days.",
            "Ticket prices will stay the same for {group} next season.",
            "Rivals have criticised the spending, calling it a risky gamble for a small club.",
            "The team finished fourth last year and hopes to reach the play-offs in {month}.",
            "Medical staff will use the new gym to help injured players recover faster.",
            "A partnership with local schools will give children free coaching sessions.",
            "The captain said the dressing room had never felt so united.",
            "Broadcasters have shown more interest in the club since the last cup run.",
            "Season tickets for the coming year sold out within a week.",
        ),
    },
    "science": {
        "org": ("the National Observatory", "the Institute of Marine Biology",
                "the Applied Physics Lab", "the Genome Centre"),
        "thing": ("deep-sea survey", "telescope upgrade", "crop genetics study",
                  "climate sensor network"),
        "group": ("students", "amateur astronomers", "fishermen", "farmers"),
        "titles": ("{org} reports first results from its {thing}",
                   "A {thing} surprises researchers", "How {group} helped the {thing}"),
        "sentences": (
            "Researchers at {org} published the first findings of their {thing} on {weekday}.",
            "The team collected more than {count} samples over three field seasons.",
            "Their results suggest the effect is about {pct} percent stronger than earlier "
            "estimates.",
            "The lead author said the data surprised even the most optimistic members of the "
            "team.",
            "Independent experts cautioned that the findings need to be repeated elsewhere.",
            "The project was funded with a grant of {money} million dollars.",
            "Volunteers, including many {group}, helped record observations at night.",
            "Instruments built in {city} were shipped to remote sites by boat.",
            "The raw data will be released to other scientists in {month}.",
            "One unexpected result concerns the timing of seasonal changes.",
            "The team is now designing a follow-up study with partners abroad.",
            "Funding agencies have been asked to support a permanent monitoring station.",
            "The paper was reviewed by specialists from four countries before publication.",
            "Students will be able to use the equipment for their own projects next year.",
        ),
    },
    "city": {
        "org": ("the city council", "the transport authority", "the housing office",
                "the mayor's office"),
        "thing": ("cycle lane network", "night bus service", "library renovation",
                  "affordable housing plan"),
        "group": ("commuters", "shop owners", "students", "retired residents"),
        "titles": ("{city} approves a {thing}", "Residents split over the {thing}",
                   "What the {thing} means for {group} in {city}"),
        "sentences": (
            "{org} of {city} approved the {thing} at a meeting on {weekday}.",
            "The plan will cost around {money} million dollars over three years.",
            "Officials expect about {count} people a day to benefit once it is complete.",
            "A public consultation drew more responses than any other in the last decade.",
            "Some {group} welcomed the decision, while others worried about noise and parking.",
            "Construction is due to begin in {month} and will happen in stages.",
            "Councillors said the idea came from a petition signed by local families.",
            "Traffic surveys showed congestion on the main road rose {pct} percent last year.",
            "Opposition members argued that repairing existing streets should come first.",
            "The council promised regular updates on its website and at community meetings.",
            "Neighbouring towns have asked to see the results before starting similar schemes.",
            "Shop owners will receive support if the works affect their trade.",
            "A temporary route will be signposted while the main street is closed.",
            "The final design includes more trees and better lighting at night.",
        ),
    },
    "education": {
        "org": ("Westmoor Academy", "the Regional Education Office", "Bayview College",
                "the Teachers' Union"),
        "thing": ("coding curriculum", "free breakfast programme", "tutoring scheme",
                  "outdoor classroom"),
        "group": ("pupils", "parents", "teachers", "school governors"),
        "titles": ("{org} introduces a {thing}", "Early lessons from the {thing}",
                   "{group} react to the {thing}"),
        "sentences": (
            "{org} introduced its {thing} on {weekday} after a year of preparation.",
            "About {count} pupils are taking part in the first term.",
            "Teachers reported that attendance improved by {pct} percent in the pilot classes.",
            "The scheme is paid for by a grant of {money} thousand dollars from a local trust.",
            "Head teachers said the hardest part was finding time in an already full timetable.",
            "Some {group} asked for more information about how progress will be measured.",
            "Older students volunteer as mentors for younger children twice a week.",
            "The programme will be reviewed by education researchers in {month}.",
            "Schools in {city} that cannot join this year have been promised places next year.",
            "Inspectors praised the approach in a recent report.",
            "Parents can visit the classrooms on open days each month.",
            "The union warned that staff must not be asked to work unpaid hours.",
            "Local companies have donated equipment and offered work placements.",
            "Organisers hope the idea will spread to other regions within two years.",
        ),
    },
}

_SHARED: Final = (
    "\"We have listened carefully to the concerns that were raised,\" said {person}, "
    "who leads the project.",
    "\"This is the beginning, not the end,\" {person} told reporters after the announcement.",
    "{person}, a resident of {city} for twenty years, said the change was long overdue.",
    "Not everyone is convinced, and a small group protested outside the building.",
    "The announcement follows months of negotiations behind closed doors.",
    "Similar efforts elsewhere have had mixed results, according to a recent review.",
    "A spokesperson declined to say how many jobs could be affected.",
    "Further details will be shared at a public meeting later this month.",
    "Supporters argue that the benefits will take several years to become visible.",
    "Opponents say the timetable is too ambitious given the current budget.",
    "Local newspapers have followed the story closely since the first proposal.",
    "{person} said the team had learned a great deal from earlier mistakes.",
    "Independent observers will publish their own assessment next spring.",
    "The decision was taken by a narrow majority after a long debate.",
    "Many residents first heard about the plan through social media.",
    "Questions remain about who will pay for maintenance in the long run.",
    "Volunteers played a larger role than expected in the early stages.",
    "For now, the focus is on making sure the first phase runs smoothly.",
    "The organisers admitted that communication could have been better at the start.",
    "Figures released this week suggest that interest is higher than predicted.",
    "Experts interviewed for this article broadly agreed on the main risks.",
    "A formal complaint was lodged but later withdrawn.",
    "Officials expect the first measurable results before the end of next year.",
    "{person} described the atmosphere at the launch as cautiously optimistic.",
    "The story is likely to return to the headlines when the next budget is set.",
    "{person} pointed out that the idea had first been suggested almost a decade ago.",
    "Several people who spoke at the meeting asked for the plans to be published in full.",
    "An online survey found that younger residents were the most enthusiastic.",
    "The project team has set up a telephone line for questions from the public.",
    "Insurance costs were one of the issues discussed in detail at the hearing.",
    "Journalists were given a short tour before the official opening.",
    "The weather caused minor delays, but the overall schedule has not changed.",
    "Comparable schemes abroad took between three and five years to pay off.",
    "{person} admitted that some of the early forecasts had been too optimistic.",
    "A consultant's report recommended regular reviews and clear targets.",
)
# fmt: on


def _fill(rng: random.Random, template: str, topic: Mapping[str, Sequence[str]],
          fixed: Mapping[str, str]) -> str:
    values = {
        "person": rng.choice(_PEOPLE),
        "weekday": rng.choice(_WEEKDAYS),
        "month": rng.choice(_MONTHS),
        "pct": str(rng.randrange(5, 45)),
        "count": f"{rng.randrange(2, 90) * 50:,}",
        "money": str(rng.randrange(2, 95)),
        **fixed,
    }
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    if "group" in names and "group" not in values:
        values["group"] = rng.choice(topic["group"])
    text = template.format_map(values)
    return text[0].upper() + text[1:]


def _article(rng: random.Random, article_id: int) -> Article:
    topic_name = rng.choice(sorted(_TOPICS))
    topic = _TOPICS[topic_name]
    fixed = {"org": rng.choice(topic["org"]), "thing": rng.choice(topic["thing"]),
             "city": rng.choice(_CITIES), "group": rng.choice(topic["group"])}
    low, high = rng.choice(LENGTH_BANDS)
    target = rng.randrange(low, high)
    title = _fill(rng, rng.choice(topic["titles"]), topic, fixed)
    # The topic's first template is its lede; the rest mix with shared reporting sentences,
    # the topic's own sentences tending to come first (as in a news story).
    lede, *body = topic["sentences"]
    ranked = [(rng.random(), t) for t in body] + [(rng.random() + 0.6, t) for t in _SHARED]
    pool = [template for _, template in sorted(ranked)]
    sentences = [_fill(rng, lede, topic, fixed)]
    words = len(sentences[0].split())
    for template in pool:
        sentence = _fill(rng, template, topic, fixed)
        if words + len(sentence.split()) > min(target, MAX_WORDS):
            if words >= MIN_WORDS:
                break
            continue
        sentences.append(sentence)
        words += len(sentence.split())
    paragraphs: list[str] = []
    index = 0
    while index < len(sentences):
        size = rng.randrange(2, 5)
        paragraphs.append(" ".join(sentences[index:index + size]))
        index += size
    text = "\n\n".join(paragraphs)
    return {"article_id": article_id, "topic": topic_name, "title": title, "text": text,
            "words": len(text.split())}


def generate_articles(count: int = ARTICLE_COUNT, seed: int = SEED) -> list[Article]:
    """Return ``count`` articles; the same arguments always give the same articles."""
    rng = random.Random(seed)
    return [_article(rng, FIRST_ARTICLE_ID + index) for index in range(count)]


def to_jsonl(records: Iterable[Mapping[str, object]]) -> str:
    """Serialise records one JSON object per line, in a stable byte-exact form."""
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def write_articles(path: Path = ARTICLES_FILE) -> Path:
    """Write the sample articles to ``path`` and return it."""
    path.write_bytes(to_jsonl(generate_articles()).encode())
    return path


def main() -> None:
    """Regenerate the shipped articles and print where they went."""
    path = write_articles()
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
