"""The blocks of a model: the units that structured sparse updates (`--sparsity layers|rgn`), the
ORT export schemes and the head-only updaters train or freeze, in input-to-output order.

Rule, for a model without a `blocks()` method of its own:
  1. Start from the model's direct children, in the order they were assigned in `__init__`.
  2. Skip children without parameters (activations, pooling, dropout).
  3. Open a plain container (nn.Sequential, nn.ModuleList) whose children with parameters are
     all composite (hold submodules with parameters), and apply rules 2-3 to its children: a stage
     of residual blocks yields one block per residual block, while a conv-norm-activation
     Sequential stays one block. Any other module is one block, however deep.
  4. A model whose only child with parameters is another module (a wrapper) is read as that module.
  5. The last block is the classifier head.
A model's own `blocks()` method wins; a list of module names (`--blocks`) overrides both.
"""

from __future__ import annotations

from torch import nn

from edge_sel.errors import InputError

CONTAINERS = (nn.Sequential, nn.ModuleList)


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _composite(module: nn.Module) -> bool:
    return any(_has_parameters(child) for child in module.children())


def _expand(name: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    children = [(f"{name}.{n}", c) for n, c in module.named_children() if _has_parameters(c)]
    if isinstance(module, CONTAINERS) and children and all(_composite(c) for _, c in children):
        return [block for child_name, child in children for block in _expand(child_name, child)]
    return [(name, module)]


def discover_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of each block by the rule above. Tensors assigned directly to the
    root module lie in no block."""
    prefix, root = "", model
    while True:
        top = [(n, c) for n, c in root.named_children() if _has_parameters(c)]
        if len(top) == 1 and not any(True for _ in root.parameters(recurse=False)) and _composite(top[0][1]):
            prefix, root = f"{prefix}{top[0][0]}.", top[0][1]      # a wrapper: read the wrapped model
            continue
        break
    if not top:
        return [(prefix.rstrip("."), root)]
    return [block for name, child in top for block in _expand(prefix + name, child)]


def named_blocks(model: nn.Module, names: list[str] | None = None) -> list[tuple[str, nn.Module]]:
    """The blocks `names` lists (in that order), else the model's `blocks()`, else discovered ones."""
    modules = dict(model.named_modules())
    if names:
        unknown = [n for n in names if n not in modules]
        if unknown:
            raise InputError(f"--blocks: no module named {', '.join(map(repr, unknown))} in the model "
                             f"(top-level modules: {', '.join(n for n, _ in model.named_children())})")
        chosen = [(n, modules[n]) for n in names]
        check_disjoint(chosen)
        return chosen
    if callable(getattr(model, "blocks", None)):
        by_id = {id(m): n for n, m in modules.items()}
        return [(by_id.get(id(b), "?"), b) for b in model.blocks()]
    return discover_blocks(model)


def check_disjoint(blocks: list[tuple[str, nn.Module]]) -> None:
    seen: dict[int, str] = {}
    for name, module in blocks:
        for p in module.parameters():
            if id(p) in seen:
                raise InputError(f"--blocks: {name!r} and {seen[id(p)]!r} share parameters; "
                                 f"name modules that do not contain each other")
            seen[id(p)] = name


def model_blocks(model: nn.Module, names: list[str] | None = None) -> list[nn.Module]:
    return [module for _, module in named_blocks(model, names)]


def head(model: nn.Module) -> nn.Module:
    """The classifier: the last block."""
    return model_blocks(model)[-1]
