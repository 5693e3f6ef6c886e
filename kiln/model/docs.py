"""The roles.yaml reference, generated from the schema, so docs/roles.md cannot drift from it; and the whole schema
as one file (docs/roles.schema.json) for editors that validate YAML against a JSON Schema."""

from __future__ import annotations

import json
from typing import Any

from kiln.model.shape import schema

_KIND_NAMES = {
    "ipv4": "IPv4 address",
    "cidr": "IPv4 CIDR",
    "interface_address": "IPv4 address/prefix",
    "mac": "MAC address",
    "path": "absolute path",
    "server_url": "https URL of an IPv4 address",
    "mirror": "`auto` \\| http(s) URL",
    "account": "account name",
    "ssh_key": "OpenSSH public key line",
    "alert_receiver": "`provisioning` \\| https URL",
    "size": "size (`500G`)",
    "disk_text": "string",
    "secret_name": "file name under secrets/",
    "bmc_address": "HOST[:PORT] \\| http(s) URL",
}


def _type(spec: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in spec:
        name = spec["$ref"].rsplit("/", 1)[-1]
        return _KIND_NAMES.get(name, name)
    if "enum" in spec:
        return " \\| ".join(f"`{v}`" for v in spec["enum"])
    if "const" in spec:
        return f"`{spec['const']}`"
    if spec.get("type") == "array":
        return f"list of {_type(spec['items'], defs)}"
    if spec.get("type") == "integer" and "minimum" in spec and "maximum" in spec:
        return f"integer {spec['minimum']}..{spec['maximum']}"
    return spec.get("type", "")


def _rows(spec: dict[str, Any], path: str, required: bool, defs: dict[str, Any]):
    desc = spec.get("description", "")
    default = f"`{spec['default']}`" if "default" in spec else ""
    given = spec.get("type", "")
    types: list[str] = given if isinstance(given, list) else [given]
    kind = " \\| ".join("mapping" if t == "object" else _type({**spec, "type": t}, defs) for t in types)
    if spec.get("type") == "array" and spec["items"].get("type") == "object":
        kind = "list of mappings"
    yield f"| `{path}` | {kind} | {'yes' if required else 'no'} | {default} | {desc} |"
    if "object" in types:
        for key, sub in spec.get("properties", {}).items():
            yield from _rows(sub, f"{path}.{key}", key in spec.get("required", []), defs)
    if spec.get("type") == "array" and spec["items"].get("type") == "object":
        items = spec["items"]
        for key, sub in items.get("properties", {}).items():
            yield from _rows(sub, f"{path}[].{key}", key in items.get("required", []), defs)


def reference_markdown() -> str:
    s = schema()
    lines = ["| key | type | required | default | meaning |", "|---|---|---|---|---|"]
    for key, spec in s["properties"].items():
        lines += list(_rows(spec, key, key in s["required"], s["$defs"]))
    return "\n".join(lines) + "\n"


def schema_json() -> str:
    """The whole roles.yaml schema, the role modules' parts filled in: docs/roles.schema.json, for editors."""
    return json.dumps(schema(), indent=2) + "\n"


if __name__ == "__main__":  # python -m kiln.model.docs > docs/roles.schema.json
    print(schema_json(), end="")
