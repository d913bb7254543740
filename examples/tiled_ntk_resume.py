"""Example 7: a tiled on-disk NTK of 20,000 examples, resumed after a kill.

:func:`tangentlab.ntk_large.ntk_tiled` with ``path=DIR`` writes the kernel
``K[n, m] = ⟨∂f(x_n)/∂θ, ∂f(x_m)/∂θ⟩`` (one output here, so ``(N, N, 1, 1)``) to a
``.npy`` memmap tile by tile (``block × block`` tiles, each off-diagonal tile once and
mirrored), with a marker per finished tile. The script starts the computation in a child
process, kills it (SIGKILL) once about half the tiles are done, and reruns the same call:
only the missing tiles are computed. Checks: the resumed run computed exactly the tiles the
killed one had not finished, and sampled rows of the on-disk kernel equal
:func:`tangentlab.ntk` computed in memory, and a few entries equal ``J Jᵀ`` from torch.func
Jacobians.

``python examples/tiled_ntk_resume.py`` (20,000 examples, float32, 1.6 GB on disk in a
temporary folder) or ``--smoke`` (2,000); ``--dir`` keeps the kernel in that folder.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import tangentlab as tl
from tangentlab.ntk_large import ntk_tiled

ap = argparse.ArgumentParser(description="tiled on-disk NTK, killed and resumed")
ap.add_argument("--smoke", action="store_true", default=os.environ.get("TANGENTLAB_SMOKE") == "1")
ap.add_argument("--n", type=int, default=None, help="examples (default 20000, smoke 2000)")
ap.add_argument("--dir", default=None, help="folder for the kernel (default: a temporary one)")
ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
args = ap.parse_args()
n = args.n or (2000 if args.smoke else 20000)
block = max(n // 8, 1)


def problem() -> tuple[nn.Module, torch.Tensor]:
    """The same model and data in the parent and the child (seeded)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 64, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    return model, x


model, x = problem()
if args.child:  # compute until killed, reporting each finished tile on stdout
    ntk_tiled(model, x, block=block, path=args.dir, progress=False,
              on_tile=lambda i, j: print(f"tile {i} {j}", flush=True))
    sys.exit(0)

with tempfile.TemporaryDirectory() as tmp:
    path = Path(args.dir or tmp) / "ntk"
    n_blocks = -(-n // block)
    total = n_blocks * (n_blocks + 1) // 2
    child = subprocess.Popen([sys.executable, __file__, "--child", "--n", str(n), "--dir", str(path)],
                             stdout=subprocess.PIPE, text=True)
    seen = 0
    for _line in child.stdout:
        seen += 1
        if seen >= total // 2:
            child.kill()
            break
    child.wait()
    child.stdout.close()
    done_before = len(list((path / "tiles").glob("*.done")))
    print(f"{n} examples, {block}-example tiles: {total} tiles; child killed after {done_before} "
          f"finished tiles (exit code {child.returncode})")

    resumed = []
    K = ntk_tiled(model, x, block=block, path=path, progress=False, on_tile=lambda i, j: resumed.append((i, j)))
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    print(f"resumed: computed {len(resumed)} tiles; kernel {tuple(K.shape)} on disk ({size / 2**20:.1f} MiB), "
          f"trace {K.trace().item():.4g}")

    # Check: sampled rows against the in-memory kernel of those examples with all examples.
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(1))[:64]
    K_mem = tl.ntk(model, x[idx], x).to_dense()
    K_disk = K.to_dense()[idx]
    err = ((K_disk - K_mem).norm() / K_mem.norm()).item()
    # and 8 × 8 sampled entries against J Jᵀ from torch.func Jacobians (an independent oracle)
    sub = idx[:8]
    jac = torch.func.jacrev(lambda p: torch.func.functional_call(model, p, (x[sub],)))(dict(model.named_parameters()))
    J = torch.cat([j.reshape(len(sub), -1) for j in jac.values()], dim=1)
    err_func = ((K_disk[:8, sub, 0, 0] - J @ J.T).norm() / (J @ J.T).norm()).item()
    print(f"check: resumed tiles {len(resumed)} = {total} − {done_before}; 64 sampled rows vs tl.ntk "
          f"rel. err {err:.1e}; 8×8 entries vs torch.func J Jᵀ rel. err {err_func:.1e}")
    assert len(resumed) == total - done_before and 0 < done_before < total, "resume did not skip finished tiles"
    assert err < 1e-5 and err_func < 1e-5, "on-disk kernel differs from tl.ntk / torch.func"
    del K, K_disk
print("OK")
