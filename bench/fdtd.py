"""FDTD speed: the fused wgpu kernel against the naive and the peer implementations.

One table of µs per grid-step (one 64×64 FDTD step of one voice) and grid-steps per second,
for 1, 8, 64 and 512 voices and 256-step blocks:

(a) ``fused``     one dispatch advances every voice a whole block (engine/fdtd.py), timed per
                  block including parameter upload and pickup readback;
(b) ``per-step``  the naive GPU version: one dispatch and one readback per step;
(c) ``numpy64``   float64 numpy, all voices batched in one array;
(d) ``torch32``   float32 PyTorch on the same device (CUDA where there is one), all voices
                  batched: what a user would reach for instead;
(e) ``numba32`` / ``numba64``  the CPU backend (engine/cpu.py), when it is importable.

Also: the real-time voice count at 48 kHz (one step per sample), the per-block round trip
of the fused kernel (write, dispatch, read back), one voice running 4096 steps inside one
dispatch, and the start-up time to the first rendered block. Ratios are taken in the same
run. Results are appended to bench/RESULTS.md with the device and date.

Run: ``.venv/bin/python bench/fdtd.py [--voices 1 8 64 512] [--quick]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from pathlib import Path

import numpy as np

from results import publish  # bench/results.py

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.block import RECORD_DTYPE, RECORD_RESET, BlockPlan  # noqa: E402

N = 64
BLOCK = 256
RATE_HZ = 48_000


def _record(rng: np.random.Generator, reset: bool) -> np.ndarray:
    rec = np.zeros((), RECORD_DTYPE)
    rec["c2"] = 0.2
    rec["eta"] = 0.01
    rec["gamma_per_d"] = 1 / RATE_HZ
    rec["exc_x"], rec["exc_y"] = rng.uniform(5, N - 6, size=2)
    rec["exc_inv_2w2"] = 0.2
    rec["exc_norm"] = 0.06
    rec["pick_lx"], rec["pick_ly"], rec["pick_rx"], rec["pick_ry"] = rng.uniform(1, N - 2, size=4)
    rec["map_b"] = 1
    rec["morph"] = 0.3
    rec["flags"] = RECORD_RESET if reset else 0
    return rec


def _fill(plan: BlockPlan, voices: int, rng: np.random.Generator, steps: int = 1) -> None:
    plan.clear()
    force = np.zeros(plan.block_frames)
    force[:8] = np.hanning(8)[: len(force[:8])]
    for v in range(voices):
        r = plan.add_record(_record(rng, reset=False))
        plan.add_voice(v, steps, r, force)


def _timeit(fn, min_s: float, max_reps: int) -> float:
    fn()  # warm-up
    reps, t0 = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        el = time.perf_counter() - t0
        if el >= min_s or reps >= max_reps:
            return el / reps


def _maps(backend, rng):
    for slot in range(2):
        s = rng.uniform(0.5, 2.0, (N, N)).astype(np.float32)
        d = rng.uniform(0.0, 10.0, (N, N)).astype(np.float32)
        backend.upload_map(slot, s, d)


def bench_fused(adapter, voices: int, min_s: float) -> tuple[float, float]:
    """(µs per grid-step, ms per block round trip)."""
    from engine.fdtd import GpuFdtd

    rng = np.random.default_rng(0)
    gpu = GpuFdtd(N, voices, BLOCK, adapter=adapter)
    _maps(gpu, rng)
    plan = gpu.new_plan()
    _fill(plan, voices, rng)
    t = _timeit(lambda: gpu.run(plan), min_s, 200)
    return t / (voices * BLOCK) * 1e6, t * 1e3


def bench_long_dispatch(adapter, min_s: float) -> float:
    """µs per step for one voice inside one dispatch of 256 samples × max steps/sample."""
    from engine.fdtd import GpuFdtd

    rng = np.random.default_rng(0)
    gpu = GpuFdtd(N, 1, BLOCK, adapter=adapter)
    _maps(gpu, rng)
    plan = gpu.new_plan()
    _fill(plan, 1, rng, steps=gpu.max_steps_per_sample)
    t = _timeit(lambda: gpu.run(plan), min_s, 100)
    return t / (BLOCK * gpu.max_steps_per_sample) * 1e6


def bench_per_step(adapter, voices: int, min_s: float) -> float:
    from engine.fdtd import GpuFdtd

    rng = np.random.default_rng(0)
    gpu = GpuFdtd(N, voices, 1, adapter=adapter)
    _maps(gpu, rng)
    plan = gpu.new_plan()
    _fill(plan, voices, rng)
    steps = 32

    def block():
        for _ in range(steps):
            gpu.run(plan)

    t = _timeit(block, min_s, 20)
    return t / (voices * steps) * 1e6


def _numpy_step(u, up, a, cl, ce, lup):
    lu = -4.0 * u
    lu[:, 1:, :] += u[:, :-1, :]
    lu[:, :-1, :] += u[:, 1:, :]
    lu[:, :, 1:] += u[:, :, :-1]
    lu[:, :, :-1] += u[:, :, 1:]
    un = a * u + (1 - a) * up + cl * lu + ce * (lu - lup)
    return un, u, lu


def bench_numpy(voices: int, min_s: float) -> float:
    rng = np.random.default_rng(0)
    shape = (voices, N, N)
    u, up, lup = rng.normal(size=shape) * 1e-3, np.zeros(shape), np.zeros(shape)
    a = np.full((N, N), 2 / (1 + 1e-4))
    cl = rng.uniform(0.05, 0.2, (N, N))
    ce = np.full((N, N), 1e-3)
    steps = max(1, min(BLOCK, 4096 // voices))

    def block():
        nonlocal u, up, lup
        for _ in range(steps):
            u, up, lup = _numpy_step(u, up, a, cl, ce, lup)
            _ = u[:, 20, 30].copy()  # the pickups

    t = _timeit(block, min_s, 50)
    return t / (voices * steps) * 1e6


def bench_torch(voices: int, min_s: float) -> tuple[float, str] | None:
    try:
        import torch
    except ImportError:
        return None
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device="cpu").manual_seed(0)
    shape = (voices, N, N)
    u = (torch.randn(shape, generator=g) * 1e-3).to(dev)
    up = torch.zeros(shape, device=dev)
    lup = torch.zeros(shape, device=dev)
    a = torch.full((N, N), 2 / (1 + 1e-4), device=dev)
    cl = (torch.rand((N, N), generator=g) * 0.15 + 0.05).to(dev)
    ce = torch.full((N, N), 1e-3, device=dev)
    pick = torch.zeros((voices, BLOCK), device=dev)

    def block():
        nonlocal u, up, lup
        for k in range(BLOCK):
            lu = -4.0 * u
            lu[:, 1:, :] += u[:, :-1, :]
            lu[:, :-1, :] += u[:, 1:, :]
            lu[:, :, 1:] += u[:, :, :-1]
            lu[:, :, :-1] += u[:, :, 1:]
            un = a * u + (1 - a) * up + cl * lu + ce * (lu - lup)
            up, u, lup = u, un, lu
            pick[:, k] = u[:, 20, 30]
        pick.cpu()  # read the block's pickups back, as the engine does

    t = _timeit(block, min_s, 20)
    return t / (voices * BLOCK) * 1e6, dev


def bench_numba(voices: int, dtype, min_s: float) -> float | None:
    try:
        from engine.cpu import CpuFdtd
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    cpu = CpuFdtd(N, voices, BLOCK, dtype=dtype)
    _maps(cpu, rng)
    plan = cpu.new_plan()
    _fill(plan, voices, rng)
    t = _timeit(lambda: cpu.run(plan), min_s, 200)
    return t / (voices * BLOCK) * 1e6


def bench_spsa_call(kind: str, adapter, dtype=np.float32) -> float | None:
    """Seconds for 8 voices × 4096 steps in one call: the forward passes of one SPSA step."""
    rng = np.random.default_rng(0)
    if kind == "gpu":
        from engine.fdtd import GpuFdtd

        backend = GpuFdtd(N, 8, 4096, adapter=adapter, max_steps_per_sample=1, max_events_per_voice=1)
    else:
        try:
            from engine.cpu import CpuFdtd
        except ImportError:
            return None
        backend = CpuFdtd(N, 8, 4096, dtype=dtype, max_steps_per_sample=1, max_events_per_voice=1)
    _maps(backend, rng)
    plan = backend.new_plan()
    _fill(plan, 8, rng)
    return _timeit(lambda: backend.run(plan), 0.5, 10)


def startup_to_first_block(adapter_name: str | None, backend: str = "gpu") -> float:
    """Seconds from a fresh process to the first rendered block (measured in a subprocess)."""
    import subprocess

    make = (
        f"from engine.fdtd import GpuFdtd\ng = GpuFdtd(64, 32, 256, adapter={adapter_name!r})\n"
        if backend == "gpu"
        else "from engine.cpu import CpuFdtd\ng = CpuFdtd(64, 32, 256)\n"
    )
    code = (
        "import time; t0 = time.perf_counter()\n"
        "import numpy as np\n"
        "from engine.block import RECORD_DTYPE\n"
        + make +
        "p = g.new_plan(); r = np.zeros((), RECORD_DTYPE); r['c2'] = 0.2\n"
        "p.add_voice(0, 1, p.add_record(r), np.ones(256)); g.run(p)\n"
        "print(time.perf_counter() - t0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


_ADAPTER = None


def choose_adapter_once(name):
    global _ADAPTER
    if _ADAPTER is None:
        from engine.gpu import choose_adapter

        _ADAPTER = choose_adapter(name)
    return _ADAPTER


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--voices", type=int, nargs="+", default=[1, 8, 64, 512])
    ap.add_argument("--quick", action="store_true", help="shorter timing windows")
    ap.add_argument("--adapter", default=None, help="wgpu adapter name")
    ap.add_argument("--no-write", action="store_true", help="do not append to bench/RESULTS.md")
    ap.add_argument("--fused-only", action="store_true", help="only the fused kernel")
    args = ap.parse_args()
    if args.fused_only:
        for v in args.voices:
            fused, rt_ms = bench_fused(choose_adapter_once(args.adapter), v, 0.3)
            print(f"fused: {v} voices: {fused:.4f} µs per grid-step, "
                  f"{rt_ms:.3f} ms per block round trip", flush=True)
        print(f"fused: one voice in a long dispatch: "
              f"{bench_long_dispatch(choose_adapter_once(args.adapter), 0.3):.3f} µs per step")
        return
    min_s = 0.3 if args.quick else 1.0

    from engine.gpu import choose_adapter

    adapter = choose_adapter(args.adapter)
    device = adapter.summary
    rows = []
    header = ["voices", "fused µs", "per-step µs", "numpy64 µs", "torch32 µs", "numba32 µs",
              "numba64 µs", "fused/per-step", "fused/numpy", "fused/torch", "block round trip ms"]
    torch_dev = "-"
    for v in args.voices:
        fused, rt_ms = bench_fused(adapter, v, min_s)
        per_step = bench_per_step(adapter, v, min_s) if v <= 64 else float("nan")
        npy = bench_numpy(v, min_s)
        tr = bench_torch(v, min_s)
        torch_us = tr[0] if tr else float("nan")
        torch_dev = tr[1] if tr else "not installed"
        n32 = bench_numba(v, np.float32, min_s) if v <= 64 else None
        n64 = bench_numba(v, np.float64, min_s) if v <= 64 else None
        row = [v, fused, per_step, npy, torch_us, n32 or float("nan"), n64 or float("nan"),
               per_step / fused, npy / fused, torch_us / fused, rt_ms]
        rows.append(row)
        print(" | ".join(f"{x:.3g}" if isinstance(x, float) else str(x) for x in row), flush=True)
    best = min(r[1] for r in rows)
    realtime_voices = 1e6 / (best * RATE_HZ)
    long_us = bench_long_dispatch(adapter, min_s)
    startup = startup_to_first_block(args.adapter)
    spsa = {
        "fused (wgpu)": bench_spsa_call("gpu", adapter),
        "numba32": bench_spsa_call("cpu", adapter, np.float32),
        "numba64": bench_spsa_call("cpu", adapter, np.float64),
    }
    numba_rows = [r[5] for r in rows if np.isfinite(r[5])]
    numba_rt = 1e6 / (min(numba_rows) * RATE_HZ) if numba_rows else float("nan")
    import os
    import tempfile

    startup_numba = startup_to_first_block(None, "cpu")  # warm numba cache
    with tempfile.TemporaryDirectory() as cold:
        os.environ["NUMBA_CACHE_DIR"] = cold
        startup_numba_cold = startup_to_first_block(None, "cpu")
        del os.environ["NUMBA_CACHE_DIR"]

    date = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"### {device} — {date}",
        "",
        f"Host: {platform.node()} ({platform.machine()}, {platform.processor() or 'cpu'}); "
        f"PyTorch device: {torch_dev}. 64×64 grid, {BLOCK}-step blocks, µs per grid-step "
        "(one FDTD step of one voice); ratios are speed-ups of the fused kernel.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in rows:
        lines.append("| " + " | ".join(f"{x:.3g}" if isinstance(x, float) else str(x) for x in r) + " |")
    lines += [
        "",
        f"- grid-steps per second at best: {1e6 / best:,.0f}; real-time voices at 48 kHz "
        f"(one step per sample): **{realtime_voices:.1f}**",
        f"- one voice, {BLOCK}×max steps per sample inside one dispatch: **{long_us:.2f} µs per step**",
        f"- start-up to the first rendered block (fresh process, 32 voices): **{startup:.2f} s** "
        f"on the GPU kernel; numba: **{startup_numba:.2f} s** warm cache, "
        f"{startup_numba_cold:.1f} s cold (compiling)",
        f"- numba float32 real-time voices at 48 kHz (best row): **{numba_rt:.1f}**",
        "- 8 voices × 4096 steps in one call (one SPSA step's forward passes): "
        + ", ".join(f"{k} **{v * 1e3:.1f} ms**" for k, v in spsa.items() if v is not None),
        "",
    ]
    publish("fdtd.py", "\n".join(lines) + "\n", write=not args.no_write)


if __name__ == "__main__":
    main()
