"""Deterministic generator of labelled card transactions with realistic fraud patterns.

Each transaction is drawn from one *scenario*: a kind of genuine spending (everyday
card-present purchases, online shopping, travel abroad, a rare big purchase, a brand-new
card) or a known fraud pattern:

- ``card_testing``: a stolen card number is checked with bursts of tiny online charges on
  digital goods, with declined attempts, at night, often from a new device;
- ``account_takeover``: someone logs into a customer's account from a new device and buys
  resellable goods worth many times the customer's usual ticket;
- ``stolen_card_present``: a physical card used far from home, several times in an hour;
- ``new_card_bustout``: a freshly issued card maxed out on electronics and gift cards;
- ``subtle``: fraud that looks like ordinary spending with at most one weak signal.

The classes overlap on purpose: travellers trigger country mismatches, people buy laptops,
shop at 3 a.m. and change phones, and some fraud is indistinguishable from normal use; a
small share of labels is also flipped (chargebacks get disputed both ways). No single
feature separates the classes, so the models in ``tasks.fraud.models`` have to combine them.

The shipped set is *enriched*: real card traffic is well under 1 % fraud, but a labelled
training set built from reviewed alerts has far more, so about 18 % of transactions here are
fraud (the "always allow" baseline is therefore about 82 % accurate).

Run ``python -m tasks.fraud.data.generate`` to rewrite ``training.jsonl`` and
``sample_transactions.jsonl`` next to this module. Output is byte-for-byte reproducible.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

TRAINING_SEED: Final = 5_310_247
SAMPLE_SEED: Final = 8_842
TRAINING_SIZE: Final = 3000
SAMPLE_SIZE: Final = 600
FIRST_TRAINING_ID: Final = 100_001
FIRST_SAMPLE_ID: Final = 900_001

FRAUD_RATE: Final = 0.18
LABEL_NOISE: Final = 0.015

DATA_DIR: Final = Path(__file__).resolve().parent
TRAINING_FILE: Final = DATA_DIR / "training.jsonl"
SAMPLE_FILE: Final = DATA_DIR / "sample_transactions.jsonl"

MERCHANT_CATEGORIES: Final[tuple[str, ...]] = (
    "grocery", "restaurant", "fuel", "pharmacy", "apparel", "home_improvement",
    "subscriptions", "travel", "hotel", "electronics", "jewelry", "gift_cards",
    "digital_goods", "online_gaming",
)

# The fields of a transaction, in the order they are written. ``is_fraud`` is the label and
# ``scenario`` says which pattern produced the row (for analysis only; models never see it).
FIELDS: Final[tuple[str, ...]] = (
    "transaction_id", "amount", "merchant_category", "country_mismatch", "hour",
    "card_age_days", "velocity_1h", "velocity_24h", "device_change", "card_present",
    "distance_km", "avg_amount_30d", "failed_auths_24h", "is_fraud", "scenario",
)

Transaction = dict[str, Any]
Scenario = Callable[[random.Random, Transaction], None]


# ------------------------------------------------------------------------------ helpers


def _choose(rng: random.Random, weighted: Mapping[str, float]) -> str:
    return rng.choices(list(weighted), weights=list(weighted.values()))[0]


def _chance(rng: random.Random, probability: float) -> bool:
    return rng.random() < probability


def _day_hour(rng: random.Random, night_share: float = 0.04) -> int:
    """Mostly daytime (peaking early afternoon); ``night_share`` between midnight and 6."""
    if _chance(rng, night_share):
        return rng.randrange(0, 6)
    return min(23, max(6, round(rng.triangular(7, 23, 14))))


def _night_biased_hour(rng: random.Random, night_share: float) -> int:
    return rng.randrange(0, 6) if _chance(rng, night_share) else rng.randrange(0, 24)


def _established_card_age(rng: random.Random) -> int:
    return int(math.exp(rng.uniform(math.log(90), math.log(4000))))


def _near_home_km(rng: random.Random, mean: float) -> float:
    return rng.expovariate(1 / mean)


def _cardholder(rng: random.Random) -> Transaction:
    """The cardholder's usual behaviour; scenarios then draw one transaction against it."""
    return {
        "avg_amount_30d": round(math.exp(rng.gauss(math.log(48), 0.55)), 2),
        "card_age_days": _established_card_age(rng),
        "velocity_1h": 1,
        "velocity_24h": 1 + min(6, int(rng.expovariate(1 / 1.6))),
        "device_change": False,
        "card_present": True,
        "country_mismatch": False,
        "failed_auths_24h": 1 if _chance(rng, 0.04) else 0,
    }


def _scaled_amount(rng: random.Random, t: Transaction, low: float, high: float) -> float:
    return float(t["avg_amount_30d"]) * rng.uniform(low, high)


# ------------------------------------------------------------------- genuine scenarios


def _everyday(rng: random.Random, t: Transaction) -> None:
    category = _choose(rng, {
        "grocery": 0.25, "restaurant": 0.22, "fuel": 0.14, "pharmacy": 0.08, "apparel": 0.10,
        "home_improvement": 0.08, "subscriptions": 0.07, "electronics": 0.06,
    })
    t["merchant_category"] = category
    amount = float(t["avg_amount_30d"]) * math.exp(rng.gauss(0, 0.5))
    if category == "fuel":
        amount = rng.uniform(25, 95)
    t["amount"] = amount
    t["hour"] = _day_hour(rng)
    t["card_present"] = category != "subscriptions" and _chance(rng, 0.92)
    t["velocity_1h"] = 1 + (1 if _chance(rng, 0.12) else 0)
    t["device_change"] = _chance(rng, 0.02)
    t["country_mismatch"] = _chance(rng, 0.01)
    t["distance_km"] = _near_home_km(rng, 9)


def _online(rng: random.Random, t: Transaction) -> None:
    t["merchant_category"] = _choose(rng, {
        "apparel": 0.24, "electronics": 0.16, "subscriptions": 0.14, "digital_goods": 0.14,
        "online_gaming": 0.08, "gift_cards": 0.05, "travel": 0.09, "home_improvement": 0.10,
    })
    t["amount"] = float(t["avg_amount_30d"]) * math.exp(rng.gauss(0.1, 0.7))
    if t["merchant_category"] in ("digital_goods", "online_gaming", "subscriptions"):
        t["amount"] = rng.uniform(1.5, 40)
    t["hour"] = _night_biased_hour(rng, 0.10)
    t["card_present"] = False
    t["velocity_1h"] = 1 + (1 if _chance(rng, 0.18) else 0)
    t["device_change"] = _chance(rng, 0.10)
    t["country_mismatch"] = _chance(rng, 0.05)  # a foreign web shop
    # Card-not-present: distance from home to where the IP address geolocates.
    t["distance_km"] = rng.uniform(200, 6000) if _chance(rng, 0.06) else _near_home_km(rng, 25)


def _travel(rng: random.Random, t: Transaction) -> None:
    t["merchant_category"] = _choose(rng, {
        "travel": 0.22, "hotel": 0.20, "restaurant": 0.30, "fuel": 0.10, "apparel": 0.10,
        "electronics": 0.03, "jewelry": 0.02, "grocery": 0.03,
    })
    t["amount"] = float(t["avg_amount_30d"]) * math.exp(rng.gauss(0.45, 0.7))
    t["hour"] = rng.randrange(0, 24)  # time zones
    t["card_present"] = _chance(rng, 0.75)
    t["velocity_1h"] = 1 + (1 if _chance(rng, 0.25) else 0) + (1 if _chance(rng, 0.08) else 0)
    t["velocity_24h"] = int(t["velocity_24h"]) + rng.randrange(0, 5)
    t["device_change"] = _chance(rng, 0.08)
    t["country_mismatch"] = _chance(rng, 0.88)
    t["distance_km"] = rng.uniform(300, 9500)


def _big_purchase(rng: random.Random, t: Transaction) -> None:
    t["merchant_category"] = _choose(rng, {
        "electronics": 0.40, "jewelry": 0.12, "travel": 0.25, "home_improvement": 0.23,
    })
    t["amount"] = _scaled_amount(rng, t, 4, 22)
    t["hour"] = _day_hour(rng, night_share=0.03)
    t["card_present"] = _chance(rng, 0.5)
    t["card_age_days"] = max(int(t["card_age_days"]), 180)
    t["device_change"] = _chance(rng, 0.05)
    t["country_mismatch"] = _chance(rng, 0.03)
    t["distance_km"] = _near_home_km(rng, 20)


def _new_card(rng: random.Random, t: Transaction) -> None:
    (_everyday if _chance(rng, 0.6) else _online)(rng, t)
    t["card_age_days"] = rng.randrange(0, 30)
    t["velocity_24h"] = 1 + rng.randrange(0, 4)
    # A new card often arrives with a new phone or a first login to the banking app.
    t["device_change"] = bool(t["device_change"]) or _chance(rng, 0.15)


def _genuine_oddity(rng: random.Random, t: Transaction) -> None:
    """Genuine spending with one risky-looking trait (night shift, new phone, a splurge)."""
    (_everyday if _chance(rng, 0.5) else _online)(rng, t)
    trait = rng.randrange(4)
    if trait == 0:
        t["hour"] = rng.randrange(0, 6)
    elif trait == 1:
        t["device_change"] = True
    elif trait == 2:
        t["amount"] = _scaled_amount(rng, t, 2.5, 6)
    else:
        t["velocity_1h"] = rng.randrange(3, 6)
        t["velocity_24h"] = int(t["velocity_24h"]) + int(t["velocity_1h"])


GENUINE: Final[Mapping[str, tuple[float, Scenario]]] = {
    "everyday": (0.52, _everyday),
    "online": (0.22, _online),
    "travel": (0.09, _travel),
    "big_purchase": (0.06, _big_purchase),
    "new_card": (0.05, _new_card),
    "genuine_oddity": (0.06, _genuine_oddity),
}


# ---------------------------------------------------------------------- fraud scenarios


def _card_testing(rng: random.Random, t: Transaction) -> None:
    t["merchant_category"] = _choose(rng, {
        "digital_goods": 0.38, "online_gaming": 0.24, "gift_cards": 0.16, "subscriptions": 0.22,
    })
    t["amount"] = rng.uniform(0.5, 6.0)
    t["hour"] = _night_biased_hour(rng, 0.45)
    t["card_present"] = False
    t["velocity_1h"] = rng.randrange(3, 26)
    t["velocity_24h"] = int(t["velocity_1h"]) + rng.randrange(0, 12)
    t["failed_auths_24h"] = rng.randrange(1, 9) if _chance(rng, 0.7) else 0
    t["device_change"] = _chance(rng, 0.55)
    t["country_mismatch"] = _chance(rng, 0.35)
    t["distance_km"] = rng.uniform(200, 9000) if _chance(rng, 0.45) else _near_home_km(rng, 40)


def _account_takeover(rng: random.Random, t: Transaction) -> None:
    t["merchant_category"] = _choose(rng, {
        "electronics": 0.40, "gift_cards": 0.25, "jewelry": 0.15, "digital_goods": 0.10,
        "travel": 0.10,
    })
    t["amount"] = _scaled_amount(rng, t, 3, 20)
    t["hour"] = _night_biased_hour(rng, 0.40)
    t["card_present"] = False
    t["velocity_1h"] = rng.randrange(1, 5)
    t["velocity_24h"] = int(t["velocity_24h"]) + int(t["velocity_1h"])
    t["device_change"] = _chance(rng, 0.88)
    t["country_mismatch"] = _chance(rng, 0.45)
    t["failed_auths_24h"] = rng.randrange(1, 4) if _chance(rng, 0.3) else 0
    t["distance_km"] = rng.uniform(150, 9000) if _chance(rng, 0.6) else _near_home_km(rng, 30)


def _stolen_card_present(rng: random.Random, t: Transaction) -> None:
    category = _choose(rng, {
        "electronics": 0.30, "jewelry": 0.18, "fuel": 0.15, "apparel": 0.17, "gift_cards": 0.20,
    })
    t["merchant_category"] = category
    t["amount"] = rng.uniform(40, 110) if category == "fuel" else _scaled_amount(rng, t, 2, 12)
    t["hour"] = min(23, max(0, round(rng.triangular(0, 23, 18))))
    t["card_present"] = True
    t["velocity_1h"] = rng.randrange(2, 8)
    t["velocity_24h"] = int(t["velocity_1h"]) + rng.randrange(2, 10)
    t["device_change"] = _chance(rng, 0.05)
    t["country_mismatch"] = _chance(rng, 0.35)
    t["distance_km"] = rng.uniform(40, 2500)


def _new_card_bustout(rng: random.Random, t: Transaction) -> None:
    t["merchant_category"] = _choose(rng, {
        "electronics": 0.40, "gift_cards": 0.30, "jewelry": 0.15, "travel": 0.15,
    })
    t["card_age_days"] = rng.randrange(0, 26)
    t["amount"] = _scaled_amount(rng, t, 4, 15)
    t["hour"] = _night_biased_hour(rng, 0.2)
    t["card_present"] = _chance(rng, 0.3)
    t["velocity_1h"] = rng.randrange(1, 5)
    t["velocity_24h"] = int(t["velocity_1h"]) + rng.randrange(2, 11)
    t["device_change"] = _chance(rng, 0.40)
    t["country_mismatch"] = _chance(rng, 0.15)
    t["distance_km"] = _near_home_km(rng, 60)


def _subtle(rng: random.Random, t: Transaction) -> None:
    """Fraud drawn like genuine spending, with at most one weak signal."""
    (_everyday if _chance(rng, 0.4) else _online)(rng, t)
    signal = rng.randrange(4)
    if signal == 0:
        t["amount"] = _scaled_amount(rng, t, 1.5, 3.5)
    elif signal == 1:
        t["device_change"] = True
    elif signal == 2:
        t["velocity_1h"] = rng.randrange(2, 4)


FRAUD: Final[Mapping[str, tuple[float, Scenario]]] = {
    "card_testing": (0.27, _card_testing),
    "account_takeover": (0.25, _account_takeover),
    "stolen_card_present": (0.20, _stolen_card_present),
    "new_card_bustout": (0.15, _new_card_bustout),
    "subtle": (0.13, _subtle),
}


# --------------------------------------------------------------------------- assembly


def _draw(rng: random.Random, scenarios: Mapping[str, tuple[float, Scenario]]) -> str:
    names = list(scenarios)
    return rng.choices(names, weights=[scenarios[name][0] for name in names])[0]


def _finish(t: Transaction, transaction_id: int, is_fraud: bool, scenario: str) -> Transaction:
    """Round, bound and order the fields of one drawn transaction."""
    t["amount"] = round(max(0.5, float(t["amount"])), 2)
    t["velocity_24h"] = max(int(t["velocity_24h"]), int(t["velocity_1h"]))
    t["distance_km"] = round(float(t["distance_km"]), 1)
    values = {**t, "transaction_id": transaction_id, "is_fraud": int(is_fraud),
              "scenario": scenario}
    return {field: values[field] for field in FIELDS}


def generate_transactions(count: int, seed: int, first_id: int = FIRST_TRAINING_ID,
                          fraud_rate: float = FRAUD_RATE) -> list[Transaction]:
    """Return ``count`` labelled transactions; the same arguments always give the same rows."""
    rng = random.Random(seed)
    rows: list[Transaction] = []
    for index in range(count):
        fraud = _chance(rng, fraud_rate)
        scenarios = FRAUD if fraud else GENUINE
        scenario = _draw(rng, scenarios)
        transaction = _cardholder(rng)
        scenarios[scenario][1](rng, transaction)
        label = (not fraud) if _chance(rng, LABEL_NOISE) else fraud
        rows.append(_finish(transaction, first_id + index, label, scenario))
    return rows


def generate_training(count: int = TRAINING_SIZE, seed: int = TRAINING_SEED) -> list[Transaction]:
    """The training set (ids from 100001)."""
    return generate_transactions(count, seed, FIRST_TRAINING_ID)


def generate_sample(count: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED) -> list[Transaction]:
    """The sample batch, from an independent seed (ids from 900001)."""
    return generate_transactions(count, seed, FIRST_SAMPLE_ID)


def to_jsonl(records: Iterable[Mapping[str, object]]) -> str:
    """Serialise records one JSON object per line, in a stable byte-exact form."""
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def write_datasets(directory: Path = DATA_DIR) -> Sequence[Path]:
    """Write the training set and the sample batch into ``directory``; return both paths."""
    training_path = directory / TRAINING_FILE.name
    sample_path = directory / SAMPLE_FILE.name
    training_path.write_bytes(to_jsonl(generate_training()).encode())
    sample_path.write_bytes(to_jsonl(generate_sample()).encode())
    return training_path, sample_path


def main() -> None:
    """Regenerate the shipped datasets and print where they went."""
    for path in write_datasets():
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
