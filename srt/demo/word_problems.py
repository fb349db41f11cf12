"""Procedurally generated grade-school word problems with worked gold solutions (GSM8K style).

Written for srt (no data set is copied): each template draws names, objects and small numbers
from a seeded RNG and computes the answer, so every item has a correct gold solution ending in
``#### <answer>``, which the ``reference`` critic uses. Regenerate the shipped files with
``python -m srt.demo.word_problems --out configs/data``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

NAMES = [
    "Ava",
    "Ben",
    "Chloe",
    "Diego",
    "Emma",
    "Farah",
    "Gus",
    "Hana",
    "Ivan",
    "Jia",
    "Kofi",
    "Lena",
    "Mateo",
    "Nora",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sam",
    "Tara",
]
ITEMS = [
    ("apple", "apples"),
    ("marble", "marbles"),
    ("sticker", "stickers"),
    ("book", "books"),
    ("cookie", "cookies"),
    ("pencil", "pencils"),
    ("shell", "shells"),
    ("card", "cards"),
]


def _add_then_give(rng: random.Random):
    n, (_, items) = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = rng.randint(3, 30), rng.randint(2, 20), rng.randint(1, 10)
    c = min(c, a + b)
    q = f"{n} has {a} {items}. {n} buys {b} more and then gives {c} to a friend. How many {items} does {n} have now?"
    s = f"{n} starts with {a} {items}. After buying {b} more, {n} has {a} + {b} = {a + b}. After giving away {c}, {n} has {a + b} - {c} = {a + b - c}.\n#### {a + b - c}"
    return q, s, a + b - c


def _groups(rng: random.Random):
    n, (_, items) = rng.choice(NAMES), rng.choice(ITEMS)
    boxes, per = rng.randint(2, 9), rng.randint(2, 12)
    q = f"{n} has {boxes} boxes with {per} {items} in each box. How many {items} does {n} have in total?"
    s = f"Each box holds {per} {items}, and there are {boxes} boxes, so {n} has {boxes} x {per} = {boxes * per} {items}.\n#### {boxes * per}"
    return q, s, boxes * per


def _share(rng: random.Random):
    n, (_, items) = rng.choice(NAMES), rng.choice(ITEMS)
    friends, each = rng.randint(2, 6), rng.randint(2, 9)
    total = friends * each
    q = f"{n} shares {total} {items} equally among {friends} friends. How many {items} does each friend get?"
    s = f"{total} {items} shared equally among {friends} friends gives {total} / {friends} = {each} each.\n#### {each}"
    return q, s, each


def _money(rng: random.Random):
    n = rng.choice(NAMES)
    price, qty, paid = rng.randint(2, 9), rng.randint(2, 6), 0
    cost = price * qty
    paid = cost + rng.randint(1, 20)
    q = f"{n} buys {qty} notebooks that cost ${price} each and pays with ${paid}. How much change does {n} get?"
    s = f"The notebooks cost {qty} x ${price} = ${cost}. The change is ${paid} - ${cost} = ${paid - cost}.\n#### {paid - cost}"
    return q, s, paid - cost


def _two_step(rng: random.Random):
    n, m = rng.sample(NAMES, 2)
    (_, items) = rng.choice(ITEMS)
    a, k = rng.randint(2, 15), rng.randint(2, 4)
    q = f"{n} has {a} {items}. {m} has {k} times as many {items} as {n}. How many {items} do they have together?"
    s = f"{m} has {k} x {a} = {k * a} {items}. Together they have {a} + {k * a} = {a + k * a}.\n#### {a + k * a}"
    return q, s, a + k * a


TEMPLATES = [_add_then_give, _groups, _share, _money, _two_step]


def generate(
    n: int, seed: int, prefix: str, exclude: set[str] | frozenset[str] = frozenset(), templates=None
) -> list[dict]:
    """``n`` problems from a seeded RNG, cycling through ``templates`` (default: this module's);
    instructions in ``exclude`` (another split's) are skipped, so no problem is shared between splits."""
    templates = templates or TEMPLATES
    rng = random.Random(seed)
    out, seen, draws = [], set(exclude), 0
    while len(out) < n:
        template = templates[draws % len(templates)]
        draws += 1
        q, s, answer = template(rng)
        if q in seen:
            continue
        seen.add(q)
        out.append(
            {
                "id": f"{prefix}-{len(out):04d}",
                "instruction": q,
                "answer": s,
                "final": answer,
                "template": template.__name__.lstrip("_"),
            }
        )
    return out


SPLITS = ("stage1", "stage2", "heldout")


def generate_splits(n: int = 128, seed: int = 1234) -> dict[str, list[dict]]:
    """The shipped splits: stage1 and stage2 (n each, seeds seed and seed+1), heldout (n/2, seed+2)."""
    sizes = {"stage1": (seed, n), "stage2": (seed + 1, n), "heldout": (seed + 2, n // 2)}
    splits, used = {}, set()
    for split in SPLITS:
        split_seed, size = sizes[split]
        splits[split] = generate(size, split_seed, split, exclude=used)
        used |= {row["instruction"] for row in splits[split]}
    return splits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for split, rows in generate_splits(args.n, args.seed).items():
        path = args.out / f"word_problems_{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        print(f"wrote {len(rows)} to {path}")


if __name__ == "__main__":
    main()
