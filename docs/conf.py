"""Sphinx configuration of minitrain's API reference.

Build it with ``sphinx-build -W -b html docs docs/_build/html`` after installing
minitrain with the ``docs`` extra. The reference is made from the installed package's
docstrings (numpydoc format); numpydoc's validation turns a public name without a
docstring, or a parameter its docstring leaves out, into a warning, so ``-W`` keeps
the docstrings complete.
"""

import re
from importlib import metadata

project = "minitrain"
author = "the minitrain developers"
copyright = "2026, the minitrain developers"
release = metadata.version("minitrain")
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc", "numpydoc"]

exclude_patterns = ["_build"]
html_theme = "alabaster"

autodoc_default_options = {"member-order": "bysource"}
# the signatures show `ArrayLike`, not the union numpy.typing spells it out as
autodoc_type_aliases = {"ArrayLike": "ArrayLike"}
autodoc_typehints = "signature"

# the members are listed by autodoc; numpydoc's own tables would list them twice
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
# GL08: a public name without a docstring; PR01/PR02: a parameter missing from (or
# unknown to) the Parameters section; RT01: a missing Returns section
numpydoc_validation_checks = {"GL08", "PR01", "PR02", "RT01"}
numpydoc_validation_exclude = {r"\.__init__$", r"\.__repr__$"}


def _short_aliases(app, what, name, obj, options, signature, return_annotation):
    """Inside a subscript (``tuple[ArrayLike, ArrayLike]``) autodoc prints an alias as
    ``TypeAliasForwardRef('ArrayLike')``; print its name."""
    def short(text):
        return text and re.sub(r"TypeAliasForwardRef\('([\w.]+)'\)", r"\1", text)
    return short(signature), short(return_annotation)


def setup(app):
    app.connect("autodoc-process-signature", _short_aliases)
