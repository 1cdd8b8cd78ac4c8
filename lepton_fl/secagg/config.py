"""Configuration and the public, per-round parameters both halves derive from it.

Defaults (see docs/secagg-threat-model.md):

* ``neighbours`` (k, the degree of the SecAgg+ masking graph): the complete graph
  (classic SecAgg, k = n - 1) up to ``complete_graph_up_to`` = 32 participants; above
  that ``k = min(n - 1, max(32, 2 * ceil(10 * log2 n)))``, rounded up to an even number.
  This is deliberately more generous than the O(log n) asymptotics of Bell et al.;
  set ``neighbours`` explicitly after checking their bounds for your dropout and
  corruption rates.
* ``threshold`` (t): a strict majority of the k + 1 holders of a node's shares (the node
  itself and its k neighbours): ``t = (k + 1) // 2 + 1``.  A configured threshold must also
  be a strict majority; with it, two disjoint sets of t holders cannot exist, so no server
  can collect both the self-mask and the mask-key shares of one node from honest holders.
* Fixed point: a value in [-c, c] becomes ``round(x * L / c)`` with
  ``L = (2**(modulus_bits - 1) - 1) // n`` levels per side, so the sum of all n
  participants never wraps in the ring Z_(2**modulus_bits).
* ``session_rounds`` (R): rounds planned per session (``SecAggServer`` /
  ``SecAggNode``): one two-wave setup, then two waves per round; 1 gives fresh keys
  every round.
* ``dropout_recovery``: True (the default) is SecAgg+ as above, two waves per round, and a
  round survives dropouts.  False gives *one-wave rounds*: a node masks with its pair masks
  only (no self mask), so the masks of a round cancel in the sum of the whole active set and
  nothing is ever revealed to unmask it; no unmask wave.  A round any active node drops out
  of aggregates nothing (its masks cannot be removed), and the session goes on with the
  rest.  See docs/secagg-threat-model.md, "One-wave rounds".
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from lepton_fl.secagg.errors import ErrorCode, SecAggError

GRAPH_SEED_BYTES = 32
MAX_NODE_ID = 2**64 - 1  # Flower node ids are unsigned 64-bit
MAX_SESSION_ROUNDS = 10_000  # shares of 2 secrets per round go to each holder


@dataclass(frozen=True, kw_only=True, slots=True)
class SecAggConfig:
    """Federation-level secure-aggregation settings shared by server and nodes."""

    threshold: int | None = None
    neighbours: int | None = None
    clipping_range: float = 1.0
    modulus_bits: int = 32
    min_participants: int = 3
    min_quantization_levels: int = 1024
    complete_graph_up_to: int = 32
    session_rounds: int = 1  # rounds R planned per session (1: fresh keys every round)
    dropout_recovery: bool = True  # False: one-wave rounds, a dropout voids the round

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clipping_range) and self.clipping_range > 0):
            raise SecAggError(
                ErrorCode.INVALID_CONFIG,
                f"The clipping range must be a positive finite number, got {self.clipping_range}.",
            )
        if not 8 <= self.modulus_bits <= 64:
            raise SecAggError(
                ErrorCode.INVALID_CONFIG,
                f"The ring modulus must be 2**k with 8 <= k <= 64, got k={self.modulus_bits}.",
            )
        if self.min_participants < 3:
            raise SecAggError(
                ErrorCode.INVALID_CONFIG,
                "At least 3 participants are required: with two, the sum reveals the other's "
                f"update; got min_participants={self.min_participants}.",
            )
        if self.neighbours is not None and self.neighbours < 2:
            raise SecAggError(
                ErrorCode.INVALID_CONFIG,
                f"The masking graph needs degree >= 2 to be connected, got {self.neighbours}.",
            )
        if self.threshold is not None and self.threshold < 2:
            raise SecAggError(
                ErrorCode.UNSAFE_THRESHOLD,
                f"The Shamir threshold must be at least 2, got {self.threshold}.",
            )
        if self.min_quantization_levels < 1:
            raise SecAggError(ErrorCode.INVALID_CONFIG, "min_quantization_levels must be positive.")
        if not 1 <= self.session_rounds <= MAX_SESSION_ROUNDS:
            raise SecAggError(
                ErrorCode.INVALID_CONFIG,
                f"A session plans 1..{MAX_SESSION_ROUNDS} rounds, got {self.session_rounds}.",
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class RoundParams:
    """Public parameters of one round, sent by the server and re-derived by every node."""

    participants: tuple[int, ...]
    neighbours: int
    threshold: int
    clipping_range: float
    modulus_bits: int
    levels: int
    vector_length: int
    graph_seed: bytes
    min_participants: int

    @property
    def holders_per_node(self) -> int:
        """How many holders each node's secrets are shared among (itself + k neighbours)."""
        return self.neighbours + 1

    @property
    def min_survivors(self) -> int:
        """The fewest masked inputs a round may be unmasked with."""
        return max(self.threshold, self.min_participants)

    def share_index(self, node_id: int) -> int:
        """The public, non-zero Shamir evaluation point of ``node_id``."""
        return self.participants.index(node_id) + 1


def default_neighbours(n: int, *, complete_graph_up_to: int) -> int:
    """The default degree k of the masking graph for n participants."""
    if n <= complete_graph_up_to:
        return n - 1
    k = max(32, 2 * math.ceil(10 * math.log2(n)))
    return min(n - 1, k)


def resolve_round_params(
    config: SecAggConfig,
    *,
    participants: Iterable[int],
    vector_length: int,
    graph_seed: bytes,
) -> RoundParams:
    """Derive a round's public parameters; raise :class:`SecAggError` if unsafe or impossible."""
    members = tuple(sorted(participants))
    if len(set(members)) != len(members):
        raise SecAggError(ErrorCode.MALFORMED, "The participant list contains duplicates.")
    if any(not 0 <= m <= MAX_NODE_ID for m in members):
        raise SecAggError(ErrorCode.MALFORMED, "Node ids must be integers in [0, 2**64).")
    n = len(members)
    if n < config.min_participants:
        raise SecAggError(
            ErrorCode.TOO_FEW_PARTICIPANTS,
            f"A round needs at least {config.min_participants} participants, got {n}; "
            "with two, the sum reveals the other's update.",
        )
    if len(graph_seed) != GRAPH_SEED_BYTES:
        raise SecAggError(ErrorCode.MALFORMED, "The graph seed must be 32 bytes.")
    if vector_length < 1:
        raise SecAggError(ErrorCode.MALFORMED, "The update vector must not be empty.")
    k = config.neighbours
    if k is None:
        k = default_neighbours(n, complete_graph_up_to=config.complete_graph_up_to)
    k = min(k, n - 1)
    if k < n - 1 and k % 2 == 1:
        k += 1  # a circulant graph needs an even degree unless it is complete
    holders = k + 1
    t = config.threshold if config.threshold is not None else holders // 2 + 1
    if not holders // 2 < t <= holders:
        raise SecAggError(
            ErrorCode.UNSAFE_THRESHOLD,
            f"The threshold must be a strict majority of the {holders} share holders "
            f"({holders // 2 + 1}..{holders}), got {t}.",
        )
    half = 2 ** (config.modulus_bits - 1) - 1
    levels = half // n
    if levels < config.min_quantization_levels:
        raise SecAggError(
            ErrorCode.RING_TOO_SMALL,
            f"A 2**{config.modulus_bits} ring leaves only {levels} quantization levels for "
            f"{n} participants (minimum {config.min_quantization_levels}); raise modulus_bits.",
        )
    if n * vector_length > half:
        raise SecAggError(
            ErrorCode.RING_TOO_SMALL,
            f"A 2**{config.modulus_bits} ring cannot hold the clipped-value count of "
            f"{n} x {vector_length} elements; raise modulus_bits.",
        )
    return RoundParams(
        participants=members,
        neighbours=k,
        threshold=t,
        clipping_range=float(config.clipping_range),
        modulus_bits=config.modulus_bits,
        levels=levels,
        vector_length=vector_length,
        graph_seed=bytes(graph_seed),
        min_participants=config.min_participants,
    )


def masking_graph(params: RoundParams) -> Mapping[int, frozenset[int]]:
    """The k-regular neighbour graph of a round, a deterministic function of public data.

    Nodes are placed on a ring in an order given by SHA-256 of the public graph seed and
    each is joined to its k/2 nearest nodes on either side (a circulant graph); with
    k = n - 1 it is the complete graph.
    """
    members = params.participants
    n, k = len(members), params.neighbours
    if k >= n - 1:
        return {m: frozenset(x for x in members if x != m) for m in members}

    def rank(m: int) -> bytes:
        return hashlib.sha256(
            b"lepton-secagg/v1/graph" + params.graph_seed + m.to_bytes(8, "big")
        ).digest()

    order = sorted(members, key=rank)
    graph: dict[int, frozenset[int]] = {}
    for pos, m in enumerate(order):
        near = set()
        for off in range(1, k // 2 + 1):
            near.add(order[(pos + off) % n])
            near.add(order[(pos - off) % n])
        graph[m] = frozenset(near)
    return graph


def is_connected(nodes: Iterable[int], graph: Mapping[int, frozenset[int]]) -> bool:
    """Whether ``nodes`` induce a connected subgraph of ``graph``."""
    members = set(nodes)
    if not members:
        return False
    start = next(iter(members))
    seen = {start}
    todo = [start]
    while todo:
        for nxt in graph[todo.pop()] & members:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen == members
