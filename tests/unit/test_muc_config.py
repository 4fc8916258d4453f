"""The room configuration model and the muc#roomconfig form (XEP-0045 §10.2, §15.5.3),
and the [muc] config section."""

from __future__ import annotations

import pytest

from dovecote.config import ConfigError, MucSection, config_from_dict
from dovecote.services.muc.config import RoomConfig, apply_form, config_form, room_features
from dovecote.stream.errors import StanzaError
from dovecote.xml.forms import parse_form

POLICY = MucSection(domain="conference.example.org", max_occupants=300, max_history=50)


def test_defaults_come_from_the_policy() -> None:
    config = RoomConfig.defaults(MucSection(default_persistent=True, default_public=False))
    assert config.persistent and not config.public and config.archive
    assert config.max_users == 200 and config.history_length == 20


def test_form_round_trip() -> None:
    config = RoomConfig.defaults(POLICY)
    form = config_form(config, POLICY, ["alice@example.org"], [])
    values = parse_form(form.to_element()).values()
    assert values["FORM_TYPE"] == ["http://jabber.org/protocol/muc#roomconfig"]
    values.pop("FORM_TYPE")
    values["muc#roomconfig_roomname"] = ["Kitchen"]
    values["muc#roomconfig_maxusers"] = ["300"]
    values["muc#roomconfig_presencebroadcast"] = ["moderator", "participant"]
    new, lists = apply_form(config, values, POLICY)
    assert new.name == "Kitchen" and new.max_users == 300
    assert new.presence_broadcast == ["moderator", "participant"]
    assert [str(j) for j in lists["owner"]] == ["alice@example.org"]
    assert RoomConfig.from_dict(new.to_dict(), POLICY) == new
    assert config.name == ""  # the original is untouched


@pytest.mark.parametrize(
    ("values", "condition"),
    [
        ({"muc#roomconfig_colour": ["blue"]}, "not-acceptable"),
        ({"muc#roomconfig_maxusers": ["301"]}, "not-acceptable"),
        ({"muc#roomconfig_maxusers": ["lots"]}, "bad-request"),
        ({"muc#maxhistoryfetch": ["51"]}, "not-acceptable"),
        ({"muc#roomconfig_persistentroom": ["yes"]}, "bad-request"),
        ({"muc#roomconfig_persistentroom": ["1", "0"]}, "bad-request"),
        ({"muc#roomconfig_whois": ["everyone"]}, "not-acceptable"),
        ({"muc#roomconfig_allowpm": ["friends"]}, "not-acceptable"),
        ({"muc#roomconfig_presencebroadcast": ["owner"]}, "not-acceptable"),
        ({"muc#roomconfig_passwordprotectedroom": ["1"]}, "not-acceptable"),
        ({"muc#roomconfig_roomname": ["x" * 2000]}, "not-acceptable"),
        ({"muc#roomconfig_roomowners": ["not a jid@@"]}, "jid-malformed"),
    ],
)
def test_bad_values(values: dict[str, list[str]], condition: str) -> None:
    with pytest.raises(StanzaError) as caught:
        apply_form(RoomConfig.defaults(POLICY), values, POLICY)
    assert caught.value.condition == condition


def test_password_and_features() -> None:
    new, _ = apply_form(
        RoomConfig.defaults(POLICY),
        {
            "muc#roomconfig_passwordprotectedroom": ["1"],
            "muc#roomconfig_roomsecret": ["s"],
            "muc#roomconfig_membersonly": ["true"],
        },
        POLICY,
    )
    features = room_features(new, archived=False)
    assert {"muc_passwordprotected", "muc_membersonly", "muc_semianonymous"} <= features
    assert "urn:xmpp:mam:2" not in features
    assert "urn:xmpp:mam:2" in room_features(new, archived=True)
    off, _ = apply_form(new, {"muc#roomconfig_passwordprotectedroom": ["0"]}, POLICY)
    assert off.password == ""


def test_muc_section_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"muc\.creators"):
        config_from_dict({"muc": {"creators": "everyone"}})
    with pytest.raises(ConfigError, match="default_max_users"):
        config_from_dict({"muc": {"default_max_users": 50, "max_occupants": 10}})
    with pytest.raises(ConfigError, match=r"muc\.max_rooms_per_user"):
        config_from_dict({"muc": {"max_rooms_per_user": 0}})
    config = config_from_dict({"muc": {"domain": "Conference.Example.ORG"}})
    assert config.muc.domain == "conference.example.org"
