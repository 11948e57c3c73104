"""``savedeep.__all__`` is exactly the documented public API (httpx's exported-members test is the model): every
public name of the package is in ``__all__``, every name there exists, and the README's "Python API" section
documents each of them and no other ``savedeep.NAME``. A helper imported into the package's namespace (a
``Path``, an ``Any``) would be a public name nobody meant to offer: the first test fails on it.
"""

from __future__ import annotations

import __future__
import re
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API_DOC, API_HEADING = ROOT / "docs" / "reference" / "api.md", "## Public names"


def _public_names(module: types.ModuleType) -> set[str]:
    """The names ``module`` offers: not underscored, not one of its submodules (``savedeep.config`` is a module,
    reached by its own path), not the binding a ``from __future__ import`` leaves (a compiler directive)."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not (isinstance(value, types.ModuleType) and value.__name__.startswith(module.__name__ + "."))
        and not isinstance(value, __future__._Feature)
    }


def _documented(text: str) -> set[str]:
    """The ``savedeep.NAME`` the API section of ``text`` names (in code spans)."""
    start = text.index(API_HEADING + "\n")
    end = text.find("\n## ", start + len(API_HEADING))
    section = text[start : end if end != -1 else len(text)]
    return set(re.findall(r"`savedeep\.(\w+)", section))


def test_every_public_name_is_in_all_and_nothing_private_is():
    import savedeep

    assert len(savedeep.__all__) == len(set(savedeep.__all__)), "a name twice in __all__"
    assert sorted(_public_names(savedeep) | {"__version__"}) == sorted(savedeep.__all__)
    assert [n for n in savedeep.__all__ if n.startswith("_") and n != "__version__"] == []


def test_every_name_in_all_exists():
    import savedeep

    missing = [n for n in savedeep.__all__ if not hasattr(savedeep, n)]
    assert missing == []
    assert [n for n in savedeep.__all__ if n != "__version__" and not callable(getattr(savedeep, n))] == []


def test_the_public_names_of_a_fresh_import_are_all():
    # Fresh: what `import savedeep` alone leaves in the namespace (in this process other tests' imports add
    # submodules, which _public_names leaves out, but could also hide a helper that a submodule's import binds).
    code = (
        "import savedeep, sys\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from test_public_api import _public_names\n"
        "print(sorted(_public_names(savedeep) | {'__version__'}) == sorted(savedeep.__all__),"
        " sorted(_public_names(savedeep)))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("True "), r.stdout + r.stderr


def test_all_is_what_the_api_section_documents():
    import savedeep

    assert sorted(_documented(API_DOC.read_text())) == sorted(savedeep.__all__)


def test_the_checks_find_a_leak_and_an_undocumented_name():
    # The two checks above on a made-up package: a helper import leaks, a documented name is missing.
    fake = types.ModuleType("fake")
    exec(
        "from __future__ import annotations\nfrom pathlib import Path\nimport os as _os\ndef load(): pass\n",
        fake.__dict__,
    )
    fake.sub = types.ModuleType("fake.sub")
    assert _public_names(fake) == {"Path", "load"}
    text = f"# x\n\n{API_HEADING}\n\n| `savedeep.load(path)` | ... |\n\n## Next\n\n`savedeep.hidden`\n"
    assert _documented(text) == {"load"}
