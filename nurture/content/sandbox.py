"""The Jinja2 sandbox templates render in, with bounds on what one template may build.

Templates are written through the API by anyone holding a key, so they run sandboxed: no
private attributes (`''.__class__`), no mutation of the context, and no value larger than a
message can hold. Jinja's own sandbox stops the first two; the third is here, because a
single operation can otherwise allocate gigabytes in one C call (`"x".center(10**10)`,
`s.replace("", s)`, `[big] * 100000` printed), which no time limit can interrupt and which
would exhaust the memory of the process rendering it.

So every operation a template can use to grow a value is bounded *before* it runs:

- `*` on strings and lists (`MAX_REPEAT` items), `+` on them, `%` formatting and
  `str.format` (their widths and the size of what they print), `~`;
- the string methods that grow a string (`center`, `ljust`, `rjust`, `zfill`, `expandtabs`,
  `replace`, `join`) and the filters that do (`center`, `indent`, `wordwrap`, `replace`,
  `format`, `join`, `urlize`, `tojson`'s indent, `batch`/`slice` fill counts, `lipsum`);
- numbers: `**` (`MAX_EXPONENT`) and `*` on integers (`MAX_INT_BITS` bits);
- `range` (Jinja's own 100,000 items);
- printing or stringifying a container that holds many references to one big value, the
  one amplification that needs no operator at all (`{% set b = [a, a, a, a] %}`, nested).

and every value a call, a filter, an operator or a block (`{% set %}`, macros) produces is
checked after it too (`MAX_VALUE_LENGTH`). What is left (a loop that runs too long, a buffer
that grows one small piece at a time) is bounded by the render's time limit and, in the
render process, by its memory limit (see `nurture.content.isolation`).
"""

from __future__ import annotations

import re
import string
import types
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, ValuesView
from contextlib import suppress
from functools import wraps
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter, safe_range
from jinja2.utils import _PassArg, generate_lorem_ipsum
from markupsafe import EscapeFormatter, Markup

# What one expression may build. A marketing message never needs more; these only stop a
# template from exhausting the memory (or the time) of the process that renders it.
MAX_REPEAT = 100_000  # items a `*` repetition may make
MAX_EXPONENT = 100  # the largest exponent of `**`
MAX_INT_BITS = 4_096  # the largest integer `*` and `**` may make (about 1,200 digits)
MAX_VALUE_LENGTH = 1_000_000  # characters any one value may print as (a string, a list...)
MAX_INDENT = 100  # `tojson(indent=...)`
MAX_LIPSUM_WORDS = 10_000  # `lipsum(n, max=...)`: paragraphs x words


class LimitExceeded(SecurityError):
    """A template went over one of the bounds above (or a time or output limit). A
    `SecurityError`, so Jinja reports it with the template line like any sandbox refusal."""


def _too_big(what: str) -> LimitExceeded:
    return LimitExceeded(
        f"{what} would be over {MAX_VALUE_LENGTH} characters, which is not allowed"
    )


_SCALARS = (str, bytes, bytearray)
_CONTAINERS = (list, tuple, set, frozenset, dict, KeysView, ValuesView, ItemsView)


def value_size(value: Any, limit: int = MAX_VALUE_LENGTH) -> int:
    """About how many characters `value` prints as (`str(value)`), counted only until past
    `limit`: a string's length; a container's items, each at least one character, so that
    counting stops after at most `limit` items however many references a container nests.
    Iterators and generators are not consumed (they count as one)."""
    if isinstance(value, _SCALARS):
        return len(value)
    if isinstance(value, int):
        return value.bit_length() * 3 // 10 + 1
    children = _children(value)
    if children is None:
        return 1
    total = 1
    stack: list[Iterator[Any]] = [children]
    while stack:
        try:
            item = next(stack[-1])
        except StopIteration:
            stack.pop()
            continue
        total += 1
        if isinstance(item, _SCALARS):
            total += len(item)
        elif isinstance(item, int):
            total += item.bit_length() * 3 // 10
        else:
            nested = _children(item)
            if nested is not None:
                stack.append(nested)
        if total > limit:
            break
    return total


def _children(value: Any) -> Iterator[Any] | None:
    if isinstance(value, dict):
        return iter(value.items())
    if isinstance(value, _CONTAINERS):
        return iter(value)
    # `namespace()` prints its attributes (`<Namespace {...}>`).
    attributes = getattr(value, "_Namespace__attrs", None) if _is_namespace(value) else None
    return iter(attributes.items()) if isinstance(attributes, dict) else None


def _is_namespace(value: Any) -> bool:
    return type(value).__name__ == "Namespace" and type(value).__module__ == "jinja2.utils"


def limited(value: Any) -> Any:
    """`value`, unless it prints as more than `MAX_VALUE_LENGTH` characters."""
    if value_size(value) > MAX_VALUE_LENGTH:
        raise _too_big("a value")
    return value


def _check_size(what: str, size: int) -> None:
    if size > MAX_VALUE_LENGTH:
        raise _too_big(what)


def _whole(number: Any) -> int | None:
    """An int argument (not a bool), or None when it is something else (the operation
    itself then refuses it, or it does not make anything bigger)."""
    return number if isinstance(number, int) and not isinstance(number, bool) else None


# --- operators ----------------------------------------------------------------------------------


def _check_power(base: Any, exponent: Any) -> None:
    if isinstance(exponent, int | float) and abs(exponent) > MAX_EXPONENT:
        raise LimitExceeded(f"an exponent over {MAX_EXPONENT} is not allowed")
    base_int, exponent_int = _whole(base), _whole(exponent)
    if (
        base_int is not None
        and exponent_int is not None
        and exponent_int > 0
        and abs(base_int) > 1
        and base_int.bit_length() * exponent_int > MAX_INT_BITS
    ):
        raise LimitExceeded(f"a number over {MAX_INT_BITS} bits is not allowed")


def _check_product(left: Any, right: Any) -> None:
    left_int, right_int = _whole(left), _whole(right)
    if left_int is not None and right_int is not None:
        if left_int.bit_length() + right_int.bit_length() > MAX_INT_BITS:
            raise LimitExceeded(f"a number over {MAX_INT_BITS} bits is not allowed")
        return
    for sequence, times in ((left, right), (right, left)):
        count = _whole(times)
        if isinstance(sequence, str | bytes | bytearray | list | tuple) and count is not None:
            if len(sequence) * count > MAX_REPEAT:
                raise LimitExceeded(f"a repetition over {MAX_REPEAT} items is not allowed")
            _check_size("a repetition", value_size(sequence) * count)


def _check_sum(left: Any, right: Any) -> None:
    for kind in (str | bytes | bytearray, list | tuple):
        if isinstance(left, kind) and isinstance(right, kind):
            _check_size("a concatenation", value_size(left) + value_size(right))


# `%` conversions: flags, then a width and a precision (digits, or `*` taken from the values).
_PRINTF_SPEC = re.compile(
    r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?([diouxXeEfFgGcrsa%])"
)


def check_printf(template: str, values: Any) -> None:
    """`template % values` (and the `format` filter): no width or precision over the value
    limit, and no more printed than it (each conversion can print any of the values)."""
    specs = _PRINTF_SPEC.findall(template)
    if isinstance(values, dict):
        given: list[Any] = list(values.values())
    elif isinstance(values, tuple):
        given = list(values)
    else:
        given = [values]
    for width, precision, _ in specs:
        for number in (width, precision):
            if number == "*":
                if any((_whole(v) or 0) > MAX_VALUE_LENGTH for v in given):
                    raise _too_big("a % width")
            elif number and (len(number) > 7 or int(number) > MAX_VALUE_LENGTH):
                raise _too_big("a % width")
    largest = max((value_size(v) for v in given), default=0)
    conversions = sum(1 for *_, kind in specs if kind != "%")
    _check_size("% formatting", len(template) + conversions * largest)


# `str.format` specs: any number in them is a width or a precision.
_DIGITS = re.compile(r"\d+")


def _check_format_spec(spec: str) -> None:
    for number in _DIGITS.findall(spec):
        if len(number) > 7 or int(number) > MAX_VALUE_LENGTH:
            raise _too_big("a format width")


class _LimitedFormatter(SandboxedFormatter):
    """`str.format` in the sandbox, refusing huge widths and counting what it prints (a
    format string repeating `{0}` prints its value that many times)."""

    _printed = 0

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        self._printed = len(format_string)
        _check_size("format()", self._printed)
        return super().vformat(format_string, args, kwargs)

    def format_field(self, value: Any, format_spec: str) -> Any:
        _check_format_spec(format_spec)
        self._printed += value_size(value)
        _check_size("format()", self._printed)
        return super().format_field(value, format_spec)


class _LimitedEscapeFormatter(_LimitedFormatter, EscapeFormatter):
    """`Markup.format`: escaping, as Jinja's `SandboxedEscapeFormatter` does."""


# --- string methods ------------------------------------------------------------------------------


def _replaced_size(s: str, old: Any, new: Any, count: Any = -1) -> int:
    if not isinstance(old, str) or not isinstance(new, str):
        return len(s)
    occurrences = s.count(old) if old else len(s) + 1
    limit = _whole(count)
    if limit is not None and limit >= 0:
        occurrences = min(occurrences, limit)
    return len(s) + occurrences * (len(new) - len(old))


def _joined_size(separator: Any, items: list[Any]) -> int:
    separators = value_size(separator) * max(len(items) - 1, 0)
    return separators + sum(value_size(item) for item in items)


def _check_str_method(obj: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Bound a call of a string method that grows its string; the arguments to call it with
    (an iterable given to `join` is read once, here, to be measured)."""
    owner = getattr(obj, "__self__", None)
    if not isinstance(owner, str) or not isinstance(
        obj, types.BuiltinMethodType | types.MethodType
    ):
        return args
    name = obj.__name__
    if name in ("center", "ljust", "rjust", "zfill") and args:
        width = _whole(args[0])
        if width is not None and width > MAX_VALUE_LENGTH:
            raise _too_big(f"{name}()")
    elif name == "expandtabs":
        tabs = _whole(args[0]) if args else 8
        if tabs is not None:
            _check_size("expandtabs()", len(owner) + owner.count("\t") * tabs)
    elif name == "replace" and len(args) >= 2:
        _check_size("replace()", _replaced_size(owner, *args[:3]))
    elif name == "join" and len(args) == 1 and isinstance(args[0], Iterable):
        items = list(args[0])
        _check_size("join()", _joined_size(owner, items))
        return (items,)
    return args


# --- filters ------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _center_check(value: Any, width: Any = 80) -> None:
    wide = _whole(width)
    if wide is not None and wide > MAX_VALUE_LENGTH:
        raise _too_big("the center filter")


def _indent_check(s: Any, width: Any = 4, first: Any = False, blank: Any = False) -> None:
    indentation = width if isinstance(width, str) else None
    step = len(indentation) if indentation is not None else (_whole(width) or 0)
    text = _text(s)
    _check_size("the indent filter", len(text) + (text.count("\n") + 1) * step)


def _wordwrap_check(
    s: Any,
    width: Any = 79,
    break_long_words: Any = True,
    wrapstring: Any = None,
    break_on_hyphens: Any = True,
) -> None:
    text = _text(s)
    columns = max(_whole(width) or 1, 1)
    breaks = len(text.split()) + text.count("\n") + len(text) // columns + 1
    inserted = len(wrapstring) if isinstance(wrapstring, str) else 1
    _check_size("the wordwrap filter", len(text) + breaks * inserted)


def _replace_check(s: Any, old: Any, new: Any, count: Any = None) -> None:
    _check_size(
        "the replace filter", _replaced_size(_text(s), old, new, -1 if count is None else count)
    )


def _format_check(value: Any, *args: Any, **kwargs: Any) -> None:
    check_printf(_text(value), kwargs or args)


def _urlize_check(
    value: Any,
    trim_url_limit: Any = None,
    nofollow: Any = False,
    target: Any = None,
    rel: Any = None,
    extra_schemes: Any = None,
) -> None:
    text = _text(value)
    extra = sum(len(x) for x in (target, rel) if isinstance(x, str))
    # Each link is written out twice (href and text), escaped, with its attributes.
    _check_size("the urlize filter", 6 * len(text) + (len(text.split()) + 1) * (extra + 64))


def _tojson_check(value: Any, indent: Any = None) -> None:
    step = len(indent) if isinstance(indent, str) else (_whole(indent) or 0)
    if step > MAX_INDENT:
        raise LimitExceeded(f"an indent over {MAX_INDENT} is not allowed")


def _count_check(value: Any, count: Any, fill_with: Any = None) -> None:
    number = _whole(count)
    if number is not None and number > MAX_REPEAT:
        raise LimitExceeded(f"a count over {MAX_REPEAT} is not allowed")


# Filters whose result grows with an argument: checked before they run.
_FILTER_CHECKS: dict[str, Callable[..., None]] = {
    "center": _center_check,
    "indent": _indent_check,
    "wordwrap": _wordwrap_check,
    "replace": _replace_check,
    "format": _format_check,
    "urlize": _urlize_check,
    "tojson": _tojson_check,
    "batch": _count_check,
    "slice": _count_check,
}
# Filters that print their value (`str()` of a list prints every item it holds): the value is
# measured before, since a list can hold one big string many times over.
_PRINTING_FILTERS = frozenset(
    {
        "string",
        "e",
        "escape",
        "forceescape",
        "safe",
        "upper",
        "lower",
        "title",
        "capitalize",
        "trim",
        "striptags",
        "urlize",
        "urlencode",
        "tojson",
        "pprint",
        "xmlattr",
        "wordcount",
        "truncate",
        "center",
        "indent",
        "wordwrap",
        "replace",
        "format",
    }
)


def _limited_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    # A filter marked @pass_context (or eval context, or environment) takes that first.
    offset = 1 if _PassArg.from_obj(function) is not None else 0
    check = _FILTER_CHECKS.get(name)
    printing = name in _PRINTING_FILTERS

    @wraps(function)  # keeps `jinja_pass_arg`, so Jinja still passes what the filter expects
    def checked(*args: Any, **kwargs: Any) -> Any:
        if len(args) > offset:
            if name == "join":
                args = _with_joined_items(args, offset, kwargs)
            elif printing:
                limited(args[offset])
            if check is not None:
                # Arguments the filter itself refuses (TypeError) it refuses with its message.
                with suppress(TypeError):
                    check(*args[offset:], **kwargs)
        return limited(function(*args, **kwargs))

    return checked


def _with_joined_items(
    args: tuple[Any, ...], offset: int, kwargs: dict[str, Any]
) -> tuple[Any, ...]:
    """`join`: its items, read once here to be measured (a generator could not be read twice)."""
    value = args[offset]
    if not isinstance(value, Iterable):
        return args
    items = list(value)
    separator = args[offset + 1] if len(args) > offset + 1 else kwargs.get("d", "")
    _check_size("the join filter", _joined_size(separator, items))
    return (*args[:offset], items, *args[offset + 1 :])


def _limited_range(*args: Any) -> range:
    try:
        return safe_range(*args)
    except OverflowError as err:  # "Range too big...": Jinja's own bound, reported as a limit
        raise LimitExceeded(str(err)) from None


def _limited_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    if (_whole(n) or 0) * (_whole(max) or 0) > MAX_LIPSUM_WORDS:
        raise LimitExceeded(f"lipsum over {MAX_LIPSUM_WORDS} words is not allowed")
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


def limited_concat(pieces: Iterable[str]) -> str:
    """Jinja's `concat` for block bodies (macros, `{% set %}...{% endset %}`, `{% filter %}`):
    measured before they are joined."""
    pieces = pieces if isinstance(pieces, list) else list(pieces)
    _check_size("a block", sum(len(piece) for piece in pieces))
    return "".join(pieces)


class _LimitedCodeGenerator(CodeGenerator):
    """Jinja's compiler, with `a ~ b` measured before it is joined (each side is printed, and a
    list printed prints all it holds)."""

    @optimizeconst  # as Jinja's: literals only (`"a" ~ "b"`) are joined when compiling
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.limited_join({join}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, bounded (see the module docstring), stricter about unsafe
    access, and more natural for data (a key wins over a dict method)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _LimitedCodeGenerator
    concat = staticmethod(limited_concat)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters = {name: _limited_filter(name, f) for name, f in self.filters.items()}
        self.globals["range"] = _limited_range
        self.globals["lipsum"] = _limited_lipsum

    def getattr(self, obj: Any, attribute: str) -> Any:
        # The context is plain data, so a key wins over a dict method: a contact field named
        # "items" or "update" must render the field, not `<built-in method items...>`.
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        # Jinja returns an undefined that renders as "" (and ChainableUndefined would even chain
        # on it): an attempt to escape the sandbox must fail loudly instead.
        raise SecurityError(f"access to {attribute!r} of a {type(obj).__name__} is not allowed")

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            _check_power(left, right)
        elif operator == "*":
            _check_product(left, right)
        elif operator == "+":
            _check_sum(left, right)
        elif operator == "%" and isinstance(left, str):
            check_printf(left, right)
        return limited(super().call_binop(context, operator, left, right))

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        args = _check_str_method(obj, args)
        return limited(super().call(context, obj, *args, **kwargs))

    def limited_join(self, join: Callable[[Iterable[Any]], str], parts: tuple[Any, ...]) -> str:
        """`a ~ b ~ c` (see `_LimitedCodeGenerator`)."""
        _check_size("a ~ join", sum(value_size(part) for part in parts))
        return str(limited(join(parts)))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        # Jinja's own, with a formatter that bounds widths and what is printed.
        if not isinstance(
            value, types.MethodType | types.BuiltinMethodType
        ) or value.__name__ not in (
            "format",
            "format_map",
        ):
            return None
        owner: Any = value.__self__
        if not isinstance(owner, str):
            return None
        str_type: type[str] = type(owner)
        is_format_map = value.__name__ == "format_map"
        formatter: string.Formatter
        if isinstance(owner, Markup):
            formatter = _LimitedEscapeFormatter(self, escape=owner.escape)
        else:
            formatter = _LimitedFormatter(self)

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs = args[0]
                args = ()
            return str_type(formatter.vformat(owner, args, kwargs))

        return wraps(value)(wrapper)


def finalize(value: Any) -> Any:
    """What `{{ value }}` prints: `{{ contact.phone }}` of a contact without one, or a field
    stored as null, shows nothing, never the word "None"; nothing over the value limit."""
    return "" if value is None else limited(value)
