"""The API reference builds from the docstrings with warnings as errors: numpydoc's
validation makes a public name without a docstring, or a parameter its docstring leaves
out, a warning. Runs when Sphinx and numpydoc are installed (the `test` extra has them)."""

import html
import pathlib
import re
import subprocess
import sys

import pytest

import minitrain as mt

pytest.importorskip("sphinx")
pytest.importorskip("numpydoc")
pytest.importorskip("sklearn")  # the reference documents minitrain.sklearn

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def api_html(tmp_path_factory):
    if not (DOCS / "conf.py").is_file():
        pytest.skip("needs the source tree's docs/")
    out = tmp_path_factory.mktemp("docs")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(out / "doctrees"), str(DOCS), str(out / "html")],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return (out / "html" / "api.html").read_text(encoding="utf-8")


def _entry(page, ident):
    """The HTML of the reference entry `ident` (signature and docstring)."""
    start = page.index(f'id="{ident}"')
    return page[start:page.find('<dt class="sig', start + 1)]


def _text(fragment):
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", fragment)).split())


def test_reference_covers_every_public_name(api_html):
    for name in mt.__all__:
        kind = "module-" if name in ("evaluation", "schedules") else ""
        assert f'id="{kind}minitrain.{name}"' in api_html, name
    for name in ("MLPClassifier", "MLPRegressor"):
        assert f'id="minitrain.sklearn.{name}"' in api_html


def test_fit_documents_every_argument(api_html):
    fit = _entry(api_html, "minitrain.Sequential.fit")
    for name in ("epochs", "batch_size", "optimizer", "shuffle", "drop_last", "seed",
                 "verbose", "validation_data", "validation_split", "metrics", "callbacks",
                 "tol", "n_iter_no_change", "max_time", "resume_from"):
        assert f"<dt><strong>{name}</strong>" in fit, name  # an entry of Parameters
    signature = _text(fit[fit.index(">") + 1:fit.index("</dt>")])
    # the annotations, with numpy.typing's alias kept short
    assert signature.startswith("fit(X: ArrayLike, y: ArrayLike, epochs: int = 1,"), signature
    assert signature.endswith("→ History¶"), signature
