"""SecAgg+ crypto cost per round at 1M float32 parameters, with Flower's blocks for reference.

One protocol (``SecAggServer`` / ``SecAggNode``), measured two ways.

Per-round figures (``"rows"`` in the JSON): sessions of one round (``session_rounds=1``,
i.e. fresh keys and four waves every round). Node side, per node and round (median over
nodes and repetitions): key generation (two fresh X25519 pairs every round), sharing (Shamir
+ AES-GCM encryption of shares), masked input (decryption of received shares, encoding, mask
expansion with AES-CTR and masking), unmask answer. Server side: unmasking (reconstruction +
mask removal + decoding), with no dropout and with one dropout after sharing. Bytes a node
uploads (keys, encrypted shares, commitment, masked vector, unmask shares) are compared with
a plain float32 upload. Reference: Flower's ``pseudo_rand_gen`` (np.random.RandomState
seeded from 32 bits) and ``quantize`` for the same vector, imported from flwr, not copied.

Multi-round sessions (``"session"`` in the JSON; ``--session-rounds`` R, 2 setup waves then
2 waves per round): setup cost per node once per session (key generation for c and s^(1..R);
Shamir + AES-GCM of the shares of every round) reported apart from the per-round node cost
(masked input + unmask; the first round also decrypts the forwarded setup shares, reported
apart), the server's unmasking per round (no dropout, and one dropout at wave A of round 2),
and the bytes a node uploads per round and at setup, against a float32 upload.

Times are medians of wall clock and of thread CPU time, plus the best (minimum) wall time:
on a shared host the CPU time and the best run are the better estimates of the cost. Prints
a table, then one JSON object on the last line.
    .venv/bin/python bench/secagg_crypto.py [--params 1000000] [--reps 3] [--nodes 3 10]
        [--session-rounds 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from lepton_fl.secagg import Reply, SecAggConfig, SecAggNode, SecAggServer, payload_bytes
from lepton_fl.secagg.crypto import expand_mask
from lepton_fl.secagg.encoding import encode

NODE_GOAL_MS = 50.0
UPLOAD_GOAL = 1.1
Timings = dict[str, list[tuple[float, float]]]


@contextmanager
def clock(sink: Timings, key: str) -> Iterator[None]:
    """Record (wall ms, thread CPU ms) of the block under ``key``."""
    w0, c0 = time.perf_counter(), time.thread_time()
    yield
    sink[key].append(((time.perf_counter() - w0) * 1e3, (time.thread_time() - c0) * 1e3))


def one_round(
    n: int, d: int, config: SecAggConfig, rep: int, drop: int | None
) -> tuple[Timings, Timings, list[int]]:
    """Run a one-round session (``session_rounds=1``: fresh keys, four waves); node ``drop``
    misses the masked input.  Return node timings, server timings and upload bytes per node.
    """
    single = dataclasses.replace(config, session_rounds=1)
    nt, srv_t, up = one_session(n, d, single, rep, drop, drop_round=1)
    names = {
        "setup_keygen": "keygen",
        "setup_share_keys": "share_keys",
        "first_masked_input": "masked_input",
        "first_unmask": "unmask",
    }
    node_t: Timings = defaultdict(list, {names[k]: v for k, v in nt.items()})
    uploads = [a + b for a, b in zip(up["setup"], up["first_round"], strict=False)]
    return node_t, srv_t, uploads


def components(n: int, d: int, config: SecAggConfig) -> Timings:
    """Split masked_input into encoding and mask expansion + add (self + n - 1 pair masks)."""
    t: Timings = defaultdict(list)
    x = np.random.default_rng(0).normal(0, 0.05, d).astype(np.float32)
    bits = config.modulus_bits
    levels = (2 ** (bits - 1) - 1) // n
    for _ in range(3):
        with clock(t, "encode"):
            words, _ = encode(
                x, clipping_range=config.clipping_range, levels=levels, modulus_bits=bits
            )
        seeds = [np.random.bytes(32) for _ in range(n)]
        with clock(t, "expand+mask"):
            for seed in seeds:
                words += expand_mask(seed, length=words.size, modulus_bits=bits)
    return t


def flower_reference(d: int, reps: int) -> dict[str, float]:
    """Flower's own mask generator and quantizer on the same vector size."""
    from flwr.common.secure_aggregation.quantization import quantize
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    x = np.random.default_rng(0).normal(0, 0.05, d)
    gen: list[float] = []
    quant: list[float] = []
    for _ in range(reps):
        w0 = time.perf_counter()
        pseudo_rand_gen(np.random.bytes(32), 1 << 32, [(d,)])
        gen.append((time.perf_counter() - w0) * 1e3)
        w0 = time.perf_counter()
        quantize([x], 1.0, 1 << 22)
        quant.append((time.perf_counter() - w0) * 1e3)
    return {
        "flwr_pseudo_rand_gen_ms": round(statistics.median(gen), 2),
        "flwr_quantize_ms": round(statistics.median(quant), 2),
    }


def med(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return (
        round(statistics.median(s[0] for s in samples), 2),
        round(statistics.median(s[1] for s in samples), 2),
    )


def measure(n: int, d: int, config: SecAggConfig, reps: int) -> dict[str, Any]:
    node_t: Timings = defaultdict(list)
    srv_t: Timings = defaultdict(list)
    uploads: list[int] = []
    for rep in range(reps):
        for drop in (None, 2) if n > 3 else (None,):  # n = 3 cannot lose a node
            nt, st, up = one_round(n, d, config, 2 * rep + (1 if drop else 0) + 1, drop)
            for k, v in nt.items():
                node_t[k].extend(v)
            for k, v in st.items():
                srv_t[k].extend(v)
            if drop is None:
                uploads.extend(up)
    stages = {k: med(v) for k, v in node_t.items()}
    upload = statistics.median(uploads)
    return {
        "nodes": n,
        "params": d,
        "modulus_bits": config.modulus_bits,
        "node_ms": {k: v[0] for k, v in stages.items()},
        "node_cpu_ms": {k: v[1] for k, v in stages.items()},
        "node_total_ms": round(sum(v[0] for v in stages.values()), 2),
        "node_total_cpu_ms": round(sum(v[1] for v in stages.values()), 2),
        "node_total_best_ms": round(sum(min(s[0] for s in v) for v in node_t.values()), 2),
        "masked_input_parts_ms": {k: med(v)[0] for k, v in components(n, d, config).items()},
        "server_unmask_ms": med(srv_t["unmask"])[0],
        "server_unmask_one_dropout_ms": (
            med(srv_t["unmask_dropout"])[0] if srv_t["unmask_dropout"] else None
        ),
        "upload_bytes": int(upload),
        "float32_bytes": 4 * d,
        "upload_ratio": round(upload / (4 * d), 5),
    }


def one_session(
    n: int, d: int, config: SecAggConfig, rep: int, drop: int | None, *, drop_round: int = 2
) -> tuple[Timings, Timings, dict[str, list[int]]]:
    """Run one session of ``config.session_rounds`` rounds; node ``drop`` misses round
    ``drop_round``.

    Returns node timings (setup, first round, later rounds), server unmask timings and
    upload bytes per node: at setup, in the first round, in each later round.
    """
    node_t: Timings = defaultdict(list)
    srv_t: Timings = defaultdict(list)
    rng = np.random.default_rng(rep)
    ids = list(range(1, n + 1))
    server = SecAggServer(
        run_id="bench", session=rep, config=config, participants=ids, vector_length=d
    )
    nodes: dict[int, SecAggNode] = {}
    upload: dict[int, int] = defaultdict(int)

    def send(i: int, reply: Reply) -> None:
        upload[i] += payload_bytes(reply)
        server.receive(reply)

    def take_uploads() -> list[int]:
        out = [upload[i] for i in ids if upload[i]]
        upload.clear()
        return out

    uploads: dict[str, list[int]] = defaultdict(list)
    advertise = server.advertise_keys_requests()
    for i in ids:
        with clock(node_t, "setup_keygen"):
            nodes[i] = SecAggNode(node_id=i, run_id="bench", session=rep, config=config)
            advertised = nodes[i].advertise_keys(advertise[i])
        send(i, advertised)
    for i, share_req in server.share_keys_requests().items():
        with clock(node_t, "setup_share_keys"):
            shared = nodes[i].share_keys(share_req)
        send(i, shared)
    uploads["setup"] = take_uploads()
    for r in range(1, config.session_rounds + 1):
        stage = "first_" if r == 1 else ""
        updates = {i: rng.normal(0, 0.05, d).astype(np.float32) for i in ids}
        for i, masked_req in server.masked_input_requests().items():
            if i == drop and r == drop_round:
                continue
            with clock(node_t, f"{stage}masked_input"):
                masked = nodes[i].masked_input(masked_req, updates[i])
            send(i, masked)
        for i, unmask_req in server.unmask_requests().items():
            with clock(node_t, f"{stage}unmask"):
                answer = nodes[i].unmask(unmask_req)
            send(i, answer)
        dropout = drop is not None and r == drop_round
        with clock(srv_t, "unmask_dropout" if dropout else "unmask"):
            result = server.finalize()
        assert len(result.survivors) == len(result.active) - (1 if dropout else 0)
        uploads["first_round" if r == 1 else "round"].extend(take_uploads())
    return node_t, srv_t, uploads


def session_measure(n: int, d: int, config: SecAggConfig, reps: int) -> dict[str, Any]:
    """The session variant's figures for n nodes (see the module docstring)."""
    node_t: Timings = defaultdict(list)
    srv_t: Timings = defaultdict(list)
    uploads: dict[str, list[int]] = defaultdict(list)
    rounds = config.session_rounds
    for rep in range(reps):
        # n = 3 cannot lose a node; a dropout needs a second round
        for drop in (None, 2) if n > 3 and rounds >= 2 else (None,):
            nt, st, up = one_session(n, d, config, 2 * rep + (1 if drop else 0) + 1, drop)
            for k, v in nt.items():
                node_t[k].extend(v)
            for k, v in st.items():
                srv_t[k].extend(v)
            if drop is None:
                for k, u in up.items():
                    uploads[k].extend(u)
    stages = {k: med(v) for k, v in node_t.items()}
    setup_keys = ["setup_keygen", "setup_share_keys"]
    first_keys = ["first_masked_input", "first_unmask"]
    later_keys = ["masked_input", "unmask"] if rounds >= 2 else first_keys

    def total(keys: list[str], which: int) -> float:
        return round(sum(stages[k][which] for k in keys), 2)

    round_upload = statistics.median(uploads["round"] or uploads["first_round"])
    first_upload = statistics.median(uploads["first_round"])
    setup_upload = statistics.median(uploads["setup"])
    return {
        "nodes": n,
        "params": d,
        "rounds": rounds,
        "waves": {"setup": 2, "per_round": 2, "per_round_secagg": 4},
        "node_ms": {k: v[0] for k, v in stages.items()},
        "node_cpu_ms": {k: v[1] for k, v in stages.items()},
        "setup_node_ms": total(setup_keys, 0),
        "setup_node_cpu_ms": total(setup_keys, 1),
        "first_round_node_ms": total(first_keys, 0),
        "first_round_node_cpu_ms": total(first_keys, 1),
        "round_node_ms": total(later_keys, 0),
        "round_node_cpu_ms": total(later_keys, 1),
        "round_node_best_ms": round(sum(min(s[0] for s in node_t[k]) for k in later_keys), 2),
        "server_unmask_ms": med(srv_t["unmask"])[0],
        "server_unmask_one_dropout_ms": (
            med(srv_t["unmask_dropout"])[0] if srv_t["unmask_dropout"] else None
        ),
        "setup_upload_bytes": int(setup_upload),
        "first_round_upload_bytes": int(first_upload),
        "round_upload_bytes": int(round_upload),
        "float32_bytes": 4 * d,
        "round_upload_ratio": round(round_upload / (4 * d), 5),
        "session_upload_ratio": round(
            (setup_upload + first_upload + (rounds - 1) * round_upload) / (rounds * 4 * d), 5
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="SecAgg+ crypto cost per round")
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--nodes", type=int, nargs="+", default=[3, 10])
    ap.add_argument("--modulus-bits", type=int, default=32)
    ap.add_argument("--session-rounds", type=int, default=5)
    args = ap.parse_args()
    d = args.params
    config = SecAggConfig(clipping_range=1.0, modulus_bits=args.modulus_bits)
    rows = [measure(n, d, config, args.reps) for n in args.nodes]
    session_config = dataclasses.replace(config, session_rounds=args.session_rounds)
    session_rows = [session_measure(n, d, session_config, args.reps) for n in args.nodes]
    ref = flower_reference(d, args.reps)
    print(f"SecAgg+ crypto per round, {d:,} float32 params, ring Z_2^{args.modulus_bits}")
    print(f"{'n':>3} {'what':<30} {'wall ms':>9} {'cpu ms':>9}")
    for r in rows:
        n = r["nodes"]
        for k in r["node_ms"]:
            print(f"{n:>3} node {k:<25} {r['node_ms'][k]:>9.2f} {r['node_cpu_ms'][k]:>9.2f}")
        for k, v in r["masked_input_parts_ms"].items():
            print(f"{n:>3}   masked_input: {k:<16} {v:>9.2f}")
        total, cpu = r["node_total_ms"], r["node_total_cpu_ms"]
        print(f"{n:>3} {'node total':<30} {total:>9.2f} {cpu:>9.2f}")
        print(f"{n:>3} {'node total, best of runs':<30} {r['node_total_best_ms']:>9.2f}")
        print(f"{n:>3} {'server unmask':<30} {r['server_unmask_ms']:>9.2f}")
        if r["server_unmask_one_dropout_ms"] is not None:
            drop_ms = r["server_unmask_one_dropout_ms"]
            print(f"{n:>3} {'server unmask, 1 dropout':<30} {drop_ms:>9.2f}")
        print(
            f"{n:>3} upload {r['upload_bytes']:,} B vs float32 {r['float32_bytes']:,} B"
            f" = {r['upload_ratio']:.5f}x"
        )
    print(
        f"flwr pseudo_rand_gen (one mask): {ref['flwr_pseudo_rand_gen_ms']} ms; "
        f"flwr quantize: {ref['flwr_quantize_ms']} ms"
    )
    print(f"Sessions of {args.session_rounds} rounds (2 setup waves, then 2 waves per round)")
    for r in session_rows:
        n = r["nodes"]
        for k in r["node_ms"]:
            print(f"{n:>3} node {k:<25} {r['node_ms'][k]:>9.2f} {r['node_cpu_ms'][k]:>9.2f}")
        print(
            f"{n:>3} {'node setup (once)':<30} {r['setup_node_ms']:>9.2f} "
            f"{r['setup_node_cpu_ms']:>9.2f}"
        )
        print(
            f"{n:>3} {'node first round':<30} {r['first_round_node_ms']:>9.2f} "
            f"{r['first_round_node_cpu_ms']:>9.2f}"
        )
        print(
            f"{n:>3} {'node later round':<30} {r['round_node_ms']:>9.2f} "
            f"{r['round_node_cpu_ms']:>9.2f}"
        )
        print(f"{n:>3} {'server unmask':<30} {r['server_unmask_ms']:>9.2f}")
        if r["server_unmask_one_dropout_ms"] is not None:
            drop_ms = r["server_unmask_one_dropout_ms"]
            print(f"{n:>3} {'server unmask, 1 dropout':<30} {drop_ms:>9.2f}")
        print(
            f"{n:>3} upload per round {r['round_upload_bytes']:,} B vs float32 "
            f"{r['float32_bytes']:,} B = {r['round_upload_ratio']:.5f}x; first round "
            f"{r['first_round_upload_bytes']:,} B; setup {r['setup_upload_bytes']:,} B"
        )
    summary = {
        "bench": "secagg_crypto",
        "rows": rows,
        "flower_reference": ref,
        "goals": {"node_total_ms": NODE_GOAL_MS, "upload_ratio": UPLOAD_GOAL},
        "meets_node_goal": all(r["node_total_ms"] <= NODE_GOAL_MS for r in rows),
        "meets_node_goal_cpu": all(r["node_total_cpu_ms"] <= NODE_GOAL_MS for r in rows),
        "meets_upload_goal": all(r["upload_ratio"] <= UPLOAD_GOAL for r in rows),
        "rows_session_rounds": 1,
        "session": {
            "rounds": args.session_rounds,
            "rows": session_rows,
            "meets_node_goal": all(r["round_node_ms"] <= NODE_GOAL_MS for r in session_rows),
            "meets_node_goal_cpu": all(
                r["round_node_cpu_ms"] <= NODE_GOAL_MS for r in session_rows
            ),
            "meets_upload_goal": all(r["round_upload_ratio"] <= UPLOAD_GOAL for r in session_rows),
        },
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
