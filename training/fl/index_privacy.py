"""Tunable index privacy: two-stage randomized response over the union U of requested ids (ALGORITHMS §6).

Which embedding rows a phone asks for reveals its data (the items a user clicked). So instead of its real
index set S, a phone requests a randomized S″ ⊆ U, for every table:

  permanent stage (drawn once per id and memoised on the phone):  j ∈ S kept with p1, j ∉ S added with p2
                                                                    -> S′
  per-round stage (drawn afresh every round):                      j ∈ S′ kept with p3, j ∉ S′ added with p4
                                                                    -> S″ (the request)

The phone trains only on rows in S ∩ S″ and uploads zero deltas with zero counts for the rest (see
submodel.py). Memoising the permanent stage is what bounds what many rounds reveal together: averaging
S″ over rounds can at best reconstruct S′, never S (as in RAPPOR).

Plausible deniability. Marginally over both stages, an id is requested with probability

    q_real  = P(j ∈ S″ | j ∈ S) = p1·p3 + (1 − p1)·p4
    q_decoy = P(j ∈ S″ | j ∉ S) = p2·p3 + (1 − p2)·p4

A single round's request is a randomized response on the membership bit of each id, so seeing it changes
the odds of "j ∈ S" by at most the likelihood ratio of either outcome. The per-round ε is therefore

    ε_round = max( |ln(q_real / q_decoy)|, |ln((1 − q_real) / (1 − q_decoy))| )

(an outcome impossible under both hypotheses is ignored; one possible under only one gives ε = ∞).
Over many rounds the bound is the permanent stage's own ε, ε_perm = max(|ln(p1/p2)|, |ln((1−p1)/(1−p2))|).

  preset        (p1, p2, p3, p4)               q_real    q_decoy   ε_round              ε_perm
  default       (15/16, 1/16, 15/16, 1/16)     226/256   30/256    ln(113/15) ≈ 2.019   ln 15 ≈ 2.708
  none          (1, 0, 1, 0)                   1         0         ∞                     ∞
  whole_union   (1, 1, 1, 1)                   1         1         0                     0

Cost. The expected request size is E|S″| = |S|·q_real + (|U| − |S|)·q_decoy rows (and |S|·q_real of them
are real rows the phone can train), so the default preset downloads about 0.883·|S| + 0.117·(|U| − |S|)
rows. See `expected_download_bytes`.

What the server sees today: U itself is computed by the server from the phones' real index sets (a
private set union by secure aggregation is a later step), and each upload's per-row counts show which
requested rows were real; the request alone is what this module protects.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from training.fl.submodel import IndexSets, as_index_set
from training.fl.wire import DEFAULT_MAX_UPDATE_BYTES, load_tensors_with_metadata, save_tensors


@dataclass(frozen=True)
class PrivacyPreset:
    """Keep/add probabilities of the two stages (see the module docstring)."""

    name: str
    p1: float  # permanent: keep a real id
    p2: float  # permanent: add a non-member id
    p3: float  # per round: keep an id of the permanent set
    p4: float  # per round: add an id outside the permanent set

    def __post_init__(self) -> None:
        for label, value in (("p1", self.p1), ("p2", self.p2), ("p3", self.p3), ("p4", self.p4)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{label} must be a probability in [0, 1], got {value}")

    def to_json(self) -> dict[str, float | str]:
        return {"name": self.name, "p1": self.p1, "p2": self.p2, "p3": self.p3, "p4": self.p4}

    @property
    def adds_decoys(self) -> bool:
        """Can a request hold ids the phone does not have? Only then does the phone need the union U
        (decoys are drawn from it); otherwise its request is a subset of its own ids."""
        return self.p2 > 0.0 or self.p4 > 0.0

    @classmethod
    def from_json(cls, raw: Mapping[str, object]) -> PrivacyPreset:
        if set(raw) <= {"name"}:
            return preset(str(raw.get("name", "default")))
        values = [raw.get(k) for k in ("p1", "p2", "p3", "p4")]
        if not all(isinstance(v, int | float) for v in values):
            raise ValueError("a custom privacy preset needs numeric p1, p2, p3, p4")
        p1, p2, p3, p4 = (float(v) for v in values)  # type: ignore[arg-type]
        return cls(str(raw.get("name", "custom")), p1, p2, p3, p4)


PRESETS: dict[str, PrivacyPreset] = {
    "default": PrivacyPreset("default", 15 / 16, 1 / 16, 15 / 16, 1 / 16),
    "none": PrivacyPreset("none", 1.0, 0.0, 1.0, 0.0),
    "whole_union": PrivacyPreset("whole_union", 1.0, 1.0, 1.0, 1.0),
}


def preset(name: str) -> PrivacyPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown privacy preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def inclusion_probabilities(p: PrivacyPreset) -> tuple[float, float]:
    """(q_real, q_decoy): the chance an id ends up in the round's request if it is / is not real."""
    q_real = p.p1 * p.p3 + (1.0 - p.p1) * p.p4
    q_decoy = p.p2 * p.p3 + (1.0 - p.p2) * p.p4
    return q_real, q_decoy


def _log_ratio(a: float, b: float) -> float:
    """|ln(a/b)| for two probabilities of the same outcome; 0 when the outcome is impossible under both."""
    tiny = 1e-15
    if a <= tiny and b <= tiny:
        return 0.0
    if a <= tiny or b <= tiny:
        return math.inf
    return abs(math.log(a / b))


def randomized_response_epsilon(q_member: float, q_other: float) -> float:
    """ε of a binary randomized response that says "yes" with q_member for members, q_other otherwise."""
    return max(_log_ratio(q_member, q_other), _log_ratio(1.0 - q_member, 1.0 - q_other))


def per_round_epsilon(p: PrivacyPreset) -> float:
    """Plausible deniability of one round's request (both stages, marginally)."""
    return randomized_response_epsilon(*inclusion_probabilities(p))


def permanent_epsilon(p: PrivacyPreset) -> float:
    """Bound over any number of rounds: what the memoised permanent stage alone reveals."""
    return randomized_response_epsilon(p.p1, p.p2)


def expected_request_rows(real: int, union: int, p: PrivacyPreset) -> float:
    """E|S″| for |S| = real ids inside a union of |U| = union ids."""
    if not 0 <= real <= union:
        raise ValueError(f"need 0 <= |S| <= |U|, got |S|={real}, |U|={union}")
    q_real, q_decoy = inclusion_probabilities(p)
    return real * q_real + (union - real) * q_decoy


def expected_download_bytes(
    real: int, union: int, p: PrivacyPreset, emb_dim: int, dense_bytes: int = 0, value_bytes: int = 4
) -> float:
    """Expected download of one table: requested rows × (d float32 values + one int64 id) + dense layers."""
    return expected_request_rows(real, union, p) * (emb_dim * value_bytes + 8) + dense_bytes


def _draw(member: torch.Tensor, keep: float, add: float, generator: torch.Generator) -> torch.Tensor:
    """One randomized-response stage over a membership vector: members kept with `keep`, others added
    with `add`. Vectorised: one uniform draw per id."""
    u = torch.rand(member.shape, generator=generator, dtype=torch.float64)
    return torch.where(member, u < keep, u < add)


@dataclass
class PermanentResponse:
    """The memoised permanent stage of one table: for each id ever seen in U, the truth it was drawn for
    and the response. An id is redrawn only if it is new or its truth changed (new local data)."""

    ids: torch.Tensor  # int64, sorted unique
    member: torch.Tensor  # bool, was the id in S when drawn
    response: torch.Tensor  # bool, is the id in S′

    @classmethod
    def empty(cls) -> PermanentResponse:
        return cls(
            torch.zeros(0, dtype=torch.int64),
            torch.zeros(0, dtype=torch.bool),
            torch.zeros(0, dtype=torch.bool),
        )

    def updated(
        self, union: torch.Tensor, real: torch.Tensor, p: PrivacyPreset, generator: torch.Generator
    ) -> PermanentResponse:
        ids = as_index_set(torch.cat([self.ids, union]))
        member = torch.isin(ids, real)
        response = _draw(member, p.p1, p.p2, generator)
        if self.ids.numel():
            pos = torch.searchsorted(self.ids, ids).clamp_max(self.ids.numel() - 1)
            reuse = (self.ids[pos] == ids) & (self.member[pos] == member)
            response = torch.where(reuse, self.response[pos], response)
        return PermanentResponse(ids, member, response)

    def same_as(self, other: PermanentResponse) -> bool:
        return (
            torch.equal(self.ids, other.ids)
            and torch.equal(self.member, other.member)
            and torch.equal(self.response, other.response)
        )

    def permanent_set(self, union: torch.Tensor) -> torch.Tensor:
        """Membership of each id of `union` (sorted) in S′; every id of `union` must be memoised."""
        pos = torch.searchsorted(self.ids, union).clamp_max(max(self.ids.numel() - 1, 0))
        if union.numel() and not bool((self.ids[pos] == union).all()):
            raise ValueError("permanent response does not cover the union; call updated() first")
        return self.response[pos]


class IndexPrivacyClient:
    """A phone's side of index privacy. With a `state_dir`, the permanent stage is persisted there
    (`index_privacy.<table>.safetensors`, ids/member/response plus the preset in the metadata), so it
    survives agent restarts. The randomness is unpredictable to the server unless a seed is given (tests)."""

    def __init__(self, p: PrivacyPreset, state_dir: Path | None = None, seed: int | None = None) -> None:
        self.preset = p
        self.state_dir = state_dir
        self.generator = torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)
        self._memo: dict[str, PermanentResponse] = {}

    def _path(self, table: str) -> Path | None:
        return None if self.state_dir is None else self.state_dir / f"index_privacy.{table}.safetensors"

    def _load(self, table: str) -> PermanentResponse:
        if table in self._memo:
            return self._memo[table]
        path = self._path(table)
        if path is None or not path.exists():
            return PermanentResponse.empty()
        tensors, meta = load_tensors_with_metadata(path, max_bytes=DEFAULT_MAX_UPDATE_BYTES)
        if json.loads(meta.get("preset", "{}")) != self.preset.to_json():
            return PermanentResponse.empty()  # other probabilities: the old draws do not apply
        missing = {"ids", "member", "response"} - set(tensors)
        if missing:  # never start afresh silently: new draws would reveal more than the memo's
            raise ValueError(f"index privacy memo {path.name} lacks {', '.join(sorted(missing))}")
        ids, member, response = (tensors[k] for k in ("ids", "member", "response"))
        if ids.dtype != torch.int64 or not ids.shape == member.shape == response.shape:
            return PermanentResponse.empty()
        return PermanentResponse(ids, member.to(torch.bool), response.to(torch.bool))

    def _store(self, table: str, memo: PermanentResponse) -> None:
        self._memo[table] = memo
        path = self._path(table)
        if path is None:
            return
        tensors = {
            "ids": memo.ids,
            "member": memo.member.to(torch.uint8),
            "response": memo.response.to(torch.uint8),
        }
        # atomic (temp file + rename): a crash never leaves a half-written memo
        save_tensors(path, tensors, {"preset": json.dumps(self.preset.to_json())})

    def permanent_response(self, table: str) -> PermanentResponse:
        """The memoised permanent stage of `table` (empty before the first request)."""
        return self._load(table)

    def request(self, real: IndexSets, union: IndexSets) -> IndexSets:
        """This round's request S″ per table. Ids of S outside U cannot be requested privately and are left
        out (with a proper union there are none)."""
        out: IndexSets = {}
        for table, universe in union.items():
            universe = as_index_set(universe)
            old = self._load(table)
            real_ids = real.get(table, torch.zeros(0, dtype=torch.int64))
            memo = old.updated(universe, real_ids, self.preset, self.generator)
            if not old.same_as(memo):
                self._store(table, memo)
            self._memo[table] = memo
            in_permanent = memo.permanent_set(universe)
            out[table] = universe[_draw(in_permanent, self.preset.p3, self.preset.p4, self.generator)]
        return out
