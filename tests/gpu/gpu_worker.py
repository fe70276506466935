"""A CUDA process for the gpu tests: holds GIB of device memory filled with a pattern,
answers 'check' on stdin with the checksum it still sees."""

import sys

import torch

gib = float(sys.argv[1])
n = int(gib * (1 << 30) // 4)
data = torch.arange(n, device="cuda", dtype=torch.float32).remainder_(977.0)
expected = float(data.sum(dtype=torch.float64))
torch.cuda.empty_cache()  # only `data` stays on the device
print(f"ready {expected!r}", flush=True)
for line in sys.stdin:
    if line.strip() == "check":
        torch.cuda.synchronize()
        print(f"sum {float(data.sum(dtype=torch.float64))!r}", flush=True)
