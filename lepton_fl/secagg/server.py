"""The server half of SecAgg+: one object per round, driven stage by stage.

Usage per round: ``advertise_keys_requests()``, feed replies to ``receive()``, then
``share_keys_requests()``, ``masked_input_requests()``, ``unmask_requests()`` (each closes
the previous stage; a node that did not reply by then has dropped out), and ``finalize()``.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lepton_fl.secagg import shamir
from lepton_fl.secagg.config import (
    RoundParams,
    SecAggConfig,
    is_connected,
    masking_graph,
    resolve_round_params,
)
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
from lepton_fl.secagg.errors import ErrorCode, Rejection, SecAggError
from lepton_fl.secagg.messages import (
    REPLY_STAGE,
    AdvertiseKeysReply,
    AdvertiseKeysRequest,
    Binding,
    MaskedInputReply,
    MaskedInputRequest,
    PublicKeys,
    Reply,
    ShareKeysReply,
    ShareKeysRequest,
    Stage,
    UnmaskReply,
    UnmaskRequest,
)

SEALED_SHARE_BYTES = NONCE_BYTES + 2 * shamir.SHARE_BYTES + TAG_BYTES
MAX_RECONSTRUCTION_TRIES = 256
_ORDER = [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK]


@dataclass(frozen=True, slots=True)
class AggregateResult:
    """The outcome of a round: the decoded sum of the survivors' clipped updates."""

    values: NDArray[np.float64] = field(repr=False)
    encoded_sum: NDArray[Any] = field(repr=False)
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    clipped_total: int
    error_bound: float
    rejections: tuple[Rejection, ...]
    params: RoundParams = field(repr=False)


class _Invalid(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SecAggServer:
    """Runs the server's side of one round; learns only the sum of the survivors' inputs."""

    def __init__(
        self,
        *,
        run_id: str,
        round: int,
        config: SecAggConfig,
        participants: Iterable[int],
        vector_length: int,
        graph_seed: bytes | None = None,
    ) -> None:
        self.run_id = run_id
        self.round = round
        self.params = resolve_round_params(
            config,
            participants=participants,
            vector_length=vector_length,
            graph_seed=graph_seed if graph_seed is not None else secrets.token_bytes(32),
        )
        self._graph = masking_graph(self.params)
        self._context = round_context(run_id, round)
        self._stage: Stage | None = Stage.ADVERTISE_KEYS
        self.rejections: list[Rejection] = []
        self._banned: set[int] = set()
        self._expected: set[int] = set(self.params.participants)
        self._keys: dict[int, PublicKeys] = {}
        self._shares: dict[int, ShareKeysReply] = {}
        self._forwarded: dict[int, set[int]] = {}
        self._masked: dict[int, MaskedInputReply] = {}
        self._unmask: dict[int, UnmaskReply] = {}
        self._u1: tuple[int, ...] = ()
        self._u2: tuple[int, ...] = ()
        self._u3: tuple[int, ...] = ()
        self._needed_keys: tuple[int, ...] = ()
        self._partners: dict[int, set[int]] = {}

    # -- bookkeeping -------------------------------------------------------------------------

    @property
    def stage(self) -> Stage | None:
        """The stage whose replies are being collected; None once finalized."""
        return self._stage

    def _binding(self, stage: Stage) -> Binding:
        return Binding(self.run_id, self.round, stage)

    def _advance(self, to: Stage | None) -> None:
        current = self._stage
        nxt = (
            None
            if current is None or current is Stage.UNMASK
            else _ORDER[_ORDER.index(current) + 1]
        )
        if current is None or to != nxt:
            raise SecAggError(
                ErrorCode.BAD_STATE,
                f"The server cannot move from stage {current} to {to}; stages run in order.",
            )
        self._stage = to

    def _holders(self, owner: int) -> set[int]:
        return set(self._graph[owner] & set(self._u1)) | {owner}

    def _reject(self, sender: int, stage: str, code: ErrorCode, message: str) -> Rejection:
        rejection = Rejection(sender, stage, code, message)
        self.rejections.append(rejection)
        if sender in self.params.participants:
            self._banned.add(sender)
            self._expected.discard(sender)
            # Stages already closed are frozen; only the open stage forgets the sender.
            if self._stage is Stage.ADVERTISE_KEYS:
                self._keys.pop(sender, None)
            elif self._stage is Stage.SHARE_KEYS:
                self._shares.pop(sender, None)
            elif self._stage is Stage.MASKED_INPUT:
                self._masked.pop(sender, None)
            self._unmask.pop(sender, None)
        return rejection

    # -- receiving ---------------------------------------------------------------------------

    def receive(self, reply: Reply) -> Rejection | None:
        """Accept a node's reply, or reject it and drop its sender (returned and recorded)."""
        sender = reply.sender
        stage = self._stage
        label = stage.value if stage is not None else "finalized"
        if sender not in self.params.participants:
            return self._reject(
                sender, label, ErrorCode.UNKNOWN_SENDER, f"Node {sender} is not in this round."
            )
        if sender in self._banned:
            return self._reject(
                sender, label, ErrorCode.BAD_STATE, f"Node {sender} was already dropped."
            )
        if stage is None or reply.binding != self._binding(stage):
            return self._reject(
                sender,
                label,
                ErrorCode.BINDING_MISMATCH,
                f"Node {sender} sent a message bound to {reply.binding}, not to "
                f"run {self.run_id!r} round {self.round} stage {label}.",
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
        if isinstance(reply, AdvertiseKeysReply):
            if not (is_valid_public_key(reply.keys.enc) and is_valid_public_key(reply.keys.mask)):
                raise _Invalid(
                    ErrorCode.BAD_KEY, f"Node {sender} sent malformed or low-order public keys."
                )
            self._keys[sender] = reply.keys
        elif isinstance(reply, ShareKeysReply):
            expected = self._holders(sender) - {sender}
            if set(reply.encrypted_shares) != expected:
                raise _Invalid(
                    ErrorCode.MALFORMED,
                    f"Node {sender} sent shares for {sorted(reply.encrypted_shares)}, "
                    f"expected exactly {sorted(expected)}.",
                )
            if any(len(ct) != SEALED_SHARE_BYTES for ct in reply.encrypted_shares.values()):
                raise _Invalid(ErrorCode.MALFORMED, f"Node {sender} sent malformed shares.")
            if len(reply.self_mask_commitment) != 32:
                raise _Invalid(ErrorCode.MALFORMED, f"Node {sender} sent a malformed commitment.")
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
            if not set(reply.rejected_senders) <= self._forwarded.get(sender, set()):
                raise _Invalid(
                    ErrorCode.MALFORMED, f"Node {sender} rejected shares it was never sent."
                )
            self._masked[sender] = reply
        else:
            self._validate_unmask(reply)

    def _validate_unmask(self, reply: UnmaskReply) -> None:
        sender = reply.sender
        held = {sender} | (
            self._forwarded.get(sender, set()) - set(self._masked[sender].rejected_senders)
        )
        ok_b = held & set(self._u3)
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
            raise _Invalid(ErrorCode.MALFORMED, f"Node {sender} sent a malformed share.") from exc
        self._unmask[sender] = reply

    # -- requests ----------------------------------------------------------------------------

    def advertise_keys_requests(self) -> dict[int, AdvertiseKeysRequest]:
        """Stage 1: ask every participant for fresh public keys."""
        if self._stage is not Stage.ADVERTISE_KEYS:
            raise SecAggError(ErrorCode.BAD_STATE, "Key advertisement has already closed.")
        binding = self._binding(Stage.ADVERTISE_KEYS)
        return {
            n: AdvertiseKeysRequest(binding, n, self.params)
            for n in self.params.participants
            if n not in self._banned
        }

    def share_keys_requests(self) -> dict[int, ShareKeysRequest]:
        """Stage 2: close key advertisement; send each node the advertised public keys."""
        self._advance(Stage.SHARE_KEYS)
        raw = [k.enc for k in self._keys.values()] + [k.mask for k in self._keys.values()]
        for node, keys in list(self._keys.items()):
            if raw.count(keys.enc) > 1 or raw.count(keys.mask) > 1:
                self._reject(
                    node,
                    "share_keys",
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

    def masked_input_requests(self) -> dict[int, MaskedInputRequest]:
        """Stage 3: close sharing; forward to each node the shares addressed to it."""
        self._advance(Stage.MASKED_INPUT)
        self._u2 = tuple(sorted(self._shares))
        self._require(len(self._u2), "sent their shares")
        self._expected = set(self._u2)
        binding = self._binding(Stage.MASKED_INPUT)
        requests = {}
        for node in self._u2:
            inbox = {
                s: self._shares[s].encrypted_shares[node]
                for s in self._u2
                if node in self._shares[s].encrypted_shares
            }
            self._forwarded[node] = set(inbox)
            requests[node] = MaskedInputRequest(binding, node, inbox)
        return requests

    def unmask_requests(self) -> dict[int, UnmaskRequest]:
        """Stage 4: close masked input; ask survivors for the shares needed to unmask."""
        self._advance(Stage.UNMASK)
        refused = {r for reply in self._masked.values() for r in reply.rejected_senders}
        for node in sorted(refused & set(self._masked)):
            self._reject(
                node,
                "masked_input",
                ErrorCode.SHARE_AUTH_FAILED,
                f"A neighbour of node {node} could not authenticate its share; node {node} "
                "is dropped.",
            )
            self._masked.pop(node, None)
        self._u3 = tuple(sorted(self._masked))
        self._require(len(self._u3), "sent masked inputs")
        if not is_connected(self._u3, self._graph):
            raise SecAggError(
                ErrorCode.DISCONNECTED_SURVIVORS,
                "The surviving nodes do not form a connected masking graph; unmasking would "
                "reveal partial sums, so the round is refused.",
            )
        self._partners = {
            u: self._forwarded[u] - set(self._masked[u].rejected_senders) for u in self._u3
        }
        survivors = set(self._u3)
        self._needed_keys = tuple(
            sorted({p for ps in self._partners.values() for p in ps} - survivors)
        )
        self._expected = set(self._u3)
        binding = self._binding(Stage.UNMASK)
        return {n: UnmaskRequest(binding, n, self._u3, self._needed_keys) for n in self._u3}

    def _require(self, count: int, what: str) -> None:
        if count < self.params.min_survivors:
            raise SecAggError(
                ErrorCode.TOO_FEW_SURVIVORS,
                f"Only {count} nodes {what}; the round needs at least "
                f"{self.params.min_survivors} (threshold {self.params.threshold}, minimum "
                f"{self.params.min_participants} participants).",
            )

    # -- result ------------------------------------------------------------------------------

    def _reconstruct(
        self, owner: int, shares: Mapping[int, int], verify: Callable[[bytes], bool], what: str
    ) -> bytes:
        t = self.params.threshold
        if len(shares) < t:
            raise SecAggError(
                ErrorCode.RECONSTRUCTION_FAILED,
                f"Only {len(shares)} shares of node {owner}'s {what} arrived; {t} are needed.",
            )
        points = sorted(shares)
        for subset in itertools.islice(itertools.combinations(points, t), MAX_RECONSTRUCTION_TRIES):
            secret = int_to_secret(shamir.combine({x: shares[x] for x in subset}))
            if secret is not None and verify(secret):
                return secret
        raise SecAggError(
            ErrorCode.RECONSTRUCTION_FAILED,
            f"The shares of node {owner}'s {what} are inconsistent; no subset reconstructs "
            "a value matching its commitment.",
        )

    def _collect(self, owner: int, kind: str) -> dict[int, int]:
        out: dict[int, int] = {}
        for holder, reply in self._unmask.items():
            table = reply.self_mask_shares if kind == "b" else reply.mask_key_shares
            if owner in table:
                out[self.params.share_index(holder)] = shamir.from_bytes(table[owner])
        return out

    def finalize(self) -> AggregateResult:
        """Close unmasking, reconstruct the needed secrets, remove the masks and decode."""
        if self._stage is not Stage.UNMASK:
            raise SecAggError(ErrorCode.BAD_STATE, "finalize() must follow unmask_requests().")
        self._stage = None
        params = self.params
        bits = params.modulus_bits
        length = params.vector_length + 1
        total = np.zeros(length, dtype=ring_dtype(bits))
        ctx = self._context
        for u in self._u3:
            total += self._masked[u].masked
            commitment = self._shares[u].self_mask_commitment

            def check_b(
                secret: bytes, u: int = u, commitment: bytes = commitment, ctx: bytes = ctx
            ) -> bool:
                return self_commitment(secret, context=ctx, node=u) == commitment

            b = self._reconstruct(u, self._collect(u, "b"), check_b, "self-mask seed")
            total -= expand_mask(
                self_seed(b, context=ctx, node=u), length=length, modulus_bits=bits
            )
        for d in self._needed_keys:
            advertised = self._keys[d].mask

            def check_s(secret: bytes, advertised: bytes = advertised) -> bool:
                return public_key_of(secret) == advertised

            sk = private_key_from_bytes(
                self._reconstruct(d, self._collect(d, "s"), check_s, "mask key")
            )
            for u in self._u3:
                if d not in self._partners[u]:
                    continue
                seed = pair_seed(sk, self._keys[u].mask, context=self._context, a=d, b=u)
                mask = expand_mask(seed, length=length, modulus_bits=bits)
                if u < d:
                    total -= mask
                else:
                    total += mask
        reduce(total, modulus_bits=bits)
        data = total[:-1]
        dropped = tuple(n for n in params.participants if n not in set(self._u3))
        return AggregateResult(
            values=decode_sum(
                data,
                clipping_range=params.clipping_range,
                levels=params.levels,
                modulus_bits=bits,
            ),
            encoded_sum=data,
            survivors=self._u3,
            dropped=dropped,
            clipped_total=int(total[-1]),
            error_bound=error_bound(
                clipping_range=params.clipping_range, levels=params.levels, count=len(self._u3)
            ),
            rejections=tuple(self.rejections),
            params=params,
        )
