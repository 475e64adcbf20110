"""One error family. Every message names what is wrong and how to fix it, on one line."""

from __future__ import annotations

__all__ = ["Ann2SnnError", "UnsupportedNodeError", "ConversionError", "CheckpointError", "VerificationError"]


class Ann2SnnError(Exception):
    """Base class: the CLI prints ``error: <message>`` and exits non-zero (traceback only with --verbose)."""


class UnsupportedNodeError(Ann2SnnError):
    """A graph node the converter cannot turn into a spiking equivalent; the message names the layer (or the
    function or method called), not the raw fx node text."""

    def __init__(self, node, reason: str) -> None:
        self.node = node
        self.reason = reason
        name = getattr(node, "name", None)
        where = f"%{name}` ({describe_node(node)})" if name else f"{node}`"
        stack = (getattr(node, "meta", None) or {}).get("stack_trace")
        line = ""
        if stack:
            frames = [ln.strip() for ln in stack.strip().splitlines()
                      if ln.strip().startswith("File ") and "/torch/" not in ln and "\\torch\\" not in ln]
            if frames:
                line = f" ({frames[-1]})"
        super().__init__(f"unsupported node `{where}{line}: {reason}")


#: operator functions as the user wrote them
_OPERATORS = {"add": "+", "sub": "-", "mul": "*", "truediv": "/", "floordiv": "//", "matmul": "@", "getitem": "[]",
              "neg": "unary -", "pow": "**", "mod": "%"}


def describe_node(node) -> str:
    """What a user wrote for an fx node: ``layer 'features.3'``, ``call of torch.sigmoid``, ``method .view()``,
    ``operator +``."""
    op, target = getattr(node, "op", None), getattr(node, "target", None)
    if op == "call_module":
        return f"layer {target!r}"
    if op == "call_method":
        return f"method .{target}()"
    if op == "get_attr":
        return f"attribute {target!r}"
    if op == "placeholder":
        return f"input {target!r}"
    if op == "call_function":
        mod, fn = getattr(target, "__module__", "") or "", getattr(target, "__name__", str(target))
        if mod in ("_operator", "operator"):
            return f"operator {_OPERATORS.get(fn, fn)}"
        if mod.startswith("torch.nn.functional"):
            return f"call of F.{fn}"
        if mod.startswith("torch"):
            return f"call of torch.{fn}"
        return f"call of {mod + '.' if mod else ''}{fn}"
    return str(op)


class ConversionError(Ann2SnnError):
    """A pass failed; the message says which pass and which passes ran before it."""


class CheckpointError(Ann2SnnError):
    """A model file that cannot be read safely or does not hold what it should."""


class VerificationError(Ann2SnnError):
    """An exported model does not match the reference simulator."""
