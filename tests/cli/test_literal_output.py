"""The CLI's consoles print literally (no markup, no emoji), so a styled line must ask for markup itself.

A line written as ``out.print("[green]ok[/]")`` (or a table cell ``"[red]FAIL[/]"``) would now show
its tags; this finds any such line in ``slmops/cli`` — including ones merged from older code — by
reading the source, and checks that the consoles really are literal.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import slmops.cli

TAG = re.compile(r"\[/?(?:bold|dim|italic|underline|reverse|green|red|yellow|blue|cyan|magenta|white)\b[^\]]*\]|\[/\]")


def _literal_text(node: ast.AST) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_literal_text(v) for v in node.values)
    if isinstance(node, ast.BinOp):
        return _literal_text(node.left) + _literal_text(node.right)
    if isinstance(node, ast.IfExp):
        return _literal_text(node.body) + _literal_text(node.orelse)
    return ""


def test_markup_is_only_written_where_a_line_asks_for_it() -> None:
    offenders = []
    for path in sorted(Path(slmops.cli.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        markup_vars = {  # names assigned a markup string, e.g. state = "[dim]cached[/]" if … else …
            t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) and TAG.search(_literal_text(n.value))
            for t in n.targets if isinstance(t, ast.Name)
        }
        for call in ast.walk(tree):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr in ("print", "add_row", "Table", "add")):
                continue
            asks = any(k.arg == "markup" and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)
            for arg in call.args:
                text = _literal_text(arg)
                uses_var = any(isinstance(n, ast.Name) and n.id in markup_vars for n in ast.walk(arg))
                if (TAG.search(text) or uses_var) and not (asks and call.func.attr == "print"):
                    offenders.append(f"{path.name}:{call.lineno}")
    assert not offenders, f"markup in a literal console (add markup=True and esc() the values, or use rich.text.Text): {offenders}"


def test_consoles_are_literal() -> None:
    from slmops.cli.render import err, esc, out

    for console in (out, err):
        with console.capture() as cap:
            console.print("bot[/red] [bold]x[/] :x:")
        assert cap.get().strip() == "bot[/red] [bold]x[/] :x:"
    with out.capture() as cap:
        out.print(f"[bold]{esc('a[/b] :x:')}[/]", markup=True)
    assert cap.get().strip() == "a[/b] :x:"
