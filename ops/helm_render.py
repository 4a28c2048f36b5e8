"""A renderer for the subset of Helm's template language that charts/pumphouse uses.

No helm binary can be installed on the machines this project is built on, so the chart is
rendered here instead, and the result is validated (ops/check-chart.sh). It covers exactly what
the chart's templates use, and refuses anything else loudly, so a template that strays from the
subset fails the check rather than rendering wrong:

- actions: `{{ pipeline }}`, `if` / `else if` / `else`, `with` / `else`, `range` (over a list or
  a map, with `$k, $v :=`), `define`, `end`, comments, and `{{-` / `-}}` whitespace trimming;
- operands: `.`, `.A.B`, `$`, `$.A`, `$var.A`, strings, numbers, `true`, `false`, `(pipeline)`;
- functions: include, toYaml, nindent, indent, quote, default, required, printf, trunc,
  trimSuffix, contains, b64enc, not, eq.

Values are handled as Helm does for this subset: a missing key is empty, empty values are false,
toYaml sorts map keys.
"""

import base64
import json
import re

import yaml


class TemplateError(Exception):
    pass


ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.S)
TOKEN = re.compile(r'\s*("(?:\\.|[^"\\])*"|\(|\)|\||:=|,|[^\s()|,]+)')


def parse(source, name):
    """Splits a template into text and actions, applies trimming, builds the node tree."""
    pieces = []
    pos = 0
    for m in ACTION.finditer(source):
        text = source[pos : m.start()]
        if m.group(1):
            text = text.rstrip()
        pieces.append(("text", text))
        pieces.append(("action", m.group(2), bool(m.group(3))))
        pos = m.end()
    pieces.append(("text", source[pos:]))
    # Right trims eat the whitespace at the start of the next text.
    for i, p in enumerate(pieces):
        if p[0] == "action" and p[2] and i + 1 < len(pieces):
            pieces[i + 1] = ("text", pieces[i + 1][1].lstrip())
    nodes, rest, stop = _block(pieces, 0, name)
    if stop is not None:
        raise TemplateError(f"{name}: `{{{{ {stop} }}}}` without its block")
    return nodes


def _block(pieces, i, name):
    """Reads nodes up to an `end` / `else`; returns (nodes, next index, the stopping action)."""
    nodes = []
    while i < len(pieces):
        p = pieces[i]
        i += 1
        if p[0] == "text":
            if p[1]:
                nodes.append(("text", p[1]))
            continue
        action = p[1]
        if action.startswith("/*"):
            if not action.endswith("*/"):
                raise TemplateError(f"{name}: unterminated comment")
            continue
        word = action.split(None, 1)[0] if action else ""
        if word in ("end", "else"):
            return nodes, i, action
        if word in ("if", "with", "range"):
            node, i = _control(word, action[len(word) :].strip(), pieces, i, name)
            nodes.append(node)
        elif word == "define":
            tname = _string(action[len("define") :].strip(), name)
            body, i, stop = _block(pieces, i, name)
            if stop != "end":
                raise TemplateError(f"{name}: define {tname} has no end")
            nodes.append(("define", tname, body))
        elif word in ("template", "block", "tpl"):
            raise TemplateError(f"{name}: `{word}` is outside the supported subset")
        else:
            nodes.append(("out", action))
    return nodes, i, None


def _control(word, head, pieces, i, name):
    branches = []
    cond = head
    while True:
        body, i, stop = _block(pieces, i, name)
        if stop is None:
            raise TemplateError(f"{name}: `{word} {head}` has no end")
        branches.append((cond, body))
        if stop == "end":
            return (word, branches), i
        rest = stop[len("else") :].strip()
        if rest.startswith("if ") and word == "if":
            cond = rest[3:].strip()
        elif rest == "":
            cond = None
        else:
            raise TemplateError(f"{name}: `{{{{ {stop} }}}}` is outside the supported subset")


def _string(text, name):
    if not (text.startswith('"') and text.endswith('"')):
        raise TemplateError(f"{name}: expected a quoted name, got {text}")
    return json.loads(text)


def truthy(v):
    if v is None or isinstance(v, bool):
        return bool(v)
    if isinstance(v, (int, float)):
        return v != 0
    if isinstance(v, (str, list, dict)):
        return len(v) > 0
    return True


def to_text(v):
    if v is None:
        return ""
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, (dict, list)):
        raise TemplateError(f"a map or list printed as text ({v!r}); use toYaml")
    return str(v)


def to_yaml(v):
    if v in ({}, []):
        return "{}" if v == {} else "[]"
    return yaml.safe_dump(v, default_flow_style=False, sort_keys=True).rstrip("\n")


def _indent(n, s, lead):
    pad = " " * int(n)
    out = "\n".join(pad + line if line else line for line in to_text(s).split("\n"))
    return ("\n" if lead else "") + out


def _printf(fmt, *args):
    py = re.sub(r"%v", "%s", fmt)
    return py % tuple(to_text(a) if isinstance(a, (bool, type(None))) else a for a in args)


def _required(msg, v):
    if not truthy(v):
        raise TemplateError(msg)
    return v


class Chart:
    """A chart on disk: its templates, parsed, and its defines."""

    def __init__(self, path):
        import os

        self.path = path
        with open(os.path.join(path, "Chart.yaml")) as f:
            meta = yaml.safe_load(f)
        self.chart = {k[0].upper() + k[1:]: v for k, v in meta.items()}
        with open(os.path.join(path, "values.yaml")) as f:
            self.values = yaml.safe_load(f) or {}
        self.templates = {}
        self.defines = {}
        tdir = os.path.join(path, "templates")
        for fname in sorted(os.listdir(tdir)):
            with open(os.path.join(tdir, fname)) as f:
                nodes = parse(f.read(), fname)
            self._collect_defines(nodes)
            if not fname.startswith("_") and fname.endswith(".yaml"):
                self.templates[fname] = nodes

    def _collect_defines(self, nodes):
        for n in nodes:
            if n[0] == "define":
                self.defines[n[1]] = n[2]

    def render(self, values, release="pumphouse", namespace="pumphouse"):
        """Renders every template with `values` (already merged over the defaults)."""
        root = {
            "Values": values,
            "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
            "Chart": self.chart,
        }
        out = {}
        for fname, nodes in self.templates.items():
            try:
                out[fname] = self._nodes(nodes, root, {"$": root})
            except TemplateError as e:
                raise TemplateError(f"{fname}: {e}") from None
        return out

    def _nodes(self, nodes, dot, scope):
        parts = []
        for n in nodes:
            kind = n[0]
            if kind == "text":
                parts.append(n[1])
            elif kind == "out":
                parts.append(to_text(self._pipeline(n[1], dot, scope)))
            elif kind == "define":
                continue
            elif kind == "if":
                for cond, body in n[1]:
                    if cond is None or truthy(self._pipeline(cond, dot, scope)):
                        parts.append(self._nodes(body, dot, dict(scope)))
                        break
            elif kind == "with":
                (cond, body), *rest = n[1]
                v = self._pipeline(cond, dot, scope)
                if truthy(v):
                    parts.append(self._nodes(body, v, dict(scope)))
                elif rest:
                    parts.append(self._nodes(rest[0][1], dot, dict(scope)))
            elif kind == "range":
                parts.append(self._range(n[1], dot, scope))
        return "".join(parts)

    def _range(self, branches, dot, scope):
        (head, body), *rest = branches
        names = []
        if ":=" in head:
            left, head = head.split(":=", 1)
            names = [x.strip() for x in left.split(",")]
        v = self._pipeline(head.strip(), dot, scope)
        items = sorted(v.items()) if isinstance(v, dict) else list(enumerate(v or []))
        if not items:
            return self._nodes(rest[0][1], dot, dict(scope)) if rest else ""
        parts = []
        for key, item in items:
            s = dict(scope)
            if len(names) == 2:
                s[names[0]], s[names[1]] = key, item
            elif len(names) == 1:
                s[names[0]] = item
            parts.append(self._nodes(body, item, s))
        return "".join(parts)

    # Expressions -------------------------------------------------------------------------

    def _pipeline(self, text, dot, scope):
        tokens = TOKEN.findall(text)
        if "".join(tokens).replace(" ", "") != text.replace(" ", "").replace("\n", ""):
            raise TemplateError(f"cannot read `{text}`")
        value, pos = self._pipe(tokens, 0, dot, scope)
        if pos != len(tokens):
            raise TemplateError(f"unexpected `{tokens[pos]}` in `{text}`")
        return value

    def _pipe(self, tokens, pos, dot, scope):
        value, pos = self._command(tokens, pos, dot, scope, None)
        while pos < len(tokens) and tokens[pos] == "|":
            value, pos = self._command(tokens, pos + 1, dot, scope, [value])
        return value, pos

    def _command(self, tokens, pos, dot, scope, piped):
        args = []
        while pos < len(tokens) and tokens[pos] not in ("|", ")"):
            tok = tokens[pos]
            if tok == "(":
                v, pos = self._pipe(tokens, pos + 1, dot, scope)
                if pos >= len(tokens) or tokens[pos] != ")":
                    raise TemplateError("unbalanced parentheses")
                args.append(("value", v))
                pos += 1
            else:
                args.append(("token", tok))
                pos += 1
        if not args:
            raise TemplateError("empty command")
        head_kind, head = args[0]
        if head_kind == "token" and re.fullmatch(r"[A-Za-z_]\w*", head) and head not in ("true", "false", "nil"):
            vals = [self._operand(a, dot, scope) for a in args[1:]] + (piped or [])
            return self._call(head, vals, dot), pos
        if len(args) != 1 or piped:
            raise TemplateError(f"`{head}` is not a function")
        return self._operand(args[0], dot, scope), pos

    def _operand(self, arg, dot, scope):
        kind, tok = arg
        if kind == "value":
            return tok
        if tok.startswith('"'):
            return json.loads(tok)
        if tok == "true":
            return True
        if tok == "false":
            return False
        if tok == "nil":
            return None
        if re.fullmatch(r"-?\d+", tok):
            return int(tok)
        if tok == ".":
            return dot
        if tok.startswith("."):
            return _field(dot, tok[1:].split("."))
        if tok.startswith("$"):
            var, _, path = tok.partition(".")
            if var not in scope:
                raise TemplateError(f"undefined variable {var}")
            return _field(scope[var], path.split(".")) if path else scope[var]
        raise TemplateError(f"cannot read operand `{tok}`")

    def _call(self, fn, args, dot):
        simple = {
            "toYaml": to_yaml,
            "nindent": lambda n, s: _indent(n, s, True),
            "indent": lambda n, s: _indent(n, s, False),
            "quote": lambda v: json.dumps(to_text(v)),
            "default": lambda d, v=None: v if truthy(v) else d,
            "required": _required,
            "printf": _printf,
            "trunc": lambda n, s: to_text(s)[:n],
            "trimSuffix": lambda suf, s: s[: -len(suf)] if suf and s.endswith(suf) else s,
            "contains": lambda sub, s: sub in to_text(s),
            "b64enc": lambda s: base64.b64encode(to_text(s).encode()).decode(),
            "not": lambda v: not truthy(v),
            "eq": lambda a, b: a == b,
        }
        if fn == "include":
            name, ctx = args
            if name not in self.defines:
                raise TemplateError(f"include of undefined template {name}")
            return self._nodes(self.defines[name], ctx, {"$": ctx})
        if fn not in simple:
            raise TemplateError(f"function `{fn}` is outside the supported subset")
        return simple[fn](*args)


def _field(v, path):
    for key in path:
        if not key:
            continue
        if isinstance(v, dict):
            v = v.get(key)
        elif v is None:
            return None
        else:
            raise TemplateError(f"cannot read field {key} of {v!r}")
    return v


def merge(base, override):
    """Helm's values merge: maps merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
