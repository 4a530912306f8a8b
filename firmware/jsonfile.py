"""A small JSON file, read with its size and nesting bounded before it is parsed (config.json,
the register maps). Only start-up uses it: app.py drops it with config and register_map."""


def read(path, cls):
    """The JSON value in a small file (a register map, config.json); cls(one line) when it
    cannot be read, is over 16 KB (checked before reading: a map is ~4 KB, a config.json
    ~2 KB with 16 aggregators' keys), nests over 8 deep (both need 4) or is not JSON. A
    2 MB file or 10,000 "[" would exhaust a board's heap or the parser's recursion."""
    import json
    import os

    try:
        size = os.stat(path)[6]
        if size > 16384:
            raise cls("%s is %d bytes, more than the 16384 allowed" % (path, size))
        with open(path, "rb") as f:
            depth, quoted, escaped = 0, False, False
            data = f.read(256)  # a piece at a time: no buffer of the file's size
            while data:
                for c in data:  # bytes: [ 91, ] 93, { 123, } 125, " 34, \\ 92
                    if quoted:
                        if escaped:
                            escaped = False
                        elif c == 92:
                            escaped = True
                        elif c == 34:
                            quoted = False
                    elif c == 34:
                        quoted = True
                    elif c == 91 or c == 123:
                        depth += 1
                        if depth > 8:
                            raise cls("%s nests deeper than 8 levels" % path)
                    elif c == 93 or c == 125:
                        depth -= 1
                data = f.read(256)
            f.seek(0)
            try:  # from the file, as it is read
                return json.load(f)
            except (ValueError, MemoryError):
                raise cls("%s is not valid JSON (torn or hand-edited?)" % path) from None
    except OSError as exc:
        raise cls("cannot read %s: %s" % (path, exc)) from None
