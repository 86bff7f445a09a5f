"""The bottom layer: errors, file hashing and atomic writes, typed records, the
workspace layout, config base classes, the process environment and the machine."""
