"""A pre-forking launcher: imports torch and the suite once, then forks one fresh child per row.

Starting a new interpreter per row costs about two seconds of ``import torch``;
a child forked from this process starts in milliseconds with the modules
already imported, and is still a separate process with its own memory
accounting. The zygote never runs a tensor operation itself, so no thread pool
exists at fork time.

Protocol (JSON lines): the parent writes ``{"spec": ..., "out": DIR}``; the
zygote answers ``{"pid": PID}`` when the child started and
``{"pid": PID, "exit": CODE}`` when it ended (a negative code: killed by that
signal). The child's stdout/stderr go to ``DIR/log.txt``.
"""

from __future__ import annotations

import json
import os
import sys


def serve() -> None:
    import torch  # noqa: F401  (preloaded for the children)
    import torch.func  # noqa: F401

    from . import adapters, worker, workloads  # noqa: F401

    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        out = req["out"]
        os.makedirs(out, exist_ok=True)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the row
            code = 1
            try:
                fd = os.open(os.path.join(out, "log.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                code = worker.main([json.dumps(req["spec"]), out])
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"pid": pid, "exit": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    serve()
