"""A room's configuration (XEP-0045 §10.2), the owner form `muc#roomconfig` (§15.5.3) and
the `muc#roominfo` disco extension (§15.5.4).

`RoomConfig` is plain data, stored as JSON for persistent rooms (`to_dict`/`from_dict`).
`config_form` builds what an owner is shown; `apply_form` reads a submission against the
service's limits: a malformed form is `bad-request`, an unknown field or a value the service
does not accept (a maxusers above its cap, a password-protected room without a password) is
`not-acceptable` (§10.1.3, §10.2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from dovecote.jid import JID, InvalidJID
from dovecote.services.muc import ns
from dovecote.stream.errors import StanzaError
from dovecote.xml.forms import Field, Form, FormError, parse_boolean

if TYPE_CHECKING:
    from dovecote.config import MucSection

ROLES = ("moderator", "participant", "visitor")
WHOIS = ("moderators", "anyone")
ALLOW_PM = ("anyone", "participants", "moderators", "none")


@dataclass(slots=True)
class RoomConfig:
    """What an owner configures (XEP-0045 §10.2), with the service's defaults."""

    name: str = ""
    description: str = ""
    lang: str = ""
    persistent: bool = False
    public: bool = True
    members_only: bool = False
    moderated: bool = False
    password_protected: bool = False
    password: str = ""
    max_users: int = 200
    #: §15.5.3 muc#roomconfig_whois: who sees real JIDs ('moderators': semi-anonymous).
    whois: str = "moderators"
    history_length: int = 20
    #: Participants (not only moderators) may change the subject (§8.1).
    change_subject: bool = False
    #: Participants (not only admins) may invite to a members-only room (§7.8.2).
    allow_invites: bool = False
    allow_pm: str = "anyone"
    #: XEP-0313 archive of the room (Prosody's muc#roomconfig_enablearchiving).
    archive: bool = True
    allow_voice_requests: bool = True
    presence_broadcast: list[str] = field(default_factory=lambda: list(ROLES))
    get_member_list: list[str] = field(default_factory=lambda: list(ROLES))

    @classmethod
    def defaults(cls, policy: MucSection) -> RoomConfig:
        return cls(
            persistent=policy.default_persistent,
            public=policy.default_public,
            max_users=policy.default_max_users,
            history_length=policy.default_history,
            archive=policy.default_archive,
        )

    @property
    def non_anonymous(self) -> bool:
        return self.whois == "anyone"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], policy: MucSection) -> RoomConfig:
        """Read a stored configuration; unknown keys (from a newer version) are left out."""
        config = cls.defaults(policy)
        known = {f.name for f in fields(cls)}
        for key, value in data.items():
            if key in known:
                setattr(config, key, value)
        return config

    def copy(self) -> RoomConfig:
        return RoomConfig(**{**asdict(self)})


# field var -> (RoomConfig attribute, kind)
_FIELDS: dict[str, tuple[str, str]] = {
    "muc#roomconfig_roomname": ("name", "text"),
    "muc#roomconfig_roomdesc": ("description", "text"),
    "muc#roomconfig_lang": ("lang", "text"),
    "muc#roomconfig_persistentroom": ("persistent", "bool"),
    "muc#roomconfig_publicroom": ("public", "bool"),
    "muc#roomconfig_membersonly": ("members_only", "bool"),
    "muc#roomconfig_moderatedroom": ("moderated", "bool"),
    "muc#roomconfig_passwordprotectedroom": ("password_protected", "bool"),
    "muc#roomconfig_roomsecret": ("password", "text"),
    "muc#roomconfig_maxusers": ("max_users", "int"),
    "muc#roomconfig_whois": ("whois", "whois"),
    "muc#maxhistoryfetch": ("history_length", "int"),
    "muc#roomconfig_changesubject": ("change_subject", "bool"),
    "muc#roomconfig_allowinvites": ("allow_invites", "bool"),
    "muc#roomconfig_allowpm": ("allow_pm", "allowpm"),
    "muc#roomconfig_enablearchiving": ("archive", "bool"),
    "muc#roomconfig_enablelogging": ("archive", "bool"),  # §15.5.3's name for the same
    "muc#roomconfig_allowvoicerequests": ("allow_voice_requests", "bool"),
    "muc#roomconfig_presencebroadcast": ("presence_broadcast", "roles"),
    "muc#roomconfig_getmemberlist": ("get_member_list", "roles"),
}
#: Fields handled by the room itself (they change affiliations, §10.2).
AFFILIATION_FIELDS = {
    "muc#roomconfig_roomadmins": "admin",
    "muc#roomconfig_roomowners": "owner",
}
#: Text fields are bounded (a room name is not a place for a megabyte).
MAX_TEXT = 1024


def config_form(
    config: RoomConfig, policy: MucSection, owners: list[str], admins: list[str]
) -> Form:
    """The owner form with the room's current values (XEP-0045 §10.2, §15.5.3)."""

    def boolean(var: str, label: str, value: bool) -> Field:
        return Field(var, "boolean", ["1" if value else "0"], label=label)

    def options(values: tuple[str, ...] | list[str]) -> list[tuple[str | None, str]]:
        return [(None, value) for value in values]

    max_users = sorted({10, 20, 30, 50, 100, 200, 500, 1000, config.max_users})
    return Form.with_type(
        ns.ROOMCONFIG,
        [
            Field("muc#roomconfig_roomname", "text-single", [config.name], label="Name"),
            Field(
                "muc#roomconfig_roomdesc", "text-single", [config.description], label="Description"
            ),
            Field("muc#roomconfig_lang", "text-single", [config.lang], label="Language"),
            boolean("muc#roomconfig_persistentroom", "Persistent", config.persistent),
            boolean("muc#roomconfig_publicroom", "Listed in the directory", config.public),
            boolean("muc#roomconfig_membersonly", "Members only", config.members_only),
            boolean("muc#roomconfig_moderatedroom", "Moderated", config.moderated),
            boolean("muc#roomconfig_passwordprotectedroom", "Password", config.password_protected),
            Field("muc#roomconfig_roomsecret", "text-private", [config.password], label="Password"),
            Field(
                "muc#roomconfig_maxusers",
                "list-single",
                [str(config.max_users)],
                label=f"Maximum occupants (at most {policy.max_occupants})",
                options=options([str(n) for n in max_users if n <= policy.max_occupants]),
            ),
            Field(
                "muc#roomconfig_whois",
                "list-single",
                [config.whois],
                label="Who may see real addresses",
                options=options(WHOIS),
            ),
            Field(
                "muc#maxhistoryfetch",
                "text-single",
                [str(config.history_length)],
                label=f"Messages of history on join (at most {policy.max_history})",
            ),
            boolean(
                "muc#roomconfig_changesubject", "Participants change subject", config.change_subject
            ),
            boolean("muc#roomconfig_allowinvites", "Participants invite", config.allow_invites),
            Field(
                "muc#roomconfig_allowpm",
                "list-single",
                [config.allow_pm],
                label="Who may send private messages",
                options=options(ALLOW_PM),
            ),
            boolean("muc#roomconfig_enablearchiving", "Archive messages", config.archive),
            boolean(
                "muc#roomconfig_allowvoicerequests", "Voice requests", config.allow_voice_requests
            ),
            Field(
                "muc#roomconfig_presencebroadcast",
                "list-multi",
                list(config.presence_broadcast),
                label="Roles whose presence is broadcast",
                options=options(ROLES),
            ),
            Field(
                "muc#roomconfig_getmemberlist",
                "list-multi",
                list(config.get_member_list),
                label="Roles that may get the member list",
                options=options(ROLES),
            ),
            Field("muc#roomconfig_roomadmins", "jid-multi", list(admins), label="Admins"),
            Field("muc#roomconfig_roomowners", "jid-multi", list(owners), label="Owners"),
        ],
    )


def _not_acceptable(text: str) -> StanzaError:
    return StanzaError("not-acceptable", text)


def apply_form(
    config: RoomConfig, values: dict[str, list[str]], policy: MucSection
) -> tuple[RoomConfig, dict[str, list[JID]]]:
    """A new configuration from a submitted owner form (`values` without FORM_TYPE), and
    the affiliation lists the form sets ({'owner': [...], 'admin': [...]}, only those
    present). Raises StanzaError: not-acceptable for unknown fields and refused values,
    bad-request for malformed ones (XEP-0045 §10.2)."""
    new = config.copy()
    lists: dict[str, list[JID]] = {}
    for var, raw in values.items():
        if var in AFFILIATION_FIELDS:
            jids = []
            for text in raw:
                try:
                    jids.append(JID.parse(text.strip()).bare)
                except InvalidJID:
                    raise StanzaError("jid-malformed", f"{var}: not a JID") from None
            lists[AFFILIATION_FIELDS[var]] = jids
            continue
        known = _FIELDS.get(var)
        if known is None:
            raise _not_acceptable(f"unknown configuration field {var[:64]!r}")
        attr, kind = known
        if kind == "roles":
            if any(role not in ROLES for role in raw):
                raise _not_acceptable(f"{var}: roles are {', '.join(ROLES)}")
            setattr(new, attr, list(dict.fromkeys(raw)))
            continue
        if len(raw) > 1:
            raise StanzaError("bad-request", f"field {var!r} takes a single value")
        value = raw[0] if raw else ""
        if kind == "text":
            if len(value) > MAX_TEXT:
                raise _not_acceptable(f"{var}: longer than {MAX_TEXT} characters")
            setattr(new, attr, value)
        elif kind == "bool":
            try:
                setattr(new, attr, parse_boolean(value) if value else False)
            except FormError as exc:
                raise StanzaError("bad-request", f"{var}: {exc}") from None
        elif kind == "int":
            try:
                number = int(value.strip())
            except ValueError:
                if var == "muc#roomconfig_maxusers" and value.strip() in ("", "none"):
                    number = policy.max_occupants
                else:
                    raise StanzaError("bad-request", f"{var}: not a number") from None
            cap = policy.max_occupants if attr == "max_users" else policy.max_history
            if number < (1 if attr == "max_users" else 0) or number > cap:
                raise _not_acceptable(f"{var}: the service allows 0 to {cap}")
            setattr(new, attr, number)
        elif kind == "whois":
            if value not in WHOIS:
                raise _not_acceptable(f"{var}: one of {', '.join(WHOIS)}")
            new.whois = value
        elif kind == "allowpm":
            if value not in ALLOW_PM:
                raise _not_acceptable(f"{var}: one of {', '.join(ALLOW_PM)}")
            new.allow_pm = value
    if new.password_protected and not new.password:
        # §10.1.3: "because the password for a password-protected room is blank".
        raise _not_acceptable("a password-protected room needs a password")
    if not new.password_protected:
        new.password = ""
    return new, lists


def roominfo_form(config: RoomConfig, occupants: int, subject: str) -> Form:
    """The `muc#roominfo` extension of a room's disco#info (XEP-0045 §6.4, §15.5.4)."""
    return Form.with_type(
        ns.ROOMINFO,
        [
            Field("muc#roominfo_description", values=[config.description], label="Description"),
            Field("muc#roominfo_occupants", values=[str(occupants)], label="Occupants"),
            Field("muc#roominfo_subject", values=[subject], label="Subject"),
            Field(
                "muc#roominfo_subjectmod",
                "boolean",
                ["1" if config.change_subject else "0"],
                label="Occupants may change the subject",
            ),
            Field("muc#roominfo_lang", values=[config.lang], label="Language"),
            Field("muc#roomconfig_roomname", values=[config.name], label="Name"),
            Field("muc#maxhistoryfetch", values=[str(config.history_length)]),
            Field("muc#roomconfig_allowinvites", "boolean", ["1" if config.allow_invites else "0"]),
            Field("muc#roomconfig_allowpm", values=[config.allow_pm]),
        ],
        type="result",
    )


def room_features(config: RoomConfig, archived: bool) -> set[str]:
    """The muc_* features of a room's disco#info (XEP-0045 §6.4, §15.6)."""
    features = {
        ns.MUC,
        "http://jabber.org/protocol/disco#info",
        ns.STABLE_ID,
        ns.SELF_PING,
        ns.OCCUPANT_ID,
        ns.MODERATE_0,
        ns.MODERATE_1,
        ns.REGISTER,
        ns.MUC_REQUEST,
        "muc_persistent" if config.persistent else "muc_temporary",
        "muc_public" if config.public else "muc_hidden",
        "muc_membersonly" if config.members_only else "muc_open",
        "muc_moderated" if config.moderated else "muc_unmoderated",
        "muc_nonanonymous" if config.non_anonymous else "muc_semianonymous",
        "muc_passwordprotected" if config.password_protected else "muc_unsecured",
    }
    if archived:
        features.add(ns.MAM)
    return features
