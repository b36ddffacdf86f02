"""Kubernetes label selectors: the string forms kubectl takes, matched like the API server does."""
import pytest

from speaker import selector
from speaker.selector import SelectorError

LABELS = {"rack": "r1", "zone": "a", "node-role.kubernetes.io/worker": "", "kubernetes.io/hostname": "node1"}


@pytest.mark.parametrize("text,matches", [
    ("", True),
    ("   ", True),
    ("rack=r1", True),
    ("rack==r1", True),
    ("rack = r1", True),
    ("rack=r2", False),
    ("rack!=r2", True),
    ("rack!=r1", False),
    ("missing!=x", True),  # != holds when the label is absent
    ("rack in (r1,r2)", True),
    ("rack in ( r2 , r1 )", True),
    ("rack in (r2)", False),
    ("rack notin (r2,r3)", True),
    ("rack notin (r1)", False),
    ("missing notin (x)", True),  # notin holds when the label is absent
    ("missing in (x)", False),
    ("rack", True),
    ("missing", False),
    ("!missing", True),
    ("!rack", False),
    ("! rack", False),
    ("node-role.kubernetes.io/worker", True),
    ("node-role.kubernetes.io/worker=", True),  # an empty value
    ("kubernetes.io/hostname in (node1, node2),rack=r1,!edge", True),
    ("kubernetes.io/hostname in (node1, node2),rack=r2", False),
    ("zone in (a),rack notin (r2),rack", True),
])
def test_match(text, matches):
    assert selector.parse(text, "sel").matches(LABELS) is matches


def test_empty_and_none_select_everything():
    assert selector.parse(None).everything and selector.parse("").everything
    assert selector.parse(None).matches({}) and not selector.parse("a").everything


def test_the_text_is_kept_for_status():
    assert str(selector.parse(" rack in (r1) , zone=a ")) == "rack in (r1) , zone=a"


@pytest.mark.parametrize("text,message", [
    ("rack in (r1", "sel: 'rack in (r1' has a '(' without its ')'"),
    ("rack in r1)", "sel: 'rack in r1)' has a ')' without its '('"),
    ("rack in ((r1))", "sel: 'rack in ((r1))' has nested parentheses"),
    ("rack=r1,,zone=a", "sel: 'rack=r1,,zone=a' has an empty requirement (two commas, or one at an end)"),
    ("rack=r1,", "sel: 'rack=r1,' has an empty requirement (two commas, or one at an end)"),
    ("rack in ()", "sel: 'rack in ()': 'in' needs at least one value"),
    ("rack notin ( )", "sel: 'rack notin ( )': 'notin' needs at least one value"),
    ("-rack=r1", "sel: '-rack=r1': '-rack' is not a label key ([prefix/]name, name 1..63 characters of letters, "
                 "digits, '-', '_', '.')"),
    ("Example.COM/rack=r1", "sel: 'Example.COM/rack=r1': 'Example.COM/rack' is not a label key ([prefix/]name, "
                            "name 1..63 characters of letters, digits, '-', '_', '.')"),
    ("=r1", "sel: '=r1': '' is not a label key ([prefix/]name, name 1..63 characters of letters, digits, '-', '_', "
            "'.')"),
    ("rack=r 1", "sel: 'rack=r 1': 'r 1' is not a label value (0..63 characters of letters, digits, '-', '_', '.', "
                 "starting and ending with a letter or digit)"),
    ("rack=a=b", "sel: 'rack=a=b': 'a=b' is not a label value (0..63 characters of letters, digits, '-', '_', '.', "
                 "starting and ending with a letter or digit)"),
    ("rack in (r1,-x)", "sel: 'rack in (r1,-x)': '-x' is not a label value (0..63 characters of letters, digits, "
                        "'-', '_', '.', starting and ending with a letter or digit)"),
    ("a" * 64, f"sel: '{'a' * 64}': '{'a' * 64}' is not a label key ([prefix/]name, name 1..63 characters of "
               "letters, digits, '-', '_', '.')"),
])
def test_refusals_are_one_line_naming_the_requirement(text, message):
    with pytest.raises(SelectorError) as err:
        selector.parse(text, "sel")
    assert str(err.value) == message and "\n" not in str(err.value)


def test_not_a_string():
    with pytest.raises(SelectorError, match=r"^sel: expected a label selector string such as 'rack=r1', got \{"):
        selector.parse({"rack": "r1"}, "sel")


def test_selectors_are_values():
    assert selector.parse("rack in (r1,r2)") == selector.parse("rack in (r1,r2)")
    assert selector.parse("rack in (r1,r2)").requirements == selector.parse("rack in (r2,r1)").requirements
