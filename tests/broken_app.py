"""An app whose import fails: a worker of it crashes before it is ready."""

raise RuntimeError("this app cannot start")
