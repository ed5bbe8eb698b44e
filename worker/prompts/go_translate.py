"""Ollama's prompt templates (Go ``text/template``) translated into Jinja.

The subset Ollama's own templates use is understood: output of fields (``{{ .Prompt }}``,
``{{ $.System }}``, ``{{ .Function.Name }}``), ``if``/``else if``/``else``/``end``,
``range`` (with or without ``$i, $m :=``), ``with``, variables (``$x := …``, ``$x = …``,
also across loop iterations), ``{{-``/``-}}`` trimming, comments, ``break``/``continue``,
and the functions ``eq ne lt le gt ge and or not len index slice print printf json``,
plus pipes (``x | json``). Anything else raises ``GoTemplateError`` (Ollama answers a
template parse error with HTTP 500).

Text between actions is trimmed here, as Go does, so the Jinja output carries no
whitespace control of its own. Every Go variable lives in one Jinja ``namespace`` (``_v``),
because Jinja's ``set`` inside a loop would not reach the enclosing scope as Go's does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_ACTION = re.compile(r"\{\{(-[ \t\r\n])?(.*?)([ \t\r\n]-)?\}\}", re.DOTALL)
_TOKEN = re.compile(
    r"""\s*(?:
    (?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)
    |(?P<num>-?\d+(?:\.\d+)?)
    |(?P<var>\$[A-Za-z0-9_]*)
    |(?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<punct>:=|=|\(|\)|\||,)
    )""",
    re.VERBOSE,
)
_FIELD_CHAIN = re.compile(r"(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_COMPARE = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_WS = " \t\r\n"


class GoTemplateError(ValueError):
    """The template uses Go template syntax outside the supported subset, or is malformed."""


@dataclass
class Translation:
    #: The Jinja source; render it with ``_root`` (the Go dot) and the ``_json`` filter.
    jinja: str
    #: Field names the template uses, lowercased (Ollama's ``Template.Vars``).
    fields: set[str] = field(default_factory=set)


def translate(source: str, *, cut_after_response: bool = False) -> Translation:
    """Jinja for a Go template; ``cut_after_response`` drops all output after the first
    ``.Response`` field, as Ollama does to render the turn the model is to complete."""
    return _Translator(source, cut_after_response).run()


@dataclass
class _Block:
    kind: str  # if, range, with
    dot: str  # the Jinja expression "." stands for inside the block
    has_else: bool = False


class _Translator:
    def __init__(self, source: str, cut: bool) -> None:
        self.source, self.cut_mode, self.cut = source, cut, False
        self.out: list[str] = []
        self.blocks: list[_Block] = []
        self.fields: set[str] = set()
        self.counter = 0

    def run(self) -> Translation:
        pieces = self._lex()
        self.out.append("{% set _v = namespace() %}")
        for kind, value in pieces:
            if kind == "text":
                if value and not self.cut:
                    self.out.append(_literal(value))
            else:
                self._action(value)
        if self.blocks:
            raise GoTemplateError(f"template: unexpected EOF (unclosed {self.blocks[-1].kind})")
        return Translation("".join(self.out), self.fields)

    def _lex(self) -> list[tuple[str, str]]:
        pieces: list[tuple[str, str]] = []
        pos, trim_next = 0, False
        for match in _ACTION.finditer(self.source):
            text = self.source[pos : match.start()]
            if trim_next:
                text = text.lstrip(_WS)
            if match.group(1):
                text = text.rstrip(_WS)
            pieces.append(("text", text))
            body = match.group(2).strip()
            if not (body.startswith("/*") and body.endswith("*/")):
                pieces.append(("action", body))
            pos, trim_next = match.end(), bool(match.group(3))
        rest = self.source[pos:]
        if "{{" in rest:
            raise GoTemplateError("template: unclosed action")
        pieces.append(("text", rest.lstrip(_WS) if trim_next else rest))
        return pieces

    @property
    def dot(self) -> str:
        return self.blocks[-1].dot if self.blocks else "_root"

    def _emit(self, text: str) -> None:
        self.out.append(text)

    def _action(self, body: str) -> None:
        word = body.split(None, 1)[0] if body else ""
        rest = body[len(word) :].strip()
        if word == "if":
            self.blocks.append(_Block("if", self.dot))
            self._emit(f"{{% if {self._pipeline(rest)} %}}")
        elif word == "range":
            self._range(rest)
        elif word == "with":
            name = self._fresh("w")
            self._emit(f"{{% set {name} = {self._pipeline(rest)} %}}{{% if {name} %}}")
            self.blocks.append(_Block("with", name))
        elif word == "else":
            self._else(rest)
        elif word == "end":
            if not self.blocks:
                raise GoTemplateError("template: unexpected {{end}}")
            block = self.blocks.pop()
            self._emit("{% endfor %}" if block.kind == "range" else "{% endif %}")
        elif word in ("break", "continue") and not rest:
            if not any(b.kind == "range" for b in self.blocks):
                raise GoTemplateError(f"template: {{{{{word}}}}} outside {{{{range}}}}")
            if not self.cut:
                self._emit(f"{{% {word} %}}")
        elif word in ("template", "define", "block"):
            raise GoTemplateError(f"template: {{{{{word}}}}} is not supported")
        elif re.match(r"\$[A-Za-z0-9_]*\s*:?=", body):
            name, _, expr = re.split(r"\s*(:?=)\s*", body, maxsplit=1)
            self._emit(f"{{% set _v.{_var(name)} = {self._pipeline(expr)} %}}")
        elif body:
            expr = self._pipeline(body)
            if not self.cut:
                self._emit(f"{{{{ {expr} }}}}")
            if self.cut_mode and re.search(r"\.Response\b", body):
                self.cut = True
        else:
            raise GoTemplateError("template: missing value for command")

    def _range(self, rest: str) -> None:
        match = re.match(r"(\$\w*)\s*(?:,\s*(\$\w*)\s*)?:=\s*(.*)", rest, re.DOTALL)
        index_var, elem_var, expr = None, None, rest
        if match:
            first, second, expr = match.groups()
            index_var, elem_var = (first, second) if second else (None, first)
        item = self._fresh("d")
        self._emit(f"{{% for {item} in {self._pipeline(expr)} %}}")
        if index_var:
            self._emit(f"{{% set _v.{_var(index_var)} = loop.index0 %}}")
        if elem_var:
            self._emit(f"{{% set _v.{_var(elem_var)} = {item} %}}")
        self.blocks.append(_Block("range", item))

    def _else(self, rest: str) -> None:
        if not self.blocks or self.blocks[-1].has_else:
            raise GoTemplateError("template: unexpected {{else}}")
        block = self.blocks[-1]
        if rest.startswith("if "):
            if block.kind != "if":
                raise GoTemplateError("template: {{else if}} outside {{if}}")
            self._emit(f"{{% elif {self._pipeline(rest[3:])} %}}")
        elif rest:
            raise GoTemplateError(f"template: unsupported {{{{else {rest}}}}}")
        else:
            block.has_else = True
            self._emit("{% else %}")

    def _fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"_{prefix}{self.counter}"

    # -- expressions ------------------------------------------------------------------

    def _pipeline(self, text: str) -> str:
        tokens = _tokens(text)
        expr, pos = self._parse_pipeline(tokens, 0)
        if pos != len(tokens):
            raise GoTemplateError(f"template: unexpected {tokens[pos][1]!r} in {text!r}")
        return expr

    def _parse_pipeline(self, tokens: list[tuple[str, str]], pos: int) -> tuple[str, int]:
        expr, pos = self._parse_command(tokens, pos, None)
        while pos < len(tokens) and tokens[pos] == ("punct", "|"):
            expr, pos = self._parse_command(tokens, pos + 1, expr)
        return expr, pos

    def _parse_command(
        self, tokens: list[tuple[str, str]], pos: int, piped: str | None
    ) -> tuple[str, int]:
        if pos >= len(tokens):
            raise GoTemplateError("template: missing value for command")
        kind, value = tokens[pos]
        if kind == "ident" and value not in ("true", "false", "nil"):
            args: list[str] = []
            pos += 1
            while pos < len(tokens) and tokens[pos][1] not in ("|", ")"):
                arg, pos = self._parse_operand(tokens, pos)
                args.append(arg)
            if piped is not None:
                args.append(piped)
            return _call(value, args), pos
        if piped is not None:
            raise GoTemplateError(f"template: cannot pipe into {value!r}")
        return self._parse_operand(tokens, pos)

    def _parse_operand(self, tokens: list[tuple[str, str]], pos: int) -> tuple[str, int]:
        kind, value = tokens[pos]
        pos += 1
        if kind == "str":
            text = value[1:-1] if value.startswith("`") else json.loads(value)
            return json.dumps(text), pos
        if kind == "num":
            return value, pos
        if kind == "ident":
            if value in ("true", "false"):
                return value, pos
            if value == "nil":
                return "none", pos
            return _call(value, []), pos  # a function without arguments
        if kind == "field":
            return self._fields(self.dot, value), pos
        if kind == "var":
            base, _, chain = value.partition(".")
            root = "_root" if base == "$" else f"_v.{_var(base)}"
            return (self._fields(root, "." + chain) if chain else root), pos
        if value == "(":
            expr, pos = self._parse_pipeline(tokens, pos)
            if pos >= len(tokens) or tokens[pos][1] != ")":
                raise GoTemplateError("template: unclosed left paren")
            expr = f"({expr})"
            if pos + 1 < len(tokens) and tokens[pos + 1][0] == "field":
                chain = tokens[pos + 1][1]
                return self._fields(expr, chain), pos + 2
            return expr, pos + 1
        raise GoTemplateError(f"template: unexpected {value!r}")

    def _fields(self, base: str, chain: str) -> str:
        names = [n for n in chain.split(".") if n]
        self.fields.update(n.lower() for n in names)
        return base + "".join(f"[{json.dumps(n)}]" for n in names)


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise GoTemplateError(f"template: unexpected {text[pos:]!r}")
        kind = match.lastgroup or ""
        value = match.group(kind)
        # "$x.Field" arrives as a variable then a field chain: join them
        if kind == "field" and tokens and tokens[-1][0] == "var" and match.start(kind) == pos:
            tokens[-1] = ("var", tokens[-1][1] + value)
        else:
            tokens.append((kind, value))
        pos = match.end()
    return tokens


def _var(name: str) -> str:
    return "v_" + (name[1:] or "root")


def _call(name: str, args: list[str]) -> str:
    if name in _COMPARE:
        if len(args) < 2:
            raise GoTemplateError(f"template: {name} needs two arguments")
        if name == "eq" and len(args) > 2:  # eq a b c: a equals any of the others
            return "(" + " or ".join(f"{args[0]} == {other}" for other in args[1:]) + ")"
        return f"({args[0]} {_COMPARE[name]} {args[1]})"
    if name in ("and", "or") and len(args) >= 1:
        return "(" + f" {name} ".join(args) + ")"
    if name == "not" and len(args) == 1:
        return f"(not {args[0]})"
    if name == "len" and len(args) == 1:
        return f"({args[0]} | length)"
    if name == "index" and args:
        return args[0] + "".join(f"[{a}]" for a in args[1:])
    if name == "slice" and 1 <= len(args) <= 3:
        bounds = ":".join(args[1:]) if len(args) > 1 else ":"
        return f"{args[0]}[{bounds if ':' in bounds else bounds + ':'}]"
    if name == "json" and len(args) == 1:
        return f"({args[0]} | _json)"
    if name == "print":
        return "(" + " ~ ".join(f"({a} | _str)" for a in args) + ")" if args else '""'
    if name == "printf" and args:
        return f"({args[0]} | _printf({', '.join(args[1:])}))"
    raise GoTemplateError(f'template: function "{name}" not defined')


def _literal(text: str) -> str:
    """Text as Jinja emits it verbatim: plain where it cannot be mistaken for a tag."""
    if "{" in text or "}" in text or "#" in text or "%" in text:
        return "{{ " + json.dumps(text) + " }}"
    return text
