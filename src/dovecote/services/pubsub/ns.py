"""The namespaces of XEP-0060 (§17.1 .. §17.6) and its data forms (§16.4)."""

PUBSUB = "http://jabber.org/protocol/pubsub"
PUBSUB_EVENT = f"{PUBSUB}#event"
PUBSUB_OWNER = f"{PUBSUB}#owner"
PUBSUB_ERRORS = f"{PUBSUB}#errors"
#: FORM_TYPE of node configuration forms (§16.4.4).
NODE_CONFIG = f"{PUBSUB}#node_config"
#: FORM_TYPE of publish-options (§7.1.5, §16.4.5).
PUBLISH_OPTIONS = f"{PUBSUB}#publish-options"
#: FORM_TYPE of node metadata in disco#info (§5.4, §16.4.3).
META_DATA = f"{PUBSUB}#meta-data"
#: FORM_TYPE of subscription options (§6.3, §16.4.2).
SUBSCRIBE_OPTIONS = f"{PUBSUB}#subscribe_options"
#: FORM_TYPE of the subscription authorization form (§8.6, §16.4.6).
SUBSCRIBE_AUTHORIZATION = f"{PUBSUB}#subscribe_authorization"
