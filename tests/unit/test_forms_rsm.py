"""XEP-0004 data forms and XEP-0059 RSM (xml/forms.py, xml/rsm.py), and the pure helpers of
the MAM module (XEP-0082 times, what is archived, XEP-0359 stanza-id stripping)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dovecote.jid import JID
from dovecote.modules.mam import (
    SID,
    StanzaId,
    parse_datetime,
    strip_stanza_ids,
    worth_archiving,
)
from dovecote.xml.element import Element, serialize
from dovecote.xml.forms import (
    DATA_FORMS,
    Field,
    Form,
    FormError,
    find_form,
    parse_boolean,
    parse_form,
    single_value,
    submitted_values,
)
from dovecote.xml.forward import datetime_stamp
from dovecote.xml.parser import parse_element
from dovecote.xml.rsm import RSM, RSMError, RSMRequest, find_request, parse_request, response_set

MAM = "urn:xmpp:mam:2"


def x(inner: str, type: str = "submit") -> Element:
    return parse_element(f"<x xmlns='{DATA_FORMS}' type='{type}'>{inner}</x>")


# ---- data forms ------------------------------------------------------------------------------
def test_parse_form_reads_every_part() -> None:
    form = parse_form(
        x(
            "<title>Search</title><instructions>Fill in</instructions>"
            f"<field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field>"
            "<field type='fixed'><value>Section</value></field>"
            "<field var='with' type='jid-single' label='With'><desc>who</desc><required/>"
            "<value>juliet@capulet.lit</value></field>"
            "<field var='ids' type='list-multi'><option label='One'><value>1</value></option>"
            "<value>a</value><value>b</value>"
            "<validate xmlns='http://jabber.org/protocol/xdata-validate'/></field>",
            type="form",
        )
    )
    assert (form.type, form.title, form.instructions, form.form_type) == (
        "form",
        "Search",
        ["Fill in"],
        MAM,
    )
    assert form.values() == {"FORM_TYPE": [MAM], "with": ["juliet@capulet.lit"], "ids": ["a", "b"]}
    with_field = form.get("with")
    assert with_field is not None
    assert (with_field.type, with_field.label, with_field.desc, with_field.required) == (
        "jid-single",
        "With",
        "who",
        True,
    )
    ids = form.get("ids")
    assert ids is not None and ids.options == [("One", "1")]
    assert [e.tag for e in ids.extra] == ["validate"]
    assert form.fields[1].var is None and form.fields[1].type == "fixed"


@pytest.mark.parametrize(
    "element",
    [
        f"<x xmlns='{DATA_FORMS}'/>",  # §3.1: 'type' is required
        f"<x xmlns='{DATA_FORMS}' type='reply'/>",
        f"<x xmlns='{DATA_FORMS}' type='submit'><field><value>v</value></field></x>",
        f"<x xmlns='{DATA_FORMS}' type='submit'><field var='a'/><field var='a'/></x>",
        "<x xmlns='urn:example' type='submit'/>",
    ],
)
def test_malformed_forms(element: str) -> None:
    with pytest.raises(FormError):
        parse_form(parse_element(element))


def test_submitted_values() -> None:
    form = x(
        f"<field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field>"
        "<field var='start'><value>2010-06-07T00:00:00Z</value></field><field var='empty'/>"
    )
    assert submitted_values(form, MAM) == {"start": ["2010-06-07T00:00:00Z"], "empty": []}
    # Without a FORM_TYPE the form is taken as meant for us; another one is refused.
    assert submitted_values(x("<field var='a'><value>1</value></field>"), MAM) == {"a": ["1"]}
    with pytest.raises(FormError, match="FORM_TYPE"):
        submitted_values(x("<field var='FORM_TYPE'><value>urn:other</value></field>"), MAM)
    for not_a_submission in ("cancel", "result"):
        with pytest.raises(FormError):
            submitted_values(x("", type=not_a_submission), MAM)


def test_single_value_and_boolean() -> None:
    values = {"one": ["a"], "none": [], "two": ["a", "b"]}
    assert single_value(values, "one") == "a"
    assert single_value(values, "none") is None
    assert single_value(values, "absent") is None
    with pytest.raises(FormError):
        single_value(values, "two")
    assert [parse_boolean(v) for v in ("1", "true", " 0 ", "false")] == [True, True, False, False]
    with pytest.raises(FormError):
        parse_boolean("yes")


def test_build_a_form() -> None:
    form = Form.with_type(
        MAM,
        [
            Field("with", "jid-single", label="With"),
            Field("ids", "list-multi", options=[(None, "x")], required=True, desc="d"),
        ],
    )
    form.title = "T"
    assert serialize(form.to_element()) == (
        f"<x xmlns='{DATA_FORMS}' type='form'><title>T</title>"
        f"<field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field>"
        "<field var='with' type='jid-single' label='With'/>"
        "<field var='ids' type='list-multi'><desc>d</desc><required/>"
        "<option><value>x</value></option></field></x>"
    )


def test_find_form() -> None:
    parent = Element("query", MAM)
    other = Form.with_type("urn:other", [], type="submit").to_element()
    ours = Form.with_type(MAM, [Field("with", values=["a@b"])], type="submit").to_element()
    parent.append(other)
    parent.append(ours)
    assert find_form(parent) is other
    assert find_form(parent, MAM) is ours
    assert find_form(Element("query", MAM)) is None


_text = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"),
    max_size=20,
)


@given(
    st.dictionaries(
        st.text("abcdefghij-{}:/", min_size=1, max_size=10).filter(lambda v: v != "FORM_TYPE"),
        st.lists(_text, max_size=3),
        max_size=5,
    )
)
def test_values_round_trip(values: dict[str, list[str]]) -> None:
    form = Form.with_type(MAM, [Field(var, values=vals) for var, vals in values.items()], "submit")
    parsed = parse_element(serialize(form.to_element()))
    assert submitted_values(parsed, MAM) == values


# ---- RSM -------------------------------------------------------------------------------------
def rsm_set(inner: str) -> Element:
    return parse_element(f"<set xmlns='{RSM}'>{inner}</set>")


def test_parse_request() -> None:
    assert parse_request(rsm_set("<max>10</max>")) == RSMRequest(max=10)
    request = parse_request(rsm_set("<max>10</max><after>abc</after>"))
    assert (request.after, request.before, request.backwards) == ("abc", None, False)
    last_page = parse_request(rsm_set("<max>5</max><before/>"))
    assert (last_page.before, last_page.backwards) == ("", True)
    assert parse_request(rsm_set("<before>x</before>")).before == "x"
    assert parse_request(rsm_set("<index>7</index><max> 0 </max>")) == RSMRequest(max=0, index=7)
    assert parse_request(rsm_set("")) == RSMRequest()


@pytest.mark.parametrize(
    "inner",
    ["<max>-1</max>", "<max>ten</max>", "<max/>", "<max>²</max>", "<index>1.5</index>", "<after/>"],
)
def test_malformed_requests(inner: str) -> None:
    with pytest.raises(RSMError):
        parse_request(rsm_set(inner))


def test_find_request() -> None:
    query = parse_element(f"<query xmlns='{MAM}'><set xmlns='{RSM}'><max>3</max></set></query>")
    assert find_request(query) == RSMRequest(max=3)
    assert find_request(Element("query", MAM)) is None


def test_response_set() -> None:
    assert serialize(response_set("a", "b", 10, 0)) == (
        f"<set xmlns='{RSM}'><first index='0'>a</first><last>b</last><count>10</count></set>"
    )
    # §2.2: an empty page has neither <first/> nor <last/>.
    assert serialize(response_set(None, None, 10, None)) == (
        f"<set xmlns='{RSM}'><count>10</count></set>"
    )
    assert serialize(response_set("a", "a")) == (
        f"<set xmlns='{RSM}'><first>a</first><last>a</last></set>"
    )


# ---- MAM helpers -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2010-06-07T00:00:00Z", datetime(2010, 6, 7, tzinfo=UTC)),
        ("2010-06-07T00:00:00.5Z", datetime(2010, 6, 7, 0, 0, 0, 500000, tzinfo=UTC)),
        ("2010-06-07T00:00:00.123456789Z", datetime(2010, 6, 7, 0, 0, 0, 123456, tzinfo=UTC)),
        ("2010-06-07T02:30:00+02:30", datetime(2010, 6, 7, tzinfo=UTC)),
        ("2010-06-06T19:00:00-05:00", datetime(2010, 6, 7, tzinfo=UTC)),
    ],
)
def test_parse_datetime(text: str, expected: datetime) -> None:
    assert parse_datetime(text) == expected
    assert parse_datetime(text).tzinfo == UTC


@pytest.mark.parametrize(
    "text",
    [
        "2010-06-07",
        "2010-06-07T00:00:00",  # XEP-0082: the time zone is required
        "2010-06-07 00:00:00Z",
        "2010-13-07T00:00:00Z",
        "2010-06-07T24:00:00Z",
        "2010-06-07T00:00:00+25:00",
        "٢٠١٠-06-07T00:00:00Z",
        "yesterday",
    ],
)
def test_invalid_datetime(text: str) -> None:
    with pytest.raises(ValueError):
        parse_datetime(text)


def test_stamps_read_back() -> None:
    value = datetime(2010, 6, 7, 1, 2, 3, 456789, tzinfo=timezone(timedelta(hours=1)))
    assert datetime_stamp(value) == "2010-06-07T00:02:03.456Z"
    assert parse_datetime(datetime_stamp(value)) == value.replace(microsecond=456000)


HINTS = "urn:xmpp:hints"
STATES = "http://jabber.org/protocol/chatstates"


@pytest.mark.parametrize(
    ("stanza", "archived"),
    [
        ("<message type='chat'><body>hi</body></message>", True),
        ("<message><body>hi</body></message>", True),
        ("<message type='normal'><subject>topic</subject></message>", True),
        (f"<message type='chat'><active xmlns='{STATES}'/></message>", False),
        ("<message type='chat'><thread>t</thread></message>", False),
        (f"<message type='chat'><body>x</body><no-store xmlns='{HINTS}'/></message>", False),
        (
            f"<message type='chat'><body>x</body><no-permanent-store xmlns='{HINTS}'/></message>",
            False,
        ),
        (
            f"<message type='chat'><active xmlns='{STATES}'/><store xmlns='{HINTS}'/></message>",
            True,
        ),
        (
            f"<message type='chat'><store xmlns='{HINTS}'/><no-store xmlns='{HINTS}'/></message>",
            False,
        ),
        ("<message type='headline'><body>news</body></message>", False),
        (f"<message type='headline'><body>news</body><store xmlns='{HINTS}'/></message>", False),
        ("<message type='groupchat'><body>room</body></message>", False),
        (f"<message type='error'><body>x</body><store xmlns='{HINTS}'/></message>", False),
        ("<message type='chat'><received xmlns='urn:xmpp:receipts' id='1'/></message>", True),
        ("<message type='chat'><request xmlns='urn:xmpp:receipts'/></message>", False),
        (
            "<message type='chat'><displayed xmlns='urn:xmpp:chat-markers:0' id='1'/></message>",
            True,
        ),
        (
            "<message type='chat'><encrypted xmlns='eu.siacs.conversations.axolotl'/></message>",
            True,
        ),
        ("<message><x xmlns='http://jabber.org/protocol/muc#user'><invite/></x></message>", True),
        ("<message><x xmlns='http://jabber.org/protocol/muc#user'/></message>", False),
        (
            "<message><event xmlns='http://jabber.org/protocol/pubsub#event'><items/></event>"
            "</message>",
            False,
        ),
    ],
)
def test_worth_archiving(stanza: str, archived: bool) -> None:
    element = parse_element(stanza.replace("<message", "<message xmlns='jabber:client'", 1))
    assert worth_archiving(element) is archived


def test_strip_stanza_ids() -> None:
    user = JID.parse("juliet@capulet.lit")
    stanza = parse_element(
        "<message xmlns='jabber:client'><body>x</body>"
        f"<stanza-id xmlns='{SID}' by='Juliet@Capulet.lit' id='forged'/>"
        f"<stanza-id xmlns='{SID}' by='room@muc.capulet.lit' id='other'/>"
        f"<stanza-id xmlns='{SID}' by='not a jid@' id='junk'/>"
        f"<origin-id xmlns='{SID}' id='o'/></message>"
    )
    ours = StanzaId("stanza-id", SID, {"by": str(user), "id": "ours"})
    stanza.append(ours)
    strip_stanza_ids(stanza, user)
    assert [(c.tag, c.get("id")) for c in stanza.elements] == [
        ("body", None),
        ("stanza-id", "other"),
        ("stanza-id", "junk"),
        ("origin-id", "o"),
        ("stanza-id", "ours"),
    ]
