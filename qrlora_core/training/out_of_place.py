"""`x += y` in a model's forward, run as `x = x + y` while autograd needs it.

ComfyUI's Flux blocks add their residuals in place (`img += gate * out`)
on tensors an earlier op (LayerNorm) saved for the backward pass. Autograd
refuses that without gradient checkpointing; with it, the recomputation
sees other values than the forward did. Training therefore runs those
forwards with each augmented assignment to a plain name rewritten, once
per function, from its source (`ast`): `x += y` becomes
`x = _out_of_place.add(x, y)`, which adds out of place when either side
takes part in autograd and in place otherwise (exactly what the statement
did before, for tensors outside autograd and for any other type).

Why a source rewrite: the alternative, a TorchFunctionMode that intercepts
every torch call and inspects the caller's bytecode, cost 19% of a Flux
training step and depended on the interpreter's opcodes. The rewrite costs
one Python call per `+=` (a handful per block) and works on every Python
with `ast` (3.8+). It is applied per module instance (`module.forward`),
so other models sharing the class are untouched, and `restore()` puts the
class's forward back. Only `forward` itself is rewritten: what it calls
(including `super().forward`) runs as written.
"""

import ast
import inspect
import operator
import textwrap
import types

import torch

_HELPER = "__qrlora_out_of_place__"
_OPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "truediv"}


def _tracked(value) -> bool:
    return isinstance(value, torch.Tensor) and value.requires_grad


class _Ops:
    """add/sub/mul/truediv that leave autograd's saved tensors alone."""

    @staticmethod
    def _make(name):
        inplace, plain = getattr(operator, "i" + name), getattr(operator, name)

        def op(a, b):
            if isinstance(a, torch.Tensor) and torch.is_grad_enabled() and (_tracked(a) or _tracked(b)):
                return plain(a, b)
            return inplace(a, b)

        op.__name__ = name
        return op


for _name in _OPS.values():
    setattr(_Ops, _name, staticmethod(_Ops._make(_name)))


class _Rewrite(ast.NodeTransformer):
    def __init__(self):
        self.count = 0

    def visit_AugAssign(self, node):
        op = _OPS.get(type(node.op))
        if op is None or not isinstance(node.target, ast.Name):
            return self.generic_visit(node)
        self.count += 1
        call = ast.Call(
            func=ast.Attribute(value=ast.Name(_HELPER, ast.Load()), attr=op, ctx=ast.Load()),
            args=[ast.Name(node.target.id, ast.Load()), self.visit(node.value)], keywords=[],
        )
        return ast.copy_location(ast.Assign(targets=[ast.Name(node.target.id, ast.Store())], value=call), node)


_CACHE: dict = {}


def rewritten(function):
    """`function` with its augmented assignments to names made autograd-safe, or None if it has none
    (or its source cannot be rewritten safely: no source, decorators, closures)."""
    if function in _CACHE:
        return _CACHE[function]
    _CACHE[function] = result = _rewrite(function)
    return result


def _rewrite(function):
    code = getattr(function, "__code__", None)
    if code is None or set(code.co_freevars) - {"__class__"}:
        return None
    try:
        source = textwrap.dedent(inspect.getsource(function))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return None
    definition = tree.body[0] if len(tree.body) == 1 else None
    if not isinstance(definition, ast.FunctionDef) or definition.decorator_list or definition.name != function.__name__:
        return None
    rewrite = _Rewrite()
    definition = rewrite.visit(definition)
    if not rewrite.count:
        return None
    # def factory(helper, __class__): <the function>; return it  (keeps super() working)
    module = ast.parse(f"def __qrlora_factory__({_HELPER}, __class__):\n    return {definition.name}\n")
    module.body[0].body.insert(0, definition)
    ast.fix_missing_locations(module)
    ast.increment_lineno(module, code.co_firstlineno - 1)  # tracebacks point at the original lines
    namespace: dict = {}
    exec(compile(module, code.co_filename, "exec"), function.__globals__, namespace)
    owner = None
    if "__class__" in code.co_freevars:
        owner = function.__closure__[code.co_freevars.index("__class__")].cell_contents
    new = namespace["__qrlora_factory__"](_Ops, owner)
    new.__defaults__, new.__kwdefaults__ = function.__defaults__, function.__kwdefaults__
    new.__qualname__, new.__doc__, new.__module__ = function.__qualname__, function.__doc__, function.__module__
    new.__wrapped__ = function
    new.__qrlora_source__ = ast.unparse(module)  # what runs, for reading (and the tests' syntax check)
    return new


class OutOfPlaceForwards:
    """Every module under `root` whose class forward has `x += y` gets the rewritten forward on the instance."""

    def __init__(self, root: torch.nn.Module):
        self.modules = []
        for module in root.modules():
            if "forward" in vars(module):
                continue  # already replaced on this instance (e.g. checkpointed): leave it
            new = rewritten(type(module).forward)
            if new is not None:
                module.forward = types.MethodType(new, module)
                self.modules.append(module)

    @property
    def classes(self) -> set:
        return {type(m) for m in self.modules}

    def restore(self) -> None:
        for module in self.modules:
            if isinstance(vars(module).get("forward"), types.MethodType):
                del module.forward
        self.modules = []
