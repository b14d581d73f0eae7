"""The hello service, a Python cell run by the CPython embedded in the runtime.

`cellbus call hello.greet '{"name":"Ada"}'` replies {"greeting": "Hello, Ada!", "letters": 3};
without a name it answers `bad_request` naming the field.
"""

import cellbus


def handle(verb, payload):
    if verb != "greet":
        raise cellbus.CellError("unknown_verb", f"no verb {verb}")
    name = (payload or {}).get("name", "").strip()
    if not name:
        raise cellbus.CellError("bad_request", "name is required", details={"field": "name"})
    return {"greeting": f"Hello, {name}!", "letters": sum(c.isalpha() for c in name)}
