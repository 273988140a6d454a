"""Entry point of a load worker process (`-t` > 1): see run.worker_main."""

from .run import worker_main

if __name__ == "__main__":
    raise SystemExit(worker_main())
