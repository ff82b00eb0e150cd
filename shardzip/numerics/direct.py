"""Register-blocked micro-kernels of the exact direct convolution, in LLVM IR compiled for this CPU (llvmlite).

`shardzip.numerics.convolution` sums integer products whose every partial sum stays in range (float64: below
2**53; int32: below 2**31), so any order, vector width or FMA gives the one exact result. What limits it is
memory traffic: a loop that LLVM vectorizes by itself keeps its sums in memory and loads and stores them for
every few taps. Numba cannot say "keep these sums in registers", so the inner block is written here in LLVM
IR, where it can:

    block_o(src, cstride, cin, kh, kw, wp, w, acc, astride, span)     float64 operands and sums (exact-2)
    pairs_o(src, cstride, cpairs, kh, kw, wp, w, acc, astride, span)  int16 pairs, int32 sums (exact-3)

sum `o` output channels (1 to 8) over `span` consecutive positions of a flat run of padded rows: for each
block of `unroll * lanes` positions, o x unroll vector sums stay in registers while every input channel and
tap adds `w[ic, ky, kx, :o]` (broadcast) times the input vectors at offset `ky * wp + kx`; then they are
stored to `acc[j * astride + x]`. For pairs_o each 32-bit element holds two input channels' int16 values at
one position (and each weight word the two channels' weights): one vpmaddwd multiplies both and adds the
two products into the int32 lane, and LLVM fuses it with the sum into vpdpwssd where the CPU has AVX-512
VNNI; other architectures get the same products in plain IR. Loads and stores past `span` are masked, so
nothing outside the run is read or written. Pointers travel as i64. `lanes` is the widest vector of doubles
(8 with AVX-512, else 4; the pair kernels have twice as many 32-bit lanes) and `unroll` keeps the sums, the
inputs and a broadcast within the register file (32 vector registers with AVX-512, else 16). On the shipped
networks' 3 x 3 convolutions, one Zen 5 core: 75-103 GF/s in float64 (37 for a single input channel); one
Sapphire Rapids core: 65 in float64, 117-171 with int16 pairs (`benchmarks/convolution.py`).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import NamedTuple

log = logging.getLogger(__name__)

MAX_CHANNELS = 8  # output channels per block kernel: block_1 .. block_8


def _loop(name: str, counter: str, start: str, limit: str, body: list[str], latch: str) -> list[str]:
    """`for counter in range(limit)`, entered from block `start`, its body ending in a branch to `latch`'s
    increment (the body's last block is `latch`)."""
    return [f"  br label %{name}.loop",
            f"{name}.loop:",
            f"  %{counter} = phi i64 [0, %{start}], [%{counter}.next, %{latch}]",
            f"  %{counter}.more = icmp slt i64 %{counter}, %{limit}",
            f"  br i1 %{counter}.more, label %{name}.body, label %{name}.exit",
            f"{name}.body:", *body,
            f"  %{counter}.next = add i64 %{counter}, 1",
            f"  br label %{name}.loop",
            f"{name}.exit:"]


def _splat(name: str, value: str, lanes: int, kind: str) -> list[str]:
    vt = f"<{lanes} x {kind}>"
    return [f"  %{name}.i = insertelement {vt} poison, {kind} {value}, i64 0",
            f"  %{name} = shufflevector {vt} %{name}.i, {vt} poison, <{lanes} x i32> zeroinitializer"]


class Kind:
    """What a kernel sums: `double` (integer-valued float64 products, exact below 2**53) or `pairs` (int16 values
    of two input channels interleaved in each 32-bit word, multiplied pairwise into int32 sums: vpmaddwd, fused
    with the addition into vpdpwssd where the CPU has AVX-512 VNNI; exact below 2**31)."""

    def __init__(self, name: str, lanes: int, madd: str | None = None) -> None:
        """`madd`: for pairs, the pmaddwd intrinsic of this width, or None for plain IR."""
        self.name, self.lanes, self.madd = name, lanes, madd
        self.scalar = "double" if name == "double" else "i32"
        self.size = 8 if name == "double" else 4
        self.vt = f"<{lanes} x {self.scalar}>"
        self.ht = f"<{2 * lanes} x i16>"
        self.suffix = f"v{lanes}{'f64' if name == 'double' else 'i32'}"

    def declarations(self) -> list[str]:
        vt, lanes = self.vt, self.lanes
        head = [f"declare {vt} @llvm.masked.load.{self.suffix}.p0(ptr, i32, <{lanes} x i1>, {vt})",
                f"declare void @llvm.masked.store.{self.suffix}.p0({vt}, ptr, i32, <{lanes} x i1>)"]
        if self.name == "double":
            head.append(f"declare {vt} @llvm.fmuladd.{self.suffix}({vt}, {vt}, {vt})")
        elif self.madd:
            head.append(f"declare {vt} @{self.madd}({self.ht}, {self.ht})")
        return head

    def multiply_add(self, out: str, acc: str, v: str, w: str) -> list[str]:
        """%out = %acc + %v * %w, where %v and %w are vectors of the kind (pairs: as <2 lanes x i16> too,
        %v.h and %w.h)."""
        vt = self.vt
        if self.name == "double":
            return [f"  %{out} = call {vt} @llvm.fmuladd.{self.suffix}({vt} %{v}, {vt} %{w}, {vt} %{acc})"]
        if self.madd:
            return [f"  %{out}.m = call {vt} @{self.madd}({self.ht} %{v}.h, {self.ht} %{w}.h)",
                    f"  %{out} = add {vt} %{acc}, %{out}.m"]
        # other architectures: the same pairwise products in plain IR (LLVM picks the instructions)
        lanes = self.lanes
        wide = f"<{2 * lanes} x i32>"
        even = ", ".join(f"i32 {2 * i}" for i in range(lanes))
        odd = ", ".join(f"i32 {2 * i + 1}" for i in range(lanes))
        return [f"  %{out}.a = sext {self.ht} %{v}.h to {wide}",
                f"  %{out}.b = sext {self.ht} %{w}.h to {wide}",
                f"  %{out}.p = mul {wide} %{out}.a, %{out}.b",
                f"  %{out}.e = shufflevector {wide} %{out}.p, {wide} poison, <{lanes} x i32> <{even}>",
                f"  %{out}.o = shufflevector {wide} %{out}.p, {wide} poison, <{lanes} x i32> <{odd}>",
                f"  %{out}.s = add {vt} %{out}.e, %{out}.o",
                f"  %{out} = add {vt} %{acc}, %{out}.s"]

    def halves(self, name: str) -> list[str]:
        return [f"  %{name}.h = bitcast {self.vt} %{name} to {self.ht}"] if self.name == "pairs" else []


# pmaddwd by vector width on x86 (SSE2, AVX2, AVX-512BW)
_MADD = {4: "llvm.x86.sse2.pmadd.wd", 8: "llvm.x86.avx2.pmadd.wd", 16: "llvm.x86.avx512.pmaddw.d.512"}


def _block_entry(o: int, unroll: int, kind: Kind) -> list[str]:
    """block_o's entry and the head of its loop over runs of `unroll * lanes` positions from %x: the masks of the
    positions below %span, the o x unroll sums zeroed, %src.x the run's first input."""
    vt, n, lanes, el = kind.vt, o * unroll, kind.lanes, kind.scalar
    name = "block" if kind.name == "double" else "pairs"
    lines = [f"define void @{name}_{o}(i64 %src.i, i64 %cstride, i64 %cin, i64 %kh, i64 %kw, i64 %wp, i64 %w.i, "
             "i64 %acc.i, i64 %astride, i64 %span) {",
             "entry:",
             "  %src = inttoptr i64 %src.i to ptr",
             "  %w = inttoptr i64 %w.i to ptr",
             "  %dst = inttoptr i64 %acc.i to ptr",
             f"  %sums = alloca [{n} x {vt}], align 64",  # promoted to registers by SROA
             "  %taps = mul i64 %kh, %kw",
             *_splat("spanv", "%span", lanes, "i64"),
             "  br label %x.loop",
             "x.loop:",
             "  %x = phi i64 [0, %entry], [%x.next, %x.stored]",
             "  %x.more = icmp slt i64 %x, %span",
             "  br i1 %x.more, label %x.body, label %done",
             "x.body:",
             f"  %x.end = add i64 %x, {unroll * lanes}",
             "  %full = icmp sle i64 %x.end, %span",
             *_splat("xv", "%x", lanes, "i64")]
    for u in range(unroll):
        ramp = ", ".join(f"i64 {u * lanes + i}" for i in range(lanes))
        lines += [f"  %pos{u} = add <{lanes} x i64> %xv, <{ramp}>",
                  f"  %mask{u} = icmp slt <{lanes} x i64> %pos{u}, %spanv"]
    for i in range(n):
        lines += [f"  %s{i} = getelementptr [{n} x {vt}], ptr %sums, i64 0, i64 {i}",
                  f"  store {vt} zeroinitializer, ptr %s{i}, align 64"]
    lines.append(f"  %src.x = getelementptr {el}, ptr %src, i64 %x")
    return lines


def _block_tap(o: int, unroll: int, kind: Kind) -> list[str]:
    """One tap of one input channel: the unroll input vectors at %p (whole, or masked at the run's end), and for
    each of the o output channels its weight broadcast and multiplied into its sums."""
    vt, lanes, el, size = kind.vt, kind.lanes, kind.scalar, kind.size
    tap = [f"  %p = getelementptr {el}, ptr %src.ky, i64 %kx",
           "  %t = add i64 %w.ky, %kx",
           f"  %t.o = mul i64 %t, {o}",
           "  %wi = add i64 %w.ic, %t.o",
           f"  %wt = getelementptr {el}, ptr %w, i64 %wi",
           "  br i1 %full, label %load.full, label %load.masked",
           "load.full:"]
    for u in range(unroll):
        tap += [f"  %pf{u} = getelementptr {el}, ptr %p, i64 {u * lanes}",
                f"  %vf{u} = load {vt}, ptr %pf{u}, align {size}"]
    tap += ["  br label %fma", "load.masked:"]
    for u in range(unroll):
        tap += [f"  %pm{u} = getelementptr {el}, ptr %p, i64 {u * lanes}",
                f"  %vm{u} = call {vt} @llvm.masked.load.{kind.suffix}.p0(ptr %pm{u}, i32 {size}, "
                f"<{lanes} x i1> %mask{u}, {vt} zeroinitializer)"]
    tap += ["  br label %fma", "fma:"]
    tap += [f"  %v{u} = phi {vt} [%vf{u}, %load.full], [%vm{u}, %load.masked]" for u in range(unroll)]
    tap += [line for u in range(unroll) for line in kind.halves(f"v{u}")]
    for j in range(o):
        tap += [f"  %wp{j} = getelementptr {el}, ptr %wt, i64 {j}",
                f"  %w{j} = load {el}, ptr %wp{j}, align {size}",
                *_splat(f"wb{j}", f"%w{j}", lanes, el), *kind.halves(f"wb{j}")]
        for u in range(unroll):
            i = j * unroll + u
            tap += [f"  %a{i} = load {vt}, ptr %s{i}, align 64",
                    *kind.multiply_add(f"b{i}", f"a{i}", f"v{u}", f"wb{j}"),
                    f"  store {vt} %b{i}, ptr %s{i}, align 64"]
    return tap


def _block_store(o: int, unroll: int, kind: Kind) -> list[str]:
    """The run's sums stored (masked) to acc[j * astride + x], the loop's latch and the function's end."""
    vt, lanes, el, size = kind.vt, kind.lanes, kind.scalar, kind.size
    lines = []
    for j in range(o):
        lines += [f"  %row{j} = mul i64 %astride, {j}",
                  f"  %at{j} = add i64 %row{j}, %x"]
        for u in range(unroll):
            i = j * unroll + u
            lines += [f"  %r{i} = load {vt}, ptr %s{i}, align 64",
                      f"  %di{i} = add i64 %at{j}, {u * lanes}",
                      f"  %dp{i} = getelementptr {el}, ptr %dst, i64 %di{i}",
                      f"  call void @llvm.masked.store.{kind.suffix}.p0({vt} %r{i}, ptr %dp{i}, i32 {size}, "
                      f"<{lanes} x i1> %mask{u})"]
    return lines + ["  br label %x.stored",
                    "x.stored:",
                    f"  %x.next = add i64 %x, {unroll * lanes}",
                    "  br label %x.loop",
                    "done:",
                    "  ret void",
                    "}"]


def block_ir(o: int, unroll: int, kind: Kind) -> str:
    """The IR of block_o (see the module docstring) for elements of `kind`: per run of positions, loops over the
    input channels, the kernel's rows and its columns around `_block_tap`."""
    el = kind.scalar
    kx = _loop("kx", "kx", "ky.body", "kw", _block_tap(o, unroll, kind), "fma")
    ky = _loop("ky", "ky", "ic.body", "kh", ["  %ky.off = mul i64 %ky, %wp",
                                               f"  %src.ky = getelementptr {el}, ptr %src.ic, i64 %ky.off",
                                               "  %w.ky = mul i64 %ky, %kw", *kx], "kx.exit")
    ic = _loop("ic", "ic", "x.body", "cin", ["  %ic.off = mul i64 %ic, %cstride",
                                              f"  %src.ic = getelementptr {el}, ptr %src.x, i64 %ic.off",
                                              "  %w.ic0 = mul i64 %ic, %taps",
                                              f"  %w.ic = mul i64 %w.ic0, {o}", *ky], "ky.exit")
    return "\n".join(_block_entry(o, unroll, kind) + ic + _block_store(o, unroll, kind))


def module_ir(lanes: int, registers: int, pairs_madd: str | None = None) -> str:
    """block_1 .. block_8 for vectors of `lanes` doubles and pairs_1 .. pairs_8 for vectors of as many bytes
    (2 * lanes words of two int16), for a file of `registers` vector registers; `pairs_madd`: the pmaddwd
    intrinsic for that width, or None for plain IR."""
    kinds = [Kind("double", lanes), Kind("pairs", 2 * lanes, pairs_madd)]
    head = [line for kind in kinds for line in kind.declarations()]
    # o * unroll sums + unroll inputs + one broadcast within the register file, at most 4 vectors of positions
    blocks = [block_ir(o, max(1, min(4, (registers - 2) // (o + 1))), kind)
              for kind in kinds for o in range(1, MAX_CHANNELS + 1)]
    return "\n".join(head + blocks)


class Kernels(NamedTuple):
    """Addresses of the compiled micro-kernels: block_1 .. block_8 (float64) and pairs_1 .. pairs_8 (int16 pairs
    into int32 sums)."""

    double: tuple[int, ...]
    pairs: tuple[int, ...]


_ENGINE = None  # the execution engine owns the machine code: kept for the life of the process
_ADDRESSES: Kernels | None = None
_BUILT = False
_LOCK = threading.Lock()  # one build per process, even when a worker's threads ask at once


def kernels() -> Kernels | None:
    """The addresses of the micro-kernels compiled for this CPU (about 1 s, once per process), or None (logged)
    where llvmlite cannot build them: exact convolutions then take aten's path. SHARDZIP_KERNELS=generic builds
    them for the architecture's baseline instead (x86-64: SSE2, pairs in plain IR), as other CPUs run them:
    `tools/cross_decode.py` codes under it in its cpu/default configuration."""
    global _ENGINE, _ADDRESSES, _BUILT
    if _BUILT:
        return _ADDRESSES
    with _LOCK:
        if not _BUILT:
            try:
                if os.environ.get("SHARDZIP_KERNELS", "") == "generic":  # the baseline CPU's (a cross-check)
                    _ENGINE, _ADDRESSES = build(2, 16, generic=True)
                else:
                    _ENGINE, _ADDRESSES = build()
            except Exception as exc:  # noqa: BLE001 - any failure leaves aten's (slower, equally exact) path in charge
                log.warning("shardzip: convolution micro-kernels not built (%s); exact convolutions use aten", exc)
            _BUILT = True
    return _ADDRESSES


def build(lanes: int | None = None, registers: int | None = None, generic: bool = False):
    """(execution engine, Kernels) compiled for this CPU, for vectors of `lanes` doubles and a file of `registers`
    vector registers (default: 8 and 32 with AVX-512, else 4 and 16); `generic`: for the architecture's baseline
    instead (x86-64: SSE2), as a test of what other CPUs run. Keep the engine alive while the addresses are in
    use."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    features = llvm.get_host_cpu_features()
    wide = bool(features.get("avx512f", False))
    lanes = lanes or (8 if wide else 4)
    triple = llvm.get_default_triple()
    x86 = triple.startswith(("x86_64", "i386", "i686"))
    need = {4: "sse2", 8: "avx2", 16: "avx512bw"}.get(2 * lanes)
    madd = _MADD.get(2 * lanes) if x86 and not generic and need and features.get(need, False) else None
    target = llvm.Target.from_default_triple()
    machine = target.create_target_machine(cpu="generic" if generic else llvm.get_host_cpu_name(),
                                           features="" if generic else features.flatten(), opt=3)
    module = llvm.parse_assembly(module_ir(lanes, registers or (32 if wide else 16), madd))
    module.verify()
    builder = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(speed_level=3))
    builder.getModulePassManager().run(module, builder)
    engine = llvm.create_mcjit_compiler(module, machine)
    engine.finalize_object()
    return engine, Kernels(*(tuple(engine.get_function_address(f"{name}_{o}") for o in range(1, MAX_CHANNELS + 1))
                             for name in ("block", "pairs")))
