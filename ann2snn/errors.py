"""One error family. Every message names what is wrong and how to fix it, on one line."""

from __future__ import annotations

__all__ = ["Ann2SnnError", "UnsupportedNodeError", "ConversionError", "CheckpointError", "VerificationError"]


class Ann2SnnError(Exception):
    """Base class: the CLI prints ``error: <message>`` and exits non-zero (traceback only with --verbose)."""


class UnsupportedNodeError(Ann2SnnError):
    """A graph node the converter cannot turn into a spiking equivalent."""

    def __init__(self, node, reason: str) -> None:
        self.node = node
        self.reason = reason
        where = node.format_node() if hasattr(node, "format_node") else str(node)
        stack = (getattr(node, "meta", None) or {}).get("stack_trace")
        line = ""
        if stack:
            frames = [ln.strip() for ln in stack.strip().splitlines() if ln.strip().startswith("File ")]
            if frames:
                line = f" ({frames[-1]})"
        super().__init__(f"unsupported node `{where}`{line}: {reason}")


class ConversionError(Ann2SnnError):
    """A pass failed; the message says which pass and which passes ran before it."""


class CheckpointError(Ann2SnnError):
    """A model file that cannot be read safely or does not hold what it should."""


class VerificationError(Ann2SnnError):
    """An exported model does not match the reference simulator."""
