"""The command-line tools, one module per command, each with ``main(argv) -> exit status``.

``python src/<name>.py`` (from a checkout) and the installed console scripts call the same
``main``; the modules only declare options and call the library (docs/design.md, "Commands").
"""
