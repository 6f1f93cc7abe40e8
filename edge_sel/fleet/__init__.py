"""Fleet fine-tuning: many devices fine-tune one model together through Flower (the `fleet` extra).

Modules that need Flower import it through `require_flwr`, so a missing extra is one clear error."""

from __future__ import annotations

from edge_sel.errors import InputError

INSTALL_HINT = "pip install edge-sel[fleet]"


def require_flwr(what: str = "edge-sel fleet"):
    """The flwr module, or a one-line error naming the extra that provides it."""
    try:
        import flwr
    except ImportError:
        raise InputError(f"{what}: Flower is not installed; install it with: {INSTALL_HINT} "
                         f"(Python >= 3.11)") from None
    return flwr
