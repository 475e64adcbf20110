"""The ``ann2snn`` command line (click + rich); each command lives in its own module."""
