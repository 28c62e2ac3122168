"""The condition language of rules: tokenizer, parser and compiler to closures.

Conditions are parsed once, at config load, into a tree that is compiled to nested
closures; nothing is ever handed to ``eval``/``exec``. The grammar (lowest precedence
first)::

    expr    := or
    or      := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | cmp
    cmp     := sum (("=="|"!="|"<"|"<="|">"|">="|"in"|"not in") sum)*   (chains like 1 < x < 3)
    sum     := term (("+"|"-") term)*
    term    := unary (("*"|"/"|"%") unary)*
    unary   := "-" unary | postfix
    postfix := primary ("." NAME)*                  (``device.<field>``)
             | "gateway" "." NAME ["(" args ")"]    (``gateway.<fact>``, health rules)
    primary := NUMBER | DURATION | STRING | true | false | NAME | NAME "(" args ")"
             | "(" expr ")" | "[" [expr ("," expr)*] "]"

A bare name is the current value of that metric of the device (the reading's own value
for the reading's metric); ``value``, ``metric``, ``unit``, ``ts`` and ``device`` are
the reading's fields. A metric the device never sent is *absent*: absence propagates
through arithmetic and comparisons, ``and``/``or`` follow three-valued logic, and a rule
whose condition is absent neither fires nor clears. ``gateway.<fact>`` reads the gateway's
own health (:mod:`gateway.rules.health`), sampled by the engine once a second.
"""

from __future__ import annotations

import math
import operator
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.config.types import parse_duration
from gateway.rules.health import FACTS, fact_key, restarts_key
from gateway.rules.health import FUNCTIONS as HEALTH_FUNCTIONS


class _Absent:
    """The value of a metric that is not there; falsy, and contagious in operations."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "absent"

    def __bool__(self) -> bool:
        return False


ABSENT: Any = _Absent()


class ExprSyntaxError(ValueError):
    """A condition or template does not parse; ``pos`` is a 0-based index into the text."""

    def __init__(self, message: str, pos: int, text: str) -> None:
        self.pos = pos
        self.text = text
        self.detail = message
        super().__init__(f"{message} at position {pos + 1} of {text!r}")


class EvalError(Exception):
    """A condition failed at run time (e.g. comparing text with a number)."""


class Env(Protocol):
    """What a compiled expression reads; the rule engine provides it."""

    device: str
    metric: str
    value: Any
    unit: str | None
    ts: float
    now: float
    values: dict[str, Any]  # the device's latest value of each metric

    def latest(self, metric: str) -> Any: ...

    @property
    def windows(self) -> Mapping[tuple[str, float], Window]:
        """The device's windows by (metric, seconds)."""
        ...

    def info(self, key: str) -> Any: ...

    @property
    def gateway(self) -> Mapping[str, Any]:
        """The gateway's health facts sampled on the last tick, by key."""
        ...


Compiled = Callable[[Env], Any]

# -- tokens ---------------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<dur>\d+(?:\.\d+)?(?:ms|min|s|m|h|d|w)(?![A-Za-z0-9_]))
  | (?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?(?![A-Za-z_]))
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|[<>+\-*/%().,\[\]])
""", re.VERBOSE)

KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false", "True", "False"})
#: reading fields a condition can name; every other bare name is a metric
READING_FIELDS = frozenset({"value", "metric", "unit", "ts", "device"})


@dataclass(frozen=True)
class Token:
    kind: str  # num dur str name op end
    text: str
    pos: int


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens; an unknown character is a syntax error at its position."""
    out: list[Token] = []
    i = 0
    n = len(text)
    while i < n:
        m = _TOKEN.match(text, i)
        if m is None:
            ch = text[i]
            if ch in "\"'":
                raise ExprSyntaxError("unterminated string", i, text)
            if ch == "=":
                raise ExprSyntaxError("unexpected '=' (write == to compare)", i, text)
            if ch.isdigit():
                raise ExprSyntaxError("malformed number or duration (durations: 500ms, 30s, "
                                      "5m, 2h, 1d)", i, text)
            raise ExprSyntaxError(f"unexpected character {ch!r}", i, text)
        kind = m.lastgroup
        assert kind is not None
        if kind != "ws":
            out.append(Token(kind, m.group(), i))
        i = m.end()
    out.append(Token("end", "", n))
    return out


# -- the tree ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    kind: str  # lit name attr call unary binop cmp and or not list gw gwcall
    pos: int
    value: Any = None
    args: tuple[Node, ...] = ()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = tokenize(text)
        self.i = 0

    def peek(self) -> Token:
        return self.toks[self.i]

    def take(self) -> Token:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def error(self, message: str, tok: Token | None = None) -> ExprSyntaxError:
        tok = tok or self.peek()
        return ExprSyntaxError(message, tok.pos, self.text)

    def expect(self, text: str) -> Token:
        tok = self.peek()
        if tok.kind == "op" and tok.text == text:
            return self.take()
        got = "the end" if tok.kind == "end" else repr(tok.text)
        raise self.error(f"expected {text!r}, found {got}")

    def at(self, kind: str, text: str | None = None) -> bool:
        tok = self.peek()
        if kind == "kw":
            return tok.kind == "name" and tok.text == text
        return tok.kind == kind and (text is None or tok.text == text)

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise self.error("empty expression")
        node = self.or_()
        tok = self.peek()
        if tok.kind != "end":
            raise self.error(f"unexpected {tok.text!r} (missing 'and'/'or' or an operator?)")
        return node

    def or_(self) -> Node:
        node = self.and_()
        while self.at("kw", "or"):
            tok = self.take()
            node = Node("or", tok.pos, args=(node, self.and_()))
        return node

    def and_(self) -> Node:
        node = self.not_()
        while self.at("kw", "and"):
            tok = self.take()
            node = Node("and", tok.pos, args=(node, self.not_()))
        return node

    def not_(self) -> Node:
        if self.at("kw", "not"):
            tok = self.take()
            return Node("not", tok.pos, args=(self.not_(),))
        return self.cmp()

    _CMP = ("==", "!=", "<", "<=", ">", ">=")

    def cmp(self) -> Node:
        first = self.sum()
        ops: list[str] = []
        operands = [first]
        pos = first.pos
        while True:
            tok = self.peek()
            if tok.kind == "op" and tok.text in self._CMP:
                self.take()
                ops.append(tok.text)
            elif self.at("kw", "in"):
                self.take()
                ops.append("in")
            elif self.at("kw", "not") and self.toks[self.i + 1].kind == "name" \
                    and self.toks[self.i + 1].text == "in":
                self.i += 2
                ops.append("not in")
            else:
                break
            operands.append(self.sum())
        if not ops:
            return first
        return Node("cmp", pos, value=tuple(ops), args=tuple(operands))

    def sum(self) -> Node:
        node = self.term()
        while self.at("op", "+") or self.at("op", "-"):
            tok = self.take()
            node = Node("binop", tok.pos, tok.text, (node, self.term()))
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.at("op", "*") or self.at("op", "/") or self.at("op", "%"):
            tok = self.take()
            node = Node("binop", tok.pos, tok.text, (node, self.unary()))
        return node

    def unary(self) -> Node:
        if self.at("op", "-"):
            tok = self.take()
            inner = self.unary()
            if inner.kind == "lit" and _is_number(inner.value):
                return Node("lit", tok.pos, -inner.value)  # -5 is a constant, not an operation
            return Node("unary", tok.pos, "-", (inner,))
        if self.at("op", "+"):
            self.take()
            return self.unary()
        return self.postfix()

    def postfix(self) -> Node:
        node = self.primary()
        while self.at("op", "."):
            dot = self.take()
            tok = self.take()
            if tok.kind != "name":
                raise self.error("expected a field name after '.'", tok)
            if node.kind == "name" and node.value == "gateway":
                node = self.gateway_fact(node, tok)
                continue
            if node.kind != "name" or node.value != "device":
                raise self.error("only device.<field> and gateway.<fact> have fields "
                                 "(device.name, device.tags, device.online, "
                                 "gateway.outbox_depth...)", dot)
            node = Node("attr", node.pos, tok.text)
        return node

    def gateway_fact(self, node: Node, tok: Token) -> Node:
        """``gateway.<fact>`` or ``gateway.<function>(args)``, checked against the
        catalogue of :mod:`gateway.rules.health`."""
        name = tok.text
        if self.at("op", "("):
            if name not in HEALTH_FUNCTIONS:
                raise self.error(f"unknown function gateway.{name}() (known: "
                                 f"{', '.join(sorted(HEALTH_FUNCTIONS))})", tok)
            return Node("gwcall", node.pos, name, self.call_args())
        if name not in FACTS:
            hint = f"; call it: {HEALTH_FUNCTIONS[name]}" if name in HEALTH_FUNCTIONS else ""
            raise self.error(f"unknown gateway fact gateway.{name} (known: "
                             f"{', '.join(sorted(FACTS))}){hint}", tok)
        return Node("gw", node.pos, name)

    def call_args(self) -> tuple[Node, ...]:
        """``( [expr {, expr}] )`` after a function's name, the opening parenthesis next."""
        self.expect("(")
        args: list[Node] = []
        if not self.at("op", ")"):
            args.append(self.or_())
            while self.at("op", ","):
                self.take()
                args.append(self.or_())
        self.expect(")")
        return tuple(args)

    def primary(self) -> Node:
        tok = self.take()
        if tok.kind == "num":
            num = float(tok.text)
            return Node("lit", tok.pos, int(num) if num.is_integer() and "." not in tok.text
                        and "e" not in tok.text.lower() else num)
        if tok.kind == "dur":
            return Node("lit", tok.pos, parse_duration(tok.text), args=(Node("dur", tok.pos),))
        if tok.kind == "str":
            return Node("lit", tok.pos, _unquote(tok.text))
        if tok.kind == "name":
            if tok.text in ("true", "True"):
                return Node("lit", tok.pos, True)
            if tok.text in ("false", "False"):
                return Node("lit", tok.pos, False)
            if tok.text in KEYWORDS:
                raise self.error(f"unexpected {tok.text!r}", tok)
            if self.at("op", "("):
                return Node("call", tok.pos, tok.text, self.call_args())
            return Node("name", tok.pos, tok.text)
        if tok.kind == "op" and tok.text == "(":
            node = self.or_()
            self.expect(")")
            return node
        if tok.kind == "op" and tok.text == "[":
            items: list[Node] = []
            if not self.at("op", "]"):
                items.append(self.or_())
                while self.at("op", ","):
                    self.take()
                    items.append(self.or_())
            self.expect("]")
            return Node("list", tok.pos, args=tuple(items))
        if tok.kind == "end":
            raise self.error("unexpected end of expression", tok)
        raise self.error(f"unexpected {tok.text!r}", tok)


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def parse(text: str) -> Node:
    """Parse a condition into its tree; raises :class:`ExprSyntaxError`."""
    return _Parser(text).parse()


# -- functions ---------------------------------------------------------------------------------

AGGREGATES = ("avg", "min", "max", "count", "rate", "sum")


class Window:
    """The values of one series over the last ``span`` seconds, aggregated incrementally.

    Running sum and count, and monotonic deques for min and max, make every aggregate
    O(1) amortised however many values the window holds. Timestamps are kept in arrival
    order (a reading older than the previous one counts as arriving with it).
    """

    __slots__ = ("span", "items", "total", "n", "lows", "highs", "last_ts", "cap", "trimmed",
                 "extremes")

    def __init__(self, span: float, cap: int = 100_000, extremes: bool = True) -> None:
        self.span = span
        self.cap = cap
        self.extremes = extremes  # keep the min/max queues (only when min or max is asked)
        self.items: deque[tuple[float, float | None]] = deque()
        self.total = 0.0
        self.n = 0  # numeric values in the window
        self.lows: deque[tuple[float, float]] = deque()
        self.highs: deque[tuple[float, float]] = deque()
        self.last_ts = -math.inf
        self.trimmed = -math.inf  # ``now`` of the last trim: several aggregates, one trim

    def push(self, ts: float, value: Any) -> None:
        if ts < self.last_ts:
            ts = self.last_ts
        self.last_ts = ts
        cls = value.__class__
        # NaN and infinities would poison the running sum for good: counted, not summed
        if cls is int or (cls is float and -math.inf < value < math.inf):
            self.items.append((ts, value))
            self.total += value
            self.n += 1
            if not self.extremes:
                return self._bound()
            lows, highs = self.lows, self.highs
            while lows and lows[-1][1] >= value:
                lows.pop()
            lows.append((ts, value))
            while highs and highs[-1][1] <= value:
                highs.pop()
            highs.append((ts, value))
        else:
            self.items.append((ts, None))
        self._bound()

    def _bound(self) -> None:
        if len(self.items) > self.cap:
            self._pop()

    def _pop(self) -> None:
        ts, v = self.items.popleft()
        if v is not None:
            self.n -= 1
            self.total = self.total - v if self.n else 0.0
        if self.lows and self.lows[0][0] <= ts:
            self.lows.popleft()
        if self.highs and self.highs[0][0] <= ts:
            self.highs.popleft()

    def trim(self, now: float) -> None:
        """Forget values at or before ``now - span``."""
        if now == self.trimmed:
            return
        self.trimmed = now
        edge = now - self.span
        items = self.items
        while items and items[0][0] <= edge:
            ts, v = items.popleft()
            if v is not None:
                self.n -= 1
                self.total = self.total - v if self.n else 0.0
        while self.lows and self.lows[0][0] <= edge:
            self.lows.popleft()
        while self.highs and self.highs[0][0] <= edge:
            self.highs.popleft()

    def count(self, now: float) -> Any:
        if now != self.trimmed:
            self.trim(now)
        return len(self.items)

    def avg(self, now: float) -> Any:
        if now != self.trimmed:
            self.trim(now)
        return self.total / self.n if self.n else ABSENT

    def sum(self, now: float) -> Any:
        if now != self.trimmed:
            self.trim(now)
        return self.total if self.n else ABSENT

    def min(self, now: float) -> Any:
        if now != self.trimmed:
            self.trim(now)
        return self.lows[0][1] if self.n else ABSENT

    def max(self, now: float) -> Any:
        if now != self.trimmed:
            self.trim(now)
        return self.highs[0][1] if self.n else ABSENT

    def rate(self, now: float) -> Any:
        """Change per second between the first and last value in the window."""
        if now != self.trimmed:
            self.trim(now)
        if not self.n:
            return ABSENT
        first = next(x for x in self.items if x[1] is not None)
        last = next(x for x in reversed(self.items) if x[1] is not None)
        if last[0] <= first[0]:
            return ABSENT
        assert first[1] is not None and last[1] is not None
        return (last[1] - first[1]) / (last[0] - first[0])

    def aggregate(self, name: str, now: float) -> Any:
        """``avg``, ``min``, ``max``, ``sum``, ``count`` or ``rate`` as of ``now``."""
        fn: Callable[[float], Any] = getattr(self, name)
        return fn(now)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _agg(name: str, metric: str, seconds: float) -> Compiled:
    method = getattr(Window, name)
    empty = 0 if name == "count" else ABSENT
    key = (metric, seconds)

    def agg(env: Env) -> Any:
        w = env.windows.get(key)
        return empty if w is None else method(w, env.now)

    return agg


def dewpoint(t: float, rh: float) -> float:
    """Dew point (°C) from temperature (°C) and relative humidity (%), Magnus formula."""
    if rh <= 0:
        raise EvalError("dewpoint needs a relative humidity above 0")
    a, b = 17.62, 243.12
    g = math.log(rh / 100.0) + a * t / (b + t)
    return b * g / (a - g)


def _clock_minutes(text: Any, pos: int, src: str) -> int:
    m = re.match(r"^(\d{1,2}):(\d{2})$", text) if isinstance(text, str) else None
    if m is None or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise ExprSyntaxError("between() takes times of day such as \"22:00\"", pos, src)
    return int(m.group(1)) * 60 + int(m.group(2))


def _local(env: Env) -> time.struct_time:
    return time.localtime(env.ts if env.ts else env.now)


#: plain functions: name → (min args, max args, implementation)
FUNCTIONS: dict[str, tuple[int, int, Callable[..., Any]]] = {
    "abs": (1, 1, abs),
    "round": (1, 2, round),
    "dewpoint": (2, 2, dewpoint),
    "sqrt": (1, 1, math.sqrt),
    "lower": (1, 1, lambda s: s.lower() if isinstance(s, str) else s),
    "upper": (1, 1, lambda s: s.upper() if isinstance(s, str) else s),
}
TIME_FUNCTIONS = ("hour", "minute", "weekday")
SPECIAL = ("exists", "between", *AGGREGATES, *TIME_FUNCTIONS)


def function_names() -> list[str]:
    return sorted({*FUNCTIONS, *SPECIAL})


# -- compiling ----------------------------------------------------------------------------------


@dataclass
class Program:
    """A compiled condition, with what it reads (for indexing and window upkeep)."""

    source: str
    fn: Compiled
    metrics: set[str] = field(default_factory=set)  # metric names it reads
    windows: dict[str, float] = field(default_factory=dict)  # metric → longest window (s)
    spans: set[tuple[str, float]] = field(default_factory=set)  # (metric, window) pairs
    extremes: set[tuple[str, float]] = field(default_factory=set)  # ... asked for min/max
    reading_fields: bool = False  # reads value/metric/unit/ts
    device_fields: set[str] = field(default_factory=set)  # device.<field> it reads
    guard: Guard | None = None
    #: gateway.* facts it reads, by key, in the order written (the first is the one an
    #: alert reports as its metric and value)
    gateway: dict[str, None] = field(default_factory=dict)
    #: of which ``gateway.adapter_restarts(...)``: key → (adapter or None for all, seconds)
    restarts: dict[str, tuple[str | None, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Guard:
    """``<left> OP constant``, the condition itself or the first term of its ``and`` chain.

    False there means the whole condition is false, so the engine can decide without
    calling the condition, and rules with the same ``left`` (``key``) share its value.
    """

    key: str  # canonical text of ``left``: equal keys compute equal values
    left: Compiled
    op: str
    const: Any
    metric: str | None  # ``left`` is this bare metric name


def _binop(op: str, a: Compiled, b: Compiled) -> Compiled:
    impl: Callable[[Any, Any], Any] = {
        "+": operator.add, "-": operator.sub, "*": operator.mul,
        "/": operator.truediv, "%": operator.mod,
    }[op]

    def run(env: Env) -> Any:
        x = a(env)
        if x is ABSENT:
            return ABSENT
        y = b(env)
        if y is ABSENT:
            return ABSENT
        try:
            return impl(x, y)
        except (TypeError, ZeroDivisionError, ValueError, OverflowError) as exc:
            raise EvalError(f"{x!r} {op} {y!r}: {exc}") from None

    return run


def _compare(op: str, x: Any, y: Any) -> Any:
    if x is ABSENT or y is ABSENT:
        return ABSENT
    try:
        if op == "==":
            return x == y
        if op == "!=":
            return x != y
        if op == "<":
            return x < y
        if op == "<=":
            return x <= y
        if op == ">":
            return x > y
        if op == ">=":
            return x >= y
        if op == "in":
            return x in y
        return x not in y
    except TypeError as exc:
        raise EvalError(f"{x!r} {op} {y!r}: {exc}") from None


_ORDER: dict[str, Callable[[Any, Any], Any]] = {
    ">": operator.gt, "<": operator.lt, ">=": operator.ge, "<=": operator.le,
    "==": operator.eq, "!=": operator.ne,
}


def _cmp_const(op: str, a: Compiled, c: Any, metric: str | None) -> Compiled:
    """``x OP literal``, the common case: one closure call, the metric lookup inlined."""
    impl = _ORDER[op]
    if metric is not None:
        name = metric

        def metric_vs_const(env: Env) -> Any:
            x = env.value if env.metric == name else env.values.get(name, ABSENT)
            if x is ABSENT:
                return ABSENT
            try:
                return impl(x, c)
            except TypeError as exc:
                raise EvalError(f"{x!r} {op} {c!r}: {exc}") from None
        return metric_vs_const

    def vs_const(env: Env) -> Any:
        x = a(env)
        if x is ABSENT:
            return ABSENT
        try:
            return impl(x, c)
        except TypeError as exc:
            raise EvalError(f"{x!r} {op} {c!r}: {exc}") from None
    return vs_const


def _cmp_one(op: str, a: Compiled, b: Compiled) -> Compiled:
    def one(env: Env) -> Any:
        return _compare(op, a(env), b(env))
    return one


class _Compiler:
    def __init__(self, text: str) -> None:
        self.text = text
        self.program = Program(text, lambda env: ABSENT)

    def error(self, message: str, node: Node) -> ExprSyntaxError:
        return ExprSyntaxError(message, node.pos, self.text)

    def compile(self, node: Node) -> Compiled:  # noqa: C901 - one branch per node kind
        k = node.kind
        if k == "lit":
            const = node.value
            return lambda env: const
        if k == "list":
            items = [self.compile(a) for a in node.args]

            def lst(env: Env) -> Any:
                return [f(env) for f in items]
            return lst
        if k == "name":
            return self.name(node)
        if k == "attr":
            key = node.value
            self.program.device_fields.add(key)
            return lambda env: env.info(key)
        if k == "unary":
            inner = self.compile(node.args[0])

            def neg(env: Env) -> Any:
                x = inner(env)
                if x is ABSENT:
                    return ABSENT
                try:
                    return -x
                except TypeError as exc:
                    raise EvalError(f"-{x!r}: {exc}") from None
            return neg
        if k == "binop":
            return _binop(node.value, self.compile(node.args[0]), self.compile(node.args[1]))
        if k == "cmp":
            fns = [self.compile(a) for a in node.args]
            ops: tuple[str, ...] = node.value
            if len(ops) == 1:
                left, right = node.args
                if ops[0] in _ORDER and right.kind == "lit":
                    metric = left.value if left.kind == "name" and \
                        left.value not in READING_FIELDS else None
                    return _cmp_const(ops[0], fns[0], right.value, metric)
                return _cmp_one(ops[0], fns[0], fns[1])

            def chain(env: Env) -> Any:
                x = fns[0](env)
                result: Any = True
                for op, f in zip(ops, fns[1:], strict=True):
                    y = f(env)
                    r = _compare(op, x, y)
                    if r is ABSENT:
                        result = ABSENT
                    elif not r:
                        return False
                    x = y
                return result
            return chain
        if k == "not":
            inner = self.compile(node.args[0])

            def not_(env: Env) -> Any:
                x = inner(env)
                return ABSENT if x is ABSENT else not x
            return not_
        if k in ("and", "or"):
            a, b = self.compile(node.args[0]), self.compile(node.args[1])
            if k == "and":
                def and_(env: Env) -> Any:
                    x = a(env)
                    if x is ABSENT:
                        y = b(env)
                        return False if y is not ABSENT and not y else ABSENT
                    if not x:
                        return False
                    y = b(env)
                    return y if y is ABSENT else bool(y)
                return and_

            def or_(env: Env) -> Any:
                x = a(env)
                if x is ABSENT:
                    y = b(env)
                    return True if y is not ABSENT and y else ABSENT
                if x:
                    return True
                y = b(env)
                return y if y is ABSENT else bool(y)
            return or_
        if k == "call":
            return self.call(node)
        if k == "gw":
            key = fact_key(node.value)
            self.program.gateway[key] = None
            return lambda env: env.gateway.get(key, ABSENT)
        if k == "gwcall":
            return self.gateway_call(node)
        raise self.error(f"cannot compile {k}", node)  # pragma: no cover - parser guards

    def name(self, node: Node) -> Compiled:
        name = node.value
        if name in READING_FIELDS:
            if name == "device":
                return lambda env: env.device
            self.program.reading_fields = True
            if name == "value":
                return lambda env: env.value
            if name == "metric":
                return lambda env: env.metric or ABSENT
            if name == "unit":
                return lambda env: env.unit if env.unit is not None else ABSENT
            return lambda env: env.ts
        self.program.metrics.add(name)

        def metric_value(env: Env) -> Any:
            return env.value if env.metric == name else env.values.get(name, ABSENT)
        return metric_value

    def gateway_call(self, node: Node) -> Compiled:
        """``gateway.adapter_restarts(mqtt, 1h)``: restarts of one adapter (a name or a
        string) or of all (``(1h)``) within the window."""
        args = node.args
        usage = HEALTH_FUNCTIONS[node.value]
        if not 1 <= len(args) <= 2:
            raise self.error(f"takes an adapter and a window: {usage}", node)
        adapter: str | None = None
        if len(args) == 2:
            a = args[0]
            if a.kind == "name" and a.value not in READING_FIELDS:
                adapter = str(a.value)
            elif a.kind == "lit" and isinstance(a.value, str) and a.value:
                adapter = a.value
            else:
                raise self.error(f"the first argument is an adapter name: {usage}", a)
            if adapter == "*":
                adapter = None
        win = args[-1]
        if win.kind != "lit" or not _is_number(win.value) or win.value <= 0:
            raise self.error(f"needs a window such as 10m or 1h: {usage}", win)
        seconds = float(win.value)
        key = restarts_key(adapter, seconds)
        self.program.gateway[key] = None
        self.program.restarts[key] = (adapter, seconds)
        return lambda env: env.gateway.get(key, ABSENT)

    def metric_arg(self, node: Node, fn: str) -> str:
        if node.kind != "name" or node.value in READING_FIELDS:
            raise self.error(f"{fn}() takes a metric name first, e.g. {fn}(temperature, 5m)",
                             node)
        return str(node.value)

    def call(self, node: Node) -> Compiled:
        name: str = node.value
        args = node.args
        if name in AGGREGATES:
            if len(args) != 2:
                raise self.error(f"{name}() takes a metric and a window, e.g. "
                                 f"{name}(temperature, 5m)", node)
            metric = self.metric_arg(args[0], name)
            win = args[1]
            if win.kind != "lit" or not _is_number(win.value) or win.value <= 0:
                raise self.error(f"{name}() needs a window such as 30s, 5m or 1h", win)
            seconds = float(win.value)
            self.program.metrics.add(metric)
            w = self.program.windows
            w[metric] = max(w.get(metric, 0.0), seconds)
            self.program.spans.add((metric, seconds))
            if name in ("min", "max"):
                self.program.extremes.add((metric, seconds))
            return _agg(name, metric, seconds)
        if name == "exists":
            if len(args) != 1:
                raise self.error("exists() takes one metric, e.g. exists(humidity)", node)
            inner = self.compile(args[0])
            return lambda env: inner(env) is not ABSENT
        if name in TIME_FUNCTIONS:
            if args:
                raise self.error(f"{name}() takes no arguments", node)
            index = {"hour": 3, "minute": 4, "weekday": 6}[name]
            return lambda env: _local(env)[index]
        if name == "between":
            if len(args) != 2 or any(a.kind != "lit" for a in args):
                raise self.error('between() takes two times of day, e.g. '
                                 'between("22:00", "06:00")', node)
            lo = _clock_minutes(args[0].value, args[0].pos, self.text)
            hi = _clock_minutes(args[1].value, args[1].pos, self.text)

            def between(env: Env) -> Any:
                t = _local(env)
                m = t.tm_hour * 60 + t.tm_min
                return lo <= m < hi if lo <= hi else (m >= lo or m < hi)
            return between
        spec = FUNCTIONS.get(name)
        if spec is None:
            raise self.error(f"unknown function {name}() (known: {', '.join(function_names())})",
                             node)
        lo_n, hi_n, impl = spec
        if not lo_n <= len(args) <= hi_n:
            want = str(lo_n) if lo_n == hi_n else f"{lo_n} to {hi_n}"
            raise self.error(f"{name}() takes {want} argument(s), got {len(args)}", node)
        fns = [self.compile(a) for a in args]

        def call(env: Env) -> Any:
            vals = [f(env) for f in fns]
            if any(v is ABSENT for v in vals):
                return ABSENT
            try:
                return impl(*vals)
            except EvalError:
                raise
            except (TypeError, ValueError, OverflowError) as exc:
                raise EvalError(f"{name}(): {exc}") from None
        return call


def compile_expr(text: str) -> Program:
    """Parse and compile one condition; raises :class:`ExprSyntaxError` naming the position."""
    comp = _Compiler(text)
    tree = parse(text)
    comp.program.fn = comp.compile(tree)
    comp.program.guard = _guard(tree, comp)
    return comp.program


def _guard(node: Node, comp: _Compiler) -> Guard | None:
    while node.kind == "and":
        node = node.args[0]
    if node.kind != "cmp" or len(node.value) != 1 or node.value[0] not in _ORDER:
        return None
    left, right = node.args
    if right.kind != "lit" or left.kind == "lit":
        return None
    if left.kind == "name" and left.value in READING_FIELDS:
        return None
    metric = str(left.value) if left.kind == "name" else None
    return Guard(_canonical(left), comp.compile(left), node.value[0], right.value, metric)


def _canonical(node: Node) -> str:
    """The node without positions: two rules writing the same term get the same text."""
    inner = ",".join(_canonical(a) for a in node.args)
    return f"{node.kind}:{node.value!r}({inner})"


# -- message templates ------------------------------------------------------------------------


@dataclass
class Template:
    """A string with ``{expression}`` holes (``{{``/``}}`` for literal braces)."""

    source: str
    parts: list[str | Compiled]
    programs: list[Program]

    def render(self, env: Env) -> str:
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            try:
                v = part(env)
            except EvalError:
                v = ABSENT
            out.append("n/a" if v is ABSENT else show_value(v))
        return "".join(out)

    @property
    def constant(self) -> bool:
        return all(isinstance(p, str) for p in self.parts)


def show_value(v: Any) -> str:
    """A value as templates render it."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def compile_template(text: str) -> Template:
    """Compile ``"{device.name} is at {value} {unit}"``; errors name the position."""
    parts: list[str | Compiled] = []
    programs: list[Program] = []
    buf: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "{" and text.startswith("{{", i):
            buf.append("{")
            i += 2
            continue
        if ch == "}" and text.startswith("}}", i):
            buf.append("}")
            i += 2
            continue
        if ch == "}":
            raise ExprSyntaxError("single '}' in template (write }} for a brace)", i, text)
        if ch == "{":
            end = _closing_brace(text, i + 1)
            if end < 0:
                raise ExprSyntaxError("'{' without a matching '}'", i, text)
            inner = text[i + 1:end]
            try:
                prog = compile_expr(inner)
            except ExprSyntaxError as exc:
                raise ExprSyntaxError(exc.detail, i + 1 + exc.pos, text) from None
            if buf:
                parts.append("".join(buf))
                buf = []
            parts.append(prog.fn)
            programs.append(prog)
            i = end + 1
            continue
        buf.append(ch)
        i += 1
    if buf:
        parts.append("".join(buf))
    return Template(text, parts, programs)


def _closing_brace(text: str, i: int) -> int:
    quote = ""
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "}":
            return i
        i += 1
    return -1


def referenced_metrics(programs: Iterable[Program]) -> set[str]:
    out: set[str] = set()
    for p in programs:
        out |= p.metrics
    return out
