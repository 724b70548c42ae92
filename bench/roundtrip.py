"""Where a fused block's round trip goes: upload, encode+submit, wait+map, copy out.

Run on the GPU machine: ``python3 bench/roundtrip.py``. Prints the median of each phase over
200 blocks of one voice (256 samples, one step a sample) and of an empty dispatch.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import wgpu

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fdtd import BLOCK, N, _fill, _maps  # noqa: E402
from engine.fdtd import GpuFdtd  # noqa: E402


def main() -> None:
    rng = np.random.default_rng(0)
    for samples in (BLOCK, 1):
        gpu = GpuFdtd(N, 1, samples)
        _maps(gpu, rng)
        plan = gpu.new_plan()
        _fill(plan, 1, rng)
        q = gpu.device.queue
        phases: dict[str, list[float]] = {"upload": [], "encode+submit": [], "wait+map": [], "copy": [], "total": []}
        for i in range(220):
            t0 = time.perf_counter()
            q.write_buffer(gpu._headers, 0, plan.headers[: plan.n_voices])
            q.write_buffer(gpu._records, 0, plan.records[: plan.n_records])
            q.write_buffer(gpu._force, 0, plan.force[: plan.n_voices * plan.block_frames])
            t1 = time.perf_counter()
            enc = gpu.device.create_command_encoder()
            cp = enc.begin_compute_pass()
            cp.set_pipeline(gpu._pipeline)
            cp.set_bind_group(0, gpu._bind_group)
            cp.dispatch_workgroups(1, 1, 1)
            cp.end()
            enc.copy_buffer_to_buffer(gpu._pickups, 0, gpu._staging, 0, plan.out_size * 4)
            q.submit([enc.finish()])
            t2 = time.perf_counter()
            gpu._staging.map_sync(wgpu.MapMode.READ, 0, plan.out_size * 4)
            t3 = time.perf_counter()
            view = gpu._staging.read_mapped(0, plan.out_size * 4, copy=False)
            gpu._out[: plan.out_size] = np.frombuffer(view, np.float32)
            del view
            gpu._staging.unmap()
            t4 = time.perf_counter()
            if i >= 20:
                for k, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                    phases[k].append(v * 1e6)
        print(f"{samples}-sample block: " + ", ".join(f"{k} {np.median(v):.0f} µs" for k, v in phases.items()))


if __name__ == "__main__":
    main()
