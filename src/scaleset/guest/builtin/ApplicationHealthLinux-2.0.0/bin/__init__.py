# Not part of the handler: this empty file only gives mypy (`files = ["src/scaleset"]`) a different module
# name for this copy of apphealth.py (`bin.apphealth`) than for the byte-identical copy in
# ApplicationHealthLinux-1.0.0 (`apphealth`); two files with one module name stop mypy altogether. The
# clean fix is a mypy `exclude` of one copy in pyproject.toml, after which this file can go.
