"""Out-of-template word problems: problem types and phrasings that no training template uses.

Written for srt (no data set is copied), to ask whether what the demo's models learn on
:mod:`srt.demo.word_problems` transfers. The five training templates (``add_then_give``,
``groups``, ``share``, ``money``, ``two_step``) all open with "<Name> has/buys/shares <n> <items>"
and ask "How many <items> ...?" about one or two people. The eight templates here use other
problem types (rates and time, percentages, "how many more" comparisons, sums over three people,
problems read backwards, an implied quantity: 7 days a week, ages, fractions of a group), other
sentence structures (the question first, a place or a machine as the subject, the unknown at the
start), and names and objects that no training template draws (``NAMES``, ``THINGS``). Each
answer is a whole number computed here, with a worked solution ending ``#### <answer>`` (the
format the ``reference`` critic and the ``word_problems`` benchmark read);
``tests/test_demo.py`` recomputes every answer from the question text alone.

Regenerate the shipped file (48 problems, 6 per template, seed 2024) with
``python -m srt.demo.out_of_template --out configs/data``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

from srt.demo import word_problems

# Names and objects that srt.demo.word_problems never draws.
NAMES = ["Aiko", "Bruno", "Carmen", "Dev", "Elif", "Femi", "Greta", "Hugo", "Ines", "Jonas", "Kira", "Luca"]
THINGS = ["pages", "flyers", "bricks", "stamps", "tickets", "candles"]


def _rate_time(rng: random.Random):
    """Rate and time, asked backwards: how long at a given rate (a division)."""
    rate, minutes = rng.randint(3, 12), rng.randint(3, 12)
    total = rate * minutes
    q = (
        f"A tap fills a tank at a rate of {rate} liters per minute. The tank holds {total} liters. "
        f"How many minutes does it take to fill the empty tank?"
    )
    s = f"The tap adds {rate} liters every minute, so filling {total} liters takes {total} / {rate} = {minutes} minutes.\n#### {minutes}"
    return q, s, minutes


def _percent_off(rng: random.Random):
    """A percentage discount: the sale price."""
    percent = rng.choice([10, 20, 25, 50])
    price = rng.randint(2, 12) * (100 // math.gcd(percent, 100))  # a whole-dollar discount
    off = price * percent // 100
    q = f"A jacket normally costs ${price}. This week it is {percent}% off. What is the sale price of the jacket in dollars?"
    s = f"The discount is {percent}% of ${price}: {price} x {percent} = {price * percent}, and {price * percent} / 100 = ${off}. The sale price is ${price} - ${off} = ${price - off}.\n#### {price - off}"
    return q, s, price - off


def _how_many_more(rng: random.Random):
    """A comparison: how many more on one day than on another."""
    n = rng.choice(NAMES)
    things = rng.choice(THINGS)
    first = rng.randint(5, 40)
    second = first + rng.randint(3, 30)
    q = f"On Monday {n} collected {first} {things}. On Tuesday {n} collected {second} {things}. How many more {things} did {n} collect on Tuesday than on Monday?"
    s = f"{n} collected {second} on Tuesday and {first} on Monday, so {second} - {first} = {second - first} more.\n#### {second - first}"
    return q, s, second - first


def _three_way_sum(rng: random.Random):
    """A sum over three people, the question before the numbers."""
    a, b, c = rng.sample(NAMES, 3)
    x, y, z = rng.randint(4, 25), rng.randint(4, 25), rng.randint(4, 25)
    q = f"How many cupcakes were sold at the school fair in all, if {a} sold {x}, {b} sold {y} and {c} sold {z}?"
    s = f"{a} and {b} sold {x} + {y} = {x + y}. With {c}'s {z}, that is {x + y} + {z} = {x + y + z} cupcakes.\n#### {x + y + z}"
    return q, s, x + y + z


def _reverse(rng: random.Random):
    """The start unknown: what was there before something was used up."""
    n = rng.choice(NAMES)
    things = rng.choice(THINGS)
    used, left = rng.randint(3, 30), rng.randint(2, 30)
    q = f"After using {used} {things} for a project, {n} still had {left} {things}. How many {things} did {n} have at first?"
    s = f"Before using {used}, {n} had the {left} that are left plus the {used} used: {left} + {used} = {left + used}.\n#### {left + used}"
    return q, s, left + used


def _per_week(rng: random.Random):
    """An implied quantity: a week has 7 days."""
    per_day, weeks = rng.randint(6, 40), rng.randint(2, 4)
    days = 7 * weeks
    q = f"A bakery bakes {per_day} loaves of bread every day. How many loaves does it bake in {weeks} weeks?"
    s = f"{weeks} weeks have {weeks} x 7 = {days} days. At {per_day} loaves a day that is {days} x {per_day} = {days * per_day} loaves.\n#### {days * per_day}"
    return q, s, days * per_day


def _age(rng: random.Random):
    """Ages, two steps back from a future statement."""
    a, b = rng.sample(NAMES, 2)
    young, gap, later = rng.randint(3, 15), rng.randint(2, 9), rng.randint(2, 10)
    future = young + gap + later
    q = f"{a} is {gap} years older than {b}. In {later} years, {a} will be {future} years old. How old is {b} now?"
    s = f"Now {a} is {future} - {later} = {future - later} years old, so {b} is {future - later} - {gap} = {young}.\n#### {young}"
    return q, s, young


def _fraction_rest(rng: random.Random):
    """A fraction of a group, and the rest of it."""
    denominator = rng.choice([2, 3, 4, 5])
    words = {2: "half", 3: "one third", 4: "one quarter", 5: "one fifth"}
    size = denominator * rng.randint(3, 9)
    part = size // denominator
    q = f"There are {size} students in a class, and {words[denominator]} of them walk to school. How many students do not walk to school?"
    s = f"{words[denominator].capitalize()} of {size} is {size} / {denominator} = {part}, so {size} - {part} = {size - part} do not walk.\n#### {size - part}"
    return q, s, size - part


TEMPLATES = [
    _rate_time,
    _percent_off,
    _how_many_more,
    _three_way_sum,
    _reverse,
    _per_week,
    _age,
    _fraction_rest,
]
FILE = "word_problems_out_of_template.jsonl"


def generate(n: int = 48, seed: int = 2024, prefix: str = "oot") -> list[dict]:
    """``n`` problems from a seeded RNG, cycling through this module's templates (no question repeats)."""
    return word_problems.generate(n, seed, prefix, templates=TEMPLATES)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = generate(args.n, args.seed)
    path = args.out / FILE
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} to {path}")


if __name__ == "__main__":
    main()
