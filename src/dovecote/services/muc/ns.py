"""Namespaces of XEP-0045 and of the extensions rooms speak."""

MUC = "http://jabber.org/protocol/muc"
MUC_USER = "http://jabber.org/protocol/muc#user"
MUC_ADMIN = "http://jabber.org/protocol/muc#admin"
MUC_OWNER = "http://jabber.org/protocol/muc#owner"
MUC_REQUEST = "http://jabber.org/protocol/muc#request"
ROOMCONFIG = "http://jabber.org/protocol/muc#roomconfig"
ROOMINFO = "http://jabber.org/protocol/muc#roominfo"
MUC_REGISTER = "http://jabber.org/protocol/muc#register"
STABLE_ID = "http://jabber.org/protocol/muc#stable_id"
SELF_PING = "http://jabber.org/protocol/muc#self-ping-optimization"  # XEP-0410
REGISTER = "jabber:iq:register"
SID = "urn:xmpp:sid:0"  # XEP-0359
OCCUPANT_ID = "urn:xmpp:occupant-id:0"  # XEP-0421
MODERATE_0 = "urn:xmpp:message-moderate:0"  # XEP-0425 0.2 (still used by clients)
MODERATE_1 = "urn:xmpp:message-moderate:1"  # XEP-0425 0.3
RETRACT_0 = "urn:xmpp:message-retract:0"
RETRACT_1 = "urn:xmpp:message-retract:1"  # XEP-0424
FASTEN = "urn:xmpp:fasten:0"  # XEP-0422
MAM = "urn:xmpp:mam:2"  # XEP-0313
CONFERENCE = "jabber:x:conference"  # XEP-0249
VCARD = "vcard-temp"
HINTS = "urn:xmpp:hints"
CHAT_STATES = "http://jabber.org/protocol/chatstates"
