"""Elementary functions (exp, log, sigmoid, ...) that give the same bits on every machine.

Library `exp`/`log` are not correctly rounded: their last bit depends on the CPU kernel set (SLEEF
on AVX2/AVX-512, libm in the scalar path), on the library version and on CPU vs CUDA. The functions
here are built only from operations IEEE 754 requires to be correctly rounded (+, -, *, /, sqrt;
torch's CPU sqrt is not, so `sqrt` here corrects it exactly), rounding to integers, integer bit
operations and lookups in small tables of constants, each applied as its own tensor operation in a
fixed order, so no compiler can fuse or reorder them. Every machine that rounds IEEE float64
operations to nearest computes the same results.

They work in float64 (accurate to a few units in the last place, far beyond what a network needs)
and are part of the exact numerics of `shardzip.numerics` (exact-1 to exact-3; `sqrt` of exact-2 and later
only): changing a constant or the order of an operation would change what old stores decode to. A
better implementation is a new numerics version, not an edit.
"""

from __future__ import annotations

from decimal import Decimal, getcontext
from fractions import Fraction
from functools import cache
from math import factorial

import torch

_TABLE = 64  # exp: 2**(j/64) for j < 64; log: grid points 3/4 + j/64
_LOG_ENTRIES = 49  # 3/4 ... 3/2


def _correctly_rounded(value: Decimal) -> float:
    return float(value)  # Decimal -> float conversion is correctly rounded


@cache
def _constants() -> dict[str, object]:
    """Constants as correctly rounded float64, computed with 50-digit decimal arithmetic (platform-free)."""
    ctx = getcontext().copy()
    ctx.prec = 50
    ln2 = ctx.ln(Decimal(2))
    step = ln2 / _TABLE  # exp: x = k * ln2 / 64 + r
    # step = hi + lo with hi on a 2**-42 grid (36 significant bits): k * hi is exact for |k| < 2**17
    hi = float(Fraction(int((step * (1 << 42)).to_integral_value()), 1 << 42))
    lo = _correctly_rounded(step - Decimal(hi))
    exp_table = [_correctly_rounded(ctx.power(Decimal(2), Decimal(j) / _TABLE)) for j in range(_TABLE)]
    # log: m in [3/4, 3/2) is split as c_j * (1 + u), c_j = 3/4 + j/64 the nearest grid point (c_16 = 1)
    centres = [Fraction(3, 4) + Fraction(j, _TABLE) for j in range(_LOG_ENTRIES)]
    log_table = [_correctly_rounded(ctx.ln(Decimal(c.numerator) / Decimal(c.denominator))) for c in centres]
    ln2_hi = float(Fraction(int((ln2 * (1 << 32)).to_integral_value()), 1 << 32))  # e * ln2_hi is exact
    # float32 exp: |k| < 2**13, so hi32 (on a 2**-17 grid: <= 11 significant bits) makes k * hi32 exact
    hi32 = float(Fraction(int((step * (1 << 17)).to_integral_value()), 1 << 17))
    return {
        "inv_step": _correctly_rounded(1 / step), "step_hi": hi, "step_lo": lo, "exp_table": exp_table,
        "step_hi32": hi32, "step_lo32": _correctly_rounded(step - Decimal(hi32)),
        "exp_poly32": [1.0, 1.0, 0.5, float(Fraction(1, 6))],
        "log_table": log_table,
        "ln2_hi": ln2_hi, "ln2_lo": _correctly_rounded(ln2 - Decimal(ln2_hi)),
        "inv_ln2": _correctly_rounded(1 / ln2), "ln2": _correctly_rounded(ln2),
        "exp_poly": [float(Fraction(1, factorial(n))) for n in range(6)],  # 1, 1, 1/2, ..., 1/120
        "log_poly": [float(Fraction((-1) ** (n + 1), n)) for n in range(1, 8)],  # u - u^2/2 + ... + u^7/7
    }


_DEVICE_TABLES: dict[tuple[str, str], torch.Tensor] = {}


def _table(name: str, device: torch.device, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A table of float64 constants on `device`, rounded once (correctly) to `dtype`."""
    key = (name, str(device), str(dtype))
    t = _DEVICE_TABLES.get(key)
    if t is None:
        t = torch.tensor(_constants()[name], dtype=torch.float64).to(dtype).to(device)
        _DEVICE_TABLES[key] = t
    return t


def _pow2(m: torch.Tensor) -> torch.Tensor:
    """2**m for int64 m in [-1022, 1023], built from the exponent bits (exact)."""
    return ((m + 1023) << 52).view(torch.float64)


# exp is 0 below EXP_MIN and saturates at e**EXP_MAX: no subnormal or infinite intermediate results
EXP_MIN, EXP_MAX = -700.0, 709.0
EXP_MIN32, EXP_MAX32 = -87.0, 88.0  # the same for float32


def _pow2_32(m: torch.Tensor) -> torch.Tensor:
    """2**m as float32 for int32 m in [-126, 127] (exact)."""
    return ((m + 127) << 23).view(torch.float32)


def _f32(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)  # a float32 0-d operand keeps the arithmetic in float32


def _exp32(x: torch.Tensor) -> torch.Tensor:
    """e**x in float32 (for float32 networks): the same reduction as `exp`, a cubic for |r| <= ln2/128."""
    c = _constants()
    dev = x.device
    live = (x >= EXP_MIN32).to(x.dtype)  # below: e**x is under float32's normal range, and 0 here
    x = x.clamp(EXP_MIN32, EXP_MAX32)
    k = torch.round(x * _f32(c["inv_step"]).to(dev))
    r = (x - k * _f32(c["step_hi32"]).to(dev)) - k * _f32(c["step_lo32"]).to(dev)
    c0, c1, c2, c3 = (_f32(v).to(dev) for v in c["exp_poly32"])
    p = ((r * c3 + c2) * r + c1) * r + c0
    ki = k.to(torch.int32)
    j = _table("exp_table", dev, torch.float32).index_select(0, (ki & (_TABLE - 1)).reshape(-1)).view(ki.shape)
    return p * j * _pow2_32(ki >> 6) * live


def exp(x: torch.Tensor) -> torch.Tensor:
    """e**x; float32 in float32, anything else in float64: x = (64 m + j) ln2/64 + r, e**x = 2**m 2**(j/64) P(r),
    |r| <= ln2/128 (P of degree 5 in float64, 3 in float32)."""
    if x.dtype == torch.float32:
        return _exp32(x)
    x = x.double()
    if _compiled(x):
        from shardzip.numerics.compiled import exp64  # the same steps, one compiled pass (tested)

        return torch.from_numpy(exp64(x.detach().contiguous().numpy()))
    c = _constants()
    live = (x >= EXP_MIN).double()
    x = x.clamp(EXP_MIN, EXP_MAX)
    k = torch.round(x * c["inv_step"])
    r = (x - k * c["step_hi"]) - k * c["step_lo"]
    c0, c1, c2, c3, c4, c5 = c["exp_poly"]
    p = ((((r * c5 + c4) * r + c3) * r + c2) * r + c1) * r + c0  # Horner, one rounding per operation
    ki = k.long()
    j = _table("exp_table", x.device).index_select(0, (ki & (_TABLE - 1)).reshape(-1)).view(ki.shape)
    return p * j * _pow2(ki >> 6) * live


def _split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x > 0 as (e float64, m in [3/4, 3/2)) with x = 2**e * m, exactly (subnormals scaled up first)."""
    tiny = x < 2.0**-1022
    bits = torch.where(tiny, x * 2.0**60, x).view(torch.int64)
    e = (bits >> 52) - 1023 - tiny.long() * 60
    m = ((bits & ((1 << 52) - 1)) | (1023 << 52)).view(torch.float64)  # [1, 2)
    high = m >= 1.5
    return (e + high.long()).double(), torch.where(high, m * 0.5, m)


def _log_mantissa(m: torch.Tensor) -> torch.Tensor:
    """log m for m in [3/4, 3/2): log c_j + log1p(u), u = (m - c_j) / c_j, |u| <= 1/96 (m - c_j is exact)."""
    c = _constants()
    j = torch.round((m - 0.75) * _TABLE)
    centre = j * (1.0 / _TABLE) + 0.75
    u = (m - centre) / centre
    c1, c2, c3, c4, c5, c6, c7 = c["log_poly"]
    p = ((((((u * c7 + c6) * u + c5) * u + c4) * u + c3) * u + c2) * u + c1) * u
    return _table("log_table", m.device)[j.long()] + p


def _special_logs(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    out = torch.where(x == 0, torch.full_like(out, float("-inf")), out)
    out = torch.where((x < 0) | torch.isnan(x), torch.full_like(out, float("nan")), out)
    return torch.where(torch.isinf(x) & (x > 0), x, out)


def log(x: torch.Tensor) -> torch.Tensor:
    """Natural log in float64: x = 2**e m, log x = (e ln2_hi + log m) + e ln2_lo; exactly 0 at 1."""
    c = _constants()
    x = x.double()
    e, m = _split(x.abs())
    return _special_logs(x, (e * c["ln2_hi"] + _log_mantissa(m)) + e * c["ln2_lo"])


def log1p(x: torch.Tensor) -> torch.Tensor:
    """log(1 + x), accurate for small x: log(u) - ((u - 1) - x) / u with u = 1 + x (u rounded)."""
    x = x.double()
    u = x + 1.0
    return log(u) - ((u - 1.0) - x) / u


def expm1(x: torch.Tensor) -> torch.Tensor:
    """e**x - 1, accurate for small x (Kahan): (u - 1) * x / log(u) with u = e**x."""
    x = x.double()
    u = exp(x)
    d = u - 1.0
    small = (u != 1.0) & (d.abs() < 0.5)
    lu = log(torch.where(small, u, torch.full_like(u, 2.0)))
    return torch.where(u == 1.0, x, torch.where(small, d * x / lu, d))


def exp2(x: torch.Tensor) -> torch.Tensor:
    """2**x: exact for integer x in the normal range, else 2**floor(x) * e**(frac(x) ln2)."""
    c = _constants()
    x = x.double().clamp(-1022.0, 1023.0)
    k = torch.floor(x)
    f = x - k
    return exp(f * c["ln2"]) * _pow2(k.long())


def log2(x: torch.Tensor) -> torch.Tensor:
    """log2 x = e + log(m) / ln2: exact for powers of two."""
    c = _constants()
    x = x.double()
    e, m = _split(x.abs())
    return _special_logs(x, e + _log_mantissa(m) * c["inv_ln2"])


_VELTKAMP = 134217729.0  # 2**27 + 1: splits a float64 into two halves of 26 and 27 bits


def _sqrt32_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y (float32 > 0, finite) moved one step towards the correctly rounded sqrt of float32 x: the midpoints
    between y and its neighbours have 25 bits and their squares 50, so float64 compares them with x exactly."""
    yi = y.view(torch.int32)
    yd = y.double()
    up, down = (yi + 1).view(torch.float32).double(), (yi - 1).view(torch.float32).double()
    hi, lo = (yd + up) * 0.5, (yd + down) * 0.5
    xd = x.double()
    return torch.where(xd >= hi * hi, up, torch.where(xd < lo * lo, down, yd)).float()


def _below_midpoint(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Whether x < ((a + b) / 2)**2, exactly, for adjacent float64 a < b in [1, 2] and x in [1, 4) near a**2.

    With u = b - a (a power of two) and the integer Y = a / u: x < ((2Y + 1) u / 2)**2 iff 4x / u**2 - 4Y**2 <
    4Y + 1. Y**2 = p + e exactly (Dekker's product: Veltkamp halves of Y, every operation exact); 4x / u**2 - 4p
    is exact (Sterbenz: the two are within a factor 2) and, like e and Y, an integer below 2**63."""
    u = b - a
    big_y = a / u
    t = big_y * _VELTKAMP
    yh = t - (t - big_y)
    yl = big_y - yh
    p = big_y * big_y
    e = ((yh * yh - p) + yh * yl * 2.0) + yl * yl
    lhs = (x * (4.0 / (u * u)) - p * 4.0).long()
    return lhs < e.long() * 4 + big_y.long() * 4 + 1


def sqrt(x: torch.Tensor) -> torch.Tensor:
    """The correctly rounded square root (as IEEE 754 defines it) in x's precision, on any machine.

    torch's CPU sqrt goes through MKL, whose result is not always correctly rounded and differs between CPU
    vendors (on an AMD EPYC 17 % of float32 and 1.3 % of float64 square roots were one unit in the last place
    off). It serves here only as the first guess; two exact correction steps then give the correctly rounded
    root. float16 and bfloat16 go through float32 (double rounding is harmless for sqrt at these widths)."""
    dtype = x.dtype
    if dtype in (torch.float16, torch.bfloat16):
        return sqrt(x.float()).to(dtype)
    if dtype not in (torch.float32, torch.float64):
        return sqrt(x.to(torch.get_default_dtype()))
    live = torch.isfinite(x) & (x > 0)
    one = torch.ones_like(x)
    xs = torch.where(live, x, one)
    if dtype == torch.float32:
        y = torch.sqrt(xs.double()).float()
        for _ in range(2):
            y = _sqrt32_step(xs, y)
    else:
        tiny = xs < 2.0**-1022
        xs = torch.where(tiny, xs * 2.0**108, xs)  # subnormals: an even power of two, undone below
        half = ((xs.view(torch.int64) >> 52) - 1023) >> 1  # x = 4**half * xm with xm in [1, 4)
        xm = xs * _pow2(-2 * half)
        y = torch.sqrt(xm).clamp(1.0, 2.0)
        for _ in range(2):
            yi = y.view(torch.int64)
            up, down = (yi + 1).view(torch.float64), (yi - 1).view(torch.float64)
            go_up = ~_below_midpoint(xm, y, up)
            go_down = (y > 1.0) & _below_midpoint(xm, down.clamp(min=1.0), y)
            y = torch.where(go_up, up, torch.where(go_down, down, y))
        y = y * _pow2(half - tiny.long() * 54)
    special = torch.where(x == 0, x, torch.where(x > 0, x, torch.full_like(x, float("nan"))))  # +-0, inf, nan
    return torch.where(live, y, special)


def _select(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a where mask else b, for finite a and b, as mask * a + (1 - mask) * b: every product is exactly a value or
    0 and the sum exactly the chosen one (faster than torch.where on CPU)."""
    m = mask.to(a.dtype)
    return m * a + (1.0 - m) * b


def _compiled(x: torch.Tensor) -> bool:
    """Whether `shardzip.numerics.compiled` computes this tensor's function: on the CPU, outside autograd,
    large enough to be worth a call, with the compiled loops on (`shardzip.coding.kernels`)."""
    from shardzip.coding.kernels import scripted
    from shardzip.numerics.compiled import MIN_ELEMENTS

    return not x.requires_grad and x.numel() >= MIN_ELEMENTS and scripted.use_native(x.device)


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """1 / (1 + e**-x), from e = e**-|x| (no overflow): 1/(1+e) for x >= 0, e/(1+e) below; in x's precision
    (float32 or float64)."""
    if x.dtype != torch.float32:
        x = x.double()
    elif _compiled(x):
        from shardzip.numerics.compiled import sigmoid32  # the same bits, one compiled pass (tested)

        return torch.from_numpy(sigmoid32(x.detach().contiguous().numpy()))
    e = exp(-x.abs())
    inv = 1.0 / (e + 1.0)
    return _select(x < 0, e * inv, inv)


def log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """log sigmoid(x) = min(x, 0) - log1p(e**-|x|)."""
    x = x.double()
    return x.clamp(max=0.0) - log1p(exp(-x.abs()))


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e**x) = max(x, 0) + log1p(e**-|x|)."""
    x = x.double()
    return x.clamp(min=0.0) + log1p(exp(-x.abs()))


def tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh x = sign(x) * -t / (2 + t), t = expm1(-2|x|) (accurate near 0 too)."""
    x = x.double()
    t = expm1(x.abs() * -2.0)
    return torch.where(x < 0, -1.0, 1.0) * (-t / (t + 2.0))


def power(x: torch.Tensor, exponent: float) -> torch.Tensor:
    """x ** exponent: repeated products for small integer exponents (exact rounding sequence), sqrt for 1/2,
    else e**(exponent log x) for x > 0."""
    x = x.double()
    if exponent == 0:
        return torch.ones_like(x)
    if exponent == 0.5:
        return sqrt(x)
    if exponent == -0.5:
        return 1.0 / sqrt(x)
    if float(exponent).is_integer() and abs(exponent) <= 16:
        n = int(abs(exponent))
        out, base = None, x
        while n:  # square-and-multiply, always in the same order
            if n & 1:
                out = base if out is None else out * base
            n >>= 1
            if n:
                base = base * base
        return out if exponent > 0 else 1.0 / out
    return torch.where(x == 0, torch.zeros_like(x) if exponent > 0 else torch.full_like(x, float("inf")),
                       exp(log(x) * float(exponent)))
