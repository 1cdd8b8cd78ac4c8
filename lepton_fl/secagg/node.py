"""The node half of SecAgg+: one object per node per session (R rounds; R = 1: one round).

Setup (once): ``advertise_keys`` then ``share_keys``.  Each round r = 1..R:
``masked_input`` then ``unmask``.  Every round has its own mask-agreement key pair s^(r) and
self-mask seed b^(r), all made at setup, so what the server reconstructs in one round
says nothing about another (docs/secagg-threat-model.md, "Sessions of several rounds").

A node the server declared dropped is excluded for the rest of the session: this node
refuses to mask with it or to reveal its self-mask shares, and refuses any later round
itself once it missed one (it must re-key, i.e. join a new session).
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping
from enum import Enum
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from numpy.typing import NDArray

from lepton_fl.secagg import shamir
from lepton_fl.secagg.config import SecAggConfig, is_connected, masking_graph
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
    share_binding,
    share_key,
)
from lepton_fl.secagg.encoding import EncodingStats, encode, reduce
from lepton_fl.secagg.errors import ErrorCode, SecAggError
from lepton_fl.secagg.identity import NodeIdentity
from lepton_fl.secagg.messages import (
    SETUP,
    AdvertiseKeysReply,
    AdvertiseKeysRequest,
    Binding,
    MaskedInputReply,
    MaskedInputRequest,
    PublicKeys,
    SessionParams,
    SetupOrRound,
    ShareKeysReply,
    ShareKeysRequest,
    Stage,
    UnmaskReply,
    UnmaskRequest,
    resolve_session_params,
)

ROUND_SHARE_BYTES = 2 * shamir.SHARE_BYTES  # one b^(r) share and one s^(r) share


class _State(Enum):
    NEW = 0
    ADVERTISED = 1
    READY = 2  # set up, or a round unmasked: the next round may start
    MASKED = 3  # sent round ``round``'s masked input
    DONE = 4
    FAILED = 5


class SecAggNode:
    """Runs one node's side of one session.  Any refusal raises :class:`SecAggError`.

    After a refusal the object is spent: the node has left the session and must re-key
    (join a new session) to take part again.

    With an ``identity`` (the product always gives one) the node signs its advertisement,
    refuses a session offering a participant outside the run's members, and refuses a key
    list with a key set its node did not sign (see lepton_fl.secagg.identity).
    """

    def __init__(
        self,
        *,
        node_id: int,
        run_id: str,
        session: int,
        config: SecAggConfig,
        identity: NodeIdentity | None = None,
    ) -> None:
        self.node_id = node_id
        self.run_id = run_id
        self.session = session
        self.config = config
        self.identity = identity
        rounds = config.session_rounds
        self._state = _State.NEW
        self._session_params: SessionParams | None = None
        self._graph: Mapping[int, frozenset[int]] = {}
        enc_sk, self._enc_pk = generate_key_pair()
        self._enc_sk: X25519PrivateKey | None = enc_sk
        pairs = [generate_key_pair() for _ in range(rounds)]
        self._mask_sks: dict[int, X25519PrivateKey] = {r + 1: p[0] for r, p in enumerate(pairs)}
        self._keys = PublicKeys(enc=self._enc_pk, masks=tuple(p[1] for p in pairs))
        if identity is not None:
            signature = identity.sign(run_id, session, node_id, self._keys)
            self._keys = dataclasses.replace(self._keys, signature=signature)
        self._secret_bs: dict[int, bytes] = {}  # round -> own b^(r)
        self._peer_keys: dict[int, PublicKeys] = {}
        self._b_shares: dict[int, dict[int, int]] = {}  # round -> owner -> share of b^(r)
        self._sk_shares: dict[int, dict[int, int]] = {}  # round -> owner -> share of s^(r)
        self._partners: frozenset[int] = frozenset()  # neighbours whose shares it holds
        self._members: frozenset[int] = frozenset()
        self._active: frozenset[int] = frozenset()
        self._excluded: set[int] = set()
        self._keys_revealed_of: set[int] = set()
        self._round = 0  # the last round this node sent a masked input for
        self._stats: EncodingStats | None = None

    # -- public state ------------------------------------------------------------------------

    @property
    def session_params(self) -> SessionParams:
        """The session's parameters, once accepted."""
        if self._session_params is None:
            raise SecAggError(ErrorCode.BAD_STATE, "The session parameters are not known yet.")
        return self._session_params

    @property
    def round(self) -> int:
        """The last round this node sent a masked input for (0 before the first)."""
        return self._round

    @property
    def active(self) -> frozenset[int]:
        """The active set of the last round this node took part in."""
        return self._active

    @property
    def excluded(self) -> frozenset[int]:
        """Nodes this node knows to be excluded from the session."""
        return frozenset(self._excluded)

    @property
    def failed(self) -> bool:
        """Whether the node refused a request and so left the session."""
        return self._state is _State.FAILED

    @property
    def encoding_stats(self) -> EncodingStats | None:
        """Clipping statistics of this node's last masked update."""
        return self._stats

    # -- helpers -----------------------------------------------------------------------------

    def _fail(self, code: ErrorCode, message: str) -> SecAggError:
        self._state = _State.FAILED
        return SecAggError(code, message)

    def _enc_key(self) -> X25519PrivateKey:
        if self._enc_sk is None:
            raise self._fail(ErrorCode.BAD_STATE, "The share-encryption key was discarded.")
        return self._enc_sk

    def _binding(self, round: SetupOrRound, stage: Stage) -> Binding:
        return Binding(self.run_id, self.session, round, stage)

    def _enter(
        self,
        allowed: tuple[_State, ...],
        stage: Stage,
        binding: Binding,
        recipient: int,
        round: SetupOrRound,
    ) -> None:
        if self._state not in allowed:
            raise self._fail(
                ErrorCode.BAD_STATE,
                f"Node {self.node_id} cannot handle a {stage.value} request in state "
                f"{self._state.name}; stages run once each, in order.",
            )
        if (
            stage is Stage.MASKED_INPUT
            and binding.stage is stage
            and (binding.run_id, binding.session) == (self.run_id, self.session)
            and isinstance(binding.round, int)
            and isinstance(round, int)
            and binding.round > round
        ):
            raise self._fail(
                ErrorCode.EXCLUDED,
                f"Node {self.node_id} took no part in round {round} of session "
                f"{self.session}, so it was dropped: it refuses round {binding.round} and "
                "must re-key in a new session.",
            )
        if binding != self._binding(round, stage):
            raise self._fail(
                ErrorCode.BINDING_MISMATCH,
                f"Node {self.node_id} expected a {stage.value} request for run "
                f"{self.run_id!r} session {self.session} round {round}, got {binding}.",
            )
        if recipient != self.node_id:
            raise self._fail(
                ErrorCode.WRONG_RECIPIENT,
                f"Node {self.node_id} received a request addressed to node {recipient}.",
            )

    # -- setup -------------------------------------------------------------------------------

    def advertise_keys(self, request: AdvertiseKeysRequest) -> AdvertiseKeysReply:
        """Setup wave 1: check the session parameters; publish c and s^(1..R) public keys."""
        self._enter((_State.NEW,), Stage.ADVERTISE_KEYS, request.binding, request.recipient, SETUP)
        offered = request.session_params
        try:
            expected = resolve_session_params(
                self.config,
                participants=offered.params.participants,
                vector_length=offered.params.vector_length,
                graph_seed=offered.params.graph_seed,
            )
        except SecAggError as exc:
            raise self._fail(exc.code, exc.message) from exc
        if offered != expected:
            raise self._fail(
                ErrorCode.PARAMS_MISMATCH,
                f"Node {self.node_id} refuses session parameters that differ from its own "
                "secure-aggregation policy.",
            )
        if self.node_id not in offered.params.participants:
            raise self._fail(
                ErrorCode.UNKNOWN_SENDER,
                f"Node {self.node_id} is not a participant of the offered session.",
            )
        if self.identity is not None:
            strangers = sorted(set(offered.params.participants) - set(self.identity.members))
            if strangers:
                raise self._fail(
                    ErrorCode.NOT_A_MEMBER,
                    f"Node {self.node_id} refuses a session offering participants "
                    f"{strangers}, which are not members of the run it was authorized for.",
                )
        self._session_params = offered
        self._graph = masking_graph(offered.params)
        self._state = _State.ADVERTISED
        return AdvertiseKeysReply(
            self._binding(SETUP, Stage.ADVERTISE_KEYS), self.node_id, self._keys
        )

    def share_keys(self, request: ShareKeysRequest) -> ShareKeysReply:
        """Setup wave 2: pick b^(1..R); send each holder its shares of every b^(r), s^(r)."""
        binding = share_binding(self.run_id, self.session)
        self._enter(
            (_State.ADVERTISED,),
            Stage.SHARE_KEYS,
            request.binding,
            request.recipient,
            SETUP,
        )
        sp = self.session_params
        params = sp.params
        keys = dict(request.public_keys)
        if keys.get(self.node_id) != self._keys:
            raise self._fail(
                ErrorCode.BAD_KEY,
                f"Node {self.node_id}'s own public keys are missing or altered in the key list.",
            )
        if not set(keys) <= set(params.participants):
            raise self._fail(
                ErrorCode.UNKNOWN_SENDER, "The key list names nodes outside the session."
            )
        self._check_signatures(keys)
        raw = [k.enc for k in keys.values()] + [m for k in keys.values() for m in k.masks]
        if (
            any(len(k.masks) != sp.rounds for k in keys.values())
            or any(len(r) != KEY_BYTES for r in raw)
            or len(set(raw)) != len(raw)
        ):
            raise self._fail(
                ErrorCode.BAD_KEY, "The key list holds malformed or repeated public keys."
            )
        if len(keys) < params.min_participants:
            raise self._fail(
                ErrorCode.TOO_FEW_PARTICIPANTS,
                f"Only {len(keys)} nodes advertised keys; at least "
                f"{params.min_participants} are required.",
            )
        holders = sorted((self._graph[self.node_id] & set(keys)) | {self.node_id})
        if len(holders) < params.threshold:
            raise self._fail(
                ErrorCode.TOO_FEW_HOLDERS,
                f"Node {self.node_id} has {len(holders)} share holders, fewer than the "
                f"threshold {params.threshold}.",
            )
        if not all(is_valid_public_key(keys[h].enc) for h in holders if h != self.node_id):
            raise self._fail(ErrorCode.BAD_KEY, "A neighbour's public key is of low order.")
        self._peer_keys = keys
        self._members = frozenset(keys)
        self._active = self._members
        points = [params.share_index(h) for h in holders]
        plain: dict[int, bytearray] = {h: bytearray() for h in holders}
        commitments: list[bytes] = []
        for r in range(1, sp.rounds + 1):
            secret_b = secrets.token_bytes(32)
            self._secret_bs[r] = secret_b
            b_split = shamir.split(
                secret_to_int(secret_b), threshold=params.threshold, points=points
            )
            sk_split = shamir.split(
                secret_to_int(self._mask_sks[r].private_bytes_raw()),
                threshold=params.threshold,
                points=points,
            )
            for holder, x in zip(holders, points, strict=True):
                plain[holder] += shamir.to_bytes(b_split[x]) + shamir.to_bytes(sk_split[x])
            self._b_shares[r] = {self.node_id: b_split[params.share_index(self.node_id)]}
            self._sk_shares[r] = {self.node_id: sk_split[params.share_index(self.node_id)]}
            context = round_context(self.run_id, self.session, r)
            commitments.append(self_commitment(secret_b, context=context, node=self.node_id))
        enc_sk = self._enc_key()
        sealed: dict[int, bytes] = {}
        for holder in holders:
            if holder == self.node_id:
                continue
            key = share_key(enc_sk, keys[holder].enc, binding=binding, src=self.node_id, dst=holder)
            aad = share_aad(binding=binding, src=self.node_id, dst=holder)
            sealed[holder] = seal(key, bytes(plain[holder]), aad=aad)
        self._state = _State.READY
        return ShareKeysReply(binding, self.node_id, sealed, tuple(commitments))

    def _check_signatures(self, keys: Mapping[int, PublicKeys]) -> None:
        """Every other node's keys carry its signature by its enrolled key."""
        if self.identity is None:
            return
        forged = sorted(
            node
            for node, node_keys in keys.items()
            if node != self.node_id
            and not self.identity.verify(self.run_id, self.session, node, node_keys)
        )
        if forged:
            raise self._fail(
                ErrorCode.BAD_SIGNATURE,
                f"Node {self.node_id} refuses the key list: the keys of {forged} are not "
                "signed by those members' enrolled keys (forged or substituted).",
            )

    # -- rounds ------------------------------------------------------------------------------

    def _check_active(self, request: MaskedInputRequest, r: int) -> frozenset[int]:
        params = self.session_params.params
        active = frozenset(request.active)
        if len(active) != len(request.active):
            raise self._fail(ErrorCode.MALFORMED, "The active set lists a node twice.")
        self._excluded |= set(request.excluded)
        if self.node_id in self._excluded or self.node_id not in active:
            raise self._fail(
                ErrorCode.EXCLUDED,
                f"Node {self.node_id} was dropped from session {self.session}; it refuses "
                f"round {r} and must re-key in a new session.",
            )
        if not active <= self._members:
            raise self._fail(
                ErrorCode.UNKNOWN_SENDER, "The active set names nodes outside the session."
            )
        back = active & (self._excluded | (self._members - self._active))
        if back:
            raise self._fail(
                ErrorCode.EXCLUDED,
                f"Node {self.node_id} refuses to include nodes {sorted(back)}: they were "
                "dropped earlier in this session and must re-key to rejoin.",
            )
        if len(active) < params.min_survivors:
            raise self._fail(
                ErrorCode.TOO_FEW_PARTICIPANTS,
                f"Only {len(active)} nodes are active in round {r}; at least "
                f"{params.min_survivors} are required.",
            )
        if not is_connected(active, self._graph):
            raise self._fail(
                ErrorCode.DISCONNECTED_SURVIVORS,
                f"The active nodes of round {r} do not form a connected masking graph.",
            )
        return active

    def _open_inbox(self, request: MaskedInputRequest, active: frozenset[int]) -> list[int]:
        """First round: decrypt the forwarded setup shares; return the senders refused."""
        enc_sk = self._enc_key()
        rounds = self.session_params.rounds
        binding = share_binding(self.run_id, self.session)
        neighbours = self._graph[self.node_id] & active
        partners: set[int] = set()
        rejected: list[int] = []
        for sender, sealed in sorted(request.encrypted_shares.items()):
            if sender not in neighbours:
                raise self._fail(
                    ErrorCode.UNKNOWN_SENDER,
                    f"Node {self.node_id} was forwarded a share from node {sender}, which is "
                    "not one of its active neighbours.",
                )
            try:
                key = share_key(
                    enc_sk,
                    self._peer_keys[sender].enc,
                    binding=binding,
                    src=sender,
                    dst=self.node_id,
                )
                plain = open_sealed(
                    key,
                    sealed,
                    aad=share_aad(binding=binding, src=sender, dst=self.node_id),
                )
                if len(plain) != rounds * ROUND_SHARE_BYTES:
                    raise ValueError("bad share length")
                parsed = []
                for r in range(rounds):
                    at = r * ROUND_SHARE_BYTES
                    b_share = shamir.from_bytes(plain[at : at + shamir.SHARE_BYTES])
                    sk_share = shamir.from_bytes(
                        plain[at + shamir.SHARE_BYTES : at + ROUND_SHARE_BYTES]
                    )
                    parsed.append((b_share, sk_share))
            except (SecAggError, ValueError):
                rejected.append(sender)
                continue
            for r, (b_share, sk_share) in enumerate(parsed, start=1):
                self._b_shares[r][sender] = b_share
                self._sk_shares[r][sender] = sk_share
            partners.add(sender)
        self._partners = frozenset(partners)
        self._enc_sk = None  # shares are only ever sent at setup: c is no longer needed
        return rejected

    def _recoverable_partners(self, r: int, active: frozenset[int]) -> frozenset[int]:
        """The active neighbours this node masks with when dropouts are recoverable: those
        holding valid shares of its secrets, at least ``threshold - 1`` of them."""
        params = self.session_params.params
        if r == 1:
            partners = self._partners & active
        else:
            partners = self._graph[self.node_id] & active
            strangers = partners - self._partners
            if strangers:
                raise self._fail(
                    ErrorCode.UNKNOWN_SENDER,
                    f"Node {self.node_id} holds no valid shares of active neighbours "
                    f"{sorted(strangers)}; it will not mask with them.",
                )
        if len(partners) + 1 < params.threshold:
            raise self._fail(
                ErrorCode.TOO_FEW_HOLDERS,
                f"Node {self.node_id} has only {len(partners)} active neighbours holding its "
                f"shares; round {r} cannot reach the threshold {params.threshold}.",
            )
        return partners

    def masked_input(
        self, request: MaskedInputRequest, update: NDArray[np.floating[Any]]
    ) -> MaskedInputReply:
        """Wave A of round r: check the active set; send encode(x) + self mask + pair masks
        (one-wave sessions: encode(x) + pair masks, and the round is over)."""
        r = self._round + 1
        self._enter(
            (_State.READY, _State.MASKED),
            Stage.MASKED_INPUT,
            request.binding,
            request.recipient,
            r,
        )
        sp = self.session_params
        params = sp.params
        if r > sp.rounds:
            raise self._fail(
                ErrorCode.BAD_STATE, f"Session {self.session} planned only {sp.rounds} rounds."
            )
        vec = np.asarray(update)
        if vec.shape != (params.vector_length,):
            raise self._fail(
                ErrorCode.MALFORMED,
                f"The update has shape {vec.shape}; the session expects ({params.vector_length},).",
            )
        active = self._check_active(request, r)
        rejected: list[int] = []
        if r == 1:
            rejected = self._open_inbox(request, active)
        elif request.encrypted_shares:
            raise self._fail(ErrorCode.MALFORMED, "Shares are forwarded in the first round only.")
        if sp.dropout_recovery:
            partners = self._recoverable_partners(r, active)
        else:
            # One-wave: the pair masks must cancel over the whole active set, and no share is
            # ever revealed, so every active neighbour is a partner, whatever its shares.
            partners = self._graph[self.node_id] & active
        try:
            words, self._stats = encode(
                vec,
                clipping_range=params.clipping_range,
                levels=params.levels,
                modulus_bits=params.modulus_bits,
            )
        except SecAggError as exc:
            raise self._fail(exc.code, exc.message) from exc
        context = round_context(self.run_id, self.session, r)
        length, bits = words.size, params.modulus_bits
        mask_sk = self._mask_sks.pop(r)
        secret_b = self._secret_bs.pop(r)
        seeds: list[tuple[int, bytes]] = []
        try:
            for peer in sorted(partners):
                seed = pair_seed(
                    mask_sk, self._peer_keys[peer].mask(r), context=context, a=self.node_id, b=peer
                )
                seeds.append((peer, seed))
        except SecAggError as exc:
            raise self._fail(exc.code, exc.message) from exc
        if sp.dropout_recovery:  # one-wave rounds have no self mask: nothing to reveal
            words += expand_mask(
                self_seed(secret_b, context=context, node=self.node_id),
                length=length,
                modulus_bits=bits,
            )
        for peer, seed in seeds:
            mask = expand_mask(seed, length=length, modulus_bits=bits)
            if self.node_id < peer:
                words += mask
            else:
                words -= mask
        reduce(words, modulus_bits=bits)
        # Round r - 1 can no longer be unmasked by this node: forget its shares.
        self._b_shares.pop(r - 1, None)
        self._sk_shares.pop(r - 1, None)
        self._round = r
        self._active = active
        self._state = _State.MASKED
        if not sp.dropout_recovery:  # one wave: the round is over for this node
            self._b_shares.pop(r, None)
            self._sk_shares.pop(r, None)
            self._state = _State.DONE if r == sp.rounds else _State.READY
        return MaskedInputReply(
            self._binding(r, Stage.MASKED_INPUT), self.node_id, words, tuple(rejected)
        )

    def unmask(self, request: UnmaskRequest) -> UnmaskReply:
        """Wave B of round r: reveal b^(r)-shares of survivors, s^(r)-shares of dropped nodes.

        Never both for one node; never b-shares of a node declared dropped, in this or any
        earlier round of the session.
        """
        r = self._round
        if not self.session_params.dropout_recovery:
            raise self._fail(
                ErrorCode.NO_UNMASK,
                f"Node {self.node_id} is in a one-wave session (no dropout recovery): it "
                "reveals no share of any kind, so an unmask request is refused.",
            )
        self._enter((_State.MASKED,), Stage.UNMASK, request.binding, request.recipient, r)
        params = self.session_params.params
        survivors, dropped = set(request.survivors), set(request.dropped)
        both = survivors & dropped
        if both:
            raise self._fail(
                ErrorCode.UNMASK_BOTH,
                f"Node {self.node_id} refuses to reveal both the self-mask and the mask-key "
                f"shares of nodes {sorted(both)}: that would expose their updates.",
            )
        earlier = survivors & (self._excluded | self._keys_revealed_of)
        if earlier:
            raise self._fail(
                ErrorCode.UNMASK_BOTH,
                f"Node {self.node_id} refuses to reveal self-mask shares of nodes "
                f"{sorted(earlier)}: they were declared dropped earlier in this session.",
            )
        if self.node_id not in survivors:
            raise self._fail(
                ErrorCode.UNMASK_BOTH,
                f"Node {self.node_id} sent its masked input but is listed as dropped; revealing "
                "its own mask key would expose its update.",
            )
        if not (survivors | dropped) <= self._active:
            raise self._fail(
                ErrorCode.UNKNOWN_SENDER,
                f"The unmask request names nodes outside the active set of round {r}.",
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
        b_shares = self._b_shares.pop(r, {})
        sk_shares = self._sk_shares.pop(r, {})
        self._excluded |= dropped
        self._keys_revealed_of |= dropped
        self._state = _State.DONE if r == self.session_params.rounds else _State.READY
        return UnmaskReply(
            self._binding(r, Stage.UNMASK),
            self.node_id,
            {o: shamir.to_bytes(s) for o, s in b_shares.items() if o in survivors},
            {o: shamir.to_bytes(s) for o, s in sk_shares.items() if o in dropped},
        )
