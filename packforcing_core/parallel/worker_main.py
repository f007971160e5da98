"""Entry of a worker process: pool.py starts it with runpy.run_path (so the child imports nothing of
the host program, which may have loaded this package under another name), with `WORKER` holding the
arguments of worker.serve."""
import os
import sys

if __name__ == "__packforcing_worker__":
    sys.path.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from packforcing_core.parallel.worker import serve
    serve(**WORKER)  # noqa: F821  (given by run_path's init_globals)
