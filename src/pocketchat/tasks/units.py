"""Unit conversion with whole-number answers, in both directions, over one or two conversion hops.

Going down (km -> m) multiplies; going up (m -> km) divides a quantity drawn as an exact multiple, so every
answer is whole. Both directions of the same quantity share a split key: "7 km in m" and "7000 m in km"
are the same fact and never straddle train and test.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pocketchat.tasks.base import NUMBER, Call, Example, Task

FACTORS = {  # (bigger unit, smaller unit): how many smaller units make one bigger unit
    ("kilometer", "meter"): 1000, ("meter", "centimeter"): 100, ("centimeter", "millimeter"): 10,
    ("kilogram", "gram"): 1000, ("liter", "milliliter"): 1000, ("foot", "inch"): 12, ("yard", "foot"): 3,
    ("week", "day"): 7, ("day", "hour"): 24, ("hour", "minute"): 60, ("minute", "second"): 60,
    ("year", "month"): 12, ("decade", "year"): 10, ("century", "year"): 100, ("dozen", "egg"): 12,
    ("ton", "kilogram"): 1000, ("pound", "ounce"): 16, ("gallon", "quart"): 4, ("dollar", "cent"): 100,
}
# Conversions asked, as chains of units from big to small: one hop, or two through a familiar middle unit.
PATHS = list(FACTORS) + [("hour", "minute", "second"), ("day", "hour", "minute"),
                          ("week", "day", "hour"), ("kilometer", "meter", "centimeter")]
_IRREGULAR = {"foot": "feet", "inch": "inches", "dozen": "dozen", "century": "centuries"}


def plural(unit: str) -> str:
    return _IRREGULAR.get(unit, unit + "s")


@dataclass(frozen=True)
class Units(Task):
    name: str = "units"
    kind = NUMBER

    def sample(self, rng: random.Random) -> Example:
        path = rng.choice(PATHS)
        hops = list(zip(path, path[1:]))
        amount = rng.randint(2, 40 if len(hops) == 1 else 9)  # in the biggest unit
        facts = [f"1 {big} = {FACTORS[big, small]} {plural(small)}" for big, small in hops]
        calls, value = [], amount
        if rng.random() < 0.5:  # down: multiply hop by hop
            question = f"How many {plural(path[-1])} are in {amount} {plural(path[0])}?"
            for hop in hops:
                calls.append(Call(f"{value}*{FACTORS[hop]}", str(value * FACTORS[hop])))
                value *= FACTORS[hop]
        else:  # up: start from the exact multiple in the smallest unit and divide back
            for hop in hops:
                value *= FACTORS[hop]
            question = f"How many {plural(path[0])} are in {value} {plural(path[-1])}?"
            for hop in reversed(hops):
                calls.append(Call(f"{value}/{FACTORS[hop]}", str(value // FACTORS[hop])))
                value //= FACTORS[hop]
        return Example(task=self.name, question=question, answer=str(value),
                       steps=facts + [f"{c.expression} = {c.result}" for c in calls], calls=calls,
                       key=f"units:{'>'.join(path)}:{amount}")
