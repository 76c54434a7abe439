"""``GET /docs``: the API reference as one self-contained HTML page.

FastAPI's Swagger UI and ReDoc pages load their scripts and styles from a CDN,
which neither the service's machine nor the reader's browser may reach, and
would run third-party script on the service's origin. This page is rendered on
the server from the same OpenAPI document as ``/openapi.json`` and the access
table: no script, no external asset, and a Content-Security-Policy that allows
neither. Every value from the document is HTML-escaped.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
code,pre{font:13px ui-monospace,monospace;background:#f4f4f4;padding:.1rem .3rem;border-radius:3px}
section{border-top:1px solid #ddd;padding:.6rem 0}
h2{font-size:1.05rem;margin:.2rem 0}
.m{display:inline-block;min-width:3.6rem;font-weight:700}
.who{color:#555}
table{border-collapse:collapse;margin:.3rem 0}
td,th{text-align:left;padding:.1rem .6rem .1rem 0;vertical-align:top;font-size:14px}
"""


_INTRO = (
    "<p>The machine-readable document is <a href=/openapi.json><code>/openapi.json</code>"
    "</a> (load it into any OpenAPI tool). Requests are signed with HTTP Message "
    "Signatures (RFC 9421); the SDK and <code>cleanroom</code> command sign for you.</p>"
)


def render_docs(spec: Mapping[str, Any], who: Mapping[tuple[str, str], str]) -> str:
    """The reference page for ``spec`` (an OpenAPI document); ``who`` says, for each
    (method, path), who may call it."""
    info = spec.get("info", {})
    title = escape(f"{info.get('title', 'API')} {info.get('version', '')}".strip())
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{title}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{title}</h1><p>{escape(str(info.get('description', '')))}</p>",
        _INTRO,
    ]
    for path, operations in sorted(spec.get("paths", {}).items()):
        for method, operation in operations.items():
            parts.append(_operation(method.upper(), path, operation, who))
    parts.append("</body></html>")
    return "".join(parts)


def _operation(method: str, path: str, op: Mapping[str, Any], who: Mapping[Any, str]) -> str:
    caller = who.get((method, path), "see the access table")
    out = [
        f"<section id='{escape(method + ' ' + path)}'>",
        f"<h2><span class=m>{escape(method)}</span> <code>{escape(path)}</code></h2>",
        f"<div class=who>who: {escape(caller)}</div>",
    ]
    text = op.get("description") or op.get("summary") or ""
    if text:
        out.append(f"<p>{escape(str(text))}</p>")
    params = op.get("parameters", [])
    if params:
        out.append("<table><tr><th>parameter</th><th>in</th><th>type</th><th></th></tr>")
        for param in params:
            required = "required" if param.get("required") else "optional"
            out.append(
                f"<tr><td><code>{escape(str(param.get('name')))}</code></td>"
                f"<td>{escape(str(param.get('in')))}</td>"
                f"<td>{escape(_type(param.get('schema', {})))}</td><td>{required}</td></tr>"
            )
        out.append("</table>")
    body = op.get("requestBody", {}).get("content", {})
    for media, content in body.items():
        out.append(
            f"<div>body: <code>{escape(media)}</code> {escape(_type(content.get('schema', {})))}"
            "</div>"
        )
    codes = ", ".join(sorted(str(code) for code in op.get("responses", {})))
    out.append(f"<div>answers: {escape(codes)}</div></section>")
    return "".join(out)


def _type(schema: Mapping[str, Any]) -> str:
    """A short name for a schema: its model's name, or its type and pattern."""
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return ref.rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    kind = str(schema.get("type", "any"))
    pattern = schema.get("pattern")
    return f"{kind} {pattern}" if pattern else kind
