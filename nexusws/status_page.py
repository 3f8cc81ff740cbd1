"""The page of /v1/status_view: the /v1/status list as an HTML table (L{nexusws.api})."""

import json
from html import escape


def _grace_left(instance):
    """" (N s left)" for a detached instance (its grace: /v1/status's C{grace_left})."""
    left = instance.get("grace_left")
    return f" ({left:.0f} s left)" if isinstance(left, (int, float)) else ""


def status_page(services):
    """The /v1/status list as a human-readable HTML page (everything escaped)."""
    rows = []
    for service in services:
        instances = service["instances"] or [None]
        for i, instance in enumerate(instances):
            cells = [escape(service["name"]) if i == 0 else "", str(service["count"]) if i == 0 else ""]
            if instance is None:
                cells += ["", "free", "", "", ""]
            else:
                cells += [
                    str(instance["index"]),
                    escape(str(instance.get("state", "")) + _grace_left(instance)),
                    escape(str(instance.get("user") or "")),
                    escape(str(instance.get("timestamp", ""))),
                    escape(json.dumps(instance.get("options", {}), sort_keys=True)),
                ]
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    body = "\n".join(rows) or '<tr><td colspan="7">no services configured</td></tr>'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>nexusws status</title>
<style>body{{font-family:system-ui,sans-serif}} td,th{{border:1px solid #ccc;padding:.2em .5em}}
table{{border-collapse:collapse}}</style></head>
<body><h1>nexusws status</h1>
<table><tr><th>service</th><th>count</th><th>index</th><th>state</th><th>user</th><th>reserved at</th>
<th>options</th></tr>
{body}
</table></body></html>
"""
