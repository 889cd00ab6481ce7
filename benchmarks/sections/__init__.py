"""The sections of benchmarks/bench.py, one module each; `common` holds what they share.

bench.py is run as a script, so this package is imported as `sections` with benchmarks/ on
sys.path (bench.py puts it there when it is loaded by path instead, as the tests load it).
"""
