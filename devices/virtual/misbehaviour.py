"""Lab-wide misbehaviour: make K phones of the lab misbehave, chosen at random (seeded).

    --misbehave 3 --behaviour label_flip                 three phones train on permuted labels
    --misbehave 1 --behaviour model_replacement:gamma=10 one phone boosts its update ten times
    --misbehave 2 --behaviour backdoor:target=0,fraction=0.5+model_replacement

The chosen phones get the behaviour in their profile; the virtual phone hands it to the agent as
FEDFLEET_BEHAVIOUR (runner.agent_environment), and the agent acts it out (training/fl/misbehaviour.py has
the behaviours and their parameters). The platform is not told: nothing the phone answers over ADB
reveals it. The person running the lab is: the choice is written to `<lab dir>/misbehaving.json`
(serial -> behaviour) and logged at info level, so a benchmark can score a detector against it.

This module only checks the spec's shape (names and key=value pairs): devices never import training, and
the agent reports a bad parameter in its first round.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devices.virtual.profile import PhoneProfile, ProfileError

# The behaviours training/fl/misbehaviour.py implements (tests keep the two lists equal).
BEHAVIOUR_NAMES = (
    "honest",
    "label_flip",
    "backdoor",
    "model_replacement",
    "noise",
    "free_rider",
    "inflate_samples",
)
RECORD_FILE = "misbehaving.json"
_PAIR = re.compile(r"^[a-z_][a-z0-9_]*=[^,=+:]+$")


class MisbehaviourError(ProfileError):
    """A --misbehave/--behaviour choice that cannot be applied (reported like a bad profile)."""


def check_behaviour_spec(spec: str) -> str:
    """`name[:key=value,...][+name...]` with known names; returns the stripped spec."""
    text = spec.strip()
    if not text:
        raise MisbehaviourError("--behaviour is empty")
    if text[0] in "[{":  # JSON specs are the agent's to parse; the text form is what people type
        return text
    for item in text.split("+"):
        name, _, params = item.strip().partition(":")
        if name not in BEHAVIOUR_NAMES:
            raise MisbehaviourError(f"unknown behaviour {name!r}; choose one of {', '.join(BEHAVIOUR_NAMES)}")
        for pair in filter(None, (p.strip() for p in params.split(","))):
            if not _PAIR.match(pair):
                raise MisbehaviourError(f"behaviour {name!r}: expected key=value, got {pair!r}")
    return text


@dataclass(frozen=True)
class Misbehaviour:
    count: int  # phones that misbehave
    behaviour: str  # the spec every chosen phone gets

    def __post_init__(self) -> None:
        if self.count < 0:
            raise MisbehaviourError(f"--misbehave must be >= 0, got {self.count}")
        check_behaviour_spec(self.behaviour)


def add_misbehaviour_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--misbehave",
        type=int,
        default=0,
        metavar="K",
        help="make K phones, chosen at random from --seed, misbehave (the platform is not told which)",
    )
    parser.add_argument(
        "--behaviour",
        default="label_flip",
        help="what they do: label_flip, backdoor, model_replacement, noise, free_rider or inflate_samples, with optional "
        "parameters, e.g. 'label_flip:mapping=shift' (default label_flip)",
    )


def misbehaviour_from_args(args: argparse.Namespace) -> Misbehaviour | None:
    count = getattr(args, "misbehave", 0) or 0
    if count == 0:
        return None
    return Misbehaviour(count=count, behaviour=getattr(args, "behaviour", "label_flip"))


def chosen_indices(phones: int, count: int, seed: int) -> list[int]:
    """Which phones (0-based, lab order) misbehave: a seeded sample, the same for the same seed."""
    if count > phones:
        raise MisbehaviourError(f"--misbehave {count} is more than the lab's {phones} phones")
    return sorted(random.Random(f"misbehave:{seed}").sample(range(phones), count))


def apply_misbehaviour(
    profiles: Sequence[PhoneProfile], plan: Misbehaviour | None, seed: int
) -> list[PhoneProfile]:
    """The profiles with the chosen phones' behaviour replaced (the others keep their own)."""
    if plan is None:
        return list(profiles)
    chosen = set(chosen_indices(len(profiles), plan.count, seed))
    return [
        dataclasses.replace(p, behaviour=plan.behaviour) if i in chosen else p for i, p in enumerate(profiles)
    ]


def write_record(lab_dir: Path, profiles: Sequence[PhoneProfile]) -> dict[str, str]:
    """`<lab dir>/misbehaving.json`: serial -> behaviour of every phone that is not honest."""
    record = {p.serial: p.behaviour for p in profiles if p.behaviour.strip() not in ("", "honest")}
    (Path(lab_dir) / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record
