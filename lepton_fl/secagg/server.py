"""The server half of SecAgg+: one object per session of R rounds (R = 1: one round).

Usage: ``advertise_keys_requests()`` and ``share_keys_requests()`` once (setup, 2 waves);
then per round ``masked_input_requests()`` (wave A; the first round also forwards the
setup shares), ``unmask_requests()`` (wave B) and ``finalize()``.  Feed every reply to
``receive()``.  Each request builder closes the previous stage: a node that did not reply
by then has dropped out.  A node dropped in a round (its mask key s^(r) is reconstructed)
or rejected is excluded from the rest of the session; it must re-key in a new session.

Any server-side :class:`SecAggError` ends the session (start a new one), except
:class:`RoundVoidedError`.

One-wave sessions (``SecAggConfig.dropout_recovery=False``): per round only
``masked_input_requests()``, then ``finalize()``, which sums the masked inputs (the pair
masks cancel over the active set) or, when an active node's input is missing, raises
:class:`RoundVoidedError`: nothing is aggregated and the session goes on without it.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lepton_fl.secagg import shamir
from lepton_fl.secagg.config import RoundParams, SecAggConfig, is_connected, masking_graph
from lepton_fl.secagg.crypto import (
    NONCE_BYTES,
    TAG_BYTES,
    expand_mask,
    is_valid_public_key,
    private_key_from_bytes,
    public_key_of,
    ring_dtype,
)
from lepton_fl.secagg.derive import (
    int_to_secret,
    pair_seed,
    round_context,
    self_commitment,
    self_seed,
)
from lepton_fl.secagg.encoding import decode_sum, error_bound, reduce, ring_mask
from lepton_fl.secagg.errors import ErrorCode, Rejection, RoundVoidedError, SecAggError
from lepton_fl.secagg.messages import (
    REPLY_STAGE,
    SETUP,
    AdvertiseKeysReply,
    AdvertiseKeysRequest,
    Binding,
    MaskedInputReply,
    MaskedInputRequest,
    PublicKeys,
    Reply,
    SetupOrRound,
    ShareKeysReply,
    ShareKeysRequest,
    Stage,
    UnmaskReply,
    UnmaskRequest,
    resolve_session_params,
)
from lepton_fl.secagg.node import ROUND_SHARE_BYTES

MAX_RECONSTRUCTION_TRIES = 256


@dataclass(frozen=True, slots=True)
class AggregateResult:
    """The outcome of one round: the decoded sum of the survivors' clipped updates.

    ``dropped``: this round's active nodes that sent no valid input; ``active``: the
    round's active set; ``excluded``: the nodes excluded from the session after it.
    """

    values: NDArray[np.float64] = field(repr=False)
    encoded_sum: NDArray[Any] = field(repr=False)
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    clipped_total: int
    error_bound: float
    rejections: tuple[Rejection, ...]
    params: RoundParams = field(repr=False)
    round: int
    active: tuple[int, ...]
    excluded: tuple[int, ...]


class _Phase(Enum):
    SETUP_KEYS = 0
    SETUP_SHARES = 1
    BETWEEN_ROUNDS = 2
    MASKED_INPUT = 3
    UNMASK = 4
    DONE = 5
    FAILED = 6


_COLLECTING = {
    _Phase.SETUP_KEYS: Stage.ADVERTISE_KEYS,
    _Phase.SETUP_SHARES: Stage.SHARE_KEYS,
    _Phase.MASKED_INPUT: Stage.MASKED_INPUT,
    _Phase.UNMASK: Stage.UNMASK,
}


class _Invalid(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def reconstruct(
    owner: int,
    shares: Mapping[int, int],
    *,
    threshold: int,
    verify: Callable[[bytes], bool],
    what: str,
) -> bytes:
    """Rebuild a 32-byte secret from ``shares``, outvoting wrong shares when spares exist."""
    if len(shares) < threshold:
        raise SecAggError(
            ErrorCode.RECONSTRUCTION_FAILED,
            f"Only {len(shares)} shares of node {owner}'s {what} arrived; {threshold} are needed.",
        )
    points = sorted(shares)
    combos = itertools.combinations(points, threshold)
    for subset in itertools.islice(combos, MAX_RECONSTRUCTION_TRIES):
        secret = int_to_secret(shamir.combine({x: shares[x] for x in subset}))
        if secret is not None and verify(secret):
            return secret
    raise SecAggError(
        ErrorCode.RECONSTRUCTION_FAILED,
        f"The shares of node {owner}'s {what} are inconsistent; no subset reconstructs "
        "a value matching its commitment.",
    )


class SecAggServer:
    """Runs the server's side of one session; learns only each round's survivors' sum."""

    def __init__(
        self,
        *,
        run_id: str,
        session: int,
        config: SecAggConfig,
        participants: Iterable[int],
        vector_length: int,
        graph_seed: bytes | None = None,
    ) -> None:
        self.run_id = run_id
        self.session = session
        self.session_params = resolve_session_params(
            config,
            participants=participants,
            vector_length=vector_length,
            graph_seed=graph_seed if graph_seed is not None else secrets.token_bytes(32),
        )
        self.params = self.session_params.params
        self.rounds = self.session_params.rounds
        self._graph = masking_graph(self.params)
        self._phase = _Phase.SETUP_KEYS
        self._round = 0
        self.rejections: list[Rejection] = []
        self._excluded: set[int] = set()
        self._expected: set[int] = set(self.params.participants)
        self._keys: dict[int, PublicKeys] = {}
        self._shares: dict[int, ShareKeysReply] = {}
        self._u1: tuple[int, ...] = ()
        self._members: tuple[int, ...] = ()
        self._active: tuple[int, ...] = ()
        self._forwarded: dict[int, frozenset[int]] = {}
        self._partners: dict[int, frozenset[int]] = {}
        self._masked: dict[int, MaskedInputReply] = {}
        self._unmask: dict[int, UnmaskReply] = {}
        self._survivors: tuple[int, ...] = ()
        self._needed_keys: tuple[int, ...] = ()
        self._keys_revealed: set[int] = set()  # nodes whose s^(r) was requested, any round

    # -- public state ------------------------------------------------------------------------

    @property
    def stage(self) -> Stage | None:
        """The stage whose replies are being collected; None between rounds or when over."""
        return _COLLECTING.get(self._phase)

    @property
    def round(self) -> int:
        """The current (or last) round; 0 during setup."""
        return self._round

    @property
    def active(self) -> tuple[int, ...]:
        """The active set of the current (or last) round."""
        return self._active

    @property
    def excluded(self) -> frozenset[int]:
        """Nodes excluded from the session (dropped or rejected); they never come back."""
        return frozenset(self._excluded)

    @property
    def failed(self) -> bool:
        """Whether a server-side error ended the session."""
        return self._phase is _Phase.FAILED

    @property
    def done(self) -> bool:
        """Whether all planned rounds were aggregated."""
        return self._phase is _Phase.DONE

    # -- bookkeeping -------------------------------------------------------------------------

    def _binding(self, stage: Stage) -> Binding:
        when: SetupOrRound = SETUP if stage.is_setup else self._round
        return Binding(self.run_id, self.session, when, stage)

    def _error(self, code: ErrorCode, message: str) -> SecAggError:
        self._phase = _Phase.FAILED
        return SecAggError(code, message)

    def _move(self, allowed: tuple[_Phase, ...], to: _Phase, what: str) -> None:
        if self._phase not in allowed:
            state = self._phase.name.lower()
            if self._phase is _Phase.FAILED:
                raise SecAggError(
                    ErrorCode.BAD_STATE, "The session failed; start a new session (re-key)."
                )
            raise SecAggError(
                ErrorCode.BAD_STATE,
                f"The server cannot {what} in state {state}; stages run in order.",
            )
        self._phase = to

    def _reject(self, sender: int, stage: str, code: ErrorCode, message: str) -> Rejection:
        rejection = Rejection(sender, stage, code, message)
        self.rejections.append(rejection)
        if sender in self.params.participants:
            self._excluded.add(sender)
            self._expected.discard(sender)
            # Stages already closed are frozen; only the open stage forgets the sender.
            if self._phase is _Phase.SETUP_KEYS:
                self._keys.pop(sender, None)
            elif self._phase is _Phase.SETUP_SHARES:
                self._shares.pop(sender, None)
            elif self._phase is _Phase.MASKED_INPUT:
                self._masked.pop(sender, None)
            self._unmask.pop(sender, None)
        return rejection

    # -- receiving ---------------------------------------------------------------------------

    def receive(self, reply: Reply) -> Rejection | None:
        """Accept a node's reply, or reject it and exclude its sender (returned and recorded)."""
        sender = reply.sender
        stage = self.stage
        label = stage.value if stage is not None else self._phase.name.lower()
        if sender not in self.params.participants:
            return self._reject(
                sender, label, ErrorCode.UNKNOWN_SENDER, f"Node {sender} is not in this session."
            )
        if sender in self._excluded:
            return self._reject(
                sender,
                label,
                ErrorCode.EXCLUDED,
                f"Node {sender} was excluded from session {self.session}; it must re-key.",
            )
        if stage is None or reply.binding != self._binding(stage):
            return self._reject(
                sender,
                label,
                ErrorCode.BINDING_MISMATCH,
                f"Node {sender} sent a message bound to {reply.binding}, not to run "
                f"{self.run_id!r} session {self.session} round {self._round or SETUP} "
                f"stage {label}.",
            )
        if REPLY_STAGE[type(reply)] is not stage:
            return self._reject(
                sender, label, ErrorCode.MALFORMED, f"Node {sender} sent the wrong message type."
            )
        if sender not in self._expected:
            return self._reject(
                sender,
                label,
                ErrorCode.UNKNOWN_SENDER,
                f"Node {sender} is not expected at stage {label}.",
            )
        seen: dict[Stage, Mapping[int, object]] = {
            Stage.ADVERTISE_KEYS: self._keys,
            Stage.SHARE_KEYS: self._shares,
            Stage.MASKED_INPUT: self._masked,
            Stage.UNMASK: self._unmask,
        }
        if sender in seen[stage]:
            return self._reject(
                sender, label, ErrorCode.DUPLICATE, f"Node {sender} replied twice (replay)."
            )
        try:
            self._validate(reply)
        except _Invalid as bad:
            return self._reject(sender, label, bad.code, bad.message)
        return None

    def _validate(self, reply: Reply) -> None:
        sender = reply.sender
        rounds = self.rounds
        if isinstance(reply, AdvertiseKeysReply):
            keys = reply.keys
            if len(keys.masks) != rounds or not all(
                is_valid_public_key(k) for k in (keys.enc, *keys.masks)
            ):
                raise _Invalid(
                    ErrorCode.BAD_KEY,
                    f"Node {sender} sent malformed or low-order public keys (one encryption "
                    f"key and {rounds} mask keys are expected).",
                )
            self._keys[sender] = keys
        elif isinstance(reply, ShareKeysReply):
            expected = set(self._graph[sender] & set(self._u1))
            if set(reply.encrypted_shares) != expected:
                raise _Invalid(
                    ErrorCode.MALFORMED,
                    f"Node {sender} sent shares for {sorted(reply.encrypted_shares)}, "
                    f"expected exactly {sorted(expected)}.",
                )
            size = NONCE_BYTES + rounds * ROUND_SHARE_BYTES + TAG_BYTES
            if any(len(ct) != size for ct in reply.encrypted_shares.values()):
                raise _Invalid(ErrorCode.MALFORMED, f"Node {sender} sent malformed shares.")
            commitments = reply.self_mask_commitments
            if len(commitments) != rounds or any(len(c) != 32 for c in commitments):
                raise _Invalid(ErrorCode.MALFORMED, f"Node {sender} sent malformed commitments.")
            self._shares[sender] = reply
        elif isinstance(reply, MaskedInputReply):
            vec = reply.masked
            bits = self.params.modulus_bits
            if (
                not isinstance(vec, np.ndarray)
                or vec.dtype != ring_dtype(bits)
                or vec.shape != (self.params.vector_length + 1,)
            ):
                raise _Invalid(ErrorCode.MALFORMED, f"Node {sender} sent a malformed vector.")
            if bits not in (32, 64) and bool((vec > ring_mask(bits)).any()):
                raise _Invalid(ErrorCode.MALFORMED, f"Node {sender} sent values outside the ring.")
            if not set(reply.rejected_senders) <= self._forwarded_this_round(sender):
                raise _Invalid(
                    ErrorCode.MALFORMED, f"Node {sender} rejected shares it was never sent."
                )
            self._masked[sender] = reply
        else:
            held = {sender} | self._partners[sender]
            ok_b = held & set(self._survivors)
            ok_s = held & set(self._needed_keys)
            if not set(reply.self_mask_shares) <= ok_b or not set(reply.mask_key_shares) <= ok_s:
                raise _Invalid(
                    ErrorCode.MALFORMED,
                    f"Node {sender} sent shares it does not hold or that were not requested.",
                )
            try:
                for blob in [*reply.self_mask_shares.values(), *reply.mask_key_shares.values()]:
                    shamir.from_bytes(blob)
            except ValueError as exc:
                raise _Invalid(
                    ErrorCode.MALFORMED, f"Node {sender} sent a malformed share."
                ) from exc
            self._unmask[sender] = reply

    def _forwarded_this_round(self, node: int) -> frozenset[int]:
        return self._forwarded.get(node, frozenset()) if self._round == 1 else frozenset()

    # -- setup -------------------------------------------------------------------------------

    def advertise_keys_requests(self) -> dict[int, AdvertiseKeysRequest]:
        """Setup wave 1: ask every participant for its session public keys."""
        if self._phase is not _Phase.SETUP_KEYS:
            raise SecAggError(ErrorCode.BAD_STATE, "Key advertisement has already closed.")
        binding = self._binding(Stage.ADVERTISE_KEYS)
        return {
            n: AdvertiseKeysRequest(binding, n, self.session_params)
            for n in self.params.participants
            if n not in self._excluded
        }

    def share_keys_requests(self) -> dict[int, ShareKeysRequest]:
        """Setup wave 2: close key advertisement; send each node the advertised keys."""
        self._move((_Phase.SETUP_KEYS,), _Phase.SETUP_SHARES, "start sharing")
        raw = [k.enc for k in self._keys.values()] + [
            m for k in self._keys.values() for m in k.masks
        ]
        counts: dict[bytes, int] = {}
        for key in raw:
            counts[key] = counts.get(key, 0) + 1
        for node, keys in list(self._keys.items()):
            if any(counts[k] > 1 for k in (keys.enc, *keys.masks)):
                self._reject(
                    node,
                    Stage.SHARE_KEYS.value,
                    ErrorCode.BAD_KEY,
                    f"Node {node} advertised a public key that another node also advertised.",
                )
                self._keys.pop(node, None)
        self._u1 = tuple(sorted(self._keys))
        self._require(len(self._u1), "advertised keys")
        self._expected = set(self._u1)
        binding = self._binding(Stage.SHARE_KEYS)
        key_list = dict(self._keys)
        return {n: ShareKeysRequest(binding, n, key_list) for n in self._u1}

    def _require(self, count: int, what: str) -> None:
        if count < self.params.min_survivors:
            raise self._error(
                ErrorCode.TOO_FEW_SURVIVORS,
                f"Only {count} nodes {what}; the session needs at least "
                f"{self.params.min_survivors} (threshold {self.params.threshold}, minimum "
                f"{self.params.min_participants} participants).",
            )

    # -- rounds ------------------------------------------------------------------------------

    def _check_active(self, active: tuple[int, ...]) -> None:
        params = self.params
        r = self._round
        if len(active) < params.min_survivors:
            raise self._error(
                ErrorCode.TOO_FEW_PARTICIPANTS,
                f"Only {len(active)} nodes remain active in round {r} of session "
                f"{self.session}; at least {params.min_survivors} are required (threshold "
                f"{params.threshold}, minimum {params.min_participants}). Start a new session.",
            )
        if not is_connected(active, self._graph):
            raise self._error(
                ErrorCode.DISCONNECTED_SURVIVORS,
                f"The active nodes of round {r} do not form a connected masking graph; "
                "start a new session.",
            )
        members = set(active)
        short = [n for n in active if len(self._graph[n] & members) + 1 < params.threshold]
        if short:
            raise self._error(
                ErrorCode.TOO_FEW_HOLDERS,
                f"Nodes {short} have fewer than {params.threshold} active share holders in "
                f"round {r}; their secrets could not be reconstructed. Start a new session.",
            )

    def masked_input_requests(self) -> dict[int, MaskedInputRequest]:
        """Wave A of the next round: the active set (and, first round, the setup shares)."""
        if self._phase is _Phase.BETWEEN_ROUNDS and self._round >= self.rounds:
            raise SecAggError(
                ErrorCode.BAD_STATE, f"Session {self.session} planned only {self.rounds} rounds."
            )
        first = self._phase is _Phase.SETUP_SHARES
        self._move(
            (_Phase.SETUP_SHARES, _Phase.BETWEEN_ROUNDS), _Phase.MASKED_INPUT, "start a round"
        )
        self._round += 1
        if first:
            self._members = tuple(sorted(self._shares))
            self._require(len(self._members), "sent their shares")
            self._active = self._members
        else:
            self._active = tuple(n for n in self._active if n not in self._excluded)
        self._check_active(self._active)
        self._masked, self._unmask = {}, {}
        self._survivors, self._needed_keys = (), ()
        self._expected = set(self._active)
        binding = self._binding(Stage.MASKED_INPUT)
        excluded = tuple(sorted(self._excluded))
        requests = {}
        for node in self._active:
            inbox: dict[int, bytes] = {}
            if first:
                inbox = {
                    s: self._shares[s].encrypted_shares[node]
                    for s in self._active
                    if node in self._shares[s].encrypted_shares
                }
                self._forwarded[node] = frozenset(inbox)
            requests[node] = MaskedInputRequest(binding, node, self._active, excluded, inbox)
        return requests

    @property
    def one_wave(self) -> bool:
        """Whether rounds are one wave (no dropout recovery, no unmask)."""
        return not self.session_params.dropout_recovery

    def unmask_requests(self) -> dict[int, UnmaskRequest]:
        """Wave B: close masked input; ask survivors for this round's shares."""
        if self.one_wave:
            raise SecAggError(
                ErrorCode.NO_UNMASK,
                "A one-wave session has no unmask wave: finalize() sums the masked inputs.",
            )
        self._move((_Phase.MASKED_INPUT,), _Phase.UNMASK, "start unmasking")
        if self._round == 1:
            refused = {r for reply in self._masked.values() for r in reply.rejected_senders}
            for node in sorted(refused & set(self._masked)):
                self._reject(
                    node,
                    Stage.MASKED_INPUT.value,
                    ErrorCode.SHARE_AUTH_FAILED,
                    f"A neighbour of node {node} could not authenticate its share; node {node} "
                    "is dropped from the session.",
                )
                self._masked.pop(node, None)
            for u, reply in self._masked.items():
                self._partners[u] = self._forwarded[u] - set(reply.rejected_senders)
        survivors = tuple(sorted(self._masked))
        self._require(len(survivors), f"sent masked inputs in round {self._round}")
        if not is_connected(survivors, self._graph):
            raise self._error(
                ErrorCode.DISCONNECTED_SURVIVORS,
                "The surviving nodes do not form a connected masking graph; unmasking would "
                "reveal partial sums, so the round (and session) is refused.",
            )
        revealed = set(survivors) & self._keys_revealed
        if revealed:  # unreachable while exclusion holds; a last line of defence
            raise self._error(
                ErrorCode.UNMASK_BOTH,
                f"Nodes {sorted(revealed)} had a mask key reconstructed; their self masks "
                "are never revealed.",
            )
        active = set(self._active)
        self._survivors = survivors
        self._needed_keys = tuple(
            sorted({p for u in survivors for p in self._partners[u] & active} - set(survivors))
        )
        self._keys_revealed |= set(self._needed_keys)
        self._excluded |= active - set(survivors)  # dropped in this round: out for good
        self._expected = set(survivors)
        binding = self._binding(Stage.UNMASK)
        return {n: UnmaskRequest(binding, n, survivors, self._needed_keys) for n in survivors}

    def _collect(self, owner: int, kind: str) -> dict[int, int]:
        out: dict[int, int] = {}
        for holder, reply in self._unmask.items():
            table = reply.self_mask_shares if kind == "b" else reply.mask_key_shares
            if owner in table:
                out[self.params.share_index(holder)] = shamir.from_bytes(table[owner])
        return out

    def finalize(self) -> AggregateResult:
        """Close unmasking; reconstruct this round's secrets, remove the masks, decode.

        One-wave sessions: close masked input and sum it (see `RoundVoidedError`)."""
        last = self._round >= self.rounds
        after = _Phase.DONE if last else _Phase.BETWEEN_ROUNDS
        if self.one_wave:
            self._move((_Phase.MASKED_INPUT,), after, "finalize")
            return self._finalize_one_wave()
        self._move((_Phase.UNMASK,), after, "finalize")
        try:
            return self._finalize()
        except SecAggError:
            self._phase = _Phase.FAILED
            raise

    def _finalize_one_wave(self) -> AggregateResult:
        """The sum of the whole active set's masked inputs, in which every pair mask cancels;
        `RoundVoidedError` (the session goes on without them) when some are missing."""
        params = self.params
        missing = tuple(n for n in self._active if n not in self._masked)
        if missing:
            self._excluded |= set(missing)
            if self._phase is _Phase.BETWEEN_ROUNDS:
                alive = [n for n in self._active if n not in self._excluded]
                if len(alive) < params.min_survivors:
                    self._phase = _Phase.FAILED
            raise RoundVoidedError(
                f"Nodes {list(missing)} sent no valid masked input in round {self._round}; "
                "in a one-wave session their pair masks cannot be removed, so the round "
                "aggregates nothing. The session goes on without them.",
                dropped=missing,
            )
        bits = params.modulus_bits
        total = np.zeros(params.vector_length + 1, dtype=ring_dtype(bits))
        for u in self._active:
            total += self._masked[u].masked
        reduce(total, modulus_bits=bits)
        return self._result(total)

    def _finalize(self) -> AggregateResult:
        params = self.params
        r = self._round
        bits = params.modulus_bits
        length = params.vector_length + 1
        t = params.threshold
        ctx = round_context(self.run_id, self.session, r)
        total = np.zeros(length, dtype=ring_dtype(bits))
        for u in self._survivors:
            total += self._masked[u].masked
            commitment = self._shares[u].self_mask_commitments[r - 1]

            def check_b(secret: bytes, u: int = u, commitment: bytes = commitment) -> bool:
                return self_commitment(secret, context=ctx, node=u) == commitment

            b = reconstruct(
                u, self._collect(u, "b"), threshold=t, verify=check_b, what="self-mask seed"
            )
            total -= expand_mask(
                self_seed(b, context=ctx, node=u), length=length, modulus_bits=bits
            )
        for d in self._needed_keys:
            advertised = self._keys[d].mask(r)

            def check_s(secret: bytes, advertised: bytes = advertised) -> bool:
                return public_key_of(secret) == advertised

            sk = private_key_from_bytes(
                reconstruct(d, self._collect(d, "s"), threshold=t, verify=check_s, what="mask key")
            )
            for u in self._survivors:
                if d not in self._partners[u]:
                    continue
                seed = pair_seed(sk, self._keys[u].mask(r), context=ctx, a=d, b=u)
                mask = expand_mask(seed, length=length, modulus_bits=bits)
                if u < d:
                    total -= mask
                else:
                    total += mask
        reduce(total, modulus_bits=bits)
        return self._result(total)

    def _result(self, total: NDArray[Any]) -> AggregateResult:
        params = self.params
        bits = params.modulus_bits
        survivors = set(self._survivors) if not self.one_wave else set(self._active)
        data = total[:-1]
        return AggregateResult(
            values=decode_sum(
                data,
                clipping_range=params.clipping_range,
                levels=params.levels,
                modulus_bits=bits,
            ),
            encoded_sum=data,
            survivors=tuple(sorted(survivors)),
            dropped=tuple(n for n in self._active if n not in survivors),
            clipped_total=int(total[-1]),
            error_bound=error_bound(
                clipping_range=params.clipping_range, levels=params.levels, count=len(survivors)
            ),
            rejections=tuple(self.rejections),
            params=params,
            round=self._round,
            active=self._active,
            excluded=tuple(sorted(self._excluded)),
        )
