"""Entropy-coder benchmark: shardzip's interleaved rANS against constriction, same data, one run.

Every row codes the same seeded symbols under the same per-symbol distributions through both
coders, timing the whole path from the float parameters to bytes (encode) and from bytes and
parameters back to symbols (decode), and checks both round trips. Bits/symbol count every byte
of the final message. `nll` is sum(-log2 p) under the unquantized float distribution: the common
bound both coders approach.

constriction has no discretized logistic, so the logistic rows give it the same distributions as
per-symbol `Categorical` tables (its only exact way to code them); the Gaussian rows compare
against its native `QuantizedGaussian`.

    python benchmarks/coder.py            # 1 M symbols per row
    python benchmarks/coder.py --quick    # 200 k symbols (make demo)
    python benchmarks/coder.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shardzip.coding import (  # noqa: E402
    Message,
    categorical,
    decode,
    describe,
    discretized_gaussian,
    discretized_logistic,
    encode,
    mixture_discretized_logistic,
    uniform,
)

try:
    import constriction
except ImportError:  # the benchmark still runs, without the peer columns
    constriction = None

CHUNK = 1 << 16  # rows of probability tables built at a time for constriction's Categorical


@dataclass
class Row:
    case: str
    coder: str
    symbols: int
    lanes: int | None
    enc_msym_s: float
    dec_msym_s: float
    bits_per_symbol: float
    nll_bits_per_symbol: float
    exact: bool


def best_time(fn, repeats: int):
    """Result and the best wall time of `repeats` calls (the first call also warms caches)."""
    best, result = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return result, best


# ---------------------------------------------------------------- distributions and data
def _erf(x: np.ndarray) -> np.ndarray:
    return torch.erf(torch.from_numpy(x)).numpy()


def pmf_table(kind: str, mean: np.ndarray, scale: np.ndarray, K: int) -> np.ndarray:
    """Float pmf [n, K] of discretized distributions with open edge bins."""
    edges = np.arange(K + 1, dtype=np.float64) - 0.5
    z = (edges[None, :] - mean[:, None]) / scale[:, None]
    cdf = 1.0 / (1.0 + np.exp(-z)) if kind == "logistic" else 0.5 * (1 + _erf(z / math.sqrt(2)))
    cdf[:, 0], cdf[:, -1] = 0.0, 1.0
    return np.diff(cdf, axis=1)


def float_nll(kind: str, x: np.ndarray, mean: np.ndarray, scale: np.ndarray, K: int) -> float:
    lo = (x - 0.5 - mean) / scale
    hi = (x + 0.5 - mean) / scale
    if kind == "logistic":
        c_lo, c_hi = 1 / (1 + np.exp(-lo)), 1 / (1 + np.exp(-hi))
    else:
        c_lo, c_hi = 0.5 * (1 + _erf(lo / math.sqrt(2))), 0.5 * (1 + _erf(hi / math.sqrt(2)))
    c_lo = np.where(x == 0, 0.0, c_lo)
    c_hi = np.where(x == K - 1, 1.0, c_hi)
    return float(-np.log2(np.maximum(c_hi - c_lo, 1e-300)).sum())


MIX = 3  # components of the mixture rows


def mixture_pmf(means: np.ndarray, scales: np.ndarray, weights: np.ndarray, K: int) -> np.ndarray:
    """Float pmf [n, K] of a mixture of discretized logistics (components on the last axis)."""
    return sum(weights[:, j:j + 1] * pmf_table("logistic", means[:, j], scales[:, j], K) for j in range(means.shape[1]))


def sample_mixture(n: int, K: int, rng: np.random.Generator):
    """Per-symbol mixtures of MIX logistics (means near each other, as a model's are) and symbols drawn."""
    centre = rng.uniform(0.1 * K, 0.9 * K, (n, 1))
    means = centre + rng.normal(0.0, 6.0, (n, MIX))
    scales = rng.uniform(1.5, 12.0, (n, MIX))
    weights = rng.dirichlet(np.ones(MIX), n)
    comp = (weights.cumsum(1) < rng.uniform(size=(n, 1))).sum(1).clip(0, MIX - 1)
    u = rng.uniform(1e-9, 1 - 1e-9, n)
    rows = np.arange(n)
    x = np.clip(np.round(means[rows, comp] + scales[rows, comp] * np.log(u / (1 - u))), 0, K - 1).astype(np.int64)
    nll = 0.0
    for s in range(0, n, CHUNK):
        pmf = mixture_pmf(means[s:s + CHUNK], scales[s:s + CHUNK], weights[s:s + CHUNK], K)
        nll += float(-np.log2(np.maximum(pmf[np.arange(len(pmf)), x[s:s + CHUNK]], 1e-300)).sum())
    return x, means, scales, weights, nll


def sample(kind: str, n: int, K: int, rng: np.random.Generator):
    """Per-symbol means/scales spread over the alphabet and symbols drawn from them."""
    mean = rng.uniform(0.08 * K, 0.92 * K, n)
    scale = rng.uniform(0.008, 0.08, n) * K if K > 256 else rng.uniform(2.0, 20.0, n)
    u = rng.uniform(1e-9, 1 - 1e-9, n)
    if kind == "logistic":
        noise = np.log(u / (1 - u))
    else:
        noise = rng.standard_normal(n)
    x = np.clip(np.round(mean + scale * noise), 0, K - 1).astype(np.int64)
    return x, mean, scale


# ---------------------------------------------------------------- coders
def run_shardzip(case: str, kind: str, x, mean, scale, K: int, repeats: int, nll: float, lanes=None,
                 weights=None) -> Row:
    xt, mt, st = torch.from_numpy(x), torch.from_numpy(mean), torch.from_numpy(scale)
    if kind == "mixture":
        wt = torch.from_numpy(weights)

        def make(m, s, alphabet_size, rows=slice(None)):
            return mixture_discretized_logistic(m, s, weights=wt[rows], alphabet_size=alphabet_size)
    else:
        def make(m, s, alphabet_size, rows=None):
            return (discretized_logistic if kind == "logistic" else discretized_gaussian)(m, s, alphabet_size)
    warm = slice(0, 4096)  # untimed: the loops load (or compile) on their first calls
    decode(encode(xt[warm], make(mt[warm], st[warm], K, warm), lanes=lanes or 64), make(mt[warm], st[warm], K, warm))
    data, t_enc = best_time(lambda: encode(xt, make(mt, st, K), lanes=lanes), repeats)
    y, t_dec = best_time(lambda: decode(data, make(mt, st, K)), repeats)
    used_lanes = int(describe(data)["lanes"])
    return Row(case, "shardzip", len(x), used_lanes, len(x) / t_enc / 1e6, len(x) / t_dec / 1e6,
               8 * len(data) / len(x), nll / len(x), bool(torch.equal(y, xt)))


def run_constriction_tables(case: str, kind: str, x, mean, scale, K: int, repeats: int, nll: float,
                            weights=None) -> list[Row]:
    model = constriction.stream.model.Categorical(perfect=False)
    x32 = x.astype(np.int32)
    starts = list(range(0, len(x), CHUNK))

    def table(s: int) -> np.ndarray:  # the float pmf of symbols s..s+CHUNK, as a model would hand it over
        e = s + CHUNK
        if kind == "mixture":
            return mixture_pmf(mean[s:e], scale[s:e], weights[s:e], K)
        return pmf_table(kind, mean[s:e], scale[s:e], K)

    def enc():
        coder = constriction.stream.stack.AnsCoder()
        for s in reversed(starts):
            coder.encode_reverse(x32[s:s + CHUNK], model, table(s))
        return coder.get_compressed()

    def dec(words):
        coder = constriction.stream.stack.AnsCoder(words)
        return np.concatenate([coder.decode(model, table(s)) for s in starts])

    words, t_enc = best_time(enc, repeats)
    y, t_dec = best_time(lambda: dec(words), repeats)
    rows = [Row(case, "constriction Categorical", len(x), None, len(x) / t_enc / 1e6, len(x) / t_dec / 1e6,
                32 * words.size / len(x), nll / len(x), bool(np.array_equal(y, x32)))]
    # the same coder with every table built beforehand: the coder alone, untimed table building
    tables = [table(s) for s in starts]

    def enc_pre():
        coder = constriction.stream.stack.AnsCoder()
        for i in reversed(range(len(starts))):
            coder.encode_reverse(x32[starts[i]:starts[i] + CHUNK], model, tables[i])
        return coder.get_compressed()

    def dec_pre(words):
        coder = constriction.stream.stack.AnsCoder(words)
        return np.concatenate([coder.decode(model, t) for t in tables])

    words, t_enc = best_time(enc_pre, repeats)
    y, t_dec = best_time(lambda: dec_pre(words), repeats)
    rows.append(Row(case, "constriction Categorical*", len(x), None, len(x) / t_enc / 1e6, len(x) / t_dec / 1e6,
                    32 * words.size / len(x), nll / len(x), bool(np.array_equal(y, x32))))
    return rows


def run_constriction_gaussian(case: str, x, mean, scale, K: int, repeats: int, nll: float) -> Row:
    model = constriction.stream.model.QuantizedGaussian(0, K - 1)
    x32 = x.astype(np.int32)

    def enc():
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(x32, model, mean, scale)
        return coder.get_compressed()

    words, t_enc = best_time(enc, repeats)
    y, t_dec = best_time(lambda: constriction.stream.stack.AnsCoder(words).decode(model, mean, scale), repeats)
    return Row(case, "constriction QuantizedGaussian", len(x), None, len(x) / t_enc / 1e6, len(x) / t_dec / 1e6,
               32 * words.size / len(x), nll / len(x), bool(np.array_equal(y, x32)))


def run_categorical(n: int, K: int, repeats: int, rng: np.random.Generator) -> list[Row]:
    """Explicit per-symbol probability tables (a softmax of random logits), as a model would emit."""
    logits = rng.standard_normal((n, K)) * 3
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    x = (probs.cumsum(1) < rng.uniform(size=(n, 1))).sum(1).clip(0, K - 1)
    nll = float(-np.log2(probs[np.arange(n), x]).sum())
    case = f"categorical K={K}"
    xt, pt = torch.from_numpy(x), torch.from_numpy(probs)
    decode(encode(xt[:4096], categorical(pt[:4096]), lanes=64), categorical(pt[:4096]))  # untimed warm-up
    data, t_enc = best_time(lambda: encode(xt, categorical(pt)), repeats)
    y, t_dec = best_time(lambda: decode(data, categorical(pt)), repeats)
    rows = [Row(case, "shardzip", n, int(describe(data)["lanes"]), n / t_enc / 1e6, n / t_dec / 1e6,
                8 * len(data) / n, nll / n, bool(torch.equal(y, xt)))]
    if constriction is not None:
        model = constriction.stream.model.Categorical(perfect=False)
        x32 = x.astype(np.int32)

        def enc():
            coder = constriction.stream.stack.AnsCoder()
            coder.encode_reverse(x32, model, probs)
            return coder.get_compressed()

        words, t_enc = best_time(enc, repeats)
        yc, t_dec = best_time(lambda: constriction.stream.stack.AnsCoder(words).decode(model, probs), repeats)
        rows.append(Row(case, "constriction Categorical", n, None, n / t_enc / 1e6, n / t_dec / 1e6,
                        32 * words.size / n, nll / n, bool(np.array_equal(yc, x32))))
    return rows


def bits_back_figure(lanes: int, rounds: int, words_per_lane: int) -> dict:
    """Bits-back on a toy latent model: net rate vs -log2 p(x) and -log2 p(x, z), clean-bit cost."""
    J, K = 16, 256
    means = torch.linspace(20, 235, J, dtype=torch.float64)
    scale = 6.0
    gen = torch.Generator().manual_seed(1)
    z_true = torch.randint(0, J, (rounds, lanes), generator=gen)
    u = torch.rand((rounds, lanes), generator=gen, dtype=torch.float64).clamp(1e-9, 1 - 1e-9)
    x = (means[z_true] + scale * torch.logit(u)).round().clamp(0, K - 1).long()
    prior = uniform(J, (lanes,))

    def likelihood(z):
        return discretized_logistic(means[z], torch.full((lanes,), scale), K)

    def posterior(xr):
        # exact posterior from the quantized likelihoods (identical on both sides)
        logp = torch.stack([likelihood(torch.full((lanes,), j)).log2_prob(xr) for j in range(J)], -1)
        return categorical(torch.exp2(logp - logp.amax(-1, keepdim=True)))

    msg = Message.with_clean_bits(lanes, words_per_lane, seed=7)
    clean_bits = msg.num_bits()
    marginal = joint = 0.0
    for r in range(rounds):
        q = posterior(x[r])
        z = msg.pop(q)
        msg.push(x[r], likelihood(z))
        msg.push(z, prior)
        lik = torch.stack([likelihood(torch.full((lanes,), j)).log2_prob(x[r]) for j in range(J)], -1)
        marginal += float(-(torch.logsumexp(lik * math.log(2), -1) / math.log(2) - math.log2(J)).sum())
        joint += float(-(likelihood(z).log2_prob(x[r]) - math.log2(J)).sum())
    data = msg.to_bytes()
    dec, _ = Message.from_bytes(data)
    for r in reversed(range(rounds)):
        z = dec.pop(prior)
        xr = dec.pop(likelihood(z))
        assert torch.equal(xr, x[r])
        dec.push(z, posterior(xr))
    dec.check_clean_bits(words_per_lane, seed=7)
    n = rounds * lanes
    return {
        "points": n,
        "coded_bits_per_point": 8 * len(data) / n,
        "net_bits_per_point": (8 * len(data) - clean_bits) / n,
        "marginal_nll_bits_per_point": marginal / n,
        "joint_nll_bits_per_point": joint / n,
        "clean_bits_total": clean_bits,
        "clean_bits_per_lane": 32 * words_per_lane,
    }


# ---------------------------------------------------------------- report
def print_table(rows: list[Row]) -> None:
    """One table of all rows, then the shardzip/constriction ratios per case."""
    head = (f"{'case':<22} {'coder':<30} {'symbols':>9} {'lanes':>6} {'enc Msym/s':>11} {'dec Msym/s':>11}"
            f" {'bits/sym':>9} {'nll':>8} {'over nll':>9} {'exact':>5}")
    print(head)
    print("-" * len(head))
    for r in rows:
        over = 100 * (r.bits_per_symbol / r.nll_bits_per_symbol - 1)
        lanes = "" if r.lanes is None else str(r.lanes)
        print(f"{r.case:<22} {r.coder:<30} {r.symbols:>9} {lanes:>6} {r.enc_msym_s:>11.2f} {r.dec_msym_s:>11.2f}"
              f" {r.bits_per_symbol:>9.4f} {r.nll_bits_per_symbol:>8.4f} {over:>8.3f}% {str(r.exact):>5}")
    print("* tables built before timing: the coder alone. Without *, timing includes building the tables"
          " from (mean, scale), as shardzip's timing includes quantizing them.")
    print()
    print("ratio shardzip / constriction (same case): encode speed, decode speed, bits")
    by_case: dict[str, list[Row]] = {}
    for r in rows:
        by_case.setdefault(r.case, []).append(r)
    for case, group in by_case.items():
        ours = [r for r in group if r.coder == "shardzip"]
        peers = [r for r in group if r.coder != "shardzip"]
        for o in ours:
            for p in peers:
                print(f"  {case:<22} vs {p.coder:<30} enc {o.enc_msym_s / p.enc_msym_s:6.2f}x"
                      f"  dec {o.dec_msym_s / p.dec_msym_s:6.2f}x  bits {o.bits_per_symbol / p.bits_per_symbol:.5f}"
                      f" (lanes {o.lanes})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 k symbols per row, one repeat")
    parser.add_argument("--symbols", type=int, default=None, help="symbols per row (default 1 M)")
    parser.add_argument("--repeats", type=int, default=None, help="best-of repeats (default 3)")
    parser.add_argument("--lanes", type=int, nargs="*", default=[1024],
                        help="extra shardzip rows at these lane counts (default 1024: speed over size)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    n = args.symbols or (200_000 if args.quick else 1_000_000)
    repeats = args.repeats or (1 if args.quick else 3)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rng = np.random.default_rng(2026)
    print(f"shardzip coder benchmark: {n} symbols per row, best of {repeats}, torch {torch.__version__},"
          f" {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
          f", constriction {'present' if constriction else 'absent'}")
    print()
    rows: list[Row] = []
    for kind, K in (("logistic", 256), ("gaussian", 256), ("logistic", 1 << 16), ("gaussian", 1 << 16)):
        case = f"{kind} K={K}"
        x, mean, scale = sample(kind, n, K, rng)
        nll = float_nll(kind, x, mean, scale, K)
        rows.append(run_shardzip(case, kind, x, mean, scale, K, repeats, nll))
        for lanes in args.lanes if K == 256 else ():
            rows.append(run_shardzip(case, kind, x, mean, scale, K, repeats, nll, lanes=lanes))
        if constriction is None:
            continue
        if kind == "logistic" and K == 256:
            rows.extend(run_constriction_tables(case, kind, x, mean, scale, K, repeats, nll))
        if kind == "gaussian":
            rows.append(run_constriction_gaussian(case, x, mean, scale, K, repeats, nll))
    case = f"mixture{MIX} K=256"
    x, means, scales, weights, nll = sample_mixture(n, 256, rng)
    rows.append(run_shardzip(case, "mixture", x, means, scales, 256, repeats, nll, weights=weights))
    if constriction is not None:
        rows.extend(run_constriction_tables(case, "mixture", x, means, scales, 256, repeats, nll, weights=weights))
    rows.extend(run_categorical(min(n, 200_000), 256, repeats, rng))
    print_table(rows)
    bb = bits_back_figure(lanes=64, rounds=50 if args.quick else 200, words_per_lane=2)
    print()
    print(f"bits-back (toy latent model, {bb['points']} points, {bb['clean_bits_per_lane']} clean bits per lane):"
          f" net {bb['net_bits_per_point']:.3f} bits/point vs -log2 p(x) {bb['marginal_nll_bits_per_point']:.3f}"
          f" and -log2 p(x,z) {bb['joint_nll_bits_per_point']:.3f}; clean bits {bb['clean_bits_total']}"
          f" = {bb['clean_bits_total'] / bb['points']:.3f} bits/point here")
    if args.json:
        args.json.write_text(json.dumps({"rows": [asdict(r) for r in rows], "bits_back": bb}, indent=2))
    ok = all(r.exact for r in rows)
    if not ok:
        print("ERROR: a round trip was not exact", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
