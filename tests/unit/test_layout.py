"""The layout of tests/ itself: no two test files share a basename across layers.

The layers (tests/unit, tests/privileged, tests/lab) are plain directories, not packages, so
pytest imports each test file under its basename alone: a second tests/*/test_x.py stops the
whole collection ("import file mismatch")."""
import os
from collections import defaultdict

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def is_test_file(name: str) -> bool:
    """pytest's default python_files: test_*.py and *_test.py."""
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))


def duplicates(root: str) -> dict[str, list[str]]:
    """{basename: sorted paths relative to root} for every test file basename found more than once."""
    where = defaultdict(list)
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__" and not d.startswith(".")]
        for name in files:
            if is_test_file(name):
                where[name].append(os.path.relpath(os.path.join(directory, name), root))
    return {name: sorted(paths) for name, paths in sorted(where.items()) if len(paths) > 1}


def test_no_two_test_files_share_a_basename():
    found = duplicates(TESTS)
    assert found == {}, "test files sharing a basename (rename one of each): " + "; ".join(
        f"{name}: {', '.join(paths)}" for name, paths in found.items())


def test_the_walk_sees_every_layer():
    """The guard above passes on an empty walk too: it must see the layers' files."""
    layers = {os.path.relpath(d, TESTS).split(os.sep)[0]
              for d, _, files in os.walk(TESTS) if any(map(is_test_file, files))}
    assert {"unit", "privileged", "lab"} <= layers


def test_duplicates_names_each_shared_basename_with_its_paths(tmp_path):
    for rel in ("unit/test_a.py", "lab/test_a.py", "privileged/deep/test_a.py", "unit/test_b.py",
                "lab/b_test.py", "privileged/b_test.py", "unit/conftest.py", "lab/conftest.py",
                "unit/__pycache__/test_b.py", "unit/helper.py", "lab/helper.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    assert duplicates(str(tmp_path)) == {
        "b_test.py": ["lab/b_test.py", "privileged/b_test.py"],
        "test_a.py": ["lab/test_a.py", "privileged/deep/test_a.py", "unit/test_a.py"],
    }
