"""The node half of SecAgg+: one object per node per round, with fresh keys every round."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from enum import Enum
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
    KEY_BYTES,
    expand_mask,
    generate_key_pair,
    is_valid_public_key,
    open_sealed,
    seal,
)
from lepton_fl.secagg.derive import (
    pair_seed,
    round_context,
    secret_to_int,
    self_commitment,
    self_seed,
    share_aad,
    share_key,
)
from lepton_fl.secagg.encoding import EncodingStats, encode, reduce
from lepton_fl.secagg.errors import ErrorCode, SecAggError
from lepton_fl.secagg.messages import (
    AdvertiseKeysReply,
    AdvertiseKeysRequest,
    Binding,
    MaskedInputReply,
    MaskedInputRequest,
    PublicKeys,
    ShareKeysReply,
    ShareKeysRequest,
    Stage,
    UnmaskReply,
    UnmaskRequest,
)

SHARE_PLAINTEXT_BYTES = 2 * shamir.SHARE_BYTES


class _State(Enum):
    NEW = 0
    ADVERTISED = 1
    SHARED = 2
    MASKED = 3
    DONE = 4
    FAILED = 5


class SecAggNode:
    """Runs one node's side of one round.  Any refusal raises :class:`SecAggError`.

    After a refusal the object is spent: the node has dropped out of the round.
    """

    def __init__(self, *, node_id: int, run_id: str, round: int, config: SecAggConfig) -> None:
        self.node_id = node_id
        self.run_id = run_id
        self.round = round
        self.config = config
        self._state = _State.NEW
        self._params: RoundParams | None = None
        self._graph: Mapping[int, frozenset[int]] = {}
        self._enc_sk, self._enc_pk = generate_key_pair()
        self._mask_sk, self._mask_pk = generate_key_pair()
        self._peer_keys: dict[int, PublicKeys] = {}
        self._b_shares: dict[int, int] = {}  # owner -> this node's share of owner's b
        self._sk_shares: dict[int, int] = {}  # owner -> this node's share of owner's s^SK
        self._secret_b = b""
        self._stats: EncodingStats | None = None

    @property
    def encoding_stats(self) -> EncodingStats | None:
        """Clipping statistics of this node's update, once it was masked."""
        return self._stats

    @property
    def params(self) -> RoundParams:
        """The round's parameters, once accepted."""
        if self._params is None:
            raise SecAggError(ErrorCode.BAD_STATE, "The round parameters are not known yet.")
        return self._params

    # -- helpers -----------------------------------------------------------------------------

    def _fail(self, code: ErrorCode, message: str) -> SecAggError:
        self._state = _State.FAILED
        return SecAggError(code, message)

    def _enter(self, expected: _State, stage: Stage, binding: Binding, recipient: int) -> None:
        if self._state is not expected:
            raise self._fail(
                ErrorCode.BAD_STATE,
                f"Node {self.node_id} cannot handle a {stage.value} request in state "
                f"{self._state.name}; each stage runs once, in order.",
            )
        if binding != Binding(self.run_id, self.round, stage):
            raise self._fail(
                ErrorCode.BINDING_MISMATCH,
                f"Node {self.node_id} expected a {stage.value} request for run "
                f"{self.run_id!r} round {self.round}, got {binding}.",
            )
        if recipient != self.node_id:
            raise self._fail(
                ErrorCode.WRONG_RECIPIENT,
                f"Node {self.node_id} received a request addressed to node {recipient}.",
            )

    def _binding(self, stage: Stage) -> Binding:
        return Binding(self.run_id, self.round, stage)

    def _holders(self) -> list[int]:
        """Nodes holding this node's shares: itself and neighbours that advertised keys."""
        near = self._graph[self.node_id] & set(self._peer_keys)
        return sorted(near | {self.node_id})

    # -- stages ------------------------------------------------------------------------------

    def advertise_keys(self, request: AdvertiseKeysRequest) -> AdvertiseKeysReply:
        """Check the round's parameters against local policy; publish fresh public keys."""
        self._enter(_State.NEW, Stage.ADVERTISE_KEYS, request.binding, request.recipient)
        offered = request.params
        try:
            expected = resolve_round_params(
                self.config,
                participants=offered.participants,
                vector_length=offered.vector_length,
                graph_seed=offered.graph_seed,
            )
        except SecAggError as exc:
            raise self._fail(exc.code, exc.message) from exc
        if offered != expected:
            raise self._fail(
                ErrorCode.PARAMS_MISMATCH,
                f"Node {self.node_id} refuses round parameters that differ from its own "
                "secure-aggregation policy.",
            )
        if self.node_id not in offered.participants:
            raise self._fail(
                ErrorCode.UNKNOWN_SENDER,
                f"Node {self.node_id} is not a participant of the offered round.",
            )
        self._params = offered
        self._graph = masking_graph(offered)
        self._state = _State.ADVERTISED
        return AdvertiseKeysReply(
            self._binding(Stage.ADVERTISE_KEYS),
            self.node_id,
            PublicKeys(enc=self._enc_pk, mask=self._mask_pk),
        )

    def share_keys(self, request: ShareKeysRequest) -> ShareKeysReply:
        """Pick the self-mask seed b; send Shamir shares of b and s^SK to each holder."""
        self._enter(_State.ADVERTISED, Stage.SHARE_KEYS, request.binding, request.recipient)
        params = self.params
        keys = dict(request.public_keys)
        mine = keys.get(self.node_id)
        if mine != PublicKeys(enc=self._enc_pk, mask=self._mask_pk):
            raise self._fail(
                ErrorCode.BAD_KEY,
                f"Node {self.node_id}'s own public keys are missing or altered in the key list.",
            )
        if not set(keys) <= set(params.participants):
            raise self._fail(
                ErrorCode.UNKNOWN_SENDER, "The key list names nodes outside the round."
            )
        raw = [k.enc for k in keys.values()] + [k.mask for k in keys.values()]
        if any(len(r) != KEY_BYTES for r in raw) or len(set(raw)) != len(raw):
            raise self._fail(
                ErrorCode.BAD_KEY, "The key list holds malformed or repeated public keys."
            )
        if len(keys) < params.min_participants:
            raise self._fail(
                ErrorCode.TOO_FEW_PARTICIPANTS,
                f"Only {len(keys)} nodes advertised keys; at least "
                f"{params.min_participants} are required.",
            )
        self._peer_keys = keys
        holders = self._holders()
        if len(holders) < params.threshold:
            raise self._fail(
                ErrorCode.TOO_FEW_HOLDERS,
                f"Node {self.node_id} has {len(holders)} share holders, fewer than the "
                f"threshold {params.threshold}.",
            )
        self._secret_b = secrets.token_bytes(32)
        points = [params.share_index(h) for h in holders]
        b_shares = shamir.split(
            secret_to_int(self._secret_b), threshold=params.threshold, points=points
        )
        sk_shares = shamir.split(
            secret_to_int(self._mask_sk.private_bytes_raw()),
            threshold=params.threshold,
            points=points,
        )
        binding = self._binding(Stage.SHARE_KEYS)
        neighbours = [h for h in holders if h != self.node_id]
        if not all(is_valid_public_key(keys[h].enc) for h in neighbours):
            raise self._fail(ErrorCode.BAD_KEY, "A neighbour's public key is of low order.")
        sealed: dict[int, bytes] = {}
        for holder, x in zip(holders, points, strict=True):
            if holder == self.node_id:
                self._b_shares[holder] = b_shares[x]
                self._sk_shares[holder] = sk_shares[x]
                continue
            key = share_key(
                self._enc_sk, keys[holder].enc, binding=binding, src=self.node_id, dst=holder
            )
            plaintext = shamir.to_bytes(b_shares[x]) + shamir.to_bytes(sk_shares[x])
            aad = share_aad(binding=binding, src=self.node_id, dst=holder)
            sealed[holder] = seal(key, plaintext, aad=aad)
        context = round_context(self.run_id, self.round)
        self._state = _State.SHARED
        return ShareKeysReply(
            binding,
            self.node_id,
            sealed,
            self_commitment(self._secret_b, context=context, node=self.node_id),
        )

    def masked_input(
        self, request: MaskedInputRequest, update: NDArray[np.floating[Any]]
    ) -> MaskedInputReply:
        """Decrypt received shares; encode the update and add self and pairwise masks."""
        self._enter(_State.SHARED, Stage.MASKED_INPUT, request.binding, request.recipient)
        params = self.params
        vec = np.asarray(update)
        if vec.shape != (params.vector_length,):
            raise self._fail(
                ErrorCode.MALFORMED,
                f"The update has shape {vec.shape}; the round expects ({params.vector_length},).",
            )
        neighbours = self._graph[self.node_id] & set(self._peer_keys)
        share_binding = self._binding(Stage.SHARE_KEYS)
        partners: list[int] = []
        rejected: list[int] = []
        for sender, sealed in sorted(request.encrypted_shares.items()):
            if sender not in neighbours:
                raise self._fail(
                    ErrorCode.UNKNOWN_SENDER,
                    f"Node {self.node_id} was forwarded a share from node {sender}, which is "
                    "not one of its neighbours in this round.",
                )
            key = share_key(
                self._enc_sk,
                self._peer_keys[sender].enc,
                binding=share_binding,
                src=sender,
                dst=self.node_id,
            )
            try:
                plain = open_sealed(
                    key, sealed, aad=share_aad(binding=share_binding, src=sender, dst=self.node_id)
                )
                if len(plain) != SHARE_PLAINTEXT_BYTES:
                    raise ValueError("bad share length")
                b_share = shamir.from_bytes(plain[: shamir.SHARE_BYTES])
                sk_share = shamir.from_bytes(plain[shamir.SHARE_BYTES :])
            except (SecAggError, ValueError):
                rejected.append(sender)
                continue
            self._b_shares[sender] = b_share
            self._sk_shares[sender] = sk_share
            partners.append(sender)
        if len(partners) + 1 < params.threshold:
            raise self._fail(
                ErrorCode.TOO_FEW_HOLDERS,
                f"Node {self.node_id} holds valid shares from only {len(partners)} neighbours; "
                f"the round cannot reach the threshold {params.threshold}.",
            )
        try:
            words, self._stats = encode(
                vec,
                clipping_range=params.clipping_range,
                levels=params.levels,
                modulus_bits=params.modulus_bits,
            )
        except SecAggError as exc:
            raise self._fail(exc.code, exc.message) from exc
        context = round_context(self.run_id, self.round)
        length = words.size
        bits = params.modulus_bits
        words += expand_mask(
            self_seed(self._secret_b, context=context, node=self.node_id),
            length=length,
            modulus_bits=bits,
        )
        if not all(is_valid_public_key(self._peer_keys[p].mask) for p in partners):
            raise self._fail(ErrorCode.BAD_KEY, "A neighbour's mask key is of low order.")
        for peer in partners:
            seed = pair_seed(
                self._mask_sk,
                self._peer_keys[peer].mask,
                context=context,
                a=self.node_id,
                b=peer,
            )
            mask = expand_mask(seed, length=length, modulus_bits=bits)
            if self.node_id < peer:
                words += mask
            else:
                words -= mask
        reduce(words, modulus_bits=bits)
        self._state = _State.MASKED
        return MaskedInputReply(
            self._binding(Stage.MASKED_INPUT), self.node_id, words, tuple(rejected)
        )

    def unmask(self, request: UnmaskRequest) -> UnmaskReply:
        """Reveal b-shares of survivors and s^SK-shares of dropped nodes, never both for one."""
        self._enter(_State.MASKED, Stage.UNMASK, request.binding, request.recipient)
        params = self.params
        survivors, dropped = set(request.survivors), set(request.dropped)
        both = survivors & dropped
        if both:
            raise self._fail(
                ErrorCode.UNMASK_BOTH,
                f"Node {self.node_id} refuses to reveal both the self-mask and the mask-key "
                f"shares of nodes {sorted(both)}: that would expose their updates.",
            )
        if self.node_id not in survivors:
            raise self._fail(
                ErrorCode.UNMASK_BOTH,
                f"Node {self.node_id} sent its masked input but is listed as dropped; revealing "
                "its own mask key would expose its update.",
            )
        if not (survivors | dropped) <= set(params.participants):
            raise self._fail(
                ErrorCode.UNKNOWN_SENDER, "The unmask request names nodes outside the round."
            )
        if len(survivors) < params.min_survivors:
            raise self._fail(
                ErrorCode.TOO_FEW_SURVIVORS,
                f"Only {len(survivors)} masked inputs survive; at least {params.min_survivors} "
                "are required to unmask.",
            )
        if not is_connected(survivors, self._graph):
            raise self._fail(
                ErrorCode.DISCONNECTED_SURVIVORS,
                "The surviving nodes do not form a connected masking graph; unmasking would "
                "reveal partial sums.",
            )
        self._state = _State.DONE
        return UnmaskReply(
            self._binding(Stage.UNMASK),
            self.node_id,
            {o: shamir.to_bytes(s) for o, s in self._b_shares.items() if o in survivors},
            {o: shamir.to_bytes(s) for o, s in self._sk_shares.items() if o in dropped},
        )
