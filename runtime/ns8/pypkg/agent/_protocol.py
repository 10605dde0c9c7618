#
# ns8ctl's implementation of NS8's agent API (SPDX-License-Identifier: GPL-3.0-or-later).
#
"""The AGENT_COMFD line protocol, as ns8ctl's module agent parses it (src/agent/comfd-protocol.ts).

One command per line; fields separated by spaces; a field that is empty or holds a space or a
double quote is wrapped in double quotes, with ``""`` for a quote inside. A field cannot carry a
newline, carriage return or NUL (the agent could not tell it from the end of the command).
"""


def format_command(fields):
    """Return one protocol line (with its newline) for ``fields``; ValueError on an unsendable field."""
    out = []
    for field in fields:
        text = str(field)
        if any(c in text for c in "\n\r\0"):
            raise ValueError(f"AGENT_COMFD: field {text!r} contains a newline, carriage return or NUL, which the protocol cannot carry")
        if text == "" or " " in text or '"' in text:
            text = '"' + text.replace('"', '""') + '"'
        out.append(text)
    return " ".join(out) + "\n"


def split_command(line):
    """Split one protocol line into fields; None when the quoting is broken."""
    line = line.rstrip("\r\n")
    fields = []
    i, n = 0, len(line)
    while i < n:
        if line[i] == " ":
            i += 1
            continue
        if line[i] == '"':
            value = []
            i += 1
            while True:
                if i >= n:
                    return None
                if line[i] == '"':
                    if i + 1 < n and line[i + 1] == '"':
                        value.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                value.append(line[i])
                i += 1
            if i < n and line[i] != " ":
                return None
            fields.append("".join(value))
            continue
        start = i
        while i < n and line[i] != " ":
            if line[i] == '"':
                return None
            i += 1
        fields.append(line[start:i])
    return fields
