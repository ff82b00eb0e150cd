"""Register-blocked micro-kernels of the exact direct convolution, in LLVM IR compiled for this CPU (llvmlite).

`shardzip.numerics.compiled.conv2d` sums integer-valued float64 products whose every partial sum stays below
2**53, so any order, vector width or FMA gives the one exact result. What limits it is memory traffic: a loop
that LLVM vectorizes by itself keeps its sums in memory and loads and stores them for every few taps. Numba
cannot say "keep these sums in registers", so the inner block is written here in LLVM IR, where it can:

    block_o(src, cstride, cin, kh, kw, wp, w, acc, astride, span)

sums `o` output channels (1 to 8) over `span` consecutive positions of a flat run of padded rows: for each
block of `unroll * lanes` positions, o x unroll vector sums stay in registers while every input channel and
tap adds `w[ic, ky, kx, :o]` (broadcast) times the input vectors at offset `ky * wp + kx`; then they are
stored to `acc[j * astride + x]`. Loads and stores past `span` are masked, so nothing outside the run is read
or written. Pointers travel as i64. `lanes` is the widest vector of doubles (8 with AVX-512, else 4) and
`unroll` keeps the sums, the inputs and a broadcast within the register file (32 vector registers with
AVX-512, else 16). On the shipped networks' 3 x 3 convolutions, one Zen 5 core: 75-103 GF/s (37 for a
single input channel), against 45-70 for the loop numba vectorized before, 2-49 for torch's float64
convolution and 60-194 for its float32 one, which is not exact (`benchmarks/convolution.py`).
"""

from __future__ import annotations

import logging
import threading

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


def block_ir(o: int, unroll: int, lanes: int) -> str:
    """The IR of block_o (see the module docstring)."""
    vt, n = f"<{lanes} x double>", o * unroll
    step = unroll * lanes
    lines = [f"define void @block_{o}(i64 %src.i, i64 %cstride, i64 %cin, i64 %kh, i64 %kw, i64 %wp, i64 %w.i, "
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
             f"  %x.end = add i64 %x, {step}",
             "  %full = icmp sle i64 %x.end, %span",
             *_splat("xv", "%x", lanes, "i64")]
    for u in range(unroll):
        ramp = ", ".join(f"i64 {u * lanes + i}" for i in range(lanes))
        lines += [f"  %pos{u} = add <{lanes} x i64> %xv, <{ramp}>",
                  f"  %mask{u} = icmp slt <{lanes} x i64> %pos{u}, %spanv"]
    for i in range(n):
        lines += [f"  %s{i} = getelementptr [{n} x {vt}], ptr %sums, i64 0, i64 {i}",
                  f"  store {vt} zeroinitializer, ptr %s{i}, align 64"]
    lines.append("  %src.x = getelementptr double, ptr %src, i64 %x")
    tap = ["  %p = getelementptr double, ptr %src.ky, i64 %kx",
           "  %t = add i64 %w.ky, %kx",
           f"  %t.o = mul i64 %t, {o}",
           "  %wi = add i64 %w.ic, %t.o",
           "  %wt = getelementptr double, ptr %w, i64 %wi",
           "  br i1 %full, label %load.full, label %load.masked",
           "load.full:"]
    for u in range(unroll):
        tap += [f"  %pf{u} = getelementptr double, ptr %p, i64 {u * lanes}",
                f"  %vf{u} = load {vt}, ptr %pf{u}, align 8"]
    tap += ["  br label %fma", "load.masked:"]
    for u in range(unroll):
        tap += [f"  %pm{u} = getelementptr double, ptr %p, i64 {u * lanes}",
                f"  %vm{u} = call {vt} @llvm.masked.load.v{lanes}f64.p0(ptr %pm{u}, i32 8, <{lanes} x i1> %mask{u}, "
                f"{vt} zeroinitializer)"]
    tap += ["  br label %fma", "fma:"]
    tap += [f"  %v{u} = phi {vt} [%vf{u}, %load.full], [%vm{u}, %load.masked]" for u in range(unroll)]
    for j in range(o):
        tap += [f"  %wp{j} = getelementptr double, ptr %wt, i64 {j}",
                f"  %w{j} = load double, ptr %wp{j}, align 8",
                *_splat(f"wb{j}", f"%w{j}", lanes, "double")]
        for u in range(unroll):
            i = j * unroll + u
            tap += [f"  %a{i} = load {vt}, ptr %s{i}, align 64",
                    f"  %b{i} = call {vt} @llvm.fmuladd.v{lanes}f64({vt} %v{u}, {vt} %wb{j}, {vt} %a{i})",
                    f"  store {vt} %b{i}, ptr %s{i}, align 64"]
    kx = _loop("kx", "kx", "ky.body", "kw", tap, "fma")
    ky = _loop("ky", "ky", "ic.body", "kh", ["  %ky.off = mul i64 %ky, %wp",
                                               "  %src.ky = getelementptr double, ptr %src.ic, i64 %ky.off",
                                               "  %w.ky = mul i64 %ky, %kw", *kx], "kx.exit")
    ic = _loop("ic", "ic", "x.body", "cin", ["  %ic.off = mul i64 %ic, %cstride",
                                              "  %src.ic = getelementptr double, ptr %src.x, i64 %ic.off",
                                              "  %w.ic0 = mul i64 %ic, %taps",
                                              f"  %w.ic = mul i64 %w.ic0, {o}", *ky], "ky.exit")
    lines += ic
    for j in range(o):
        lines += [f"  %row{j} = mul i64 %astride, {j}",
                  f"  %at{j} = add i64 %row{j}, %x"]
        for u in range(unroll):
            i = j * unroll + u
            lines += [f"  %r{i} = load {vt}, ptr %s{i}, align 64",
                      f"  %di{i} = add i64 %at{j}, {u * lanes}",
                      f"  %dp{i} = getelementptr double, ptr %dst, i64 %di{i}",
                      f"  call void @llvm.masked.store.v{lanes}f64.p0({vt} %r{i}, ptr %dp{i}, i32 8, "
                      f"<{lanes} x i1> %mask{u})"]
    lines += ["  br label %x.stored",
              "x.stored:",
              f"  %x.next = add i64 %x, {step}",
              "  br label %x.loop",
              "done:",
              "  ret void",
              "}"]
    return "\n".join(lines)


def module_ir(lanes: int, registers: int) -> str:
    """block_1 .. block_8 for vectors of `lanes` doubles and a file of `registers` vector registers."""
    vt = f"<{lanes} x double>"
    head = [f"declare {vt} @llvm.fmuladd.v{lanes}f64({vt}, {vt}, {vt})",
            f"declare {vt} @llvm.masked.load.v{lanes}f64.p0(ptr, i32, <{lanes} x i1>, {vt})",
            f"declare void @llvm.masked.store.v{lanes}f64.p0({vt}, ptr, i32, <{lanes} x i1>)"]
    # o * unroll sums + unroll inputs + one broadcast within the register file, at most 4 vectors of positions
    blocks = [block_ir(o, max(1, min(4, (registers - 2) // (o + 1))), lanes) for o in range(1, MAX_CHANNELS + 1)]
    return "\n".join(head + blocks)


_ENGINE = None  # the execution engine owns the machine code: kept for the life of the process
_ADDRESSES: tuple[int, ...] | None = None
_BUILT = False
_LOCK = threading.Lock()  # one build per process, even when a worker's threads ask at once


def kernels() -> tuple[int, ...] | None:
    """The addresses of block_1 .. block_8 compiled for this CPU (about 0.3 s, once per process), or None (logged)
    where llvmlite cannot build them: exact convolutions then take aten's path."""
    global _ENGINE, _ADDRESSES, _BUILT
    if _BUILT:
        return _ADDRESSES
    with _LOCK:
        if not _BUILT:
            try:
                _ENGINE, _ADDRESSES = build()
            except Exception as exc:  # noqa: BLE001 - any failure leaves aten's (slower, equally exact) path in charge
                log.warning("shardzip: convolution micro-kernels not built (%s); exact convolutions use aten", exc)
            _BUILT = True
    return _ADDRESSES


def build(lanes: int | None = None, registers: int | None = None, generic: bool = False):
    """(execution engine, addresses of block_1 .. block_8) compiled for this CPU, for vectors of `lanes` doubles
    and a file of `registers` vector registers (default: 8 and 32 with AVX-512, else 4 and 16); `generic`: for
    the architecture's baseline instead (x86-64: SSE2), as a test of what other CPUs run. Keep the engine alive
    while the addresses are in use."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    features = llvm.get_host_cpu_features()
    wide = bool(features.get("avx512f", False))
    target = llvm.Target.from_default_triple()
    machine = target.create_target_machine(cpu="generic" if generic else llvm.get_host_cpu_name(),
                                           features="" if generic else features.flatten(), opt=3)
    module = llvm.parse_assembly(module_ir(lanes or (8 if wide else 4), registers or (32 if wide else 16)))
    module.verify()
    builder = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(speed_level=3))
    builder.getModulePassManager().run(module, builder)
    engine = llvm.create_mcjit_compiler(module, machine)
    engine.finalize_object()
    return engine, tuple(engine.get_function_address(f"block_{o}") for o in range(1, MAX_CHANNELS + 1))
